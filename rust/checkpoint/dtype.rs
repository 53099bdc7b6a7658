//! The element types torch saves, under the names torch, its storage classes and safetensors use.

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dtype {
    F16,
    BF16,
    F32,
    F64,
    C64,
    C128,
    I8,
    I16,
    I32,
    I64,
    U8,
    U16,
    U32,
    U64,
    Bool,
    F8E4M3,
    F8E5M2,
}

/// `(dtype, torch attribute name, legacy storage class name, safetensors name, itemsize)`.
const TABLE: [(Dtype, &str, &str, &str, usize); 17] = [
    (Dtype::F16, "float16", "HalfStorage", "F16", 2),
    (Dtype::BF16, "bfloat16", "BFloat16Storage", "BF16", 2),
    (Dtype::F32, "float32", "FloatStorage", "F32", 4),
    (Dtype::F64, "float64", "DoubleStorage", "F64", 8),
    (Dtype::C64, "complex64", "ComplexFloatStorage", "C64", 8),
    (
        Dtype::C128,
        "complex128",
        "ComplexDoubleStorage",
        "C128",
        16,
    ),
    (Dtype::I8, "int8", "CharStorage", "I8", 1),
    (Dtype::I16, "int16", "ShortStorage", "I16", 2),
    (Dtype::I32, "int32", "IntStorage", "I32", 4),
    (Dtype::I64, "int64", "LongStorage", "I64", 8),
    (Dtype::U8, "uint8", "ByteStorage", "U8", 1),
    (Dtype::U16, "uint16", "", "U16", 2),
    (Dtype::U32, "uint32", "", "U32", 4),
    (Dtype::U64, "uint64", "", "U64", 8),
    (Dtype::Bool, "bool", "BoolStorage", "BOOL", 1),
    (Dtype::F8E4M3, "float8_e4m3fn", "", "F8_E4M3", 1),
    (Dtype::F8E5M2, "float8_e5m2", "", "F8_E5M2", 1),
];

/// torch's aliases for the same dtypes (`torch.half is torch.float16`, ...).
const ALIASES: [(&str, Dtype); 8] = [
    ("half", Dtype::F16),
    ("float", Dtype::F32),
    ("double", Dtype::F64),
    ("cfloat", Dtype::C64),
    ("cdouble", Dtype::C128),
    ("short", Dtype::I16),
    ("int", Dtype::I32),
    ("long", Dtype::I64),
];

impl Dtype {
    fn row(self) -> &'static (Dtype, &'static str, &'static str, &'static str, usize) {
        // Every variant has exactly one row (checked by a test).
        TABLE.iter().find(|r| r.0 == self).unwrap_or(&TABLE[0])
    }

    /// The name of the `torch.<name>` dtype attribute.
    pub fn torch_name(self) -> &'static str {
        self.row().1
    }

    pub fn itemsize(self) -> usize {
        self.row().4
    }

    pub fn is_floating(self) -> bool {
        matches!(self, Dtype::F16 | Dtype::BF16 | Dtype::F32 | Dtype::F64)
    }

    /// `torch.float16`, `torch.half`, ... (the name after `torch.`).
    pub fn from_torch_name(name: &str) -> Option<Dtype> {
        // complex32 / chalf are 4-byte complex halves; not C64. Refuse them rather than lie.
        if matches!(name, "complex32" | "chalf") {
            return None;
        }
        TABLE
            .iter()
            .find(|r| r.1 == name)
            .map(|r| r.0)
            .or_else(|| ALIASES.iter().find(|a| a.0 == name).map(|a| a.1))
    }

    /// `HalfStorage`, `FloatStorage`, ... (the legacy typed storage classes torch pickles).
    pub fn from_storage_name(name: &str) -> Option<Dtype> {
        TABLE
            .iter()
            .find(|r| !r.2.is_empty() && r.2 == name)
            .map(|r| r.0)
    }

    pub fn from_safetensors_name(name: &str) -> Option<Dtype> {
        TABLE.iter().find(|r| r.3 == name).map(|r| r.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for row in TABLE {
            assert_eq!(row.0.row().0, row.0);
            assert_eq!(Dtype::from_torch_name(row.1), Some(row.0));
            assert_eq!(Dtype::from_safetensors_name(row.3), Some(row.0));
        }
        assert_eq!(Dtype::from_storage_name("HalfStorage"), Some(Dtype::F16));
        assert_eq!(Dtype::from_torch_name("half"), Some(Dtype::F16));
        assert_eq!(Dtype::from_torch_name("long"), Some(Dtype::I64));
        assert_eq!(Dtype::from_torch_name("complex32"), None);
        assert_eq!(Dtype::from_storage_name("QInt8Storage"), None);
    }
}
