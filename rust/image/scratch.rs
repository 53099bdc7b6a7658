//! Scratch buffers reused across the images a process preprocesses.
//!
//! Each image needs a few buffers of up to some megabytes (the horizontal pass's output, the
//! cropped result, decoded bands). Allocated afresh per image, memory that large comes from the
//! kernel each time in a worker thread: glibc hands a thread that is not the main one an arena
//! of its own and returns its freed top to the kernel, so every image paid page faults again
//! (about a thousand per batch of 32 1024x768 images with two threads, none with one: a cost
//! only the threaded run had, and one that varied with the allocator's state). Buffers taken
//! here go back to a small free list when dropped and are reused by the next image.
//!
//! The list is one per process, not per thread: batch workers are spawned per call (no pool of
//! threads outlives a call, so a process may fork at any time), and a thread's own list died
//! with it, so each call's second worker faulted its buffers in again (about 960 page faults,
//! 2 ms of system time, per call of 32 640x427 photos measured with a per-thread list). A lock
//! taken a few times per image costs nothing next to that.

use std::ops::{Deref, DerefMut};
use std::sync::Mutex;

/// Buffers kept for reuse, the largest one kept and all of them together (bytes): enough for
/// the few buffers of two workers' images of any common size, without holding a huge image's
/// memory for good.
const KEPT: usize = 16;
const KEPT_BYTES: usize = 16 << 20;
const KEPT_TOTAL_BYTES: usize = 48 << 20;

/// Element types with a process-wide free list.
pub trait Pooled: Copy + Default + Send + 'static {
    /// Run `f` on the free list.
    fn with_free<R>(f: impl FnOnce(&mut Vec<Vec<Self>>) -> R) -> R;
}

macro_rules! pooled {
    ($t:ty) => {
        impl Pooled for $t {
            fn with_free<R>(f: impl FnOnce(&mut Vec<Vec<Self>>) -> R) -> R {
                static FREE: Mutex<Vec<Vec<$t>>> = Mutex::new(Vec::new());
                // A panic while the lock was held leaves only a list of buffers: still usable.
                let mut free = FREE.lock().unwrap_or_else(|e| e.into_inner());
                f(&mut free)
            }
        }
    };
}

pooled!(u8);
pooled!(i16);
// The tests' own list: no other test running in parallel takes its buffers.
#[cfg(test)]
pooled!(u16);

/// A buffer of `len` elements from the free list (or new), returned to it on drop.
pub struct Scratch<T: Pooled> {
    data: Vec<T>,
}

impl<T: Pooled> Scratch<T> {
    /// `len` elements whose values are left over from an earlier use (initialised, but
    /// arbitrary): for buffers that are written in full before they are read.
    pub fn any(len: usize) -> Scratch<T> {
        let mut data = T::with_free(|free| {
            // The smallest buffer that holds `len`, else the largest (it grows once).
            let fits = (0..free.len())
                .filter(|&i| free[i].capacity() >= len)
                .min_by_key(|&i| free[i].capacity());
            let pick = fits.or_else(|| (0..free.len()).max_by_key(|&i| free[i].capacity()));
            pick.map(|i| free.swap_remove(i))
        })
        .unwrap_or_default();
        data.resize(len, T::default());
        Scratch { data }
    }

    /// `len` elements set to the default value (zero).
    pub fn zeroed(len: usize) -> Scratch<T> {
        let mut s = Scratch::any(len);
        s.data.fill(T::default());
        s
    }

    /// `len` zeroed elements starting on an `align`-byte boundary (a power of two), for SIMD
    /// loads that must not cross cache lines: the buffer, and the index where they start in it.
    pub fn zeroed_aligned(len: usize, align: usize) -> (Scratch<T>, usize) {
        let extra = align.div_ceil(std::mem::size_of::<T>().max(1));
        let s: Scratch<T> = Scratch::zeroed(len + extra);
        let at = s.as_ptr().align_offset(align).min(extra);
        (s, at)
    }

    /// The buffer, taken out of the pool for good (it is then freed as any `Vec`).
    pub fn into_vec(mut self) -> Vec<T> {
        std::mem::take(&mut self.data)
    }
}

impl<T: Pooled> Deref for Scratch<T> {
    type Target = Vec<T>;
    fn deref(&self) -> &Vec<T> {
        &self.data
    }
}

impl<T: Pooled> DerefMut for Scratch<T> {
    fn deref_mut(&mut self) -> &mut Vec<T> {
        &mut self.data
    }
}

impl<T: Pooled> Drop for Scratch<T> {
    fn drop(&mut self) {
        let data = std::mem::take(&mut self.data);
        let bytes = |v: &Vec<T>| v.capacity() * std::mem::size_of::<T>();
        if data.capacity() == 0 || bytes(&data) > KEPT_BYTES {
            return;
        }
        T::with_free(|free| {
            let held: usize = free.iter().map(bytes).sum();
            if free.len() < KEPT && held + bytes(&data) <= KEPT_TOTAL_BYTES {
                free.push(data);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_reused_and_sized() {
        let first = Scratch::<u16>::zeroed(1000);
        let ptr = first.as_ptr();
        assert!(first.iter().all(|&b| b == 0));
        drop(first);
        let mut again = Scratch::<u16>::any(500);
        assert_eq!(again.len(), 500);
        assert_eq!(again.as_ptr(), ptr, "the freed buffer is reused");
        again.fill(7);
        drop(again);
        let zero = Scratch::<u16>::zeroed(800);
        assert!(zero.iter().all(|&b| b == 0));
        let nested = Scratch::<u16>::any(10);
        assert_ne!(nested.as_ptr(), zero.as_ptr());
        drop((zero, nested));
        // The smallest buffer that fits is taken, from another thread too (workers are
        // spawned per call).
        let (small, large) = (Scratch::<u16>::any(100), Scratch::<u16>::any(5000));
        let (small_ptr, large_ptr) = (small.as_ptr(), large.as_ptr() as usize);
        drop((small, large));
        std::thread::spawn(move || {
            assert_eq!(Scratch::<u16>::any(2000).as_ptr() as usize, large_ptr);
        })
        .join()
        .expect("the thread ran");
        assert_eq!(Scratch::<u16>::any(50).as_ptr(), small_ptr);
    }

    #[test]
    fn huge_buffers_are_not_kept() {
        let big = Scratch::<u8>::any(KEPT_BYTES + 1);
        drop(big);
        u8::with_free(|free| {
            assert!(free.iter().all(|v| v.capacity() <= KEPT_BYTES));
            assert!(free.len() <= KEPT);
        });
    }
}
