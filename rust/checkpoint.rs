//! Checkpoint files -> named tensors described by where their bytes lie in the file.
//!
//! Formats: `torch.save` zip archives, TorchScript archives (what `torch.jit.load(p).state_dict()`
//! gives), safetensors, and NumPy `.npz` archives (big_vision's checkpoints). Nothing is copied here: each tensor is its dtype, shape, stride,
//! storage offset and the byte range of its storage in the file, so Python can view one mapping of
//! the file without a copy, or ask `convert` to fill owned buffers in parallel.

mod conversion;
mod convert;
mod dtype;
pub mod export;
pub mod npz;
pub(crate) mod safetensors;
mod torch_pickle;
mod torchscript;
mod widen_simd;

pub use conversion::Conversion;
pub use dtype::Dtype;

use crate::error::{Error, Result};
use crate::pickle;
use crate::zip::{self, Archive};
use memmap2::Mmap;
use pyo3::prelude::*;
use pyo3::types::PyByteArray;
use std::fs::File;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Which kind of file a checkpoint is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    TorchSave,
    TorchScript,
    Safetensors,
    Npz,
}

impl Format {
    pub fn name(self) -> &'static str {
        match self {
            Format::TorchSave => "torch.save",
            Format::TorchScript => "torchscript",
            Format::Safetensors => "safetensors",
            Format::Npz => "npz",
        }
    }
}

/// A run of bytes in the file that one or more tensors view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Storage {
    /// The record name (`data/<key>` in zip archives, the tensor name in safetensors).
    pub key: String,
    pub dtype: Dtype,
    pub bytes: Range<usize>,
}

/// One named tensor: a strided view of a storage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tensor {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<i64>,
    pub stride: Vec<i64>,
    /// Index into `Contents::storages`.
    pub storage: usize,
    /// In elements, as torch counts it.
    pub storage_offset: i64,
    pub requires_grad: bool,
    /// Saved as `torch.nn.Parameter` (torch.load gives a Parameter back).
    pub is_parameter: bool,
}

/// What a checkpoint holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Contents {
    pub format: Format,
    pub storages: Vec<Storage>,
    pub tensors: Vec<Tensor>,
    /// `.npz` members stored deflated or in the other byte order: their storages' ranges lie past
    /// the end of the file and their elements come from [`npz::elements`] (empty for every other
    /// format).
    pub unmapped: Vec<npz::Unmapped>,
}

/// Limits for what a hostile file can make us allocate.
const MAX_PICKLE_BYTES: u64 = 1 << 30;
const MAX_CODE_BYTES: u64 = 256 << 20;

/// The magic number the legacy (pre-zip, torch < 1.6) `torch.save` format starts with, as the
/// pickle `\x80\x02\x8a\x0a` + 10 little-endian bytes.
const LEGACY_MAGIC: [u8; 14] = [
    0x80, 0x02, 0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19,
];

/// Reads the tensor layout of the checkpoint in `bytes` (the file at `path`, named in errors).
pub fn read(path: &Path, bytes: &[u8]) -> Result<Contents> {
    if bytes.is_empty() {
        return Err(Error::checkpoint(
            path,
            "the file is empty, not a checkpoint",
        ));
    }
    if zip::looks_like_zip(bytes) {
        return read_zip(path, bytes);
    }
    if safetensors::looks_like_safetensors(bytes) {
        return safetensors::read(path, bytes);
    }
    if bytes.starts_with(npz::NPY_MAGIC) {
        return Err(Error::checkpoint(
            path,
            "a single NumPy array (.npy), not a checkpoint (big_vision checkpoints are .npz archives)",
        ));
    }
    if bytes.starts_with(&LEGACY_MAGIC) {
        return Err(Error::checkpoint(
            path,
            "legacy torch.save format (torch < 1.6, or _use_new_zipfile_serialization=False) is not \
             supported: load it with torch.load(weights_only=True) and save it again with torch.save",
        ));
    }
    if bytes.len() >= 512 && &bytes[257..262] == b"ustar" {
        return Err(Error::checkpoint(
            path,
            "legacy tar-based torch.save format (torch < 0.4) is not supported",
        ));
    }
    let head: String = bytes.iter().take(8).map(|b| format!("{b:02x}")).collect();
    Err(Error::checkpoint(
        path,
        format!(
            "not a checkpoint: neither a torch zip archive, a TorchScript archive nor safetensors \
             (starts with bytes {head})"
        ),
    ))
}

