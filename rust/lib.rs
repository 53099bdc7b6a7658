//! `clipfast._native`: the Rust core of clipfast.
//!
//! This file only registers what the concept modules export; each module owns a
//! `register` function that adds its functions and classes to the Python module.

pub mod checkpoint;
pub mod download;
pub mod error;
pub mod files;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing;
pub mod hash;
pub mod image;
pub mod parallel;
pub mod pickle;
pub mod tokenizer;
pub mod zip;

use pyo3::prelude::*;

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    checkpoint::register(m)?;
    download::register(m)?;
    hash::register(m)?;
    image::register(m)?;
    tokenizer::register(m)?;
    Ok(())
}
