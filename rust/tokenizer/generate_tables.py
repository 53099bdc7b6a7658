"""Writes rust/tokenizer/char_classes.rs: the character classes of clip's pre-tokenizer regex.

clip splits text with the `regex` package and the pattern
``<\\|startoftext\\|>|<\\|endoftext\\|>|'s|'t|'re|'ve|'m|'ll|'d|[\\p{L}]+|[\\p{N}]|[^\\s\\p{L}\\p{N}]+``
compiled with IGNORECASE. Rather than trusting another Unicode database (Rust's std, a crate), the
classes are read from the `regex` package itself, code point by code point, with the same flag:
under IGNORECASE a few characters fall in no class at all (U+0345 folds to a letter, so the negated
class excludes it while ``[\\p{L}]`` does not include it) and are skipped like whitespace.
tests/test_tokenize.py checks the generated tables against the installed `regex` exhaustively.

It also writes FTFY_STABLE: the non-ASCII characters that clip's cleaning provably leaves alone
in any text made of them and of fast-path ASCII (see ``ftfy_stable`` below for the argument, and
tests/test_tokenize.py for the checks). That set depends on ftfy's tables and on Python's Unicode
database, so the versions it was made with are recorded and clipfast uses it only when the
installed ones are the same.

Run: python rust/tokenizer/generate_tables.py  (then cargo fmt)
"""

from __future__ import annotations

import sys
import unicodedata
from pathlib import Path

import regex

FLAGS = regex.IGNORECASE
CLASSES = {
    "LETTER": regex.compile(r"[\p{L}]", FLAGS),
    "NUMBER": regex.compile(r"[\p{N}]", FLAGS),
    "OTHER": regex.compile(r"[^\s\p{L}\p{N}]", FLAGS),
}


