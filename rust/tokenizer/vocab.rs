//! clip's vocabulary, built from the merges file exactly as `SimpleTokenizer.__init__` does:
//! 256 byte symbols, the same 256 with `</w>`, one symbol per merge (lines 1..=48894 of
//! `bpe_simple_vocab_16e6.txt`), then `<|startoftext|>` and `<|endoftext|>`.

use std::collections::HashMap;

/// Number of merges clip reads from the file: `merges[1:49152-256-2+1]`.
pub const MERGE_COUNT: usize = 49152 - 256 - 2;
pub const START_OF_TEXT: &str = "<|startoftext|>";
pub const END_OF_TEXT: &str = "<|endoftext|>";
const END_OF_WORD: &str = "</w>";

/// The printable characters GPT-2's byte-level BPE uses for the 256 byte values, in clip's
/// order (`bytes_to_unicode`): bytes that are printable Latin-1 stand for themselves, the rest
/// map to U+0100 upwards in byte order.
pub fn byte_alphabet() -> Vec<(u8, char)> {
    let printable = |b: u8| matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
    let mut out: Vec<(u8, char)> = (0..=255u8)
        .filter(|&b| printable(b))
        .map(|b| (b, char::from(b)))
        .collect();
    for (code, b) in (256u32..).zip((0..=255u8).filter(|&b| !printable(b))) {
        // 256 + at most 68 code points: all valid chars.
        out.push((
            b,
            char::from_u32(code).unwrap_or(char::REPLACEMENT_CHARACTER),
        ));
    }
    out
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VocabError {
    #[error("merges file has {0} merge lines, clip needs {MERGE_COUNT}")]
    TooShort(usize),
    #[error("merge line {0} is not two symbols separated by a space")]
    BadLine(usize),
}

pub struct Vocab {
    /// Id -> symbol string.
    pub decoder: Vec<String>,
    /// (left id, right id) -> (rank, merged id).
    pub merges: HashMap<(u32, u32), (u32, u32)>,
    /// Byte value -> id of its symbol, inside a word and at its end (`</w>`).
    pub byte_ids: [u32; 256],
    pub byte_end_ids: [u32; 256],
    pub start_of_text: u32,
    pub end_of_text: u32,
}

impl Vocab {
    /// `text` is the decompressed merges file.
    pub fn from_merges(text: &str) -> Result<Vocab, VocabError> {
        let lines: Vec<&str> = text.split('\n').skip(1).take(MERGE_COUNT).collect();
        if lines.len() < MERGE_COUNT {
            return Err(VocabError::TooShort(lines.len()));
        }
        let mut pairs = Vec::with_capacity(lines.len());
        for (index, line) in lines.iter().enumerate() {
            // Python's str.split() with no argument: runs of whitespace, ends ignored.
            let parts: Vec<&str> = line.split_whitespace().collect();
            match parts.as_slice() {
                [left, right] => pairs.push((*left, *right)),
                _ => return Err(VocabError::BadLine(index + 2)),
            }
        }
        let alphabet = byte_alphabet();
        let mut decoder: Vec<String> = alphabet.iter().map(|&(_, c)| c.to_string()).collect();
        decoder.extend(alphabet.iter().map(|&(_, c)| format!("{c}{END_OF_WORD}")));
        decoder.extend(pairs.iter().map(|(l, r)| format!("{l}{r}")));
        decoder.push(START_OF_TEXT.to_string());
        decoder.push(END_OF_TEXT.to_string());
        // Symbol string -> id; for a repeated string the last id wins, as in clip's dict.
        let encoder: HashMap<String, u32> = decoder
            .iter()
            .enumerate()
            .map(|(i, s)| (s.clone(), i as u32))
            .collect();
        let id = |s: &str| encoder.get(s).copied();
        let mut merges = HashMap::with_capacity(pairs.len());
        for (rank, (left, right)) in pairs.iter().enumerate() {
            let merged = format!("{left}{right}");
            // A pair whose parts are not symbols can never form; clip's table just never hits it.
            if let (Some(l), Some(r), Some(m)) = (id(left), id(right), id(&merged)) {
                merges.insert((l, r), (rank as u32, m));
            }
        }
        let mut byte_ids = [0u32; 256];
        let mut byte_end_ids = [0u32; 256];
        for &(b, c) in &alphabet {
            byte_ids[usize::from(b)] = id(&c.to_string()).unwrap_or(0);
            byte_end_ids[usize::from(b)] = id(&format!("{c}{END_OF_WORD}")).unwrap_or(0);
        }
        let start_of_text = id(START_OF_TEXT).unwrap_or(0);
        let end_of_text = id(END_OF_TEXT).unwrap_or(0);
        Ok(Vocab {
            decoder,
            merges,
            byte_ids,
            byte_end_ids,
            start_of_text,
            end_of_text,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alphabet_is_a_permutation_of_bytes() {
        let alphabet = byte_alphabet();
        assert_eq!(alphabet.len(), 256);
        let mut bytes: Vec<u8> = alphabet.iter().map(|&(b, _)| b).collect();
        bytes.sort_unstable();
        assert_eq!(bytes, (0..=255u8).collect::<Vec<_>>());
        assert_eq!(alphabet[0], (b'!', '!'));
        assert_eq!(alphabet[188], (0, '\u{100}'));
        assert_eq!(
            alphabet.iter().find(|&&(b, _)| b == b' '),
            Some(&(b' ', '\u{120}'))
        );
    }

    #[test]
    fn rejects_short_or_malformed_files() {
        assert_eq!(
            Vocab::from_merges("header\na b\n").err(),
            Some(VocabError::TooShort(2))
        );
        let mut text = String::from("header\n");
        text.push_str("a b c\n");
        for _ in 1..MERGE_COUNT {
            text.push_str("a b\n");
        }
        assert_eq!(
            Vocab::from_merges(&text).err(),
            Some(VocabError::BadLine(2))
        );
    }
}
