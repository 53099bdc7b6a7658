//! The fast path of clip's text cleaning, for text that ftfy and `html.unescape` leave unchanged.
//!
//! clip cleans with `ftfy.fix_text`, `html.unescape` twice, `strip`, `\s+` -> ' ', `strip`,
//! `lower`. For text whose bytes are all printable ASCII except `&`, or tab, line feed, form
//! feed, every step of ftfy 6 is the identity (read from ftfy's source):
//! `unescape_html` needs `&`; `fix_encoding` returns ASCII text unchanged
//! (`possible_encoding(text, "ascii")`); `fix_c1_controls`, `fix_latin_ligatures`,
//! `fix_character_width`, `uncurl_quotes`, `fix_surrogates` only touch non-ASCII characters;
//! `fix_line_breaks` needs `\r` (or non-ASCII); `remove_terminal_escapes` needs ESC and
//! `remove_control_chars` needs U+0000-0008, 000B, 000E-001F or 007F (all excluded); NFC leaves
//! ASCII alone. `html.unescape` returns its input when there is no `&`. What remains is ASCII
//! whitespace collapsing and ASCII lower-casing, done here. Everything else goes through
//! clip's own Python cleaning.
//!
//! The extended fast path also admits the non-ASCII characters of `FTFY_STABLE` (generated,
//! with the argument, by `generate_tables.py`): lower-case or caseless, NFC-inert, not
//! whitespace, not touched by any ftfy fixer, unable to make ftfy's mojibake heuristic fire.
//! They pass cleaning unchanged. Two small sets join them: `FTFY_APOSTROPHES` (’ and two
//! others, which ftfy only uncurls to `'`) and `FTFY_SPACES` (no-break and other spaces ftfy
//! keeps, which the whitespace cleaning turns into one space). `FTFY_CURLY_QUOTES` (‘ “ ” ‟,
//! which ftfy uncurls) join only in a text without ftfy's lower_accented letters, which next to
//! them can look like mojibake to ftfy. These sets are only valid for the
//! ftfy and Unicode versions they were generated with; the caller enables them only when those
//! are installed.

use super::char_classes::{
    FTFY_APOSTROPHES, FTFY_CURLY_QUOTES, FTFY_SPACES, FTFY_STABLE, LOWER_ACCENTED,
};
use super::pretokenize::in_table;

fn is_plain_ascii_byte(b: u8) -> bool {
    matches!(b, b'\t' | b'\n' | b'\x0c' | b' '..=b'~') && b != b'&'
}

/// Whether `text` is on the ASCII fast path (see the module comment).
pub fn is_plain_ascii(text: &str) -> bool {
    text.bytes().all(is_plain_ascii_byte)
}

/// Whether `text` is on the fast path, with the non-ASCII characters of the generated sets when
/// `extended`.
pub fn is_fast(text: &str, extended: bool) -> bool {
    if is_plain_ascii(text) {
        return true;
    }
    if !extended {
        return false;
    }
    let mut curly = false;
    let mut accented = false;
    for c in text.chars() {
        if c.is_ascii() {
            if !is_plain_ascii_byte(c as u8) {
                return false;
            }
        } else if in_table(FTFY_STABLE, c) {
            accented |= LOWER_ACCENTED.binary_search(&c).is_ok();
        } else if FTFY_CURLY_QUOTES.iter().any(|&(q, _)| q == c) {
            curly = true;
        } else if !FTFY_APOSTROPHES.contains(&c) && !FTFY_SPACES.contains(&c) {
            return false;
        }
    }
    !(curly && accented)
}

/// What clip's cleaning makes of one non-space character of fast-path text.
fn clean_char(c: char) -> char {
    if c.is_ascii() {
        c.to_ascii_lowercase()
    } else if FTFY_APOSTROPHES.contains(&c) {
        '\''
    } else if let Some(&(_, plain)) = FTFY_CURLY_QUOTES.iter().find(|&&(q, _)| q == c) {
        plain
    } else {
        c
    }
}

/// clip's cleaning of a text for which `is_fast` holds: whitespace runs become one space, the
/// ends are stripped, curly apostrophes become `'`, ASCII letters are lower-cased (the other
/// characters are lower-case already or caseless).
pub fn clean_fast(text: &str) -> String {
    let is_space = |c: char| matches!(c, '\t' | '\n' | '\x0c' | ' ') || FTFY_SPACES.contains(&c);
    let mut out = String::with_capacity(text.len());
    for word in text.split(is_space).filter(|w| !w.is_empty()) {
        if !out.is_empty() {
            out.push(' ');
        }
        out.extend(word.chars().map(clean_char));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fast_path_accepts_only_plain_ascii() {
        assert!(is_plain_ascii("A photo of a dog."));
        assert!(is_plain_ascii("tab\tand\nnewline\x0cff"));
        assert!(is_plain_ascii(""));
        assert!(!is_plain_ascii("fish &amp; chips"));
        assert!(!is_plain_ascii("caf\u{e9}"));
        assert!(!is_plain_ascii("line\r\nbreak"));
        assert!(!is_plain_ascii("bell\x07"));
        assert!(!is_plain_ascii("vt\x0b"));
        assert!(!is_plain_ascii("del\x7f"));
        assert!(!is_plain_ascii("esc\x1b[31m"));
    }

    #[test]
    fn extended_fast_path_admits_only_stable_characters() {
        assert!(is_fast("caf\u{e9} \u{6771}\u{4eac} \u{1f436}", true));
        assert!(!is_fast("caf\u{e9}", false));
        assert!(!is_fast("CAF\u{c9}", true)); // upper case: lower() changes it
        assert!(is_fast("it\u{2019}s", true)); // ftfy only uncurls it
        assert!(is_fast("\u{201c}quoted\u{201d} \u{6771}", true)); // ftfy only uncurls them
        assert!(!is_fast("\u{201c}caf\u{e9}\u{201d}", true)); // beside lower_accented: heuristic
        assert!(!is_fast("\u{201a}quoted", true)); // low-9 quote: not in the set
        assert!(!is_fast("cafe\u{301}", true)); // combining mark: NFC composes it
        assert!(!is_fast("a\u{3000}b", true)); // ideographic space: width fix, whitespace
        assert!(!is_fast("\u{c3}\u{a9}t\u{c3}\u{a9}", true)); // mojibake
        assert!(!is_fast("fish &amp; chips \u{e9}", true));
    }

    #[test]
    fn lower_accented_is_sorted_for_binary_search() {
        assert!(LOWER_ACCENTED.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn cleans_like_clip() {
        assert_eq!(
            clean_fast("  A  Photo\tOF\n\na DOG.  "),
            "a photo of a dog."
        );
        assert_eq!(clean_fast("  Caf\u{e9}  AU\tLait "), "caf\u{e9} au lait");
        assert_eq!(clean_fast("\u{a0}It\u{2019}S\u{2009} ok\u{a0}"), "it's ok");
        assert_eq!(
            clean_fast("\u{201c}A\u{201d} \u{2018}b\u{2019}"),
            "\"a\" 'b'"
        );
        assert_eq!(clean_fast(" \t "), "");
        assert_eq!(clean_fast(""), "");
    }
}
