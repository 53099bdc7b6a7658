//! clip's `tokenize` in Rust: pre-tokenization, byte-level BPE with a cache, batch-parallel
//! with the GIL released. Text cleaning that needs ftfy stays in Python (a callback); text
//! that provably passes ftfy unchanged takes a fast path (see `cleanup`).

pub(crate) mod bpe;
mod char_classes;
pub(crate) mod cleanup;
pub(crate) mod pretokenize;
pub(crate) mod vocab;

use bpe::Bpe;
use pretokenize::Table;
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyList, PyString};
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use vocab::Vocab;

/// Texts per parallel work item: big enough to amortise the cache lock, small enough to balance.
const CHUNK: usize = 64;

/// A text ready for pre-tokenization: either raw fast-path text (cleaned here) or already
/// cleaned by clip's Python cleaning.
enum Prepared {
    Fast(String),
    Cleaned(String),
}

impl Prepared {
    fn cleaned(&self) -> std::borrow::Cow<'_, str> {
        match self {
            Prepared::Fast(text) => cleanup::clean_fast(text).into(),
            Prepared::Cleaned(text) => text.as_str().into(),
        }
    }
}

/// The BPE vocabulary of clip and its encoder. One instance serves all threads.
#[pyclass(frozen, module = "clipfast._native")]
pub struct ClipTokenizer {
    bpe: Bpe,
    /// Whether non-ASCII `FTFY_STABLE` text takes the fast path (the installed versions match).
    extended_fast_path: bool,
}

impl ClipTokenizer {
    /// Appends the ids of a cleaned text to `out`, stopping once it holds `limit` ids.
    fn encode_cleaned(
        &self,
        text: &str,
        limit: usize,
        cache: &HashMap<String, Vec<u32>>,
        out: &mut Vec<u32>,
        fresh: &mut HashMap<String, Vec<u32>>,
    ) {
        pretokenize::for_each_word(text, |word| {
            self.bpe.encode_word(word, cache, out, fresh);
            out.len() < limit
        });
    }

    /// Takes each text out of `texts`, sending those off the fast path through `clean`.
    fn prepare(
        &self,
        texts: &Bound<'_, PyList>,
        clean: &Bound<'_, PyAny>,
    ) -> PyResult<Vec<Prepared>> {
        let mut out = Vec::with_capacity(texts.len());
        for (index, item) in texts.iter().enumerate() {
            let Ok(string) = item.cast::<PyString>() else {
                let kind = item
                    .get_type()
                    .name()
                    .map(|n| n.to_string())
                    .unwrap_or_else(|_| "?".into());
                return Err(PyTypeError::new_err(format!(
                    "texts[{index}] is {kind}, not str"
                )));
            };
            // A str with lone surrogates has no UTF-8 form: ftfy repairs those, so clean it.
            match string.to_cow() {
                Ok(text) if cleanup::is_fast(&text, self.extended_fast_path) => {
                    out.push(Prepared::Fast(text.into_owned()))
                }
                _ => out.push(Prepared::Cleaned(clean.call1((item,))?.extract()?)),
            }
        }
        Ok(out)
    }
}

#[pymethods]
impl ClipTokenizer {
    /// `merges` is the decompressed text of `bpe_simple_vocab_16e6.txt.gz`; `ftfy_version` and
    /// `unicode_version` are the installed ftfy's and Python's `unicodedata.unidata_version`:
    /// non-ASCII text takes the fast path only when they are those the tables were made with.
    #[new]
    #[pyo3(signature = (merges, ftfy_version=None, unicode_version=None))]
    fn new(
        py: Python<'_>,
        merges: &str,
        ftfy_version: Option<&str>,
        unicode_version: Option<&str>,
    ) -> PyResult<Self> {
        let vocab = py
            .detach(|| Vocab::from_merges(merges))
            .map_err(|e| PyValueError::new_err(e.to_string()))?;
        let extended_fast_path = ftfy_version == Some(char_classes::FTFY_VERSION)
            && unicode_version == Some(char_classes::UNICODE_VERSION);
        Ok(ClipTokenizer {
            bpe: Bpe::new(vocab),
            extended_fast_path,
        })
    }

