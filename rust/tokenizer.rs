//! clip's `tokenize` in Rust: pre-tokenization, byte-level BPE with a cache, batch-parallel
//! with the GIL released. Text cleaning that needs ftfy stays in Python (a callback); plain
//! ASCII text takes a proven fast path (see `cleanup`).

mod bpe;
mod char_classes;
mod cleanup;
mod pretokenize;
mod vocab;

use bpe::Bpe;
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyList};
use rayon::prelude::*;
use std::collections::HashMap;
use vocab::Vocab;

/// Texts per parallel work item: big enough to amortise the cache lock, small enough to balance.
const CHUNK: usize = 64;

/// A text ready for pre-tokenization: either raw plain ASCII (cleaned here) or already cleaned
/// by clip's Python cleaning.
enum Prepared {
    PlainAscii(String),
    Cleaned(String),
}

impl Prepared {
    fn cleaned(&self) -> std::borrow::Cow<'_, str> {
        match self {
            Prepared::PlainAscii(text) => cleanup::clean_plain_ascii(text).into(),
            Prepared::Cleaned(text) => text.as_str().into(),
        }
    }
}

/// The BPE vocabulary of clip and its encoder. One instance serves all threads.
#[pyclass(frozen, module = "clipfast._native")]
pub struct ClipTokenizer {
    bpe: Bpe,
}

impl ClipTokenizer {
    /// Appends the ids of a cleaned text to `out`, stopping once it holds `limit` ids.
    fn encode_cleaned(
        &self,
        text: &str,
        limit: usize,
        out: &mut Vec<u32>,
        fresh: &mut HashMap<String, Vec<u32>>,
    ) {
        pretokenize::for_each_word(text, |word| {
            self.bpe.encode_word(word, out, fresh);
            out.len() < limit
        });
    }

    /// Takes each text out of `texts`, sending those off the fast path through `clean`.
    fn prepare(texts: &Bound<'_, PyList>, clean: &Bound<'_, PyAny>) -> PyResult<Vec<Prepared>> {
        let mut out = Vec::with_capacity(texts.len());
        for (index, item) in texts.iter().enumerate() {
            let text: String = item.extract().map_err(|_| {
                let kind = item
                    .get_type()
                    .name()
                    .map(|n| n.to_string())
                    .unwrap_or_else(|_| "?".into());
                PyTypeError::new_err(format!("texts[{index}] is {kind}, not str"))
            })?;
            if cleanup::is_plain_ascii(&text) {
                out.push(Prepared::PlainAscii(text));
            } else {
                out.push(Prepared::Cleaned(clean.call1((item,))?.extract()?));
            }
        }
        Ok(out)
    }
}

#[pymethods]
impl ClipTokenizer {
    /// `merges` is the decompressed text of `bpe_simple_vocab_16e6.txt.gz`.
    #[new]
    fn new(py: Python<'_>, merges: &str) -> PyResult<Self> {
        let vocab = py
            .detach(|| Vocab::from_merges(merges))
            .map_err(|e| PyValueError::new_err(e.to_string()))?;
        Ok(ClipTokenizer {
            bpe: Bpe::new(vocab),
        })
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
        let prepared = Self::prepare(texts, clean)?;
        let width = context_length;
        let (rows, too_long) = py.detach(|| {
            let mut rows = vec![0i32; prepared.len() * width];
            let too_long: Option<usize> = if width == 0 {
                // Every text has at least its two special tokens.
                (!prepared.is_empty()).then_some(0)
            } else {
                prepared
                    .par_chunks(CHUNK)
                    .zip(rows.par_chunks_mut(CHUNK * width))
                    .enumerate()
                    .filter_map(|(chunk_index, (texts, rows))| {
                        let mut fresh = HashMap::new();
                        let mut ids = Vec::new();
                        let mut first_too_long = None;
                        for (i, (text, row)) in texts.iter().zip(rows.chunks_mut(width)).enumerate()
                        {
                            ids.clear();
                            ids.push(self.bpe.vocab.start_of_text);
                            // Enough ids to know the text is too long: start + width ids + end > width.
                            self.encode_cleaned(&text.cleaned(), width + 1, &mut ids, &mut fresh);
                            ids.push(self.bpe.vocab.end_of_text);
                            if ids.len() > width {
                                if !truncate {
                                    first_too_long.get_or_insert(chunk_index * CHUNK + i);
                                    continue;
                                }
                                ids.truncate(width);
                                ids[width - 1] = self.bpe.vocab.end_of_text;
                            }
                            for (slot, &id) in row.iter_mut().zip(&ids) {
                                *slot = id as i32;
                            }
                        }
                        self.bpe.remember(fresh);
                        first_too_long
                    })
                    .min()
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
        let prepared = Self::prepare(&list, clean)?;
        Ok(py.detach(|| {
            let mut ids = Vec::new();
            let mut fresh = HashMap::new();
            for text in &prepared {
                self.encode_cleaned(&text.cleaned(), usize::MAX, &mut ids, &mut fresh);
            }
            self.bpe.remember(fresh);
            ids
        }))
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

/// Whether the text is on the fast path, and its cleaning there (exposed for tests).
#[pyfunction]
fn clip_plain_ascii_clean(text: &str) -> Option<String> {
    cleanup::is_plain_ascii(text).then(|| cleanup::clean_plain_ascii(text))
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<ClipTokenizer>()?;
    m.add_function(wrap_pyfunction!(clip_pretokenize, m)?)?;
    m.add_function(wrap_pyfunction!(clip_plain_ascii_clean, m)?)?;
    Ok(())
}
