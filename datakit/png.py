"""A fast path for the single-channel PNGs of depth and label maps.

Inflating a 640x480 16-bit depth PNG costs more than decoding the JPEG beside it; most of that is
zlib (libpng links the system's). Here the IDAT stream is inflated by ISA-L (``isal``, about 2-3x
zlib) when installed, and PNG's row filters None, Sub and Up are undone with vectorised numpy over
runs of rows. Anything else (colour, interlacing, palette, Average/Paeth rows) returns ``None`` and
the caller falls back to the general decoder, so every valid PNG still decodes.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable
from typing import Any

import numpy as np

_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PROBE_ROWS = 32  # rows inflated before committing to the fast path
_decompressobj: Callable[[], Any]
try:
    from isal import isal_zlib

    _decompressobj = isal_zlib.decompressobj
except ImportError:  # pragma: no cover - optional speed-up
    _decompressobj = zlib.decompressobj


def header(data: bytes) -> tuple[int, int, int, int] | None:
    """(width, height, bit depth, colour type) from the IHDR chunk, or None if not a PNG."""
    if len(data) < 26 or data[:8] != _SIGNATURE or data[12:16] != b"IHDR":
        return None
    width, height, depth, colour = struct.unpack_from(">IIBB", data, 16)
    return width, height, depth, colour


def decode_gray(data: bytes, *, rows: int | None = None) -> np.ndarray | None:
    """(H, W) uint8/uint16 array of a greyscale PNG whose rows use filters None/Sub/Up only, else
    None. ``rows``: inflate and return only the first ``rows`` rows (rows are stored top down, so a
    caller that needs no more stops early). Raises ``ValueError`` for a corrupt stream."""
    if data[:8] != _SIGNATURE:
        return None
    pos, idat, ihdr = 8, [], None
    n = len(data)
    while pos + 8 <= n:
        length, kind = struct.unpack_from(">I4s", data, pos)
        body = data[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            if len(body) != 13:  # corrupt header: the general decoder reports it
                return None
            ihdr = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat.append(body)
        elif kind == b"IEND":
            break
        pos += 12 + length
    if ihdr is None:
        return None
    width, height, depth, colour, _, _, interlace = ihdr
    if colour != 0 or depth not in (8, 16) or interlace != 0 or width == 0 or height == 0:
        return None
    bpp = depth // 8
    stride = width * bpp + 1
    if rows is not None:
        height = max(1, min(height, rows))
    size = stride * height
    try:
        # Probe the first rows: a stream with Average/Paeth rows goes back to the caller early.
        inflater = _decompressobj()
        head = inflater.decompress(b"".join(idat), stride * PROBE_ROWS)
        if any(head[i] > 2 for i in range(0, len(head) - len(head) % stride, stride)):
            return None
        rest = max(0, size - len(head))
        tail = inflater.decompress(inflater.unconsumed_tail, rest) if rest else b""
        raw = np.frombuffer(head + tail, np.uint8)
    except Exception as exc:  # zlib.error, or isal's IsalError
        raise ValueError(f"PNG data does not inflate ({exc})") from None
    if raw.size < size:
        raise ValueError("PNG data is truncated")
    scanlines = raw[:size].reshape(height, stride)
    filters = scanlines[:, 0]
    if (filters > 2).any():
        return None
    # A copy, always: a single row is already contiguous, and ascontiguousarray would hand back a
    # view of the read-only inflated bytes (Sub rows could not be undone in place).
    out = scanlines[:, 1:].copy()
    # Row by row with whole-row vector adds: faster than numpy's cumsum along either axis here.
    prev = None
    for row, kind in zip(out, filters.tolist(), strict=True):
        if kind == 1:
            pixels = row.reshape(width, bpp)
            np.cumsum(pixels, axis=0, dtype=np.uint8, out=pixels)
        elif kind == 2 and prev is not None:
            np.add(row, prev, out=row)
        prev = row
    if depth == 16:
        return out.view(">u2").astype(np.uint16)
    return out
