//! One error type for the crate, mapped onto the exception classes of `clipfast.errors`.
//!
//! The classes are defined in Python (so they can subclass several standard exceptions);
//! Rust imports them by name when it raises.

use pyo3::exceptions::{PyKeyboardInterrupt, PyOSError};
use pyo3::PyErr;
use std::path::{Path, PathBuf};

pyo3::import_exception!(clipfast.errors, CheckpointError);
pyo3::import_exception!(clipfast.errors, UnsafeCheckpointError);
pyo3::import_exception!(clipfast.errors, ChecksumError);
pyo3::import_exception!(clipfast.errors, DownloadError);
pyo3::import_exception!(clipfast.errors, ImageError);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file is not a checkpoint we can read, or is damaged.
    #[error("{}: {msg}", path.display())]
    Checkpoint { path: PathBuf, msg: String },
    /// The pickle names something that is not a tensor where a weight must be.
    #[error("{}: {msg}", path.display())]
    Unsafe { path: PathBuf, msg: String },
    /// Reading or writing a file failed.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The bytes do not hash to what was expected.
    #[error("{}: {msg}", path.display())]
    Checksum { path: PathBuf, msg: String },
    /// The network transfer failed.
    #[error("{url}: {msg}")]
    Download { url: String, msg: String },
    /// An image could not be decoded or processed.
    #[error("{msg}")]
    Image { msg: String },
    /// Ctrl-C arrived while the GIL was released.
    #[error("interrupted")]
    Interrupted,
    /// A Python callback (progress, signal handler) raised while Rust was working: re-raised as is.
    #[error("{0}")]
    Python(PyErr),
}

impl Error {
    pub fn checkpoint(path: &Path, msg: impl Into<String>) -> Self {
        Error::Checkpoint {
            path: path.to_path_buf(),
            msg: msg.into(),
        }
    }
    pub fn unsafe_global(path: &Path, msg: impl Into<String>) -> Self {
        Error::Unsafe {
            path: path.to_path_buf(),
            msg: msg.into(),
        }
    }
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        Error::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<Error> for PyErr {
    fn from(err: Error) -> PyErr {
        let text = err.to_string();
        match err {
            Error::Checkpoint { .. } => CheckpointError::new_err(text),
            Error::Unsafe { .. } => UnsafeCheckpointError::new_err(text),
            Error::Io { source, path } => {
                // Keep errno so Python sees FileNotFoundError, IsADirectoryError, ...
                let errno = source.raw_os_error().unwrap_or(0);
                PyOSError::new_err((errno, source.to_string(), path.display().to_string()))
            }
            Error::Checksum { .. } => ChecksumError::new_err(text),
            Error::Download { .. } => DownloadError::new_err(text),
            Error::Image { .. } => ImageError::new_err(text),
            Error::Interrupted => PyKeyboardInterrupt::new_err(text),
            Error::Python(err) => err,
        }
    }
}
