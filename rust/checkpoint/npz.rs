//! NumPy `.npz` archives (big_vision's checkpoints): a zip of `.npy` members, one array each, named
//! `<key>.npy`, stored (`np.savez`) or deflated (`np.savez_compressed`).
//!
//! A `.npy` member is the magic `\x93NUMPY`, a version (1.0, 2.0 or 3.0), the header length
//! (u16 in 1.0, u32 after), a Python dict literal `{'descr': '<f4', 'fortran_order': False,
//! 'shape': (3, 4), }` padded with spaces and a newline, then the raw elements.
//!
//! A stored member's elements are a range of the file: zero-copy, like every other storage. A
//! deflated member, or one whose elements are in the other byte order than this machine's (`>f4`:
//! big-endian, which `np.load` reads), has no such range: its storage is given a range past the end
//! of the file (so anything that takes it for a file range fails its bounds check instead of
//! reading wrong bytes), and [`elements`] gives its elements on request, inflated and/or put in
//! this machine's byte order, checked against the member's CRC-32 (a member read in place is never
//! read whole, so, like torch's tensor records, it is not checked). Object arrays (pickles) are
//! refused, never read.

use super::{Contents, Dtype, Format, Storage, Tensor};
use crate::error::{Error, Result};
use crate::zip::{Archive, Entry, Method};
use miniz_oxide::inflate::{decompress_slice_iter_to_slice, TINFLStatus};
use std::ops::Range;
use std::path::Path;

/// The magic string every `.npy` file starts with.
pub const NPY_MAGIC: &[u8] = b"\x93NUMPY";
/// The suffix of every member of an `.npz` archive.
pub const NPY_SUFFIX: &str = ".npy";
/// numpy refuses headers longer than this by default (`max_header_size`); so do we, for any version.
pub const MAX_HEADER: usize = 10_000;
/// Deflate cannot expand data by more than this factor (258-byte matches from 2-bit codes, rounded
/// up): a directory that claims more is damaged or hostile.
const MAX_DEFLATE_RATIO: u64 = 1032;

/// What a `.npy` header says about its array.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NpyHeader {
    pub dtype: Dtype,
    /// The elements are stored in the other byte order than this machine's (multi-byte items only).
    pub swapped: bool,
    pub fortran_order: bool,
    pub shape: Vec<i64>,
    /// Where the elements start, from the beginning of the `.npy` bytes.
    pub data_offset: usize,
    /// The byte length of the elements (`prod(shape) * itemsize`).
    pub data_len: usize,
}

/// A member whose elements are not usable in place (deflated, or in the other byte order): the
/// storage it backs and where its bytes lie.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unmapped {
    pub storage: usize,
    pub method: Method,
    /// The member as it lies in the file (compressed when deflated).
    pub raw: Range<usize>,
    /// The whole `.npy` member once inflated (header and elements).
    pub size: usize,
    pub data_offset: usize,
    /// CRC-32 of the (inflated) member, from the zip directory.
    pub crc32: u32,
    /// The width in bytes of each value whose bytes are reversed (an item, or each half of a
    /// complex item); 0 when the elements are in this machine's byte order.
    pub swap: usize,
}

/// True when `archive` looks like an `.npz`: at least one member, all named `*.npy`.
pub fn looks_like_npz(archive: &Archive<'_>) -> bool {
    let entries = archive.entries();
    !entries.is_empty()
        && entries
            .iter()
            .all(|e| e.name.ends_with(NPY_SUFFIX) || e.name.ends_with('/'))
        && entries.iter().any(|e| e.name.ends_with(NPY_SUFFIX))
}

