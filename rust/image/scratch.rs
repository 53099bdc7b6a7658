//! Scratch buffers reused across the images one thread processes.
//!
//! Each image needs a few buffers of up to some megabytes (the horizontal pass's output, the
//! cropped result, decoded bands). Allocated afresh per image, memory that large comes from the
//! kernel each time in a worker thread: glibc hands a thread that is not the main one an arena
//! of its own and returns its freed top to the kernel, so every image paid page faults again
//! (about a thousand per batch of 32 1024x768 images with two threads, none with one: a cost
//! only the threaded run had, and one that varied with the allocator's state). Buffers taken
//! here go back to a small per-thread free list when dropped and are reused by the next image.

use std::cell::RefCell;
use std::ops::{Deref, DerefMut};

/// Buffers each thread keeps for reuse, and the largest it keeps (bytes): enough for the few
/// buffers of one image of any common size, without holding a huge image's memory for good.
const KEPT: usize = 8;
const KEPT_BYTES: usize = 16 << 20;

/// Element types with a per-thread free list.
pub trait Pooled: Copy + Default + 'static {
    /// Run `f` on this thread's free list (None while the thread is being torn down).
    fn with_free<R>(f: impl FnOnce(&mut Vec<Vec<Self>>) -> R) -> Option<R>;
}

macro_rules! pooled {
    ($t:ty) => {
        impl Pooled for $t {
            fn with_free<R>(f: impl FnOnce(&mut Vec<Vec<Self>>) -> R) -> Option<R> {
                thread_local! {
                    static FREE: RefCell<Vec<Vec<$t>>> = const { RefCell::new(Vec::new()) };
                }
                FREE.try_with(|free| f(&mut free.borrow_mut())).ok()
            }
        }
    };
}

pooled!(u8);
pooled!(i16);

/// A buffer of `len` elements from this thread's free list (or new), returned to it on drop.
pub struct Scratch<T: Pooled> {
    data: Vec<T>,
}

impl<T: Pooled> Scratch<T> {
    /// `len` elements whose values are left over from an earlier use (initialised, but
    /// arbitrary): for buffers that are written in full before they are read.
    pub fn any(len: usize) -> Scratch<T> {
        let mut data = T::with_free(|free| free.pop())
            .flatten()
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
        if data.capacity() == 0 || data.capacity() * std::mem::size_of::<T>() > KEPT_BYTES {
            return;
        }
        T::with_free(|free| {
            if free.len() < KEPT {
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
        let first = Scratch::<u8>::zeroed(1000);
        let ptr = first.as_ptr();
        assert!(first.iter().all(|&b| b == 0));
        drop(first);
        let mut again = Scratch::<u8>::any(500);
        assert_eq!(again.len(), 500);
        assert_eq!(again.as_ptr(), ptr, "the freed buffer is reused");
        again.fill(7);
        drop(again);
        let zero = Scratch::<u8>::zeroed(800);
        assert!(zero.iter().all(|&b| b == 0));
        let nested = Scratch::<u8>::any(10);
        assert_ne!(nested.as_ptr(), zero.as_ptr());
    }

    #[test]
    fn huge_buffers_are_not_kept() {
        let big = Scratch::<u8>::any(KEPT_BYTES + 1);
        drop(big);
        u8::with_free(|free| assert!(free.iter().all(|v| v.capacity() <= KEPT_BYTES)));
    }
}
