//! Pillow-exact preprocessing (clip's Resize, CenterCrop, RGB, ToTensor, Normalize) in Rust.
//!
//! Python hands over each image as Pillow's own row buffers (through `Image.getim()`) or as packed
//! bytes, plus a lookup table for ToTensor + Normalize and the address of the output tensor.

pub mod batch;
pub mod coeffs;
pub mod crop;
pub mod decode;
pub mod jpeg;
pub mod normalize;
pub mod pipeline;
pub mod pixels;
pub mod resample;
pub mod resample_simd;
pub mod scratch;

use crate::error::Error;
use normalize::{Normalize, OutKind};
use pixels::{Mode, Source};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyCapsule};

fn image_error(msg: impl Into<String>) -> PyErr {
    Error::Image { msg: msg.into() }.into()
}

/// Build the pixel source of one item: a Pillow capsule or packed bytes.
fn source<'a>(
    obj: &'a Bound<'_, PyAny>,
    width: usize,
    height: usize,
    mode: &str,
) -> PyResult<Source<'a>> {
    let mode =
        Mode::parse(mode).ok_or_else(|| image_error(format!("unsupported mode {mode:?}")))?;
    if let Ok(bytes) = obj.cast::<PyBytes>() {
        let data: &'a [u8] = bytes.as_bytes();
        return Source::packed(data, width, height, mode).map_err(image_error);
    }
    if obj.is_instance_of::<PyCapsule>() {
        return pillow_source(obj, width, height, mode);
    }
    Err(image_error(
        "pixels must be bytes or a Pillow image capsule",
    ))
}

#[cfg(target_pointer_width = "64")]
fn pillow_source<'a>(
    obj: &'a Bound<'_, PyAny>,
    width: usize,
    height: usize,
    mode: Mode,
) -> PyResult<Source<'a>> {
    // SAFETY: obj is a capsule (checked above); a name mismatch returns NULL with an exception set.
    let ptr = unsafe { pyo3::ffi::PyCapsule_GetPointer(obj.as_ptr(), c"Pillow Imaging".as_ptr()) };
    if ptr.is_null() {
        return Err(PyErr::fetch(obj.py()));
    }
    let (bands, ps) = mode.pillow_layout();
    // SAFETY: the capsule holds Pillow's ImagingMemoryInstance; the Python caller keeps the image
    // (which owns it) alive and unmodified for the whole call.
    let rows = unsafe { pixels::pillow::rows(ptr as *const u8, width, height, bands, ps) }
        .ok_or_else(|| image_error("unrecognised Pillow image layout"))?;
    Ok(Source {
        rows,
        ps,
        width,
        height,
        mode,
    })
}

#[cfg(not(target_pointer_width = "64"))]
fn pillow_source<'a>(_: &'a Bound<'_, PyAny>, _: usize, _: usize, _: Mode) -> PyResult<Source<'a>> {
    Err(image_error("unrecognised Pillow image layout"))
}

/// Resize + centre-crop one image in its own mode; returns the packed n x n pixels.
#[pyfunction]
#[pyo3(signature = (pixels, width, height, mode, n_px, simd=true))]
fn resize_crop<'py>(
    py: Python<'py>,
    pixels: &Bound<'py, PyAny>,
    width: usize,
    height: usize,
    mode: &str,
    n_px: usize,
    simd: bool,
) -> PyResult<Bound<'py, PyBytes>> {
    let src = source(pixels, width, height, mode)?;
    let out = py.detach(|| {
        let g = crop::Geometry::new(width, height, n_px)?;
        Ok::<_, String>(pipeline::resize_crop_native(&src, &g, simd))
    });
    let out = out.map_err(image_error)?;
    Ok(PyBytes::new(py, &out))
}

fn lut_values<T>(lut: &[u8], size: usize, from: impl Fn(&[u8]) -> T) -> PyResult<Vec<T>> {
    if lut.len() != 768 * size {
        return Err(image_error("lookup table must hold 3 x 256 values"));
    }
    Ok(lut.chunks_exact(size).map(from).collect())
}

