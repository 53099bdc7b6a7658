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

/// Whether `text` is on the fast path (see the module comment).
pub fn is_plain_ascii(text: &str) -> bool {
    text.bytes()
        .all(|b| matches!(b, b'\t' | b'\n' | b'\x0c' | b' '..=b'~') && b != b'&')
}

/// clip's cleaning of a text for which `is_plain_ascii` holds: whitespace runs become one
/// space, the ends are stripped, letters are lower-cased.
pub fn clean_plain_ascii(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for word in text
        .split(['\t', '\n', '\x0c', ' '])
        .filter(|w| !w.is_empty())
    {
        if !out.is_empty() {
            out.push(' ');
        }
        out.extend(word.chars().map(|c| c.to_ascii_lowercase()));
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
    fn cleans_like_clip() {
        assert_eq!(
            clean_plain_ascii("  A  Photo\tOF\n\na DOG.  "),
            "a photo of a dog."
        );
        assert_eq!(clean_plain_ascii(" \t "), "");
        assert_eq!(clean_plain_ascii(""), "");
    }
}
