//! Many images at once: each worker thread takes the next item, writes its slot of the output.
//!
//! Threads are scoped to one call (no pool outlives it), so a process may fork at any time
//! without a child inheriting locked pool state.

use super::crop::Geometry;
use super::decode::decode_png;
use super::normalize::{Normalize, Sample};
use super::pipeline::{resize_crop_u8, rgb_bytes};
use super::pixels::Source;
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
            let src = Source::packed(&img.pixels, img.width, img.height, img.mode)?;
            process_source(&src, n, norm, out, simd)
        }
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

/// Process every item on up to `threads` threads; returns one error message per failed item.
pub fn run<T: Sample>(
    items: &[Item<'_>],
    n: usize,
    norm: &Normalize<'_, T>,
    out: &mut [T],
    threads: usize,
    simd: bool,
) -> Vec<Option<String>> {
    let per_item = 3 * n * n;
    let mut errors: Vec<Option<String>> = vec![None; items.len()];
    let jobs: Vec<(usize, &mut [T])> = out.chunks_exact_mut(per_item).enumerate().collect();
    let threads = threads.clamp(1, items.len().max(1));
    if threads == 1 {
        for (i, slot) in jobs {
            errors[i] = process(&items[i], n, norm, slot, simd).err();
        }
        return errors;
    }
    let queue = Mutex::new(jobs.into_iter());
    let results = Mutex::new(Vec::new());
    let work = || loop {
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
    };
    std::thread::scope(|scope| {
        for _ in 1..threads {
            scope.spawn(work);
        }
        work(); // the calling thread is the last worker
    });
    for (i, e) in results.into_inner().unwrap_or_else(|e| e.into_inner()) {
        errors[i] = e;
    }
    errors
}
