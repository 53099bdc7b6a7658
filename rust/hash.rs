//! Streaming SHA-256: the digest of downloads (computed while bytes arrive) and of cached files.
//!
//! `sha2` picks the SHA-NI (x86) or ARMv8 SHA instructions at run time, so hashing runs at the
//! speed of OpenSSL's (hashlib's) implementation; the file hash reads big blocks with the GIL
//! released and looks for Ctrl-C between blocks.

use crate::error::{Error, Result};
use pyo3::prelude::*;
use pyo3::types::PyBytes;
use sha2::{Digest, Sha256 as Sha256Core};
use std::io::ErrorKind;
use std::path::Path;

/// How much of a file is hashed between two looks at the caller (signals, progress).
const FILE_BLOCK: usize = 8 << 20;

/// An incremental SHA-256 that also counts the bytes it has seen.
#[derive(Clone, Default)]
pub struct Hasher {
    inner: Sha256Core,
    len: u64,
}

impl Hasher {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn update(&mut self, bytes: &[u8]) {
        self.inner.update(bytes);
        self.len += bytes.len() as u64;
    }

    /// Bytes hashed so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn finish(self) -> [u8; 32] {
        self.inner.finalize().into()
    }
}

/// Lower-case hexadecimal, as `hashlib`'s `hexdigest()`.
pub fn to_hex(digest: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(digest.len() * 2);
    for byte in digest {
        out.push(char::from(HEX[usize::from(byte >> 4)]));
        out.push(char::from(HEX[usize::from(byte & 15)]));
    }
    out
}

/// Parses 64 hexadecimal digits (either case) into a digest.
pub fn parse_hex(text: &str) -> Option<[u8; 32]> {
    let bytes = text.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in bytes.chunks_exact(2).enumerate() {
        let hi = char::from(pair[0]).to_digit(16)?;
        let lo = char::from(pair[1]).to_digit(16)?;
        out[i] = u8::try_from(hi * 16 + lo).ok()?;
    }
    Some(out)
}

/// Feeds the first `limit` bytes of `path` (all of it when `None`) into `hasher`, calling `between`
/// after each block so the caller can stop early (Ctrl-C) or report progress.
///
/// The file is memory-mapped and hashed in place: no copy into a buffer, which is what lets a
/// file hash keep up with `hashlib` hashing bytes already in memory.
pub fn hash_file_into(
    path: &Path,
    limit: Option<u64>,
    hasher: &mut Hasher,
    between: &mut dyn FnMut(u64) -> Result<()>,
) -> Result<()> {
    let file = crate::files::open_for_reading(path).map_err(|e| Error::io(path, e))?;
    let meta = file.metadata().map_err(|e| Error::io(path, e))?;
    if !meta.is_file() {
        return Err(Error::io(
            path,
            std::io::Error::new(ErrorKind::InvalidInput, "not a regular file"),
        ));
    }
    let size = meta.len();
    let want = limit.unwrap_or(size);
    if want > size {
        return Err(Error::io(
            path,
            std::io::Error::new(
                ErrorKind::UnexpectedEof,
                format!("file has {size} bytes, expected at least {want}"),
            ),
        ));
    }
    if want == 0 {
        return Ok(());
    }
    let len = usize::try_from(want).map_err(|_| {
        Error::io(
            path,
            std::io::Error::new(
                ErrorKind::InvalidInput,
                "file too large to map on this platform",
            ),
        )
    })?;
    // SAFETY: the map is read-only and private to this call. A concurrent truncation by another
    // process could fault (SIGBUS); the files hashed here are held under the download lock or are
    // finished downloads, which clipfast never rewrites in place.
    let map = unsafe { memmap2::MmapOptions::new().len(len).map(&file) }
        .map_err(|e| Error::io(path, e))?;
    let _ = map.advise(memmap2::Advice::Sequential);
    let mut done: u64 = 0;
    for block in map.chunks(FILE_BLOCK) {
        hasher.update(block);
        done += block.len() as u64;
        between(done)?;
    }
    Ok(())
}

