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
