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

import numpy as np

_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_inflate: Callable[[bytes], bytes]
try:
    from isal import isal_zlib

    _inflate = isal_zlib.decompress
except ImportError:  # pragma: no cover - optional speed-up
    _inflate = zlib.decompress


def decode_gray(data: bytes) -> np.ndarray | None:
    """(H, W) uint8/uint16 array of a greyscale PNG whose rows use filters None/Sub/Up only, else
    None. Raises ``ValueError`` for a corrupt stream."""
    if data[:8] != _SIGNATURE:
        return None
    pos, idat, header = 8, [], None
    n = len(data)
    while pos + 8 <= n:
        length, kind = struct.unpack_from(">I4s", data, pos)
        body = data[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat.append(body)
        elif kind == b"IEND":
            break
        pos += 12 + length
    if header is None:
        return None
    width, height, depth, colour, _, _, interlace = header
    if colour != 0 or depth not in (8, 16) or interlace != 0 or width == 0 or height == 0:
        return None
    bpp = depth // 8
    stride = width * bpp + 1
    try:
        raw = np.frombuffer(_inflate(b"".join(idat)), np.uint8)
    except Exception as exc:  # zlib.error, or isal's IsalError
        raise ValueError(f"PNG data does not inflate ({exc})") from None
    if raw.size < stride * height:
        raise ValueError("PNG data is truncated")
    rows = raw[: stride * height].reshape(height, stride)
    filters = rows[:, 0]
    if (filters > 2).any():
        return None
    out = np.ascontiguousarray(rows[:, 1:])
    # Runs of equal filter: Sub runs are independent rows (prefix sums along x with step bpp);
    # an Up run is a prefix sum down the columns, seeded by the row above it.
    change = np.flatnonzero(np.diff(filters)) + 1
    starts = np.concatenate(([0], change))
    ends = np.concatenate((change, [height]))
    for a, b in zip(starts.tolist(), ends.tolist(), strict=True):
        kind = filters[a]
        if kind == 1:
            block = out[a:b].reshape(b - a, width, bpp)
            np.cumsum(block, axis=1, dtype=np.uint8, out=block)
        elif kind == 2:
            lo = max(a - 1, 0)
            block = out[lo:b]
            np.cumsum(block, axis=0, dtype=np.uint8, out=block)
    if depth == 16:
        return out.view(">u2").astype(np.uint16)
    return out
