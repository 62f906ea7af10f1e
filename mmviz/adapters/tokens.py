"""Readable display strings for tokens: word markers become spaces, byte tokens become their characters."""

from __future__ import annotations

import contextlib
import re
import weakref
from collections.abc import Sequence
from functools import lru_cache

_BYTE_TOKEN = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")


@lru_cache(maxsize=1)
def _byte_level_decoder() -> dict[str, int]:
    """Inverse of GPT-2's ``bytes_to_unicode``: the printable stand-in character of every byte."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    codes = list(printable)
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return {chr(code): byte for byte, code in zip(printable, codes, strict=True)}


def display_strings(tokenizer: object, ids: Sequence[int]) -> list[str]:
    """One display string per id, whitespace kept (``"▁cat"`` and ``"Ġcat"`` both become ``" cat"``).

    Example:
        >>> display_strings(tokenizer, [1, 450, 6635])          # doctest: +SKIP
        ['<s>', ' The', ' cat']
    """
    pieces = tokenizer.convert_ids_to_tokens([int(i) for i in ids])  # type: ignore[attr-defined]
    special = set(getattr(tokenizer, "all_special_tokens", []))
    byte_level = _is_byte_level(tokenizer, special)
    return [_display(piece, special, byte_level) for piece in pieces]


_BYTE_LEVEL: weakref.WeakKeyDictionary[object, bool] = weakref.WeakKeyDictionary()


def _is_byte_level(tokenizer: object, special: set[str]) -> bool:
    """GPT-2-style vocabularies spell a space as ``Ġ`` and never use SentencePiece's ``▁``. Decided once per
    tokenizer from its whole vocabulary, so every call shows a token the same way."""
    try:
        return _BYTE_LEVEL[tokenizer]
    except (KeyError, TypeError):
        pass
    vocab = getattr(tokenizer, "get_vocab", dict)()
    ordinary = [piece for piece in vocab if piece not in special]
    answer = any("Ġ" in p or "Ċ" in p for p in ordinary) and not any("▁" in p for p in ordinary)
    with contextlib.suppress(TypeError):  # not weak-referenceable: decide again next time
        _BYTE_LEVEL[tokenizer] = answer
    return answer


def _display(piece: str | None, special: set[str], byte_level: bool) -> str:
    if piece is None:
        return "�"
    if piece in special:
        return piece
    if byte_level:
        decoder = _byte_level_decoder()
        if all(ch in decoder for ch in piece):
            return bytes(decoder[ch] for ch in piece).decode("utf-8", errors="replace")
        return piece
    match = _BYTE_TOKEN.match(piece)
    if match:
        return bytes([int(match.group(1), 16)]).decode("utf-8", errors="replace")
    return piece.replace("▁", " ")


def word_starts(tokenizer: object, strings: Sequence[str], text: Sequence[bool]) -> list[bool]:
    """Whether each position starts a word, so that sub-word pieces can be merged for display.

    ``strings`` are the display strings (:func:`display_strings`), ``text`` says which positions are ordinary
    text. A text piece continues the previous word when the previous position is text too, the piece does not
    begin with whitespace (SentencePiece ``▁`` and byte-level ``Ġ`` already became spaces) and the previous piece
    does not end with whitespace (a newline ends a word). Word-level vocabularies
    (every token a word, spaces added when decoding) start a word at every position.

    Example:
        >>> word_starts(tokenizer, [" The", " gir", "affe", "?"], [True] * 4)   # doctest: +SKIP
        [True, True, False, False]
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    word_level = type(getattr(backend, "model", None)).__name__ == "WordLevel"
    starts = []
    for i, (string, is_text) in enumerate(zip(strings, text, strict=True)):
        joined = i > 0 and text[i - 1] and not string[:1].isspace() and not strings[i - 1][-1:].isspace()
        continues = not word_level and is_text and joined
        starts.append(not continues)
    return starts
