//! safetensors: an 8-byte little-endian header length, a JSON header
//! `{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}}`, then the
//! data. Each tensor is contiguous and owns its byte range; as the safetensors library requires,
//! the ranges follow each other without gap or overlap and cover the data exactly (so a small
//! file cannot declare many tensors over the same bytes).

use super::{Contents, Dtype, Format, Storage, Tensor};
use crate::error::{Error, Result};
use serde_json::Value;
use std::path::Path;

/// Headers larger than this are refused (safetensors itself allows 100 MB).
const MAX_HEADER: u64 = 100 << 20;

pub fn looks_like_safetensors(bytes: &[u8]) -> bool {
    bytes.len() >= 10 && bytes[8] == b'{'
}

pub fn read(path: &Path, bytes: &[u8]) -> Result<Contents> {
    let fail = |msg: String| Error::checkpoint(path, format!("safetensors: {msg}"));
    let mut len = [0u8; 8];
    len.copy_from_slice(&bytes[..8]);
    let header_len = u64::from_le_bytes(len);
    if header_len > MAX_HEADER || header_len > (bytes.len() - 8) as u64 {
        return Err(fail(format!(
            "header of {header_len} bytes does not fit in the file of {} bytes (truncated?)",
            bytes.len()
        )));
    }
    let data_start = 8 + header_len as usize;
    let header: Value = serde_json::from_slice(&bytes[8..data_start])
        .map_err(|e| fail(format!("header is not valid JSON: {e}")))?;
    let Value::Object(entries) = header else {
        return Err(fail("header is not a JSON object".into()));
    };
    let data_len = bytes.len() - data_start;
    let mut rows = Vec::with_capacity(entries.len());
    for (name, info) in &entries {
        if name == "__metadata__" {
            let strings = match info {
                Value::Null => true,
                Value::Object(map) => map.values().all(Value::is_string),
                _ => false,
            };
            if !strings {
                return Err(fail("__metadata__ is not a map of strings".into()));
            }
            continue;
        }
        let dtype_name = info.get("dtype").and_then(Value::as_str).unwrap_or("");
        let dtype = Dtype::from_safetensors_name(dtype_name)
            .ok_or_else(|| fail(format!("tensor {name:?}: unsupported dtype {dtype_name:?}")))?;
        let shape: Option<Vec<i64>> = info.get("shape").and_then(Value::as_array).and_then(|a| {
            a.iter()
                .map(|v| v.as_u64().and_then(|v| i64::try_from(v).ok()))
                .collect()
        });
        let shape = shape.ok_or_else(|| fail(format!("tensor {name:?}: bad shape")))?;
        let offsets: Option<Vec<u64>> = info
            .get("data_offsets")
            .and_then(Value::as_array)
            .and_then(|a| a.iter().map(Value::as_u64).collect());
        let (begin, end) = match offsets.as_deref() {
            Some(&[b, e]) if b <= e && e <= data_len as u64 => (b as usize, e as usize),
            _ => {
                return Err(fail(format!(
                    "tensor {name:?}: data offsets missing or past the end of the data ({data_len} bytes)"
                )))
            }
        };
        let numel = shape
            .iter()
            .try_fold(1u64, |acc, &n| acc.checked_mul(n as u64));
        let nbytes = numel.and_then(|n| n.checked_mul(dtype.itemsize() as u64));
        if nbytes != Some((end - begin) as u64) {
            return Err(fail(format!(
                "tensor {name:?}: shape {shape:?} of {} needs another byte count than its {} bytes",
                dtype.torch_name(),
                end - begin
            )));
        }
        // Contiguous strides.
        let mut stride = vec![1i64; shape.len()];
        for i in (0..shape.len().saturating_sub(1)).rev() {
            // Only a shape with a zero dimension can get here with a product that overflows.
            stride[i] = stride[i + 1]
                .checked_mul(shape[i + 1].max(1))
                .ok_or_else(|| fail(format!("tensor {name:?}: shape {shape:?} overflows")))?;
        }
        rows.push((begin, name.clone(), dtype, shape, stride, end));
    }
    // safetensors.torch.load_file returns tensors in data order.
    rows.sort_by(|a, b| (a.0, a.5, &a.1).cmp(&(b.0, b.5, &b.1)));
    let mut covered = 0;
    for (begin, name, _, _, _, end) in &rows {
        if *begin != covered {
            return Err(fail(format!(
                "tensor {name:?}: data offsets {begin}..{end} overlap another tensor or leave a gap"
            )));
        }
        covered = *end;
    }
    if covered != data_len {
        return Err(fail(format!(
            "the tensors cover {covered} of the {data_len} data bytes"
        )));
    }
    let mut storages = Vec::with_capacity(rows.len());
    let mut tensors = Vec::with_capacity(rows.len());
    for (begin, name, dtype, shape, stride, end) in rows {
        tensors.push(Tensor {
            name: name.clone(),
            dtype,
            shape,
            stride,
            storage: storages.len(),
            storage_offset: 0,
            requires_grad: false,
            is_parameter: false,
        });
        storages.push(Storage {
            key: name,
            dtype,
            bytes: data_start + begin..data_start + end,
        });
    }
    Ok(Contents {
        format: Format::Safetensors,
        storages,
        tensors,
        unmapped: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(header: &str, data: &[u8]) -> Vec<u8> {
        let mut out = (header.len() as u64).to_le_bytes().to_vec();
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(data);
        out
    }

    #[test]
    fn reads_header() {
        let h = r#"{"b":{"dtype":"F16","shape":[2],"data_offsets":[8,12]},"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"__metadata__":{"x":"y"}}"#;
        let bytes = file(h, &[0; 12]);
        let c = read(Path::new("x"), &bytes).unwrap();
        assert!(
            read(Path::new("x"), &file(h, &[0; 13])).is_err(),
            "trailing data"
        );
        assert_eq!(c.tensors[0].name, "a");
        assert_eq!(c.tensors[1].dtype, Dtype::F16);
        assert_eq!(c.storages[1].bytes, 8 + h.len() + 8..8 + h.len() + 12);
    }

    #[test]
    fn refuses_bad_headers() {
        for h in [
            r#"{"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}"#,
            r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,80]}}"#,
            r#"{"a":{"dtype":"X","shape":[2],"data_offsets":[0,8]}}"#,
            r#"{"a":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}}"#,
            r#"[1]"#,
            r#"{"a":{"dtype":"F32","shape":[0,4611686018427387904,4611686018427387904],"data_offsets":[0,0]}}"#,
            r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#,
            r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#,
            r#"{"__metadata__":{"x":1},"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#,
            r#"{"a""#,
        ] {
            assert!(read(Path::new("x"), &file(h, &[0; 8])).is_err(), "{h}");
        }
        let mut huge = file("{}", &[]);
        huge[..8].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(read(Path::new("x"), &huge).is_err());
    }
}