/// `hashlib.sha256`-like incremental hasher (`update`, `digest`, `hexdigest`, `copy`).
#[pyclass(name = "Sha256", module = "clipfast._native")]
#[derive(Clone, Default)]
pub struct PySha256 {
    hasher: Hasher,
}

#[pymethods]
impl PySha256 {
    #[new]
    #[pyo3(signature = (data=None))]
    fn new(py: Python<'_>, data: Option<&[u8]>) -> Self {
        let mut this = Self::default();
        if let Some(data) = data {
            this.update(py, data);
        }
        this
    }

    /// Adds bytes; large buffers are hashed with the GIL released.
    fn update(&mut self, py: Python<'_>, data: &[u8]) {
        if data.len() >= 1 << 16 {
            let hasher = &mut self.hasher;
            py.detach(|| hasher.update(data));
        } else {
            self.hasher.update(data);
        }
    }

    fn digest<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.hasher.clone().finish())
    }

    fn hexdigest(&self) -> String {
        to_hex(&self.hasher.clone().finish())
    }

    fn copy(&self) -> Self {
        self.clone()
    }

    /// Number of bytes hashed so far.
    #[getter]
    fn length(&self) -> u64 {
        self.hasher.len()
    }
}

/// The SHA-256 of a whole file, as lower-case hex. The GIL is released while reading; Ctrl-C is
/// looked for between 8 MiB blocks.
#[pyfunction]
pub fn sha256_file(py: Python<'_>, path: std::path::PathBuf) -> PyResult<String> {
    let mut hasher = Hasher::new();
    py.detach(|| {
        hash_file_into(&path, None, &mut hasher, &mut |_| {
            // Look at signals every block; a pending KeyboardInterrupt stops the loop.
            Python::attach(|py| py.check_signals()).map_err(Error::Python)
        })
    })?;
    Ok(to_hex(&hasher.finish()))
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PySha256>()?;
    m.add_function(wrap_pyfunction!(sha256_file, m)?)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex_of(bytes: &[u8]) -> String {
        let mut h = Hasher::new();
        h.update(bytes);
        to_hex(&h.finish())
    }

    #[test]
    fn known_vectors() {
        // FIPS 180-2 / NIST examples.
        assert_eq!(
            hex_of(b""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(
            hex_of(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(
            hex_of(b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"),
            "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"
        );
        let million_a = vec![b'a'; 1_000_000];
        assert_eq!(
            hex_of(&million_a),
            "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0"
        );
    }

    #[test]
    fn incremental_equals_one_shot() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i * 7 + 3) as u8).collect();
        let mut h = Hasher::new();
        for piece in data.chunks(777) {
            h.update(piece);
        }
        assert_eq!(h.len(), data.len() as u64);
        assert_eq!(to_hex(&h.finish()), hex_of(&data));
    }

    #[test]
    fn hex_round_trip_and_rejects() {
        let hex = "BA7816BF8F01CFEA414140DE5DAE2223B00361A396177A9CB410FF61F20015AD";
        let parsed = parse_hex(hex).map(|d| to_hex(&d));
        assert_eq!(parsed.as_deref(), Some(hex.to_lowercase().as_str()));
        assert!(parse_hex("abc").is_none());
        assert!(parse_hex(&"g".repeat(64)).is_none());
    }

    #[test]
    fn file_prefix_hash() {
        let dir = std::env::temp_dir().join(format!("clipfast-hash-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("data.bin");
        let data: Vec<u8> = (0..20_000_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        let mut whole = Hasher::new();
        hash_file_into(&path, None, &mut whole, &mut |_| Ok(())).unwrap();
        assert_eq!(to_hex(&whole.finish()), hex_of(&data));
        let mut prefix = Hasher::new();
        hash_file_into(&path, Some(12_345_678), &mut prefix, &mut |_| Ok(())).unwrap();
        assert_eq!(to_hex(&prefix.finish()), hex_of(&data[..12_345_678]));
        let mut too_long = Hasher::new();
        assert!(hash_file_into(&path, Some(30_000_000), &mut too_long, &mut |_| Ok(())).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
