"""clip-compatible ``tokenize``: the same ids as ``clip.tokenize``, many times faster.

The cleaning is clip's (``ftfy.fix_text``, ``html.unescape`` twice, whitespace collapsed and
stripped, lower-case). Text that is plain ASCII (printable characters other than ``&``, tab,
line feed, form feed) provably passes ftfy and ``html.unescape`` unchanged, so its cleaning is
done in Rust; so does text that adds only non-ASCII characters from a generated set (lower-case
or caseless letters, CJK, emoji, ... that no ftfy fixer touches, that cannot trigger ftfy's
mojibake heuristic and that NFC leaves alone), when the installed ftfy and Unicode database are
those the set was proven for. Every other text is cleaned here, by the same calls clip makes. Pre-tokenization
(clip's regular expression, with character classes generated from the ``regex`` package) and
byte-level BPE (with a word cache) run in Rust over the whole batch in parallel, without the GIL.
"""

from __future__ import annotations

import array
import gzip
import html
import sys
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

from . import _native
from ._native import ClipTokenizer

if TYPE_CHECKING:
    import torch

__all__ = ["clean_text", "default_bpe", "native_tokenizer", "tokenize"]

_lock = threading.Lock()
_tokenizers: dict[str, ClipTokenizer] = {}
_whitespace: Any = None


def default_bpe() -> str:
    """Path of the BPE vocabulary clip ships (``bpe_simple_vocab_16e6.txt.gz``, MIT)."""
    return str(Path(__file__).with_name("bpe_simple_vocab_16e6.txt.gz"))


def native_tokenizer(bpe_path: Union[str, Path, None] = None) -> ClipTokenizer:
    """The Rust tokenizer for a merges file (clip's by default), built once per path."""
    key = str(bpe_path if bpe_path is not None else default_bpe())
    tokenizer = _tokenizers.get(key)
    if tokenizer is None:
        with _lock:
            tokenizer = _tokenizers.get(key)
            if tokenizer is None:
                import unicodedata

                import ftfy

                with gzip.open(key) as f:
                    merges = f.read().decode("utf-8")
                # Non-ASCII text skips ftfy only where the proof was made (same ftfy, same Unicode).
                tokenizer = ClipTokenizer(merges, ftfy.__version__, unicodedata.unidata_version)
                _follow_installed_regex()
                _tokenizers[key] = tokenizer
    return tokenizer


def _regex_classes() -> tuple[list[tuple[int, int]], ...]:
    """The ranges of clip's three character classes in the installed ``regex`` package, read in one
    pass over a string of every code point (about 0.1 s)."""
    import regex

    codes = array.array("I", range(0x110000))
    if sys.byteorder == "big":
        codes.byteswap()
    every = codes.tobytes().decode("utf-32-le", "surrogatepass")
    patterns = (r"[\p{L}]+", r"[\p{N}]+", r"[^\s\p{L}\p{N}]+")
    return tuple(
        [(m.start(), m.end() - 1) for m in regex.finditer(p, every, regex.IGNORECASE)] for p in patterns
    )


def _follow_installed_regex() -> None:
    """Pre-tokenize with the installed ``regex`` package's classes where they are not the generated
    ones: each ``regex`` release carries its own Unicode tables, and clip's tokens follow them."""
    import regex

    version, *generated = _native.clip_pretokenizer_classes()
    if regex.__version__ == version or _native.clip_pretokenizer_classes_replaced():
        return
    installed = _regex_classes()
    if list(installed) != generated:
        _native.clip_set_pretokenizer_classes(*installed)


def clean_text(text: str) -> str:
    """clip's text cleaning, by the same calls: ``whitespace_clean(basic_clean(text)).lower()``."""
    global _whitespace
    import ftfy

    if _whitespace is None:
        import regex  # clip's `\s` is the regex package's, not the re module's

        _whitespace = regex.compile(r"\s+")
    text = ftfy.fix_text(text)
    text = html.unescape(html.unescape(text))
    text = text.strip()
    text = _whitespace.sub(" ", text)
    return str(text.strip().lower())


def tokenize(
    texts: Union[str, Iterable[str]], context_length: int = 77, truncate: bool = False
) -> torch.IntTensor:
    """Token ids of ``texts`` as openai/CLIP's ``clip.tokenize`` returns them.

    Returns an int32 tensor of shape ``[len(texts), context_length]``: ``<|startoftext|>`` (49406),
    the BPE ids, ``<|endoftext|>`` (49407), zero padding. A text that does not fit raises
    ``RuntimeError`` naming it, unless ``truncate`` is true: then it is cut to ``context_length``
    tokens, the last of which becomes ``<|endoftext|>``.
    """
    import torch

    items = [texts] if isinstance(texts, str) else list(texts)
    if context_length < 0:
        raise RuntimeError(f"context_length must be >= 0, got {context_length}")
    if context_length == 0 and truncate and items:
        raise IndexError("context_length 0 leaves no room for the end token")
    data, too_long = native_tokenizer().encode_batch(items, clean_text, context_length, bool(truncate))
    if too_long is not None:
        raise RuntimeError(f"Input {items[too_long]} is too long for context length {context_length}")
    if not data:
        return torch.zeros(len(items), context_length, dtype=torch.int32)  # type: ignore[return-value]
    return torch.frombuffer(data, dtype=torch.int32).view(len(items), context_length)  # type: ignore[return-value]
