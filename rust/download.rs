//! Verified, resumable, atomic downloads: the Python face of `download/`.
//!
//! `fetch` moves the bytes with the GIL released; every `tick` (100 ms by default) it takes the
//! GIL back briefly to look for Ctrl-C and to call the progress callback. `FileLock` is the
//! cross-process lock the caller holds around it.

mod backoff;
mod disk;
pub(crate) mod engine;
pub(crate) mod http;
mod lock;
pub(crate) mod partial;

pub use engine::{fetch as fetch_file, Observer, Options, Report};

use crate::error::{Error, Result};
use crate::hash::parse_hex;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Calls back into Python: signals first (Ctrl-C), then the progress callback.
struct PyObserver<'a> {
    progress: Option<&'a Py<PyAny>>,
}

impl Observer for PyObserver<'_> {
    fn tick(&mut self, done: u64, total: Option<u64>) -> Result<()> {
        Python::attach(|py| {
            py.check_signals()?;
            if let Some(callback) = self.progress {
                callback.call1(py, (done, total))?;
            }
            Ok(())
        })
        .map_err(Error::Python)
    }
}

/// What a finished `fetch` did.
#[pyclass(frozen, get_all, module = "clipfast._native")]
pub struct FetchReport {
    /// SHA-256 of the file, lower-case hex.
    sha256: String,
    /// Size of the file in bytes.
    size: u64,
    /// Body bytes received over the network by this call.
    transferred: u64,
    /// Length of an earlier partial file that this call resumed from (0 when it started fresh).
    resumed_from: u64,
    /// HTTP tries made (1 when nothing failed).
    attempts: u32,
}

#[pymethods]
impl FetchReport {
    fn __repr__(&self) -> String {
        format!(
            "FetchReport(sha256='{}', size={}, transferred={}, resumed_from={}, attempts={})",
            self.sha256, self.size, self.transferred, self.resumed_from, self.attempts
        )
    }
}

fn seconds(name: &str, value: f64) -> PyResult<Duration> {
    Duration::try_from_secs_f64(value).map_err(|_| {
        PyValueError::new_err(format!(
            "{name} must be a non-negative number of seconds, got {value}"
        ))
    })
}

/// Downloads `url` to `dest` through `<dest>.part`, resuming an earlier partial file when the
/// server's validator allows, retrying with backoff, and renaming to `dest` only once the SHA-256
/// matches `sha256` (when given). The caller must hold `FileLock(dest + ".lock")`.
#[pyfunction]
#[pyo3(signature = (
    url, dest, sha256=None, progress=None, *, expected_size=None, connect_timeout=30.0,
    read_timeout=60.0, retries=5, backoff=1.0, max_backoff=30.0, tick_interval=0.1, min_rate=1024
))]
#[allow(clippy::too_many_arguments)]
pub fn fetch(
    py: Python<'_>,
    url: &str,
    dest: PathBuf,
    sha256: Option<&str>,
    progress: Option<Py<PyAny>>,
    expected_size: Option<u64>,
    connect_timeout: f64,
    read_timeout: f64,
    retries: u32,
    backoff: f64,
    max_backoff: f64,
    tick_interval: f64,
    min_rate: u64,
) -> PyResult<FetchReport> {
    let expected = match sha256 {
        Some(text) => Some(parse_hex(text.trim()).ok_or_else(|| {
            PyValueError::new_err(format!(
                "sha256 must be 64 hexadecimal digits, got {text:?}"
            ))
        })?),
        None => None,
    };
    let options = Options {
        connect_timeout: seconds("connect_timeout", connect_timeout)?,
        read_timeout: seconds("read_timeout", read_timeout)?,
        retries,
        backoff: seconds("backoff", backoff)?,
        max_backoff: seconds("max_backoff", max_backoff)?,
        expected_size,
        tick_interval: seconds("tick_interval", tick_interval)?.max(Duration::from_millis(1)),
        min_rate,
    };
    let mut observer = PyObserver {
        progress: progress.as_ref(),
    };
    let report = py.detach(|| fetch_file(url, &dest, expected, &options, &mut observer))?;
    Ok(FetchReport {
        sha256: report.sha256,
        size: report.size,
        transferred: report.transferred,
        resumed_from: report.resumed_from,
        attempts: report.attempts,
    })
}

/// An exclusive cross-process lock (`flock`) on `path`, created if needed and never deleted.
/// Use as a context manager; waiting releases the GIL and stops on Ctrl-C.
#[pyclass(name = "FileLock", module = "clipfast._native")]
pub struct PyFileLock {
    inner: lock::FileLock,
}

#[pymethods]
impl PyFileLock {
    #[new]
    fn new(path: PathBuf) -> PyResult<Self> {
        Ok(Self {
            inner: lock::FileLock::open(&path)?,
        })
    }

    /// Waits for the lock (at most `timeout` seconds when given); True once held.
    #[pyo3(signature = (timeout=None, poll_interval=0.05))]
    fn acquire(
        &mut self,
        py: Python<'_>,
        timeout: Option<f64>,
        poll_interval: f64,
    ) -> PyResult<bool> {
        let deadline = match timeout {
            Some(t) => Some(Instant::now() + seconds("timeout", t)?),
            None => None,
        };
        let poll = seconds("poll_interval", poll_interval)?.max(Duration::from_millis(1));
        loop {
            if self.inner.try_lock()? {
                return Ok(true);
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Ok(false);
            }
            py.detach(|| std::thread::sleep(poll));
            py.check_signals()?;
        }
    }

    fn release(&mut self) -> PyResult<()> {
        Ok(self.inner.unlock()?)
    }

    #[getter]
    fn locked(&self) -> bool {
        self.inner.is_held()
    }

    #[getter]
    fn path(&self) -> PathBuf {
        self.inner.path().to_path_buf()
    }

    fn __enter__(mut slf: PyRefMut<'_, Self>) -> PyResult<PyRefMut<'_, Self>> {
        let py = slf.py();
        slf.acquire(py, None, 0.05)?;
        Ok(slf)
    }

    #[pyo3(signature = (*_args))]
    fn __exit__(&mut self, _args: &Bound<'_, pyo3::types::PyTuple>) -> PyResult<bool> {
        self.release()?;
        Ok(false)
    }
}

/// Bytes free for an unprivileged writer in the file system holding `path`.
#[pyfunction]
pub fn free_disk_bytes(path: PathBuf) -> PyResult<u64> {
    Ok(disk::free_bytes(&path)?)
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<FetchReport>()?;
    m.add_class::<PyFileLock>()?;
    m.add_function(wrap_pyfunction!(fetch, m)?)?;
    m.add_function(wrap_pyfunction!(free_disk_bytes, m)?)?;
    Ok(())
}