fn read_zip(path: &Path, bytes: &[u8]) -> Result<Contents> {
    let archive = Archive::new(bytes).map_err(|e| Error::checkpoint(path, e.to_string()))?;
    if npz::looks_like_npz(&archive) {
        return npz::read(path, &archive, bytes.len());
    }
    // torch writes every record under one top-level folder: `<root>/data.pkl`.
    let root = archive
        .entries()
        .iter()
        .find_map(|e| {
            let prefix = e.name.strip_suffix("data.pkl")?;
            (prefix.is_empty() || (prefix.ends_with('/') && prefix.matches('/').count() == 1))
                .then(|| prefix.to_owned())
        })
        .ok_or_else(|| {
            Error::checkpoint(
                path,
                "zip archive without a data.pkl record: not a torch checkpoint",
            )
        })?;
    if let Some(order) = archive.get(&format!("{root}byteorder")) {
        let order = archive
            .read(order, 16)
            .map_err(|e| Error::checkpoint(path, e.to_string()))?;
        if &*order != b"little" {
            return Err(Error::checkpoint(
                path,
                format!(
                    "byte order {:?} is not supported (only little-endian checkpoints)",
                    String::from_utf8_lossy(&order)
                ),
            ));
        }
    }
    let pkl_name = format!("{root}data.pkl");
    let pkl_entry = archive
        .get(&pkl_name)
        .ok_or_else(|| Error::checkpoint(path, format!("record {pkl_name} is missing")))?;
    let pkl_bytes = archive
        .read(pkl_entry, MAX_PICKLE_BYTES)
        .map_err(|e| Error::checkpoint(path, format!("{pkl_name}: {e}")))?;
    let pickle = pickle::parse(&pkl_bytes)
        .map_err(|e| Error::checkpoint(path, format!("{pkl_name}: {e}")))?;
    let mut rebuilder =
        torch_pickle::Rebuilder::new(path, &pickle, &archive, &root, pkl_bytes.len());
    if torchscript::is_script_module(&pickle, pickle.root) {
        let classes = torchscript::read_classes(path, &archive, &root, MAX_CODE_BYTES)?;
        let tensors = torchscript::state_dict(&mut rebuilder, &classes)?;
        Ok(Contents {
            format: Format::TorchScript,
            storages: rebuilder.into_storages(),
            tensors,
            unmapped: Vec::new(),
        })
    } else {
        let tensors = rebuilder.state_dict()?;
        Ok(Contents {
            format: Format::TorchSave,
            storages: rebuilder.into_storages(),
            tensors,
            unmapped: Vec::new(),
        })
    }
}

/// Opens and maps `path` read-only, with errors that name it; the open file is returned too
/// (copies of same-dtype tensors read it with `pread` rather than through the map). A FIFO or
/// device is refused as not a regular file, without waiting on it (`files::open_for_reading`).
pub fn map_file(path: &Path) -> Result<(File, Mmap)> {
    let file = crate::files::open_for_reading(path).map_err(|e| Error::io(path, e))?;
    let meta = file.metadata().map_err(|e| Error::io(path, e))?;
    if meta.is_dir() {
        return Err(Error::checkpoint(
            path,
            "is a directory, not a checkpoint file",
        ));
    }
    if !meta.is_file() {
        return Err(Error::checkpoint(path, "is not a regular file"));
    }
    if meta.len() == 0 {
        return Err(Error::checkpoint(
            path,
            "the file is empty, not a checkpoint",
        ));
    }
    // SAFETY: a read-only map; the file may change under us (truncation -> SIGBUS, as with
    // torch.load(mmap=True)), which the documentation states. Every access is bounds-checked
    // against the length the map had when it was made.
    let map = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
    Ok((file, map))
}