/// Parses the header of the `.npy` bytes `bytes` (only its first bytes are needed: the header is
/// read, the elements are not). Errors say what is wrong, without the file name.
pub fn parse_header(bytes: &[u8]) -> std::result::Result<NpyHeader, String> {
    if !bytes.starts_with(NPY_MAGIC) {
        return Err("not a .npy array (no \\x93NUMPY magic)".into());
    }
    let (major, minor) = match (bytes.get(6), bytes.get(7)) {
        (Some(&a), Some(&b)) => (a, b),
        _ => return Err("truncated .npy header".into()),
    };
    let (len_bytes, start) = match (major, minor) {
        (1, 0) => (2, 10),
        (2, 0) | (3, 0) => (4, 12),
        _ => {
            return Err(format!(
                ".npy format version {major}.{minor} is not supported"
            ))
        }
    };
    let Some(raw_len) = bytes.get(8..8 + len_bytes) else {
        return Err("truncated .npy header".into());
    };
    let header_len = raw_len
        .iter()
        .rev()
        .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
    if header_len > MAX_HEADER {
        return Err(format!(
            ".npy header of {header_len} bytes is longer than the limit of {MAX_HEADER}"
        ));
    }
    let Some(text) = bytes.get(start..start + header_len) else {
        return Err(format!(
            ".npy header of {header_len} bytes is truncated (only {} bytes follow)",
            bytes.len().saturating_sub(start)
        ));
    };
    // Versions 1 and 2 are latin-1, 3 is UTF-8; every valid header is ASCII either way.
    let text = std::str::from_utf8(text)
        .ok()
        .filter(|t| t.is_ascii())
        .ok_or_else(|| ".npy header is not ASCII text".to_string())?;
    let dict = HeaderDict::parse(text)?;
    let (dtype, swapped) = parse_descr(&dict.descr)?;
    let mut numel: u64 = 1;
    for &d in &dict.shape {
        numel = numel
            .checked_mul(d)
            .ok_or_else(|| format!("shape {:?} overflows", dict.shape))?;
    }
    let data_len = numel
        .checked_mul(dtype.itemsize() as u64)
        .and_then(|n| usize::try_from(n).ok())
        .ok_or_else(|| format!("shape {:?} is too large", dict.shape))?;
    let shape = dict
        .shape
        .iter()
        .map(|&d| i64::try_from(d).map_err(|_| format!("shape {:?} is too large", dict.shape)))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    Ok(NpyHeader {
        dtype,
        swapped,
        fortran_order: dict.fortran_order,
        shape,
        data_offset: start + header_len,
        data_len,
    })
}

/// numpy's `descr` for a plain numeric type -> our dtype, and whether its byte order is the other
/// one than this machine's (`<` little-endian, `>` big-endian, `=` native, `|` single bytes).
fn parse_descr(descr: &str) -> std::result::Result<(Dtype, bool), String> {
    let (order, code) = descr.split_at(descr.len().min(1));
    let dtype = match code {
        "f2" => Dtype::F16,
        "f4" => Dtype::F32,
        "f8" => Dtype::F64,
        "c8" => Dtype::C64,
        "c16" => Dtype::C128,
        "i1" => Dtype::I8,
        "i2" => Dtype::I16,
        "i4" => Dtype::I32,
        "i8" => Dtype::I64,
        "u1" => Dtype::U8,
        "u2" => Dtype::U16,
        "u4" => Dtype::U32,
        "u8" => Dtype::U64,
        "b1" => Dtype::Bool,
        _ if code.starts_with('O') => {
            return Err(format!(
                "dtype {descr:?} is an object array (a pickle), which is never read"
            ))
        }
        _ => {
            return Err(format!(
                "dtype {descr:?} is not a plain numeric type (bfloat16 or structured arrays, saved \
                 by numpy as raw void bytes, are not supported)"
            ))
        }
    };
    let big = match order {
        "<" => false,
        ">" => true,
        "=" | "|" => cfg!(target_endian = "big"),
        _ => {
            return Err(format!(
                "dtype {descr:?} does not start with a byte order numpy writes (<, >, = or |)"
            ))
        }
    };
    Ok((
        dtype,
        dtype.itemsize() > 1 && big != cfg!(target_endian = "big"),
    ))
}

/// The width of the values whose bytes a swapped `dtype` reverses: a complex number is two floats.
fn swap_width(dtype: Dtype) -> usize {
    match dtype {
        Dtype::C64 | Dtype::C128 => dtype.itemsize() / 2,
        _ => dtype.itemsize(),
    }
}

