"""Readable display strings for tokens: word markers become spaces, byte tokens become their characters."""

from __future__ import annotations

import re
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
    byte_level = _looks_byte_level(pieces, special)
    return [_display(piece, special, byte_level) for piece in pieces]


def _looks_byte_level(pieces: list[str | None], special: set[str]) -> bool:
    """GPT-2-style vocabularies spell a space as ``Ġ`` and never use SentencePiece's ``▁``."""
    ordinary = [p for p in pieces if p and p not in special]
    return any("Ġ" in p or "Ċ" in p for p in ordinary) and not any("▁" in p for p in ordinary)


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
