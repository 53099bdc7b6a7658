//! Checkpoint files -> named tensors described by where their bytes lie in the file.
//!
//! Formats: `torch.save` zip archives, TorchScript archives (what `torch.jit.load(p).state_dict()`
//! gives), and safetensors. Nothing is copied here: each tensor is its dtype, shape, stride,
//! storage offset and the byte range of its storage in the file, so Python can view one mapping of
//! the file without a copy, or ask `convert` to fill owned buffers in parallel.

mod convert;
mod dtype;
mod safetensors;
mod torch_pickle;
mod torchscript;

pub use dtype::Dtype;

use crate::error::{Error, Result};
use crate::pickle;
use crate::zip::{self, Archive};
use memmap2::Mmap;
use pyo3::prelude::*;
use std::fs::File;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// Which kind of file a checkpoint is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    TorchSave,
    TorchScript,
    Safetensors,
}

impl Format {
    pub fn name(self) -> &'static str {
        match self {
            Format::TorchSave => "torch.save",
            Format::TorchScript => "torchscript",
            Format::Safetensors => "safetensors",
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
    let mut rebuilder = torch_pickle::Rebuilder::new(path, &pickle, &archive, &root);
    if torchscript::is_script_module(&pickle, pickle.root) {
        let classes = torchscript::read_classes(path, &archive, &root, MAX_CODE_BYTES)?;
        let tensors = torchscript::state_dict(&mut rebuilder, &classes)?;
        Ok(Contents {
            format: Format::TorchScript,
            storages: rebuilder.into_storages(),
            tensors,
        })
    } else {
        let tensors = rebuilder.state_dict()?;
        Ok(Contents {
            format: Format::TorchSave,
            storages: rebuilder.into_storages(),
            tensors,
        })
    }
}

/// Opens and maps `path` read-only, with errors that name it.
pub fn map_file(path: &Path) -> Result<Mmap> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
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
    unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))
}

/// A checkpoint opened for reading: its map and its parsed layout.
#[pyclass(frozen, module = "clipfast._native")]
pub struct CheckpointReader {
    path: PathBuf,
    map: Mmap,
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
/// `(src_start, src_end, src_dtype, dst_address, dst_nbytes, dst_dtype)`.
type JobRow = (usize, usize, String, usize, usize, String);

#[pymethods]
impl CheckpointReader {
    /// Maps and parses the checkpoint at `path` (the GIL is released meanwhile).
    #[new]
    fn new(py: Python<'_>, path: PathBuf) -> PyResult<Self> {
        let (map, contents) = py.detach(|| -> Result<_> {
            let map = map_file(&path)?;
            let contents = read(&path, &map)?;
            Ok((map, contents))
        })?;
        Ok(CheckpointReader {
            path,
            map,
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

    /// Fills destination buffers from byte ranges of the file, converting dtypes, in parallel
    /// with the GIL released, dropping source pages from the map once converted.
    ///
    /// Each job is `(src_start, src_end, src_dtype, dst_address, dst_nbytes, dst_dtype)`.
    ///
    /// # Safety contract (private API, called by `clipfast.checkpoint` only)
    /// `dst_address` must be the start of `dst_nbytes` writable bytes, aligned for `dst_dtype`,
    /// that stay alive and untouched by anyone else until this call returns, and no two jobs may
    /// overlap in their destinations.
    fn convert(&self, py: Python<'_>, jobs: Vec<JobRow>) -> PyResult<()> {
        let mut parsed = Vec::with_capacity(jobs.len());
        for (start, end, src, dst, dst_len, dst_dtype) in jobs {
            let src_dtype = Dtype::from_torch_name(&src)
                .ok_or_else(|| Error::checkpoint(&self.path, format!("unknown dtype {src}")))?;
            let dst_dtype = Dtype::from_torch_name(&dst_dtype).ok_or_else(|| {
                Error::checkpoint(&self.path, format!("unknown dtype {dst_dtype}"))
            })?;
            parsed.push(convert::Job {
                src: start..end,
                src_dtype,
                dst_address: dst,
                dst_len,
                dst_dtype,
            });
        }
        py.detach(|| convert::run(&self.path, &self.map, &parsed))?;
        Ok(())
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<CheckpointReader>()?;
    Ok(())
}