/// The three entries of a `.npy` header dict.
struct HeaderDict {
    descr: String,
    fortran_order: bool,
    shape: Vec<u64>,
}

/// A strict reader of the Python literal numpy writes: `{'key': value, ...}` with string,
/// boolean and tuple-of-integers values, then spaces and a newline.
struct Literal<'a> {
    text: &'a [u8],
    at: usize,
}

impl HeaderDict {
    fn parse(text: &str) -> std::result::Result<HeaderDict, String> {
        let bad = |what: &str| format!(".npy header {text:?}: {what}");
        let mut p = Literal {
            text: text.as_bytes(),
            at: 0,
        };
        let (mut descr, mut fortran, mut shape) = (None, None, None);
        p.expect(b'{').map_err(|e| bad(&e))?;
        loop {
            p.spaces();
            if p.eat(b'}') {
                break;
            }
            let key = p.string().map_err(|e| bad(&e))?;
            p.spaces();
            p.expect(b':').map_err(|e| bad(&e))?;
            p.spaces();
            let slot_taken = match key.as_str() {
                "descr" => descr.replace(p.string().map_err(|e| bad(&e))?).is_some(),
                "fortran_order" => fortran.replace(p.boolean().map_err(|e| bad(&e))?).is_some(),
                "shape" => shape.replace(p.tuple().map_err(|e| bad(&e))?).is_some(),
                other => return Err(bad(&format!("unexpected key {other:?}"))),
            };
            if slot_taken {
                return Err(bad(&format!("key {key:?} appears twice")));
            }
            p.spaces();
            if !p.eat(b',') {
                p.spaces();
                p.expect(b'}').map_err(|e| bad(&e))?;
                break;
            }
        }
        if p.text[p.at..]
            .iter()
            .any(|&c| !matches!(c, b' ' | b'\n' | b'\t' | b'\r' | b'\0'))
        {
            return Err(bad("text after the closing brace"));
        }
        match (descr, fortran, shape) {
            (Some(descr), Some(fortran_order), Some(shape)) => Ok(HeaderDict {
                descr,
                fortran_order,
                shape,
            }),
            _ => Err(bad("needs 'descr', 'fortran_order' and 'shape'")),
        }
    }
}

impl Literal<'_> {
    fn peek(&self) -> Option<u8> {
        self.text.get(self.at).copied()
    }

    fn eat(&mut self, c: u8) -> bool {
        let found = self.peek() == Some(c);
        if found {
            self.at += 1;
        }
        found
    }

    fn expect(&mut self, c: u8) -> std::result::Result<(), String> {
        if self.eat(c) {
            Ok(())
        } else {
            Err(format!("expected {:?} at character {}", c as char, self.at))
        }
    }

    fn spaces(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.at += 1;
        }
    }

    /// A quoted string without escapes (numpy's keys and type codes have none).
    fn string(&mut self) -> std::result::Result<String, String> {
        let quote = match self.peek() {
            Some(q @ (b'\'' | b'"')) => q,
            _ => return Err(format!("expected a string at character {}", self.at)),
        };
        let start = self.at + 1;
        let len = self.text[start..]
            .iter()
            .position(|&c| c == quote || c == b'\\')
            .ok_or_else(|| "unterminated string".to_string())?;
        if self.text[start + len] == b'\\' {
            return Err("escapes in strings are not supported".into());
        }
        self.at = start + len + 1;
        Ok(String::from_utf8_lossy(&self.text[start..start + len]).into_owned())
    }

    fn boolean(&mut self) -> std::result::Result<bool, String> {
        for (word, value) in [(&b"True"[..], true), (&b"False"[..], false)] {
            if self.text[self.at..].starts_with(word) {
                self.at += word.len();
                return Ok(value);
            }
        }
        Err(format!("expected True or False at character {}", self.at))
    }

    /// `()`, `(3,)`, `(3, 4)`, `(3, 4,)`: non-negative integers (numpy may write `3L` on Python 2).
    fn tuple(&mut self) -> std::result::Result<Vec<u64>, String> {
        self.expect(b'(')?;
        let mut out = Vec::new();
        loop {
            self.spaces();
            if self.eat(b')') {
                return Ok(out);
            }
            let start = self.at;
            while self.peek().is_some_and(|c| c.is_ascii_digit()) {
                self.at += 1;
            }
            let digits = &self.text[start..self.at];
            if digits.is_empty() {
                return Err(format!("expected a dimension at character {}", self.at));
            }
            let value = std::str::from_utf8(digits)
                .ok()
                .and_then(|d| d.parse::<u64>().ok())
                .ok_or_else(|| "a dimension does not fit in 64 bits".to_string())?;
            out.push(value);
            self.eat(b'L');
            self.spaces();
            if !self.eat(b',') {
                self.spaces();
                self.expect(b')')?;
                return Ok(out);
            }
        }
    }
}