    #[getter]
    fn extended_fast_path(&self) -> bool {
        self.extended_fast_path
    }

    #[getter]
    fn vocab_size(&self) -> usize {
        self.bpe.vocab.decoder.len()
    }

    #[getter]
    fn start_of_text(&self) -> u32 {
        self.bpe.vocab.start_of_text
    }

    #[getter]
    fn end_of_text(&self) -> u32 {
        self.bpe.vocab.end_of_text
    }

    /// The symbol strings in id order (clip's `decoder` values).
    fn symbols(&self) -> Vec<String> {
        self.bpe.vocab.decoder.clone()
    }

    /// clip's `tokenize` rows: `(bytearray of len(texts) * context_length native int32,
    /// index of the first text longer than context_length when not truncating, else None)`.
    #[pyo3(signature = (texts, clean, context_length, truncate))]
    fn encode_batch<'py>(
        &self,
        py: Python<'py>,
        texts: &Bound<'py, PyList>,
        clean: &Bound<'py, PyAny>,
        context_length: usize,
        truncate: bool,
    ) -> PyResult<(Bound<'py, PyByteArray>, Option<usize>)> {
        let prepared = self.prepare(texts, clean)?;
        let width = context_length;
        let (rows, too_long) = py.detach(|| {
            let mut rows = vec![0i32; prepared.len() * width];
            let too_long: Option<usize> = if width == 0 {
                // Every text has at least its two special tokens.
                (!prepared.is_empty()).then_some(0)
            } else {
                let first = AtomicUsize::new(usize::MAX);
                let chunks: Vec<_> = prepared
                    .chunks(CHUNK)
                    .zip(rows.chunks_mut(CHUNK * width))
                    .enumerate()
                    .collect();
                crate::parallel::for_each(chunks, |(chunk_index, (texts, rows))| {
                    if let Some(i) = self.encode_rows(texts, rows, width, truncate) {
                        first.fetch_min(chunk_index * CHUNK + i, Ordering::Relaxed);
                    }
                });
                Some(first.into_inner()).filter(|&i| i != usize::MAX)
            };
            (rows, too_long)
        });
        let bytes = PyByteArray::new_with(py, rows.len() * 4, |buffer| {
            for (slot, id) in buffer.chunks_exact_mut(4).zip(&rows) {
                slot.copy_from_slice(&id.to_ne_bytes());
            }
            Ok(())
        })?;
        Ok((bytes, too_long))
    }

    /// The ids of one text (clip's `SimpleTokenizer.encode`), without start/end tokens.
    fn encode(
        &self,
        py: Python<'_>,
        text: &Bound<'_, PyAny>,
        clean: &Bound<'_, PyAny>,
    ) -> PyResult<Vec<u32>> {
        let list = PyList::new(py, [text])?;
        let prepared = self.prepare(&list, clean)?;
        Ok(py.detach(|| {
            let mut ids = Vec::new();
            let mut fresh = HashMap::new();
            let cache = self.bpe.cache();
            for text in &prepared {
                let cleaned = text.cleaned();
                self.encode_cleaned(&cleaned, usize::MAX, &cache, &mut ids, &mut fresh);
            }
            drop(cache);
            self.bpe.remember(fresh);
            ids
        }))
    }
}

