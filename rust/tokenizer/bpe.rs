//! Byte-level BPE over token ids, with clip's merge order: repeatedly take the adjacent pair
//! of lowest rank and merge all its occurrences left to right, until no pair is a merge.

use super::vocab::{Vocab, END_OF_TEXT, START_OF_TEXT};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::{RwLock, RwLockReadGuard};

/// (left id, right id) -> (rank, merged id).
type Merges = HashMap<(u32, u32), (u32, u32)>;

/// Words up to this many bytes are merged by rescanning (fast when short); longer ones with a
/// heap, so that a long run of letters costs O(n log n) rather than O(n^2).
const LONG_WORD: usize = 48;

/// clip's loop, literally: find the lowest-rank adjacent pair, merge every occurrence of it left
/// to right, repeat.
fn merge_by_scanning(mut symbols: Vec<u32>, merges: &Merges) -> Vec<u32> {
    let mut merged = Vec::with_capacity(symbols.len());
    while symbols.len() > 1 {
        let best = symbols
            .windows(2)
            .filter_map(|pair| {
                merges
                    .get(&(pair[0], pair[1]))
                    .map(|&(rank, id)| (rank, pair[0], pair[1], id))
            })
            .min_by_key(|&(rank, ..)| rank);
        let Some((_, left, right, id)) = best else {
            break;
        };
        merged.clear();
        let mut i = 0;
        while i < symbols.len() {
            if symbols[i] == left && i + 1 < symbols.len() && symbols[i + 1] == right {
                merged.push(id);
                i += 2;
            } else {
                merged.push(symbols[i]);
                i += 1;
            }
        }
        std::mem::swap(&mut symbols, &mut merged);
    }
    symbols
}

/// The same result as `merge_by_scanning`, in O(n log n): a heap of (rank, position) over a
/// linked list of symbols. All entries of the lowest rank are taken out together and applied
/// left to right before the pairs they create enter the heap, as clip finishes a rank's pass
/// before looking for the next lowest pair. (A merge never re-creates a pair of its own rank:
/// the merged symbol differs from both halves.) Stale entries are recognised and skipped.
fn merge_with_heap(mut symbols: Vec<u32>, merges: &Merges) -> Vec<u32> {
    let n = symbols.len();
    let none = usize::MAX;
    let mut next: Vec<usize> = (1..=n).map(|i| if i < n { i } else { none }).collect();
    let mut prev: Vec<usize> = (0..n).map(|i| if i == 0 { none } else { i - 1 }).collect();
    let mut alive = vec![true; n];
    let mut heap = BinaryHeap::new();
    let rank_at = |symbols: &[u32], left: usize, right: usize| {
        merges
            .get(&(symbols[left], symbols[right]))
            .map(|&(rank, _)| rank)
    };
    for i in 0..n.saturating_sub(1) {
        if let Some(rank) = rank_at(&symbols, i, i + 1) {
            heap.push(Reverse((rank, i)));
        }
    }
    let mut batch = Vec::new();
    let mut created = Vec::new();
    while let Some(&Reverse((rank, _))) = heap.peek() {
        batch.clear();
        while let Some(&Reverse((r, pos))) = heap.peek() {
            if r != rank {
                break;
            }
            heap.pop();
            batch.push(pos);
        }
        batch.dedup();
        created.clear();
        for &pos in &batch {
            let right = next[pos];
            if !alive[pos] || right == none {
                continue;
            }
            match merges.get(&(symbols[pos], symbols[right])) {
                Some(&(r, merged)) if r == rank => {
                    symbols[pos] = merged;
                    alive[right] = false;
                    next[pos] = next[right];
                    if next[right] != none {
                        prev[next[right]] = pos;
                    }
                    created.push(pos);
                }
                _ => {}
            }
        }
        for &pos in &created {
            if prev[pos] != none {
                if let Some(r) = rank_at(&symbols, prev[pos], pos) {
                    heap.push(Reverse((r, prev[pos])));
                }
            }
            if next[pos] != none {
                if let Some(r) = rank_at(&symbols, pos, next[pos]) {
                    heap.push(Reverse((r, pos)));
                }
            }
        }
    }
    symbols
        .into_iter()
        .zip(alive)
        .filter_map(|(s, keep)| keep.then_some(s))
        .collect()
}

/// Most words kept in the cache; past this it stops growing (captions reuse few words).
const CACHE_LIMIT: usize = 1 << 18;

pub struct Bpe {
    pub vocab: Vocab,
    cache: RwLock<HashMap<String, Vec<u32>>>,
}

impl Bpe {
    pub fn new(vocab: Vocab) -> Bpe {
        Bpe {
            vocab,
            cache: RwLock::new(HashMap::new()),
        }
    }

