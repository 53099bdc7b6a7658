//! A counting global allocator: how many bytes one thread has live, and the peak, so that a test
//! or a fuzz target can check that a parser's memory stays within a multiple of its input.
//!
//! Counts are per thread (the parsers run on the calling thread), so tests running in parallel
//! do not see each other's allocations. Memory freed by another thread than the one that
//! allocated it shows up as a drop on the freeing thread; no parser hands memory across threads.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

/// The system allocator, counting.
pub struct CountingAlloc;

thread_local! {
    /// (live bytes, peak of live bytes) of this thread; const-initialised, no destructor, so
    /// the allocator may touch it at any time.
    static STATS: Cell<(isize, isize)> = const { Cell::new((0, 0)) };
}

fn account(delta: isize) {
    let _ = STATS.try_with(|s| {
        let (live, peak) = s.get();
        let live = live.wrapping_add(delta);
        s.set((live, peak.max(live)));
    });
}

// SAFETY: every call is forwarded to the system allocator unchanged; only counters are updated.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract is the system allocator's.
        let ptr = unsafe { System.alloc(layout) };
        if !ptr.is_null() {
            account(layout.size() as isize);
        }
        ptr
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as above.
        let ptr = unsafe { System.alloc_zeroed(layout) };
        if !ptr.is_null() {
            account(layout.size() as isize);
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) };
        account(-(layout.size() as isize));
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: as above.
        let out = unsafe { System.realloc(ptr, layout, new_size) };
        if !out.is_null() {
            // A moving realloc holds both blocks for a moment: count the new one before the old
            // one goes, as the peak really includes both.
            account(new_size as isize);
            account(-(layout.size() as isize));
        }
        out
    }
}

/// Runs `f` and returns its result with the most bytes it had allocated at once on this thread
/// (beyond what was live before), or None when this binary does not count (another allocator).
pub fn peak_of<R>(f: impl FnOnce() -> R) -> (R, Option<usize>) {
    let live = || STATS.with(|s| s.get().0);
    let start = live();
    let probe = std::hint::black_box(Box::new(0u64));
    let counting = live() > start;
    drop(probe);
    let before = STATS.with(|s| {
        let (live, _) = s.get();
        s.set((live, live));
        live
    });
    let out = f();
    let peak = STATS.with(|s| s.get().1);
    let extra = usize::try_from(peak.saturating_sub(before)).unwrap_or(0);
    (out, counting.then_some(extra))
}
