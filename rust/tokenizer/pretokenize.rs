//! clip's pre-tokenizer: the words that byte-level BPE then splits, found exactly as clip's
//! `regex.findall` finds them.
//!
//! The pattern, tried in this order at each position (leftmost-first alternation):
//! `<|startoftext|>`, `<|endoftext|>`, `'s`, `'t`, `'re`, `'ve`, `'m`, `'ll`, `'d` (all
//! case-insensitive), a run of letters, one number character, a run of other characters;
//! a character that starts none of these (whitespace) is skipped.

use std::sync::OnceLock;

use super::char_classes::{LETTER, NUMBER, OTHER};

/// A class table: sorted, inclusive code point ranges.
pub type Table = Vec<(u32, u32)>;

/// The classes `[\p{L}]`, `[\p{N}]`, `[^\s\p{L}\p{N}]` read from the installed `regex` package,
/// where its Unicode tables are not those the generated ones came from (each `regex` release
/// carries its own Unicode version: 2026.1.15, the last for Python 3.9, assigns fewer code points
/// than 2026.11.19). Set once per process by `clipfast.tokenizer`; clip's tokens follow the
/// installed `regex`, so these replace the generated tables.
static INSTALLED: OnceLock<[Table; 3]> = OnceLock::new();

/// Use these classes instead of the generated ones; false if classes were already set.
pub fn set_classes(letter: Table, number: Table, other: Table) -> bool {
    INSTALLED.set([letter, number, other]).is_ok()
}

/// Whether `set_classes` replaced the generated tables.
pub fn classes_replaced() -> bool {
    INSTALLED.get().is_some()
}

/// The literal alternatives of the pattern, in the pattern's order.
const LITERALS: [&str; 9] = [
    "<|startoftext|>",
    "<|endoftext|>",
    "'s",
    "'t",
    "'re",
    "'ve",
    "'m",
    "'ll",
    "'d",
];

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Class {
    Letter,
    Number,
    Other,
    Skipped,
}

pub fn in_table(table: &[(u32, u32)], c: char) -> bool {
    let code = c as u32;
    table
        .binary_search_by(|&(lo, hi)| {
            if hi < code {
                std::cmp::Ordering::Less
            } else if lo > code {
                std::cmp::Ordering::Greater
            } else {
                std::cmp::Ordering::Equal
            }
        })
        .is_ok()
}

fn class_of(c: char) -> Class {
    if c.is_ascii() {
        // The generated tables agree with this for ASCII; it is only the hot path.
        return match c {
            'a'..='z' | 'A'..='Z' => Class::Letter,
            '0'..='9' => Class::Number,
            '\t' | '\n' | '\x0b' | '\x0c' | '\r' | ' ' => Class::Skipped,
            _ => Class::Other,
        };
    }
    class_from_tables(c)
}

/// The class of `c` from the generated tables alone (no ASCII shortcut).
fn class_from_tables(c: char) -> Class {
    let (letter, number, other) = match INSTALLED.get() {
        Some([l, n, o]) => (&l[..], &n[..], &o[..]),
        None => (LETTER, NUMBER, OTHER),
    };
    if in_table(letter, c) {
        Class::Letter
    } else if in_table(number, c) {
        Class::Number
    } else if in_table(other, c) {
        Class::Other
    } else {
        Class::Skipped
    }
}

/// Whether `c` matches the pattern character `want` under the `regex` package's IGNORECASE
/// (simple case folding): for the letters of the literals that is the two ASCII cases, and
/// U+017F LATIN SMALL LETTER LONG S for `s` (measured over all code points).
fn matches_ignorecase(c: char, want: char) -> bool {
    c == want
        || (want.is_ascii_alphabetic() && c.to_ascii_lowercase() == want)
        || (want == 's' && c == '\u{17F}')
}

/// Length in bytes of the literal alternative that matches at the start of `rest`, if any.
fn literal_at(rest: &str) -> Option<usize> {
    'outer: for literal in LITERALS {
        let mut chars = rest.char_indices();
        for want in literal.chars() {
            match chars.next() {
                Some((_, c)) if matches_ignorecase(c, want) => {}
                _ => continue 'outer,
            }
        }
        return Some(chars.next().map_or(rest.len(), |(at, _)| at));
    }
    None
}

/// Calls `emit` with each pre-token of `text` (already cleaned and lower-cased), in order.
/// `emit` returns false to stop early.
pub fn for_each_word(text: &str, mut emit: impl FnMut(&str) -> bool) {
    let mut pos = 0;
    while pos < text.len() {
        let rest = &text[pos..];
        let end = match literal_at(rest) {
            Some(len) => pos + len,
            None => {
                let mut chars = rest.char_indices();
                let Some((_, first)) = chars.next() else {
                    break;
                };
                let class = class_of(first);
                match class {
                    Class::Skipped => {
                        pos += first.len_utf8();
                        continue;
                    }
                    Class::Number => pos + first.len_utf8(),
                    Class::Letter | Class::Other => {
                        let run = chars
                            .find(|&(_, c)| class_of(c) != class)
                            .map_or(rest.len(), |(at, _)| at);
                        pos + run
                    }
                }
            }
        };
        if !emit(&text[pos..end]) {
            return;
        }
        pos = end;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(text: &str) -> Vec<String> {
        let mut out = Vec::new();
        for_each_word(text, |w| {
            out.push(w.to_string());
            true
        });
        out
    }

    #[test]
    fn splits_like_clip() {
        assert_eq!(
            words("a photo of a dog."),
            ["a", "photo", "of", "a", "dog", "."]
        );
        assert_eq!(words("it's 2024!!"), ["it", "'s", "2", "0", "2", "4", "!!"]);
        assert_eq!(words("we're   they'll"), ["we", "'re", "they", "'ll"]);
        assert_eq!(
            words("<|startoftext|>hi<|endoftext|>"),
            ["<|startoftext|>", "hi", "<|endoftext|>"]
        );
        assert_eq!(words("café 東京"), ["café", "東京"]);
        assert_eq!(words(""), Vec::<String>::new());
    }

    #[test]
    fn long_s_folds_to_s_like_the_regex_package() {
        assert_eq!(words("it'\u{17F}"), ["it", "'\u{17F}"]);
        assert_eq!(words("<|\u{17F}tartoftext|>"), ["<|\u{17F}tartoftext|>"]);
    }

    #[test]
    fn ypogegrammeni_is_skipped() {
        // U+0345 folds to a letter, so IGNORECASE puts it in neither class.
        assert_eq!(words("a\u{345}b"), ["a", "b"]);
    }

    #[test]
    fn tables_agree_with_the_ascii_shortcut() {
        for byte in 0u8..128 {
            let c = char::from(byte);
            assert_eq!(class_from_tables(c), class_of(c), "{byte}");
        }
    }

    #[test]
    fn stops_when_asked() {
        let mut seen = 0;
        for_each_word("a b c d", |_| {
            seen += 1;
            seen < 2
        });
        assert_eq!(seen, 2);
    }
}