/// A checkpoint opened for reading: its map and its parsed layout.
#[pyclass(frozen, module = "clipfast._native")]
pub struct CheckpointReader {
    path: PathBuf,
    // Shared with the threads of a `Conversion`, which may outlive a reader Python let go of.
    file: Arc<File>,
    map: Arc<Mmap>,
    contents: Contents,
}

/// `(key, dtype, start, end)` for Python.
type StorageRow = (String, &'static str, usize, usize);
/// `(name, dtype, shape, stride, storage, storage_offset, requires_grad, is_parameter)`.
type TensorRow = (
    String,
    &'static str,
    Vec<i64>,
    Vec<i64>,
    usize,
    i64,
    bool,
    bool,
);
/// `(src_start, src_end, src_dtype, destination tensor)`.
type JobRow<'py> = (usize, usize, String, Bound<'py, PyAny>);
/// `(src_start, src_end, src_dtype, destination byte offset, destination dtype)`.
type RegionJobRow = (usize, usize, String, usize, String);
/// `(tensor index, output byte offset, output dtype, permutation of the dimensions or None)`.
type PieceRow = (usize, usize, String, Option<Vec<usize>>);

#[pymethods]
impl CheckpointReader {
    /// Maps and parses the checkpoint at `path` (the GIL is released meanwhile).
    #[new]
    fn new(py: Python<'_>, path: PathBuf) -> PyResult<Self> {
        let (file, map, contents) = py.detach(|| -> Result<_> {
            let (file, map) = map_file(&path)?;
            let contents = read(&path, &map)?;
            Ok((file, map, contents))
        })?;
        Ok(CheckpointReader {
            path,
            file: Arc::new(file),
            map: Arc::new(map),
            contents,
        })
    }

    #[getter]
    fn path(&self) -> PathBuf {
        self.path.clone()
    }

