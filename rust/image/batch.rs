//! Many images at once: each worker thread takes the next item, writes its slot of the output.
//!
//! Threads are scoped to one call (no pool outlives it), so a process may fork at any time
//! without a child inheriting locked pool state.

use super::crop::Geometry;
use super::normalize::rgb_to_chw;
use super::pipeline::{resize_crop_u8, to_rgb};
use super::pixels::{Mode, Source};
use std::sync::Mutex;

/// One image of a batch: its pixel rows and what they are.
pub struct Item<'a> {
    pub source: Source<'a>,
}

/// Resize, crop, convert and normalise one 8-bit image into `out` (3 x n x n values).
pub fn process<T: Copy>(
    item: &Item<'_>,
    n: usize,
    lut: &[T],
    out: &mut [T],
    simd: bool,
) -> Result<(), String> {
    let src = &item.source;
    let g = Geometry::new(src.width, src.height, n)?;
    let px = resize_crop_u8(src, &g, simd);
    let rgb = match src.mode {
        // Packed RGB that needs no resize is already what we need.
        Mode::Rgb if src.ps == 3 => px,
        mode => to_rgb(mode, src.ps, &px)
            .ok_or_else(|| format!("mode {mode:?} is converted to RGB before this step"))?,
    };
    rgb_to_chw(&rgb, lut, out);
    Ok(())
}

/// Process every item on up to `threads` threads; returns one error message per failed item.
pub fn run<T: Copy + Send + Sync>(
    items: &[Item<'_>],
    n: usize,
    lut: &[T],
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
            errors[i] = process(&items[i], n, lut, slot, simd).err();
        }
        return errors;
    }
    let queue = Mutex::new(jobs.into_iter());
    let results = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| loop {
                // A poisoned lock only means another worker panicked; the queue is still sound.
                let next = queue.lock().unwrap_or_else(|e| e.into_inner()).next();
                let Some((i, slot)) = next else { break };
                let outcome = process(&items[i], n, lut, slot, simd).err();
                if outcome.is_some() {
                    results
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push((i, outcome));
                }
            });
        }
    });
    for (i, e) in results.into_inner().unwrap_or_else(|e| e.into_inner()) {
        errors[i] = e;
    }
    errors
}
