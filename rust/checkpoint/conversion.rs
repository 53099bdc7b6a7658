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
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

/// A conversion running on its own threads; `wait()` joins them and raises what they met.
#[pyclass(frozen, module = "clipfast._native")]
pub struct Conversion {
    /// Taken by the first `wait()`; the lock is held while it joins, so that a `wait()` from
    /// another thread meanwhile returns only once the conversion has ended.
    worker: Mutex<Option<JoinHandle<Result<()>>>>,
    /// The tensor whose memory the worker writes: held (so not freed) until it has ended.
    destination: Mutex<Option<Py<PyAny>>>,
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
            worker: Mutex::new(Some(worker)),
            destination: Mutex::new(Some(destination)),
        })
    }
}

#[pymethods]
impl Conversion {
    /// Waits for the conversion to end (GIL released) and raises its error, if any. Later calls,
    /// and calls from other threads meanwhile, return once it has ended, without the error.
    fn wait(&self, py: Python<'_>) -> PyResult<()> {
        let outcome = py.detach(|| {
            // A poisoned lock only means a waiter panicked; the handle inside is still sound.
            let mut worker = self.worker.lock().unwrap_or_else(|e| e.into_inner());
            worker.take().map(|w| w.join())
        });
        let Some(outcome) = outcome else {
            return Ok(());
        };
        let released = self
            .destination
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        drop(released);
        match outcome {
            Ok(result) => result.map_err(Into::into),
            Err(_) => Err(PyRuntimeError::new_err("the conversion thread panicked")),
        }
    }

    /// Whether the threads have ended (`wait()` then returns at once).
    #[getter]
    fn done(&self) -> bool {
        match self.worker.try_lock() {
            Ok(worker) => worker.as_ref().is_none_or(|w| w.is_finished()),
            Err(_) => false, // a wait() is joining it
        }
    }
}

impl Drop for Conversion {
    /// A conversion dropped unwaited is waited for: its threads write into the destination, which
    /// must outlive them. (They never take the GIL, so waiting with it held cannot deadlock.)
    fn drop(&mut self) {
        let worker = self.worker.get_mut().unwrap_or_else(|e| e.into_inner());
        if let Some(worker) = worker.take() {
            let _ = worker.join();
        }
    }
}
