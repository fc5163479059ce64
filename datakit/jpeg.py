"""A JPEG's frame header (SOF marker) read without decoding the image."""

from __future__ import annotations


def jpeg_header(data: bytes) -> tuple[int, int, int] | None:
    """(width, height, components) from a JPEG's SOF marker; None when the bytes hold none before
    they end (not a JPEG, or cut before its frame header)."""
    i = 2
    n = len(data)
    if data[:2] != b"\xff\xd8":
        return None
    while i + 9 < n:
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:
            i += 1
            continue
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            height = int.from_bytes(data[i + 5 : i + 7], "big")
            width = int.from_bytes(data[i + 7 : i + 9], "big")
            return width, height, data[i + 9]
        i += 2 + int.from_bytes(data[i + 2 : i + 4], "big")
    return None
