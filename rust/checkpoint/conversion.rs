//! A conversion that runs on its own threads while Python goes on: `CheckpointReader.convert_into`
//! starts it and returns at once; `Conversion.wait()` ends it.
//!
//! `clipfast.load` builds the model, makes the tensors and assigns them while the weights are
//! converted into their (already allocated) memory. Started from Rust, the conversion needs no
//! Python thread, so it does not wait for the GIL of a thread busy building the model (a forced
//! GIL switch waits up to `sys.getswitchinterval()`, 5 ms).

use super::convert::{self, Job};
use crate::error::{Error, Result};
use memmap2::Mmap;
use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use std::fs::File;
use std::path::PathBuf;
use std::sync::Arc;
use std::thread::JoinHandle;

/// A conversion running on its own threads; `wait()` joins them and raises what they met.
#[pyclass(module = "clipfast._native")]
pub struct Conversion {
    worker: Option<JoinHandle<Result<()>>>,
    /// The tensor whose memory the worker writes: held (so not freed) until it has ended.
    destination: Option<Py<PyAny>>,
}

impl Conversion {
    /// Starts converting `jobs` (checked by `convert::run` before any byte is written) into
    /// `destination`, whose memory they address.
    pub fn start(
        path: PathBuf,
        file: Arc<File>,
        map: Arc<Mmap>,
        jobs: Vec<Job>,
        destination: Py<PyAny>,
    ) -> Result<Self> {
        let worker = std::thread::Builder::new()
            .name("clipfast-convert".into())
            .spawn({
                let path = path.clone();
                move || convert::run(&path, &file, &map, &jobs)
            })
            .map_err(|e| Error::io(&path, e))?;
        Ok(Conversion {
            worker: Some(worker),
            destination: Some(destination),
        })
    }
}

#[pymethods]
impl Conversion {
    /// Waits for the conversion to end (GIL released) and raises its error, if any. Later calls
    /// return at once.
    fn wait(&mut self, py: Python<'_>) -> PyResult<()> {
        let Some(worker) = self.worker.take() else {
            return Ok(());
        };
        let outcome = py.detach(|| worker.join());
        self.destination = None;
        match outcome {
            Ok(result) => result.map_err(Into::into),
            Err(_) => Err(PyRuntimeError::new_err("the conversion thread panicked")),
        }
    }

    /// Whether the threads have ended (`wait()` then returns at once).
    #[getter]
    fn done(&self) -> bool {
        self.worker.as_ref().is_none_or(|w| w.is_finished())
    }
}

impl Drop for Conversion {
    /// A conversion dropped unwaited is waited for: its threads write into the destination, which
    /// must outlive them. (They never take the GIL, so waiting with it held cannot deadlock.)
    fn drop(&mut self) {
        if let Some(worker) = self.worker.take() {
            let _ = worker.join();
        }
    }
}
