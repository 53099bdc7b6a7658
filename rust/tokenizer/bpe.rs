//! Byte-level BPE over token ids, with clip's merge order: repeatedly take the adjacent pair
//! of lowest rank and merge all its occurrences left to right, until no pair is a merge.

use super::vocab::{Vocab, END_OF_TEXT, START_OF_TEXT};
use std::collections::HashMap;
use std::sync::RwLock;

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
        let mut merged = Vec::with_capacity(symbols.len());
        while symbols.len() > 1 {
            let best = symbols
                .windows(2)
                .filter_map(|pair| {
                    self.vocab
                        .merges
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

    /// Appends the ids of `word` to `out`, through the shared cache. Words not cached yet are
    /// collected in `fresh` so the caller adds them under one write lock.
    pub fn encode_word(
        &self,
        word: &str,
        out: &mut Vec<u32>,
        fresh: &mut HashMap<String, Vec<u32>>,
    ) {
        if let Some(ids) = fresh.get(word) {
            out.extend_from_slice(ids);
            return;
        }
        // A poisoned lock only means another thread panicked mid-insert; the map is still valid.
        let cache = self.cache.read().unwrap_or_else(|e| e.into_inner());
        if let Some(ids) = cache.get(word) {
            out.extend_from_slice(ids);
            return;
        }
        drop(cache);
        let ids = self.encode_word_uncached(word);
        out.extend_from_slice(&ids);
        fresh.insert(word.to_string(), ids);
    }

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