/// Strides (in elements) of a C- or Fortran-ordered array of `shape`.
fn strides(shape: &[i64], fortran_order: bool) -> Vec<i64> {
    let mut stride = vec![1i64; shape.len()];
    if fortran_order {
        for i in 1..shape.len() {
            stride[i] = stride[i - 1].saturating_mul(shape[i - 1].max(1));
        }
    } else {
        for i in (0..shape.len().saturating_sub(1)).rev() {
            stride[i] = stride[i + 1].saturating_mul(shape[i + 1].max(1));
        }
    }
    stride
}

/// Reads the layout of the `.npz` archive `archive` (the file `path` of `file_len` bytes): one
/// tensor per member, named as `np.load(path)` names it. Deflated and byte-swapped members are
/// listed in `Contents::unmapped`; their storages lie past `file_len` (see the module documentation).
pub fn read(path: &Path, archive: &Archive<'_>, file_len: usize) -> Result<Contents> {
    let fail =
        |name: &str, msg: String| Error::checkpoint(path, format!("npz member {name}: {msg}"));
    let mut storages = Vec::new();
    let mut tensors = Vec::new();
    let mut unmapped = Vec::new();
    let mut virtual_end = file_len;
    for entry in archive.entries() {
        if entry.name.ends_with('/') {
            continue; // a folder entry some zip tools add
        }
        let key = &entry.name[..entry.name.len() - NPY_SUFFIX.len()];
        let size = usize::try_from(entry.uncompressed_size)
            .map_err(|_| fail(&entry.name, "too large for this machine".into()))?;
        let header = match entry.method {
            Method::Stored => parse_header(archive.raw(entry)),
            Method::Deflated => {
                check_ratio(entry).map_err(|m| fail(&entry.name, m))?;
                inflate_prefix(archive.raw(entry), size).and_then(|p| parse_header(&p))
            }
        }
        .map_err(|m| fail(&entry.name, m))?;
        let expected = header.data_offset.checked_add(header.data_len);
        if expected != Some(size) {
            return Err(fail(
                &entry.name,
                format!(
                    "shape {:?} of {} needs {} bytes after the {}-byte header, the member has {}",
                    header.shape,
                    header.dtype.torch_name(),
                    header.data_len,
                    header.data_offset,
                    size.saturating_sub(header.data_offset)
                ),
            ));
        }
        let bytes = if entry.method == Method::Stored && !header.swapped {
            entry.data.start + header.data_offset..entry.data.end
        } else {
            // A range of its own past the end of the file, 64-byte aligned like torch's records.
            let start = virtual_end.div_ceil(64).saturating_mul(64);
            let end = start.saturating_add(header.data_len);
            virtual_end = end;
            unmapped.push(Unmapped {
                storage: storages.len(),
                method: entry.method,
                raw: entry.data.clone(),
                size,
                data_offset: header.data_offset,
                crc32: entry.crc32,
                swap: if header.swapped {
                    swap_width(header.dtype)
                } else {
                    0
                },
            });
            start..end
        };
        tensors.push(Tensor {
            name: key.to_owned(),
            dtype: header.dtype,
            stride: strides(&header.shape, header.fortran_order),
            shape: header.shape,
            storage: storages.len(),
            storage_offset: 0,
            requires_grad: false,
            is_parameter: false,
        });
        storages.push(Storage {
            key: entry.name.clone(),
            dtype: header.dtype,
            bytes,
        });
    }
    if tensors.is_empty() {
        return Err(Error::checkpoint(path, "npz archive without arrays"));
    }
    Ok(Contents {
        format: Format::Npz,
        storages,
        tensors,
        unmapped,
    })
}