    #[getter]
    fn format(&self) -> &'static str {
        self.contents.format.name()
    }

    #[getter]
    fn file_size(&self) -> usize {
        self.map.len()
    }

    /// The descriptor of the open file the reader parsed (None where there is none: Windows).
    /// A map of the file for tensors must come from it, not from the path: another file may
    /// have been renamed over the path since the parse. Valid while the reader lives.
    #[getter]
    fn fileno(&self) -> Option<i32> {
        #[cfg(unix)]
        {
            use std::os::unix::io::AsRawFd;
            Some(self.file.as_raw_fd())
        }
        #[cfg(not(unix))]
        {
            None
        }
    }

    /// `[(key, dtype, start, end)]`: each storage's byte range in the file.
    #[getter]
    fn storages(&self) -> Vec<StorageRow> {
        let rows = self.contents.storages.iter();
        rows.map(|s| {
            (
                s.key.clone(),
                s.dtype.torch_name(),
                s.bytes.start,
                s.bytes.end,
            )
        })
        .collect()
    }

    /// `[(name, dtype, shape, stride, storage, storage_offset, requires_grad, is_parameter)]`.
    #[getter]
    fn tensors(&self) -> Vec<TensorRow> {
        let rows = self.contents.tensors.iter();
        rows.map(|t| {
            (
                t.name.clone(),
                t.dtype.torch_name(),
                t.shape.clone(),
                t.stride.clone(),
                t.storage,
                t.storage_offset,
                t.requires_grad,
                t.is_parameter,
            )
        })
        .collect()
    }

    /// Fills destination tensors from byte ranges of the file, converting dtypes, in parallel
    /// with the GIL released, dropping source pages from the map once converted.
    ///
    /// Each job is `(src_start, src_end, src_dtype, destination)`: `destination` a contiguous CPU
    /// `torch.Tensor` whose dtype is the target and whose element count is the source's. The
    /// tensors are held for the whole call; do not resize them from another thread meanwhile.
    fn convert(&self, py: Python<'_>, jobs: Vec<JobRow<'_>>) -> PyResult<()> {
        let mut parsed = Vec::with_capacity(jobs.len());
        for (start, end, src, dst) in &jobs {
            let src_dtype = self.dtype(src)?;
            let device: String = dst.getattr("device")?.str()?.extract()?;
            let dtype: String = dst.getattr("dtype")?.str()?.extract()?;
            let contiguous: bool = dst.call_method0("is_contiguous")?.extract()?;
            if device != "cpu" || !contiguous {
                return Err(Error::checkpoint(
                    &self.path,
                    "conversion destination must be a contiguous CPU tensor",
                )
                .into());
            }
            let dst_dtype = self.dtype(dtype.strip_prefix("torch.").unwrap_or(&dtype))?;
            parsed.push(convert::Job {
                src: *start..*end,
                src_dtype,
                dst_address: dst.call_method0("data_ptr")?.extract()?,
                dst_len: dst.getattr("nbytes")?.extract()?,
                dst_dtype,
            });
        }
        self.check_disjoint(&parsed)?;
        // `jobs` keeps every destination tensor alive until the conversion has returned.
        py.detach(|| convert::run(&self.path, &self.file, &self.map, &parsed))?;
        drop(jobs);
        Ok(())
    }

    /// Starts filling one destination (a uint8 tensor over the memory the tensors are views of,
    /// whose storage cannot be resized: `torch.frombuffer` of an anonymous map) on threads of its
    /// own and returns at once: `wait()` on the returned `Conversion` ends it. The GIL is not
    /// needed meanwhile.
    ///
    /// Each job is `(src_start, src_end, src_dtype, dst_offset, dst_dtype)`: the source's elements,
    /// converted, are written at `dst_offset` bytes into `destination`. Jobs are checked (inside the
    /// file and the buffer, aligned, not overlapping, a conversion that exists) before any byte is
    /// written; the conversion holds `destination` (so its memory) until it ends.
    fn convert_into(
        &self,
        destination: &Bound<'_, PyAny>,
        jobs: Vec<RegionJobRow>,
    ) -> PyResult<Conversion> {
        let device: String = destination.getattr("device")?.str()?.extract()?;
        let dtype: String = destination.getattr("dtype")?.str()?.extract()?;
        let contiguous: bool = destination.call_method0("is_contiguous")?.extract()?;
        // A storage that can be resized could be freed under the threads (`resize_` from Python).
        let resizable: bool = destination
            .call_method0("untyped_storage")?
            .call_method0("resizable")?
            .extract()?;
        if device != "cpu" || dtype != "torch.uint8" || !contiguous || resizable {
            return Err(Error::checkpoint(
                &self.path,
                "conversion destination must be a contiguous CPU uint8 tensor that cannot be resized",
            )
            .into());
        }
        let base: usize = destination.call_method0("data_ptr")?.extract()?;
        let size: usize = destination.getattr("nbytes")?.extract()?;
        let mut parsed = Vec::with_capacity(jobs.len());
        for (start, end, src, offset, dst) in jobs {
            let src_dtype = self.dtype(&src)?;
            let dst_dtype = self.dtype(&dst)?;
            // The destination holds as many elements as the source (convert::run checks the source
            // is a whole number of them).
            let count = end.saturating_sub(start) / src_dtype.itemsize();
            let dst_len = count.checked_mul(dst_dtype.itemsize());
            let inside = dst_len
                .and_then(|n| offset.checked_add(n))
                .is_some_and(|e| e <= size);
            let (Some(dst_len), true) = (dst_len, inside) else {
                return Err(Error::checkpoint(
                    &self.path,
                    format!("conversion destination at {offset} lies outside the destination of {size} bytes"),
                )
                .into());
            };
            parsed.push(convert::Job {
                src: start..end,
                src_dtype,
                dst_address: base + offset,
                dst_len,
                dst_dtype,
            });
        }
        self.check_disjoint(&parsed)?;
        Ok(Conversion::start(
            self.path.clone(),
            Arc::clone(&self.file),
            Arc::clone(&self.map),
            parsed,
            destination.clone().unbind(),
        )?)
    }

    /// Writes tensors of this checkpoint into the existing file `dest`, whose data section starts
    /// at byte `data_start`: each piece `(tensor, offset, dtype, permutation)` is tensor number
    /// `tensor` (of `tensors`), its dimensions permuted, laid out row-major as `dtype` at `offset`
    /// bytes into the data section. Converts in parallel with the GIL released; checks every piece
    /// before writing (inside the file, aligned, not overlapping, a conversion that exists).
    fn write_into(
        &self,
        py: Python<'_>,
        dest: PathBuf,
        data_start: usize,
        pieces: Vec<PieceRow>,
    ) -> PyResult<()> {
        let mut parsed = Vec::with_capacity(pieces.len());
        for (tensor, dst_offset, dtype, permutation) in pieces {
            parsed.push(export::Piece {
                tensor,
                dst_offset,
                dst_dtype: self.dtype(&dtype)?,
                permutation,
            });
        }
        py.detach(|| -> Result<()> {
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&dest)
                .map_err(|e| Error::io(&dest, e))?;
            // SAFETY: a shared writable map of a file this process just created for this write;
            // nothing else maps or truncates it meanwhile (clipfast.convert owns its temporary name).
            let mut out =
                unsafe { memmap2::MmapMut::map_mut(&file) }.map_err(|e| Error::io(&dest, e))?;
            let Some(data) = out.get_mut(data_start..) else {
                return Err(Error::checkpoint(
                    &dest,
                    "export: the data section starts past the end of the file",
                ));
            };
            export::fill(&self.path, &self.contents, &self.map, data, &parsed)?;
            out.flush().map_err(|e| Error::io(&dest, e))
        })?;
        Ok(())
    }

    /// The elements of storage `storage` when it is an unmapped `.npz` member (deflated or in the
    /// other byte order: its range in `storages` lies past the end of the file), inflated and in
    /// this machine's byte order, in a new bytearray, GIL released.
    fn elements<'py>(&self, py: Python<'py>, storage: usize) -> PyResult<Bound<'py, PyByteArray>> {
        let member = self
            .contents
            .unmapped
            .iter()
            .find(|d| d.storage == storage)
            .ok_or_else(|| {
                Error::checkpoint(
                    &self.path,
                    format!("storage {storage} is not an unmapped npz member"),
                )
            })?;
        let len = member.size - member.data_offset;
        let name = &self.contents.storages[member.storage].key;
        let mut out = vec![0u8; len];
        py.detach(|| npz::elements(member, &self.map, &mut out))
            .map_err(|msg| Error::checkpoint(&self.path, format!("npz member {name}: {msg}")))?;
        Ok(PyByteArray::new(py, &out))
    }
}

