"""Drop-in for ``clip.simple_tokenizer``: ``SimpleTokenizer`` with ``encode``/``decode`` and the
``encoder``/``decoder``/``byte_encoder``/``byte_decoder``/``bpe_ranks`` attributes of clip's.

Encoding runs in Rust (see ``clipfast.tokenizer``); the ids are clip's.
"""

from __future__ import annotations

import gzip
from collections.abc import Iterable
from functools import lru_cache

from .tokenizer import clean_text, default_bpe, native_tokenizer

__all__ = [
    "SimpleTokenizer",
    "basic_clean",
    "bytes_to_unicode",
    "default_bpe",
    "get_pairs",
    "whitespace_clean",
]

_END_OF_WORD = "</w>"


@lru_cache
def bytes_to_unicode() -> dict[int, str]:
    """Byte value -> the printable character that stands for it in the BPE (clip's table)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
    table = {b: chr(b) for b in printable}
    others = [b for b in range(256) if b not in table]
    table.update({b: chr(256 + i) for i, b in enumerate(others)})
    return table


def get_pairs(word: tuple[str, ...]) -> set[tuple[str, str]]:
    """The adjacent symbol pairs of ``word`` (clip's ``get_pairs``)."""
    return set(zip(word, word[1:]))


def basic_clean(text: str) -> str:
    """ftfy, HTML unescaping twice, strip (clip's ``basic_clean``)."""
    import html

    import ftfy

    return html.unescape(html.unescape(ftfy.fix_text(text))).strip()


def whitespace_clean(text: str) -> str:
    """Whitespace runs to one space, stripped (clip's ``whitespace_clean``)."""
    import regex

    return str(regex.sub(r"\s+", " ", text).strip())


class SimpleTokenizer:
    """clip's BPE tokenizer: ``encode(text) -> list[int]``, ``decode(ids) -> str``."""

    def __init__(self, bpe_path: str = default_bpe()) -> None:
        self._native = native_tokenizer(bpe_path)
        self.byte_encoder = bytes_to_unicode()
        self.byte_decoder = {v: k for k, v in self.byte_encoder.items()}
        symbols = self._native.symbols()
        self.encoder = dict(zip(symbols, range(len(symbols))))
        self.decoder = {v: k for k, v in self.encoder.items()}
        with gzip.open(bpe_path) as f:
            lines = f.read().decode("utf-8").split("\n")[1 : 49152 - 256 - 2 + 1]
        merges = [tuple(line.split()) for line in lines]
        self.bpe_ranks = dict(zip(merges, range(len(merges))))
        self._bpe_cache = {"<|startoftext|>": "<|startoftext|>", "<|endoftext|>": "<|endoftext|>"}

    def bpe(self, token: str) -> str:
        """The BPE pieces of one pre-tokenized, byte-encoded word, space-separated, the last ending
        in ``</w>`` (clip's ``bpe``; ``encode`` does this in Rust)."""
        cached = self._bpe_cache.get(token)
        if cached is not None:
            return cached
        symbols = [*token[:-1], token[-1] + _END_OF_WORD]
        ranks = self.bpe_ranks
        while len(symbols) > 1:
            # The adjacent pair merged earliest in training, then each of its occurrences, left
            # to right without overlaps.
            ranked = [(ranks[pair], pair) for pair in zip(symbols, symbols[1:]) if pair in ranks]
            if not ranked:
                break
            _, (first, second) = min(ranked)
            merged: list[str] = []
            at = 0
            while at < len(symbols):
                if at + 1 < len(symbols) and symbols[at] == first and symbols[at + 1] == second:
                    merged.append(first + second)
                    at += 2
                else:
                    merged.append(symbols[at])
                    at += 1
            symbols = merged
        result = " ".join(symbols)
        self._bpe_cache[token] = result
        return result

    def encode(self, text: str) -> list[int]:
        """The BPE ids of ``text`` after clip's cleaning, without start/end tokens."""
        return self._native.encode(text, clean_text)

    def decode(self, tokens: Iterable[int]) -> str:
        """The text of ``tokens``; word ends become spaces, broken UTF-8 becomes U+FFFD."""
        text = "".join(self.decoder[int(token)] for token in tokens)
        raw = bytearray(self.byte_decoder[c] for c in text)
        return raw.decode("utf-8", errors="replace").replace(_END_OF_WORD, " ")