fn check_ratio(entry: &Entry) -> std::result::Result<(), String> {
    let compressed = entry.data.len() as u64;
    if entry.uncompressed_size > compressed.saturating_mul(MAX_DEFLATE_RATIO) + 1024 {
        return Err(format!(
            "claims to inflate {compressed} bytes to {}, more than deflate can (damaged zip)",
            entry.uncompressed_size
        ));
    }
    Ok(())
}

/// The first bytes of a deflated member, enough for its header.
fn inflate_prefix(raw: &[u8], size: usize) -> std::result::Result<Vec<u8>, String> {
    let mut out = vec![0u8; size.min(12 + MAX_HEADER)];
    match decompress_slice_iter_to_slice(&mut out, std::iter::once(raw), false, true) {
        Ok(n) => out.truncate(n),
        Err(TINFLStatus::HasMoreOutput) => {} // `out` is full: the header is in it
        Err(status) => return Err(format!("cannot be inflated: {status:?}")),
    }
    Ok(out)
}

/// The elements of an unmapped member, in this machine's byte order, written into `out` (exactly
/// its elements' length).
pub fn elements(member: &Unmapped, file: &[u8], out: &mut [u8]) -> std::result::Result<(), String> {
    let raw = file
        .get(member.raw.clone())
        .ok_or_else(|| "the member's bytes lie outside the file".to_string())?;
    if out.len().checked_add(member.data_offset) != Some(member.size) {
        return Err("output size does not match the member".into());
    }
    let whole = match member.method {
        Method::Stored if raw.len() == member.size => raw,
        Method::Stored => return Err("output size does not match the member".into()),
        Method::Deflated => &inflate(member, raw)?,
    };
    let crc = crc32fast::hash(whole);
    if crc != member.crc32 {
        return Err(format!(
            "is damaged: its CRC-32 is {crc:08x}, the directory says {:08x}",
            member.crc32
        ));
    }
    out.copy_from_slice(&whole[member.data_offset..]);
    if member.swap > 1 {
        for value in out.chunks_exact_mut(member.swap) {
            value.reverse();
        }
    }
    Ok(())
}

