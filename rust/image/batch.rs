//! Many images at once: each worker thread takes the next item, writes its slot of the output.
//!
//! Threads are scoped to one call (no pool outlives it), so a process may fork at any time
//! without a child inheriting locked pool state.

use super::crop::Geometry;
use super::decode::decode_png;
use super::jpeg::Decoder;
use super::normalize::{Normalize, Sample};
use super::pipeline::{
    resize_crop_u8, resize_streamed_u8, resize_window_u8, rgb_bytes, streams, Plan,
};
use super::pixels::{widen_rgb, Mode, Source};
use super::scratch::Scratch;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

/// One image of a batch.
pub enum Item<'a> {
    /// Decoded pixels.
    Pixels(Source<'a>),
    /// PNG bytes (8-bit L, LA, RGB or RGBA), with the decompression-bomb limit.
    Png {
        data: &'a [u8],
        max_pixels: Option<u64>,
    },
    /// JPEG bytes decoded with Pillow's libjpeg; `scale_for` as Pillow's `draft(None, (s, s))`.
    Jpeg {
        data: &'a [u8],
        max_pixels: Option<u64>,
        scale_for: Option<usize>,
    },
    /// Python already found this item bad.
    Failed,
}

/// [`process_item`], with a panic (a bug, never expected) turned into this item's error so that
/// one bad image cannot take the batch or the interpreter down.
pub fn process<T: Sample>(
    item: &Item<'_>,
    n: usize,
    norm: &Normalize<'_, T>,
    out: &mut [T],
    simd: bool,
) -> Result<(), String> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        process_item(item, n, norm, out, simd)
    }))
    .unwrap_or_else(|_| Err("internal error while preprocessing this image".into()))
}

/// Decode PNG bytes if needed, then [`process_source`].
pub fn process_item<T: Sample>(
    item: &Item<'_>,
    n: usize,
    norm: &Normalize<'_, T>,
    out: &mut [T],
    simd: bool,
) -> Result<(), String> {
    match item {
        Item::Pixels(src) => process_source(src, n, norm, out, simd),
        Item::Png { data, max_pixels } => {
            let img = decode_png(data, *max_pixels)?;
            if img.mode == Mode::Rgb {
                // Pillow's 4-byte layout, which the SIMD horizontal pass takes.
                let mut wide = Scratch::any(img.width * img.height * 4);
                widen_rgb(&img.pixels, &mut wide);
                let src = Source {
                    rows: wide.chunks_exact(img.width * 4).collect(),
                    ps: 4,
                    width: img.width,
                    height: img.height,
                    mode: Mode::Rgb,
                };
                return process_source(&src, n, norm, out, simd);
            }
            let src = Source::packed(&img.pixels, img.width, img.height, img.mode)?;
            process_source(&src, n, norm, out, simd)
        }
        Item::Jpeg {
            data,
            max_pixels,
            scale_for,
        } => process_jpeg(data, *max_pixels, *scale_for, n, norm, out, simd),
        Item::Failed => Err("failed before preprocessing".into()),
    }
}

/// Resize, crop, convert and normalise one 8-bit image into `out` (3 x n x n values).
pub fn process_source<T: Sample>(
    src: &Source<'_>,
    n: usize,
    norm: &Normalize<'_, T>,
    out: &mut [T],
    simd: bool,
) -> Result<(), String> {
    let g = Geometry::new(src.width, src.height, n)?;
    let rgb = rgb_bytes(src.mode)
        .ok_or_else(|| format!("mode {:?} is converted to RGB before this step", src.mode))?;
    let (px, ps) = resize_crop_u8(src, &g, simd);
    norm.write_chw(&px, ps, rgb, simd, out);
    Ok(())
}