impl CheckpointReader {
    /// Destinations must not overlap: each byte has one writer. Empty ones write nothing and are
    /// left out before the comparison of neighbours: one lying inside another destination would
    /// otherwise stand between it and the next, hiding their overlap.
    fn check_disjoint(&self, jobs: &[convert::Job]) -> Result<()> {
        let mut spans: Vec<(usize, usize)> = jobs
            .iter()
            .filter(|j| j.dst_len > 0)
            .map(|j| (j.dst_address, j.dst_address.saturating_add(j.dst_len)))
            .collect();
        spans.sort_unstable();
        if spans.windows(2).any(|w| w[0].1 > w[1].0) {
            return Err(Error::checkpoint(
                &self.path,
                "conversion destinations overlap",
            ));
        }
        Ok(())
    }

    fn dtype(&self, name: &str) -> Result<Dtype> {
        Dtype::from_torch_name(name)
            .ok_or_else(|| Error::checkpoint(&self.path, format!("unknown dtype {name}")))
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<CheckpointReader>()?;
    m.add_class::<Conversion>()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::zip::tests::build;

    /// `{"w": _rebuild_tensor_v2(storage "0" of 4 floats, offset 1, size (2,), stride (1,))}`.
    fn state_dict_pickle() -> Vec<u8> {
        let mut p =
            b"\x80\x02}q\x00(X\x01\x00\x00\x00wctorch._utils\n_rebuild_tensor_v2\n(".to_vec();
        p.extend_from_slice(b"(X\x07\x00\x00\x00storagectorch\nFloatStorage\nX\x01\x00\x00\x000");
        p.extend_from_slice(b"X\x03\x00\x00\x00cpuK\x04tQK\x01K\x02\x85K\x01\x85\x89");
        p.extend_from_slice(b"ccollections\nOrderedDict\n)RtRu.");
        p
    }

    fn archive() -> Vec<u8> {
        let data: Vec<u8> = [1.0f32, 2.0, 3.0, 4.0]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        build(
            &[
                ("a/data.pkl", &state_dict_pickle()),
                ("a/byteorder", b"little"),
                ("a/data/0", &data),
            ],
            false,
        )
    }

    #[test]
    fn reads_a_torch_save_archive() {
        let bytes = archive();
        let c = read(Path::new("f.pt"), &bytes).unwrap();
        assert_eq!(c.format, Format::TorchSave);
        let t = &c.tensors[0];
        assert_eq!(
            (t.name.as_str(), t.dtype, t.storage_offset),
            ("w", Dtype::F32, 1)
        );
        assert_eq!((t.shape.clone(), t.stride.clone()), (vec![2], vec![1]));
        let s = &c.storages[t.storage];
        assert_eq!(&bytes[s.bytes.clone()][..4], &1.0f32.to_le_bytes());
        assert_eq!(s.bytes.len(), 16);
    }

    #[test]
    fn damaged_archives_are_errors_not_panics() {
        let bytes = archive();
        for len in 0..bytes.len() {
            assert!(
                read(Path::new("f.pt"), &bytes[..len]).is_err(),
                "length {len}"
            );
        }
        for at in 0..bytes.len() {
            for value in [0u8, 1, 0x7F, 0x80, 0xFF] {
                let mut bad = bytes.clone();
                bad[at] = value;
                if let Err(e) = read(Path::new("f.pt"), &bad) {
                    assert!(e.to_string().starts_with("f.pt: "), "{e}");
                }
            }
        }
    }

    #[cfg(unix)]
    #[test]
    fn a_fifo_is_refused_without_waiting_for_a_writer() {
        let dir = std::env::temp_dir().join(format!("clipfast-fifo-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let fifo = dir.join("model.pt");
        let _ = std::fs::remove_file(&fifo);
        let c_path = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: `c_path` is a valid NUL-terminated path that outlives the call.
        assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0);
        let (send, receive) = std::sync::mpsc::channel();
        let probe = fifo.clone();
        std::thread::spawn(move || {
            let _ = send.send(map_file(&probe).map(|_| ()).map_err(|e| e.to_string()));
        });
        let outcome = receive.recv_timeout(std::time::Duration::from_secs(10));
        if outcome.is_err() {
            // Unblock the reader's open, so that the test fails instead of hanging.
            let _ = std::fs::OpenOptions::new().write(true).open(&fifo);
        }
        let _ = std::fs::remove_dir_all(&dir);
        let message = outcome.expect("map_file blocked on the FIFO").unwrap_err();
        assert!(
            message.contains("model.pt") && message.contains("not a regular file"),
            "{message}"
        );
    }

    #[test]
    fn legacy_and_unknown_files_are_named() {
        let mut legacy = LEGACY_MAGIC.to_vec();
        legacy.push(b'.');
        let e = read(Path::new("old.pt"), &legacy).unwrap_err().to_string();
        assert!(e.contains("old.pt") && e.contains("legacy"), "{e}");
        let e = read(Path::new("x.bin"), b"hello world")
            .unwrap_err()
            .to_string();
        assert!(e.contains("x.bin") && e.contains("not a checkpoint"), "{e}");
    }
}