/// The whole deflated member `raw`, inflated to exactly the size the directory says.
fn inflate(member: &Unmapped, raw: &[u8]) -> std::result::Result<Vec<u8>, String> {
    let mut whole = vec![0u8; member.size];
    match decompress_slice_iter_to_slice(&mut whole, std::iter::once(raw), false, true) {
        Ok(n) if n == member.size => {}
        Ok(n) => {
            return Err(format!(
                "inflates to {n} bytes, the directory says {}",
                member.size
            ))
        }
        Err(TINFLStatus::HasMoreOutput) => {
            return Err(format!(
                "inflates to more than the {} bytes the directory says",
                member.size
            ))
        }
        Err(status) => return Err(format!("cannot be inflated: {status:?}")),
    }
    Ok(whole)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::zip::tests::build;

    fn npy(header: &str, data: &[u8]) -> Vec<u8> {
        let mut out = NPY_MAGIC.to_vec();
        out.extend_from_slice(&[1, 0]);
        let mut text = header.to_string();
        while !(10 + text.len() + 1).is_multiple_of(64) {
            text.push(' ');
        }
        text.push('\n');
        out.extend_from_slice(&(text.len() as u16).to_le_bytes());
        out.extend_from_slice(text.as_bytes());
        out.extend_from_slice(data);
        out
    }

    fn floats(values: &[f32]) -> Vec<u8> {
        values.iter().flat_map(|v| v.to_le_bytes()).collect()
    }

    #[test]
    fn parses_headers_numpy_writes() {
        let h = parse_header(&npy(
            "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }",
            &[],
        ))
        .unwrap();
        assert_eq!(
            (
                h.dtype,
                h.fortran_order,
                h.shape.clone(),
                h.data_offset,
                h.data_len
            ),
            (Dtype::F32, false, vec![2, 3], 128, 24)
        );
        for (text, shape) in [
            (
                "{'descr': '|u1', 'fortran_order': True, 'shape': (), }",
                vec![],
            ),
            (
                "{'descr': '<i8', 'fortran_order': False, 'shape': (7,), }",
                vec![7],
            ),
            (
                "{\"descr\":\"<f2\",\"shape\":(1,2,3),\"fortran_order\":False}",
                vec![1, 2, 3],
            ),
            (
                "{'descr': '|b1', 'fortran_order': False, 'shape': (0, 5)}",
                vec![0, 5],
            ),
        ] {
            assert_eq!(
                parse_header(&npy(text, &[])).unwrap().shape,
                shape,
                "{text}"
            );
        }
    }

    #[test]
    fn refuses_bad_headers() {
        for text in [
            "{'descr': '|O', 'fortran_order': False, 'shape': (1,), }",
            "{'descr': '<V2', 'fortran_order': False, 'shape': (1,), }",
            "{'descr': 'f4', 'fortran_order': False, 'shape': (1,), }",
            "{'descr': '!f4', 'fortran_order': False, 'shape': (1,), }",
            "{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (1,), }",
            "{'descr': '<f4', 'shape': (1,), }",
            "{'descr': '<f4', 'fortran_order': 0, 'shape': (1,), }",
            "{'descr': '<f4', 'fortran_order': False, 'shape': (-1,), }",
            "{'descr': '<f4', 'fortran_order': False, 'shape': (1,), 'x': 1}",
            "{'descr': '<f4', 'descr': '<f4', 'fortran_order': False, 'shape': (1,)}",
            "{'descr': '<f4', 'fortran_order': False, 'shape': (99999999999, 99999999999, 99999999999)}",
            "{'descr': '<f4', 'fortran_order': False, 'shape': (1,)} junk",
            "{'descr': '<f4', 'fortran_order': False, 'shape': (1,",
            "",
        ] {
            assert!(parse_header(&npy(text, &[])).is_err(), "{text}");
        }
        assert!(parse_header(b"\x93NUMPY\x09\x00").is_err());
        assert!(parse_header(b"PK\x03\x04").is_err());
    }

    #[test]
    fn every_truncation_and_byte_flip_is_an_error_or_a_header() {
        let bytes = npy(
            "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }",
            &[],
        );
        for len in 0..bytes.len() - 1 {
            let _ = parse_header(&bytes[..len]);
        }
        for at in 0..bytes.len() {
            for value in [0u8, b'(', b'\'', 0xFF, b'9'] {
                let mut bad = bytes.clone();
                bad[at] = value;
                let _ = parse_header(&bad);
            }
        }
    }

    #[test]
    fn reads_a_stored_npz() {
        let a = npy(
            "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 2), }",
            &floats(&[1.0, 2.0, 3.0, 4.0]),
        );
        let b = npy(
            "{'descr': '<f4', 'fortran_order': True, 'shape': (2, 3), }",
            &floats(&[0.0; 6]),
        );
        let bytes = build(&[("params/w.npy", &a), ("b.npy", &b)], false);
        let archive = Archive::new(&bytes).unwrap();
        assert!(looks_like_npz(&archive));
        let c = read(Path::new("w.npz"), &archive, bytes.len()).unwrap();
        assert!(c.unmapped.is_empty());
        assert_eq!(c.format, Format::Npz);
        assert_eq!(c.tensors[0].name, "params/w");
        assert_eq!(c.tensors[1].stride, vec![1, 2]);
        let s = &c.storages[0];
        assert_eq!(&bytes[s.bytes.clone()], &floats(&[1.0, 2.0, 3.0, 4.0])[..]);
    }

    #[test]
    fn refuses_members_whose_size_disagrees_with_their_shape() {
        let short = npy(
            "{'descr': '<f4', 'fortran_order': False, 'shape': (3,), }",
            &floats(&[1.0, 2.0]),
        );
        let bytes = build(&[("w.npy", &short)], false);
        let archive = Archive::new(&bytes).unwrap();
        let e = read(Path::new("w.npz"), &archive, bytes.len()).unwrap_err();
        assert!(e.to_string().contains("w.npz: npz member w.npy"), "{e}");
    }

    #[test]
    fn inflates_deflated_members() {
        let data = floats(&[1.5; 100]);
        let member = npy(
            "{'descr': '<f4', 'fortran_order': False, 'shape': (100,), }",
            &data,
        );
        let packed = miniz_oxide::deflate::compress_to_vec(&member, 6);
        let d = Unmapped {
            storage: 0,
            method: Method::Deflated,
            raw: 0..packed.len(),
            size: member.len(),
            data_offset: parse_header(&member).unwrap().data_offset,
            crc32: crc32fast::hash(&member),
            swap: 0,
        };
        let mut out = vec![0u8; data.len()];
        elements(&d, &packed, &mut out).unwrap();
        assert_eq!(out, data);
        let damaged = Unmapped {
            crc32: d.crc32 ^ 1,
            ..d.clone()
        };
        let e = elements(&damaged, &packed, &mut out).unwrap_err();
        assert!(e.contains("CRC-32"), "{e}");
        let lying = Unmapped {
            size: member.len() + 4,
            ..d.clone()
        };
        assert!(elements(&lying, &packed, &mut vec![0u8; data.len() + 4]).is_err());
        let short = Unmapped {
            size: member.len() - 4,
            ..d.clone()
        };
        assert!(elements(&short, &packed, &mut vec![0u8; data.len() - 4]).is_err());
        let mut broken = packed.clone();
        broken.truncate(packed.len() / 2);
        assert!(elements(&d, &broken, &mut out).is_err());
    }

    #[test]
    fn byte_swaps_big_endian_members() {
        let values = [1.5f32, -2.25, 3.0e-7];
        let big: Vec<u8> = values.iter().flat_map(|v| v.to_be_bytes()).collect();
        let member = npy(
            "{'descr': '>f4', 'fortran_order': False, 'shape': (3,), }",
            &big,
        );
        let one = npy(
            "{'descr': '>u1', 'fortran_order': False, 'shape': (2,), }",
            &[7, 9],
        );
        let complex: Vec<u8> = [1.0f32, 2.0].iter().flat_map(|v| v.to_be_bytes()).collect();
        let c64 = npy(
            "{'descr': '>c8', 'fortran_order': False, 'shape': (1,), }",
            &complex,
        );
        for deflate in [false, true] {
            let bytes = crate::fuzzing::zip_archive(
                &[("w.npy", &member), ("u.npy", &one), ("c.npy", &c64)],
                deflate,
            );
            let archive = Archive::new(&bytes).unwrap();
            let c = read(Path::new("w.npz"), &archive, bytes.len()).unwrap();
            assert_eq!(c.tensors[0].dtype, Dtype::F32);
            // Single bytes have no order: a stored one stays a range of the file.
            let swaps: Vec<(usize, usize)> =
                c.unmapped.iter().map(|u| (u.storage, u.swap)).collect();
            assert_eq!(
                swaps,
                if deflate {
                    vec![(0, 4), (1, 0), (2, 4)]
                } else {
                    vec![(0, 4), (2, 4)]
                }
            );
            let mut out = vec![0u8; 12];
            elements(&c.unmapped[0], &bytes, &mut out).unwrap();
            assert_eq!(out, floats(&values));
            let last = c.unmapped.last().unwrap();
            let mut out = vec![0u8; 8];
            elements(last, &bytes, &mut out).unwrap();
            assert_eq!(out, floats(&[1.0, 2.0]));
            let mut damaged = bytes.clone();
            let at = c.unmapped[0].raw.end - 1;
            damaged[at] ^= 1;
            let e = elements(&c.unmapped[0], &damaged, &mut [0u8; 12]).unwrap_err();
            assert!(e.contains("CRC-32") || e.contains("inflate"), "{e}");
        }
    }
}
