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