/// Preprocess `items` (tuples of pixels, width, height, mode) into the contiguous output tensor
/// at `out_addr` (B x 3 x n x n elements of `kind`). Returns one error message (or None) per item.
/// Mode "png" means the pixels are PNG bytes decoded here (width and height unused); "jpeg" and
/// "jpeg-fast" JPEG bytes decoded with Pillow's libjpeg (see [`use_pillow_libjpeg`]).
#[pyfunction]
#[pyo3(signature = (items, n_px, lut, out_addr, out_len, kind, threads=1, simd=true, max_pixels=None, mean_std=None))]
#[allow(clippy::too_many_arguments)]
fn preprocess_into(
    py: Python<'_>,
    items: Vec<(Bound<'_, PyAny>, usize, usize, String)>,
    n_px: usize,
    lut: &[u8],
    out_addr: usize,
    out_len: usize,
    kind: &str,
    threads: usize,
    simd: bool,
    max_pixels: Option<u64>,
    mean_std: Option<([f64; 3], [f64; 3])>,
) -> PyResult<Vec<Option<String>>> {
    let kind =
        OutKind::parse(kind).ok_or_else(|| image_error(format!("unknown output kind {kind:?}")))?;
    if out_len != items.len() * 3 * n_px * n_px
        || out_addr == 0
        || !out_addr.is_multiple_of(kind.size())
    {
        return Err(image_error("output buffer does not fit the batch"));
    }
    let mut errors = vec![None; items.len()];
    let mut batch = Vec::with_capacity(items.len());
    for (i, (obj, w, h, mode)) in items.iter().enumerate() {
        let encoded = || {
            obj.cast::<PyBytes>()
                .map(|b| b.as_bytes())
                .map_err(|_| image_error("encoded image data must be bytes"))
        };
        let item = if mode == "png" {
            encoded().map(|data| batch::Item::Png { data, max_pixels })
        } else if mode == "jpeg" || mode == "jpeg-fast" {
            // "jpeg-fast": Pillow's draft to twice the output size (width, height unused).
            let scale_for = (mode == "jpeg-fast").then_some(2 * n_px);
            encoded().map(|data| batch::Item::Jpeg {
                data,
                max_pixels,
                scale_for,
            })
        } else {
            source(obj, *w, *h, mode).map(batch::Item::Pixels)
        };
        match item {
            Ok(item) => batch.push(item),
            Err(e) => {
                errors[i] = Some(e.to_string());
                batch.push(batch::Item::Failed);
            }
        }
    }
    // Ctrl-C: the calling thread looks for it after each of its items (taking the GIL back for a
    // moment); the handler's exception (KeyboardInterrupt) is raised once the workers stopped.
    let pending: std::sync::Mutex<Option<PyErr>> = std::sync::Mutex::new(None);
    let ctrl_c = || match Python::attach(|py| py.check_signals()) {
        Ok(()) => false,
        Err(err) => {
            *pending.lock().unwrap_or_else(|e| e.into_inner()) = Some(err);
            true
        }
    };
    let run_errors = match kind {
        OutKind::F32 => {
            let table = lut_values(lut, 4, |b| f32::from_ne_bytes([b[0], b[1], b[2], b[3]]))?;
            // torch rounds the constants to float32 the same way (to nearest).
            let affine = mean_std.and_then(|(mean, std)| {
                normalize::matching_cached(mean.map(|v| v as f32), std.map(|v| v as f32), &table)
            });
            let norm = Normalize {
                lut: &table,
                affine,
            };
            // SAFETY: Python passes the data pointer of a contiguous float32 tensor of out_len
            // elements that it keeps alive and does not touch during this call.
            let out = unsafe { std::slice::from_raw_parts_mut(out_addr as *mut f32, out_len) };
            py.detach(|| batch::run(&batch, n_px, &norm, out, threads, simd, &ctrl_c))
        }
        OutKind::F16 => {
            let table = lut_values(lut, 2, |b| u16::from_ne_bytes([b[0], b[1]]))?;
            // SAFETY: as above, a contiguous float16 tensor (2-byte elements).
            let out = unsafe { std::slice::from_raw_parts_mut(out_addr as *mut u16, out_len) };
            let norm = Normalize::table(&table);
            py.detach(|| batch::run(&batch, n_px, &norm, out, threads, simd, &ctrl_c))
        }
        OutKind::U8 => {
            let table: Vec<u8> = (0..768).map(|i| (i % 256) as u8).collect();
            // SAFETY: as above, a contiguous uint8 tensor.
            let out = unsafe { std::slice::from_raw_parts_mut(out_addr as *mut u8, out_len) };
            let norm = Normalize::table(&table);
            py.detach(|| batch::run(&batch, n_px, &norm, out, threads, simd, &ctrl_c))
        }
    };
    let Some(run_errors) = run_errors else {
        let err = pending.into_inner().unwrap_or_else(|e| e.into_inner());
        return Err(err.unwrap_or_else(|| Error::Interrupted.into()));
    };
    for (slot, e) in errors.iter_mut().zip(run_errors) {
        if slot.is_none() {
            *slot = e;
        }
    }
    Ok(errors)
}

/// Decode JPEGs with the libjpeg that `path` (Pillow's `_imaging` extension) was linked with.
/// Returns None when in use, else why not (JPEGs then stay with Pillow).
#[pyfunction]
fn use_pillow_libjpeg(path: &str) -> Option<String> {
    jpeg::use_library(path).err()
}

/// The SIMD paths the 8-bit passes use on this CPU (see `resample_simd::Level`).
#[pyfunction]
fn simd_level() -> &'static str {
    resample_simd::level()
}

/// Resize tall images in the pass order of Pillow >= 13 (`true`, the default) or of older Pillow
/// (`false`): `clipfast.transforms` sets it from the installed Pillow's version.
#[pyfunction]
fn set_pillow_vertical_first(enabled: bool) {
    resample::set_vertical_first(enabled);
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(resize_crop, m)?)?;
    m.add_function(wrap_pyfunction!(set_pillow_vertical_first, m)?)?;
    m.add_function(wrap_pyfunction!(preprocess_into, m)?)?;
    m.add_function(wrap_pyfunction!(simd_level, m)?)?;
    m.add_function(wrap_pyfunction!(use_pillow_libjpeg, m)?)?;
    Ok(())
}