def ranges(pattern: regex.Pattern[str]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    start = None
    for code in range(0x110000):
        hit = pattern.match(chr(code)) is not None
        if hit and start is None:
            start = code
        elif not hit and start is not None:
            out.append((start, code - 1))
            start = None
    if start is not None:
        out.append((start, 0x10FFFF))
    return out


def _composable_seconds() -> set[int]:
    """Characters that NFC can merge into the character before them."""
    seconds = set()
    for code in range(0x110000):
        parts = unicodedata.decomposition(chr(code)).split()
        if len(parts) == 2 and not parts[0].startswith("<"):
            first, second = (chr(int(p, 16)) for p in parts)
            if unicodedata.normalize("NFC", first + second) == chr(code):
                seconds.add(ord(second))
    return seconds


def ftfy_stable() -> list[tuple[int, int]]:
    """Non-ASCII characters c such that, in any text of them and of fast-path ASCII characters,
    ``ftfy.fix_text``, ``html.unescape``, whitespace cleaning and ``str.lower`` change nothing but
    the ASCII whitespace and ASCII letters. Why each exclusion:

    - ftfy's fixers: C1 controls, ligatures, width forms, curly quotes, line separators, removed
      control characters (its own tables); ESC, ``&`` and ``\r`` are not ASCII fast-path characters.
    - ``fix_encoding`` returns at once unless ``badness.is_bad`` matches. Every alternative of its
      regex needs a character of the classes c1, bad, box, start/end punctuation, currency, numeric,
      law, common, an upper-case letter, a literal symbol of the pattern, or ``œ`` followed by a
      non-letter: all excluded (upper case because ``str.lower`` must keep c). Lower-case letters of
      lower_accented / lower_common / kaomoji stay: each alternative that names them also needs an
      excluded character.
    - NFC: c must be a starter (combining class 0), its own NFC, start its NFD with a starter, and
      neither c nor that first character may be the second half of a canonical composition; then
      no composition or reordering crosses a character boundary, and NFC changes nothing.
    - Whitespace (``\\s`` of the regex package, ``str.isspace``), unassigned code points, surrogates.
    """
    import html
    import re

    import ftfy
    from ftfy import badness, chardata

    categories = badness.MOJIBAKE_CATEGORIES
    mojibake = re.compile("[" + "".join(categories.values()) + "]")
    letters_kept = re.compile(
        "[" + categories["lower_accented"] + categories["lower_common"] + categories["kaomoji"] + "]"
    )
    pattern_literals = {ord(ch) for ch in badness.BADNESS_RE.pattern if not ch.isascii()}
    seconds = _composable_seconds()
    removed = set(chardata.CONTROL_CHARS) | set(chardata.LIGATURES) | set(chardata.WIDTH_MAP)
    whitespace = regex.compile(r"\s")

    def stable(code: int) -> bool:
        ch = chr(code)
        if code < 0x80 or 0xD800 <= code <= 0xDFFF or unicodedata.category(ch) == "Cn":
            return False
        if code in removed or 0x80 <= code <= 0x9F or code in (0x2028, 0x2029, 0x85):
            return False
        if chardata.SINGLE_QUOTE_RE.match(ch) or chardata.DOUBLE_QUOTE_RE.match(ch):
            return False
        if ch.lower() != ch or ch.isspace() or whitespace.match(ch) or ch in "Œœ":
            return False
        if mojibake.match(ch) and not (unicodedata.category(ch) == "Ll" and letters_kept.match(ch)):
            return False
        if code in pattern_literals and not letters_kept.match(ch):
            return False
        decomposed = unicodedata.normalize("NFD", ch)
        if unicodedata.combining(ch) or unicodedata.normalize("NFC", ch) != ch:
            return False
        if unicodedata.combining(decomposed[0]) or code in seconds or ord(decomposed[0]) in seconds:
            return False
        # Each character alone, as a last check of the argument above.
        sample = f"a{ch}{ch} {ch}"
        return ftfy.fix_text(sample) == sample and html.unescape(sample) == sample

    out: list[tuple[int, int]] = []
    start = None
    for code in range(0x110000):
        hit = stable(code)
        if hit and start is None:
            start = code
        elif not hit and start is not None:
            out.append((start, code - 1))
            start = None
    if start is not None:
        out.append((start, 0x10FFFF))
    return out


def _only_in_common(ch: str) -> bool:
    """True when ``ch`` is in no mojibake class of ftfy but "common". That class only feeds the
    alternative ``[ØÙ][common...][ØÙ][common...]`` of ``BADNESS_RE``, which needs an upper-case
    letter; ``\xa0`` also appears as a literal after ``[ÂÃÎÐ]``, ``Ã`` and ``β€``, which need an
    upper-case letter or ``€`` (never on the fast path)."""
    import re

    from ftfy import badness

    found = [k for k, v in badness.MOJIBAKE_CATEGORIES.items() if re.match("[" + v + "]", ch)]
    return found in ([], ["common"])


def ftfy_apostrophes() -> list[int]:
    """Characters ftfy's ``uncurl_quotes`` turns into ``'`` and that cannot make ``is_bad`` fire."""
    from ftfy import chardata

    return [
        code
        for code in range(0x80, 0x110000)
        if chardata.SINGLE_QUOTE_RE.match(chr(code)) and _only_in_common(chr(code))
    ]


def ftfy_curly_quotes() -> list[tuple[int, str]]:
    r"""Curly quotes ftfy uncurls (to ``'`` or ``"``) that are in no mojibake class but start/end
    punctuation: fast-path only in a text without any lower_accented letter. With the rest of the
    fast-path alphabet (no upper case, no bad/box/currency/numeric/law/c1 character), the
    alternatives of ``BADNESS_RE`` that can use start/end punctuation all need, in the same match,
    a character outside that alphabet or a lower_accented letter: ``[box end currency numeric]
    [lower_accented]``, ``[lower_accented ...][end][start]``, ``[lower_accented upper_accented]
    [start end]\w``, ``[lower_accented ...][start][numeric]``. ``‚`` and ``„`` are left out
    (``‚`` is a literal of the MacRoman alternatives)."""
    import re

    from ftfy import badness, chardata

    chosen = [0x2018, 0x201C, 0x201D, 0x201F]
    out = []
    for code in chosen:
        ch = chr(code)
        found = {k for k, v in badness.MOJIBAKE_CATEGORIES.items() if re.match("[" + v + "]", ch)}
        assert found <= {"start_punctuation", "end_punctuation"}, (hex(code), found)
        if chardata.SINGLE_QUOTE_RE.match(ch):
            out.append((code, "'"))
        else:
            assert chardata.DOUBLE_QUOTE_RE.match(ch), hex(code)
            out.append((code, '"'))
    return out


def lower_accented() -> list[int]:
    """ftfy's lower_accented class (letters that, next to curly quotes, look like mojibake)."""
    import re

    from ftfy import badness

    pattern = re.compile("[" + badness.MOJIBAKE_CATEGORIES["lower_accented"] + "]")
    return [code for code in range(0x80, 0x110000) if pattern.match(chr(code))]


def ftfy_spaces() -> list[int]:
    """Non-ASCII whitespace that ftfy leaves alone (not a line break, width form or control, NFC
    stable) and that clip's cleaning then turns into a plain space."""
    import ftfy
    from ftfy import chardata

    whitespace = regex.compile(r"\s")
    out = []
    for code in range(0x80, 0x110000):
        ch = chr(code)
        if not (whitespace.match(ch) and ch.isspace()) or code in (0x85, 0x2028, 0x2029):
            continue
        if code in chardata.WIDTH_MAP or code in chardata.CONTROL_CHARS or not _only_in_common(ch):
            continue
        if unicodedata.normalize("NFC", ch) != ch or ftfy.fix_text(f"a{ch}b") != f"a{ch}b":
            continue
        out.append(code)
    return out


def main() -> None:
    import ftfy

    tables = {name: ranges(pattern) for name, pattern in CLASSES.items()}
    tables["FTFY_STABLE"] = ftfy_stable()
    lines = [
        "//! Generated by rust/tokenizer/generate_tables.py from the `regex` package "
        f"{regex.__version__}: do not edit.",
        "//!",
        "//! Inclusive code point ranges, sorted, of the classes `[\\p{L}]`, `[\\p{N}]` and",
        "//! `[^\\s\\p{L}\\p{N}]` as clip's IGNORECASE pattern sees them. A character in none of",
        "//! them (whitespace, U+0345) is skipped by the pre-tokenizer.",
        "//!",
        "//! FTFY_STABLE: non-ASCII characters clip's cleaning leaves alone (see the generator), valid",
        "//! for the ftfy and Unicode versions below only.",
        "",
        f'pub const REGEX_VERSION: &str = "{regex.__version__}";',
        f'pub const FTFY_VERSION: &str = "{ftfy.__version__}";',
        f'pub const UNICODE_VERSION: &str = "{unicodedata.unidata_version}";',
        "",
    ]
    for name, table in tables.items():
        lines.append(f"pub const {name}: &[(u32, u32)] = &[")
        lines.extend(f"    (0x{a:04X}, 0x{b:04X})," for a, b in table)
        lines.append("];")
        lines.append("")
    lines.append("/// Non-ASCII apostrophes ftfy turns into `'` (and nothing else does).")
    apostrophes = ", ".join(f"'\\u{{{c:04X}}}'" for c in ftfy_apostrophes())
    lines.append(f"pub const FTFY_APOSTROPHES: &[char] = &[{apostrophes}];")
    lines.append("")
    lines.append("/// Curly quotes ftfy uncurls, and what to: fast path only without LOWER_ACCENTED letters.")
    curly = ", ".join(
        f"('\\u{{{c:04X}}}', '{r if r == chr(34) else chr(92) + r}')" for c, r in ftfy_curly_quotes()
    )
    lines.append(f"pub const FTFY_CURLY_QUOTES: &[(char, char)] = &[{curly}];")
    lines.append("")
    lines.append("/// ftfy's lower_accented letters (sorted).")
    accented = ", ".join(f"'\\u{{{c:04X}}}'" for c in lower_accented())
    lines.append(f"pub const LOWER_ACCENTED: &[char] = &[{accented}];")
    lines.append("")
    lines.append("/// Non-ASCII whitespace ftfy keeps; clip's whitespace cleaning makes it a space.")
    spaces = ", ".join(f"'\\u{{{c:04X}}}'" for c in ftfy_spaces())
    lines.append(f"pub const FTFY_SPACES: &[char] = &[{spaces}];")
    lines.append("")
    out = Path(__file__).with_name("char_classes.rs")
    out.write_text("\n".join(lines))
    print(f"wrote {out}: " + ", ".join(f"{k} {len(v)} ranges" for k, v in tables.items()), file=sys.stderr)


if __name__ == "__main__":
    main()