    /// The ids of one pre-token (a word of the cleaned text), without the cache.
    pub fn encode_word_uncached(&self, word: &str) -> Vec<u32> {
        // clip's cache starts with the two special tokens mapping to themselves.
        if word == START_OF_TEXT {
            return vec![self.vocab.start_of_text];
        }
        if word == END_OF_TEXT {
            return vec![self.vocab.end_of_text];
        }
        let bytes = word.as_bytes();
        let Some((&last, init)) = bytes.split_last() else {
            return Vec::new();
        };
        let mut symbols: Vec<u32> = init
            .iter()
            .map(|&b| self.vocab.byte_ids[usize::from(b)])
            .collect();
        symbols.push(self.vocab.byte_end_ids[usize::from(last)]);
        if symbols.len() <= LONG_WORD {
            merge_by_scanning(symbols, &self.vocab.merges)
        } else {
            merge_with_heap(symbols, &self.vocab.merges)
        }
    }

    /// The ids of `word` by both merge strategies, whatever its length (for the fuzz target,
    /// which checks that they agree).
    #[cfg(any(test, feature = "fuzzing"))]
    pub fn encode_word_both_ways(&self, word: &str) -> (Vec<u32>, Vec<u32>) {
        let bytes = word.as_bytes();
        let Some((&last, init)) = bytes.split_last() else {
            return (Vec::new(), Vec::new());
        };
        let mut symbols: Vec<u32> = init
            .iter()
            .map(|&b| self.vocab.byte_ids[usize::from(b)])
            .collect();
        symbols.push(self.vocab.byte_end_ids[usize::from(last)]);
        (
            merge_by_scanning(symbols.clone(), &self.vocab.merges),
            merge_with_heap(symbols, &self.vocab.merges),
        )
    }

    /// The shared word cache, for reading; hold it over a whole batch chunk, not per word.
    pub fn cache(&self) -> RwLockReadGuard<'_, HashMap<String, Vec<u32>>> {
        // A poisoned lock only means another thread panicked mid-insert; the map is still valid.
        self.cache.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Appends the ids of `word` to `out`, looking in `cache` (from `cache()`) and `fresh` first.
    /// Words not known yet are encoded and kept in `fresh`, for `remember` to add to the cache.
    pub fn encode_word(
        &self,
        word: &str,
        cache: &HashMap<String, Vec<u32>>,
        out: &mut Vec<u32>,
        fresh: &mut HashMap<String, Vec<u32>>,
    ) {
        if let Some(ids) = cache.get(word).or_else(|| fresh.get(word)) {
            out.extend_from_slice(ids);
            return;
        }
        let ids = self.encode_word_uncached(word);
        out.extend_from_slice(&ids);
        fresh.insert(word.to_string(), ids);
    }

    /// Adds the words of `fresh` to the shared cache (call without holding `cache()`).
    pub fn remember(&self, fresh: HashMap<String, Vec<u32>>) {
        if fresh.is_empty() {
            return;
        }
        let mut cache = self.cache.write().unwrap_or_else(|e| e.into_inner());
        for (word, ids) in fresh {
            if cache.len() >= CACHE_LIMIT {
                break;
            }
            cache.insert(word, ids);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small deterministic generator (xorshift), so the test needs no crate.
    struct Rng(u64);
    impl Rng {
        fn below(&mut self, n: u64) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0 % n
        }
    }

    /// Random merges over a 3-symbol alphabet, built bottom-up like a BPE vocabulary.
    fn random_merges(rng: &mut Rng) -> Merges {
        let mut merges = Merges::new();
        let mut symbols: Vec<u32> = vec![0, 1, 2];
        for rank in 0..40u32 {
            let left = symbols[rng.below(symbols.len() as u64) as usize];
            let right = symbols[rng.below(symbols.len() as u64) as usize];
            if merges.contains_key(&(left, right)) {
                continue;
            }
            let id = 100 + rank;
            merges.insert((left, right), (rank, id));
            symbols.push(id);
        }
        merges
    }

    #[test]
    fn heap_merging_equals_clips_scanning() {
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        for _ in 0..300 {
            let merges = random_merges(&mut rng);
            let len = 1 + rng.below(200) as usize;
            let word: Vec<u32> = (0..len).map(|_| rng.below(3) as u32).collect();
            assert_eq!(
                merge_with_heap(word.clone(), &merges),
                merge_by_scanning(word.clone(), &merges),
                "{word:?}"
            );
        }
    }

    #[test]
    fn overlapping_pairs_merge_left_first() {
        let merges: Merges = [((0, 0), (0, 9))].into_iter().collect();
        assert_eq!(merge_by_scanning(vec![0, 0, 0], &merges), vec![9, 0]);
        assert_eq!(merge_with_heap(vec![0, 0, 0], &merges), vec![9, 0]);
    }
}