/// Decode only the rows and columns of a JPEG that the resize reads and resize them as they
/// arrive (a band of rows at a time), then crop and normalise.
fn process_jpeg<T: Sample>(
    data: &[u8],
    max_pixels: Option<u64>,
    scale_for: Option<usize>,
    n: usize,
    norm: &Normalize<'_, T>,
    out: &mut [T],
    simd: bool,
) -> Result<(), String> {
    let mut dec = Decoder::open(data, scale_for, max_pixels)?;
    let (w, h) = dec.size();
    let mode = dec.mode();
    let g = Geometry::new(w, h, n)?;
    let plan = Plan::new(&g);
    let cols = dec.crop(plan.cols.clone())?;
    dec.seek(plan.rows.start)?;
    // Decoded rows are packed (RGB: 3 bytes); the passes take Pillow's 4-byte RGB pixels.
    let (dps, ps) = (dec.ps(), mode.pillow_layout().1);
    let decoded_stride = cols.len() * dps;
    let window_stride = plan.cols.len() * ps;
    let (first, last) = (
        (plan.cols.start - cols.start) * dps,
        (plan.cols.end - cols.start) * dps,
    );
    let mut decoded: Scratch<u8> = Scratch::any(0);
    let mut fill = |buf: &mut [u8], count: usize| -> Result<(), String> {
        decoded.resize(count * decoded_stride, 0);
        let mut rows: Vec<&mut [u8]> = decoded.chunks_exact_mut(decoded_stride).collect();
        dec.read(&mut rows)?;
        for (src, dst) in decoded
            .chunks_exact(decoded_stride)
            .zip(buf.chunks_exact_mut(window_stride))
        {
            if ps == dps {
                dst.copy_from_slice(&src[first..last]);
            } else {
                widen_rgb(&src[first..last], dst);
            }
        }
        Ok(())
    };
    let (px, px_size) = if streams(&g, mode) {
        resize_streamed_u8(&plan, ps, mode, &g, simd, &mut fill)?
    } else {
        let mut window = Scratch::any(plan.rows.len() * window_stride);
        fill(&mut window, plan.rows.len())?;
        let rows = window.chunks_exact(window_stride).collect();
        resize_window_u8(&plan, rows, ps, mode, &g, simd)
    };
    dec.finish()?;
    let rgb = rgb_bytes(mode).ok_or("JPEG mode without RGB bytes")?;
    norm.write_chw(&px, px_size, rgb, simd, out);
    Ok(())
}

/// Process every item on up to `threads` threads; returns one error message per failed item, or
/// None when `interrupted` (called on the calling thread after each of its items: Ctrl-C) said to
/// stop: the workers then take no further item, and the output is incomplete.
pub fn run<T: Sample>(
    items: &[Item<'_>],
    n: usize,
    norm: &Normalize<'_, T>,
    out: &mut [T],
    threads: usize,
    simd: bool,
    interrupted: &dyn Fn() -> bool,
) -> Option<Vec<Option<String>>> {
    let per_item = 3 * n * n;
    let mut errors: Vec<Option<String>> = vec![None; items.len()];
    let jobs: Vec<(usize, &mut [T])> = out.chunks_exact_mut(per_item).enumerate().collect();
    let threads = threads.clamp(1, items.len().max(1));
    if threads == 1 {
        for (i, slot) in jobs {
            errors[i] = process(&items[i], n, norm, slot, simd).err();
            if interrupted() {
                return None;
            }
        }
        return Some(errors);
    }
    let queue = Mutex::new(jobs.into_iter());
    let results = Mutex::new(Vec::new());
    let stop = AtomicBool::new(false);
    let work = |check: Option<&dyn Fn() -> bool>| loop {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        // A poisoned lock only means another worker panicked; the queue is still sound.
        let next = queue.lock().unwrap_or_else(|e| e.into_inner()).next();
        let Some((i, slot)) = next else { break };
        let outcome = process(&items[i], n, norm, slot, simd).err();
        if outcome.is_some() {
            results
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push((i, outcome));
        }
        if check.is_some_and(|interrupted| interrupted()) {
            stop.store(true, Ordering::Relaxed);
            break;
        }
    };
    std::thread::scope(|scope| {
        for _ in 1..threads {
            scope.spawn(|| work(None));
        }
        work(Some(interrupted)); // the calling thread is the last worker, and looks for Ctrl-C
    });
    if stop.into_inner() {
        return None;
    }
    for (i, e) in results.into_inner().unwrap_or_else(|e| e.into_inner()) {
        errors[i] = e;
    }
    Some(errors)
}
