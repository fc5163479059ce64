"""The fast single-channel PNG path: bit-exact against OpenCV for every filter it takes, None for
the rest (the caller falls back), errors for corrupt data."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from datakit.png import decode_gray

FILTERS = {
    "none": cv2.IMWRITE_PNG_FILTER_NONE,
    "sub": cv2.IMWRITE_PNG_FILTER_SUB,
    "up": cv2.IMWRITE_PNG_FILTER_UP,
    "avg": cv2.IMWRITE_PNG_FILTER_AVG,
    "paeth": cv2.IMWRITE_PNG_FILTER_PAETH,
    "adaptive": cv2.IMWRITE_PNG_ALL_FILTERS,
}


def encode(arr: np.ndarray, filt: str) -> bytes:
    return cv2.imencode(".png", arr, [cv2.IMWRITE_PNG_FILTER, FILTERS[filt]])[1].tobytes()


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
@pytest.mark.parametrize("filt", list(FILTERS))
def test_exact_or_declines(dtype, filt):
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:61, 0:83]
    arr = (xx * 37 + yy * 11 + rng.integers(0, 50, xx.shape)).astype(dtype)
    out = decode_gray(encode(arr, filt))
    if out is None:
        assert filt in ("avg", "paeth", "adaptive")
    else:
        assert out.dtype == arr.dtype and np.array_equal(out, arr)
    for f in ("none", "sub", "up"):
        assert decode_gray(encode(arr, f)) is not None


def test_colour_and_non_png_decline():
    rgb = np.zeros((4, 5, 3), np.uint8)
    assert decode_gray(cv2.imencode(".png", rgb)[1].tobytes()) is None
    assert decode_gray(b"not a png") is None


def test_truncated_stream_raises():
    data = encode(np.arange(4000, dtype=np.uint16).reshape(40, 100), "up")
    idat = data.index(b"IDAT")
    with pytest.raises(ValueError):
        decode_gray(data[: idat + 40] + data[-12:])


def test_first_rows_only_and_header():
    arr = np.arange(60 * 70, dtype=np.uint16).reshape(60, 70) * 7
    data = encode(arr, "up")
    assert np.array_equal(decode_gray(data, rows=13), arr[:13])
    assert np.array_equal(decode_gray(data, rows=500), arr)
    from datakit.png import header

    assert header(data) == (70, 60, 16, 0)
    assert header(b"nope") is None


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
@pytest.mark.parametrize("shape", [(1, 5), (1, 1), (3, 1), (40, 1)])
def test_single_row_or_column_sub_rows(dtype, shape):
    """One row is already contiguous: the fast path undid Sub in place on the read-only inflated
    bytes ("output array is read-only") and handed back a read-only view."""
    arr = (np.arange(shape[0] * shape[1]) * 97 + 3).astype(dtype).reshape(shape)
    for filt in ("none", "sub", "up"):
        out = decode_gray(encode(arr, filt))
        assert out is not None and out.dtype == arr.dtype and np.array_equal(out, arr)
        assert out.flags.writeable
    data = encode(np.tile(arr, (5, 1)), "sub")
    assert np.array_equal(decode_gray(data, rows=1), arr[:1])


def test_cut_header_declines_instead_of_struct_error():
    from datakit.png import header

    cut = b"\x89PNG\r\n\x1a\n\x00\x00\x00\x0dIHDR\x00\x00\x00\x05"
    assert header(cut) is None
    assert decode_gray(cut) is None


ADAM7 = (
    (0, 0, 8, 8),
    (4, 0, 8, 8),
    (0, 4, 4, 8),
    (2, 0, 4, 4),
    (0, 2, 2, 4),
    (1, 0, 2, 2),
    (0, 1, 1, 2),
)


def handmade_png(
    arr: np.ndarray, filters: list[int], *, colour: int = 0, adam7: bool = False
) -> bytes:
    """A PNG of ``arr`` (H, W) grey or (H, W, 2) grey+alpha whose row r uses filter ``filters[r]``
    (0 None, 1 Sub, 2 Up, 3 Average, 4 Paeth); Adam7-interlaced (filter None) with ``adam7``."""
    import struct
    import zlib

    def paeth(a: int, b: int, c: int) -> int:
        p = a + b - c
        pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
        return a if pa <= pb and pa <= pc else b if pb <= pc else c

    def filtered(rows: np.ndarray, kinds: list[int], bpp: int) -> bytes:
        out, prev = b"", [0] * rows.shape[1]
        for row, kind in zip(rows.tolist(), kinds, strict=True):
            line = []
            for i, x in enumerate(row):
                a, b = row[i - bpp] if i >= bpp else 0, prev[i]
                c = prev[i - bpp] if i >= bpp else 0
                pred = [0, a, b, (a + b) // 2, paeth(a, b, c)][kind]
                line.append((x - pred) % 256)
            out += bytes([kind, *line])
            prev = row
        return out

    h, w = arr.shape[:2]
    big = arr.dtype == np.uint16
    as_bytes = (arr.astype(">u2") if big else arr).view(np.uint8).reshape(h, w, -1)
    bpp = as_bytes.shape[2]
    if adam7:
        data = b""
        for x0, y0, dx, dy in ADAM7:
            sub = as_bytes[y0::dy, x0::dx]
            if sub.size:
                data += filtered(sub.reshape(sub.shape[0], -1), [0] * sub.shape[0], bpp)
    else:
        data = filtered(as_bytes.reshape(h, -1), filters, bpp)

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    ihdr = struct.pack(">IIBBBBB", w, h, 16 if big else 8, colour, 0, 0, int(adam7))
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(data))
        + chunk(b"IEND", b"")
    )


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_average_or_paeth_rows_after_the_probe_decline(dtype):
    """The first PROBE_ROWS rows use None/Sub/Up only; Average and Paeth rows further down must
    still send the PNG back to the general decoder, never come out as wrong depth."""
    from datakit.png import PROBE_ROWS

    rng = np.random.default_rng(3)
    h = PROBE_ROWS + 12
    arr = rng.integers(0, np.iinfo(dtype).max, (h, 9), dtype=dtype, endpoint=True)
    filters = [r % 3 for r in range(PROBE_ROWS + 4)] + [3, 4] * 4
    data = handmade_png(arr, filters)
    assert np.array_equal(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED), arr)
    assert decode_gray(data) is None
    # only the clean first rows asked for: the fast path may take them, and exactly
    assert np.array_equal(decode_gray(data, rows=PROBE_ROWS), arr[:PROBE_ROWS])


def test_grey_alpha_and_interlaced_pngs_decline():
    # pixel values 0..2: every byte reads as a filter type the fast path takes, so only the header
    # check keeps these layouts from being decoded as plain grey rows
    rng = np.random.default_rng(4)
    grey_alpha = rng.integers(0, 3, (6, 7, 2), dtype=np.uint8)
    data = handmade_png(grey_alpha, [0] * 6, colour=4)
    assert decode_gray(data) is None
    for dtype in (np.uint8, np.uint16):
        arr = rng.integers(0, 3, (11, 13), dtype=dtype)
        data = handmade_png(arr, [], adam7=True)
        assert np.array_equal(
            cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED), arr
        )
        assert decode_gray(data) is None