impl ClipTokenizer {
    /// Fills one row of `width` ids per text; returns the index (in `texts`) of the first text
    /// that does not fit when not truncating.
    fn encode_rows(
        &self,
        texts: &[Prepared],
        rows: &mut [i32],
        width: usize,
        truncate: bool,
    ) -> Option<usize> {
        let mut fresh = HashMap::new();
        let mut ids = Vec::new();
        let mut first_too_long = None;
        let cache = self.bpe.cache();
        for (i, (text, row)) in texts.iter().zip(rows.chunks_mut(width)).enumerate() {
            ids.clear();
            ids.push(self.bpe.vocab.start_of_text);
            // Enough ids to know the text is too long: start + width ids + end > width.
            let cleaned = text.cleaned();
            self.encode_cleaned(&cleaned, width + 1, &cache, &mut ids, &mut fresh);
            ids.push(self.bpe.vocab.end_of_text);
            if ids.len() > width {
                if !truncate {
                    first_too_long.get_or_insert(i);
                    continue;
                }
                ids.truncate(width);
                ids[width - 1] = self.bpe.vocab.end_of_text;
            }
            for (slot, &id) in row.iter_mut().zip(&ids) {
                *slot = id as i32;
            }
        }
        drop(cache);
        self.bpe.remember(fresh);
        first_too_long
    }
}

/// The words clip's regex finds in an already cleaned text (exposed for tests).
#[pyfunction]
fn clip_pretokenize(text: &str) -> Vec<String> {
    let mut words = Vec::new();
    pretokenize::for_each_word(text, |word| {
        words.push(word.to_string());
        true
    });
    words
}

/// The fast path's cleaning of `text`, or None when it is not on the fast path (exposed for
/// tests; `extended` admits the non-ASCII characters of `FTFY_STABLE`).
#[pyfunction]
#[pyo3(signature = (text, extended=false))]
fn clip_fast_clean(text: &str, extended: bool) -> Option<String> {
    cleanup::is_fast(text, extended).then(|| cleanup::clean_fast(text))
}

/// The generated pre-tokenizer classes: the `regex` version they were read from, and the
/// ranges of `[\p{L}]`, `[\p{N}]` and `[^\s\p{L}\p{N}]` (IGNORECASE).
#[pyfunction]
fn clip_pretokenizer_classes() -> (&'static str, Table, Table, Table) {
    (
        char_classes::REGEX_VERSION,
        char_classes::LETTER.to_vec(),
        char_classes::NUMBER.to_vec(),
        char_classes::OTHER.to_vec(),
    )
}

/// Pre-tokenize with these classes (read from the installed `regex`) instead of the generated
/// ones, for the rest of the process. Returns false if classes were already set.
#[pyfunction]
fn clip_set_pretokenizer_classes(letter: Table, number: Table, other: Table) -> PyResult<bool> {
    for table in [&letter, &number, &other] {
        let sorted = table.windows(2).all(|w| w[0].1 < w[1].0);
        if !sorted || table.iter().any(|&(a, b)| a > b || b > 0x10FFFF) {
            return Err(PyValueError::new_err(
                "classes must be sorted, disjoint, inclusive code point ranges",
            ));
        }
    }
    Ok(pretokenize::set_classes(letter, number, other))
}

/// Whether the pre-tokenizer uses classes read from the installed `regex` package.
#[pyfunction]
fn clip_pretokenizer_classes_replaced() -> bool {
    pretokenize::classes_replaced()
}

/// The ftfy and Unicode versions the extended fast path was proven for.
#[pyfunction]
fn clip_fast_path_versions() -> (&'static str, &'static str) {
    (char_classes::FTFY_VERSION, char_classes::UNICODE_VERSION)
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<ClipTokenizer>()?;
    m.add_function(wrap_pyfunction!(clip_pretokenize, m)?)?;
    m.add_function(wrap_pyfunction!(clip_fast_clean, m)?)?;
    m.add_function(wrap_pyfunction!(clip_fast_path_versions, m)?)?;
    m.add_function(wrap_pyfunction!(clip_pretokenizer_classes, m)?)?;
    m.add_function(wrap_pyfunction!(clip_set_pretokenizer_classes, m)?)?;
    m.add_function(wrap_pyfunction!(clip_pretokenizer_classes_replaced, m)?)?;
    Ok(())
}
