//! Fork-safe parallel loops: the threads live for one call only.
//!
//! A global thread pool (such as rayon's) does not survive `fork`: a child process inherits the pool's
//! state but not its threads, so its first parallel call waits forever. DataLoader workers are
//! forked from a parent that has often loaded a model or tokenized text already, so every parallel
//! loop here starts its own scoped threads instead (tens of microseconds per call).

use std::sync::Mutex;

/// Threads a loop uses: the cores this process may run on (affinity and cgroup quotas count).
pub fn threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Call `work` on every item, on up to [`threads`] threads (the calling thread is one of them).
/// Items are handed out one at a time, in order, so uneven items still balance. A panic in `work`
/// propagates to the caller once every thread has stopped.
pub fn for_each<T: Send, F: Fn(T) + Sync>(items: Vec<T>, work: F) {
    let workers = threads().min(items.len());
    if workers <= 1 {
        items.into_iter().for_each(work);
        return;
    }
    let queue = Mutex::new(items.into_iter());
    let run = || loop {
        // A poisoned lock only means another worker panicked; the queue itself is still sound.
        let next = queue.lock().unwrap_or_else(|e| e.into_inner()).next();
        match next {
            Some(item) => work(item),
            None => break,
        }
    };
    std::thread::scope(|scope| {
        for _ in 1..workers {
            scope.spawn(run);
        }
        run();
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn every_item_once() {
        for count in [0usize, 1, 2, 7, 1000] {
            let seen: Vec<AtomicUsize> = (0..count).map(|_| AtomicUsize::new(0)).collect();
            for_each((0..count).collect(), |i| {
                seen[i].fetch_add(1, Ordering::Relaxed);
            });
            assert!(
                seen.iter().all(|s| s.load(Ordering::Relaxed) == 1),
                "{count}"
            );
        }
    }

    #[test]
    fn mutable_chunks_are_filled() {
        let mut data = vec![0u32; 1000];
        let chunks: Vec<(usize, &mut [u32])> = data.chunks_mut(64).enumerate().collect();
        for_each(chunks, |(index, chunk)| chunk.fill(index as u32 + 1));
        for (i, v) in data.iter().enumerate() {
            assert_eq!(*v, (i / 64) as u32 + 1);
        }
    }
}
