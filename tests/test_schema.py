"""The sample schema: round trips for every field, key validation, strict decoding."""

from __future__ import annotations

import pickle

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from datakit import schema
from datakit.errors import SampleError


def _meta(w: int, h: int, **extra: object) -> dict:
    return {
        "source": "test",
        "id": "a/1",
        "split": "train",
        "width": w,
        "height": h,
        "depth_scale": 0.001,
        "depth_unit": "m",
        **extra,
    }


shapes = st.tuples(st.integers(1, 24), st.integers(1, 24))


@settings(max_examples=40, deadline=None)
@given(data=st.data(), hw=shapes, label_dtype=st.sampled_from([np.uint8, np.uint16]))
def test_round_trip_every_field_png(data, hw, label_dtype):
    h, w = hw
    rgb = data.draw(hnp.arrays(np.uint8, (h, w, 3)))
    depth = data.draw(hnp.arrays(np.uint16, (h, w)))
    label = data.draw(hnp.arrays(label_dtype, (h, w)))
    s = schema.Sample("k_1", "train", rgb, _meta(w, h, pose=np.eye(4).tolist()), depth, label)
    members = schema.encode(s, rgb_format="png")
    assert list(members) == ["rgb.png", "depth.png", "label.png", "json"]
    d = schema.decode("k_1", members)
    np.testing.assert_array_equal(d.rgb, rgb)
    np.testing.assert_array_equal(d.depth_raw, depth)
    assert d.depth_raw.dtype == np.uint16
    np.testing.assert_array_equal(d.depth, depth.astype(np.float32) * np.float32(0.001))
    np.testing.assert_array_equal(d.label, label)
    assert d.label.dtype == label_dtype
    assert d.meta["pose"] == np.eye(4).tolist()


@settings(max_examples=15, deadline=None)
@given(hw=st.tuples(st.integers(8, 40), st.integers(8, 40)), value=st.integers(0, 255))
def test_jpeg_rgb_is_close(hw, value):
    h, w = hw
    rgb = np.full((h, w, 3), value, np.uint8)
    rgb[..., 1] = 255 - value
    s = schema.Sample("k", "train", rgb, _meta(w, h))
    d = schema.decode("k", schema.encode(s, rgb_format="jpg", jpeg_quality=95))
    assert d.depth is None and d.label is None
    assert np.abs(d.rgb.astype(int) - rgb).max() <= 4


def test_depth_png_is_real_16_bit_png():
    depth = np.array([[0, 1, 65535], [1000, 2000, 3000]], np.uint16)
    s = schema.Sample("k", "train", np.zeros((2, 3, 3), np.uint8), _meta(3, 2), depth)
    png = schema.encode(s)["depth.png"]
    back = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_UNCHANGED)
    assert back.dtype == np.uint16 and back.ndim == 2
    np.testing.assert_array_equal(back, depth)


@pytest.mark.parametrize("key", ["a.b", "", "a b", "x/y", "é", "k.rgb", "k\n"])
def test_bad_keys_are_refused(key):
    with pytest.raises(SampleError, match="invalid sample key"):
        schema.validate_key(key)


@pytest.mark.parametrize("key", ["scene0000_00_001250", "a-b_C9", "0"])
def test_good_keys(key):
    assert schema.validate_key(key) == key


def test_encode_refuses_wrong_dtypes_and_shapes():
    rgb = np.zeros((4, 5, 3), np.uint8)
    with pytest.raises(SampleError, match="depth must be 4x5 uint16"):
        schema.encode(schema.Sample("k", "train", rgb, _meta(5, 4), np.zeros((4, 5), np.float32)))
    with pytest.raises(SampleError, match="label must be"):
        schema.encode(
            schema.Sample("k", "train", rgb, _meta(5, 4), None, np.zeros((4, 4), np.uint8))
        )
    with pytest.raises(SampleError, match="metadata lacks depth_unit"):
        m = _meta(5, 4)
        del m["depth_unit"]
        schema.encode(schema.Sample("k", "train", rgb, m))
    with pytest.raises(SampleError, match="metadata says"):
        schema.encode(schema.Sample("k", "train", rgb, _meta(4, 4)))


@pytest.mark.parametrize("scale", [float("inf"), float("nan"), True, 0, -1.0, "0.001"])
def test_depth_scale_must_be_positive_finite(scale):
    rgb = np.zeros((4, 5, 3), np.uint8)
    with pytest.raises(SampleError, match="depth_scale must be"):
        schema.encode(schema.Sample("k", "train", rgb, _meta(5, 4, depth_scale=scale)))
    members = schema.encode(schema.Sample("k", "train", rgb, _meta(5, 4)))
    meta = members["json"].replace(b'"depth_scale":0.001', b'"depth_scale":Infinity')
    with pytest.raises(SampleError, match="depth_scale must be"):
        schema.decode("k", {**members, "json": meta})


def test_corrupt_png_header_is_a_sample_error_naming_the_member():
    """A PNG whose IHDR is cut short raised struct.error out of the fast path."""
    rgb = np.zeros((4, 5, 3), np.uint8)
    members = schema.encode(schema.Sample("k", "train", rgb, _meta(5, 4)), rgb_format="png")
    bad = b"\x89PNG\r\n\x1a\n\x00\x00\x00\x0dIHDR\x00\x00\x00\x05"
    with pytest.raises(SampleError, match=r"k\.depth\.png: image bytes do not decode"):
        schema.decode("k", {**members, "depth.png": bad})


def test_decode_is_strict_and_ignores_undeclared_members():
    rgb = np.zeros((4, 5, 3), np.uint8)
    members = schema.encode(schema.Sample("k", "train", rgb, _meta(5, 4)), rgb_format="png")

    members_with_pickle = {**members, "pyd": b"not really", "pickle": pickle.dumps(1)}
    d = schema.decode("k", members_with_pickle)  # undeclared members are dropped unread
    assert d.rgb.shape == (4, 5, 3)
    with pytest.raises(SampleError, match="missing member rgb"):
        schema.decode("k", {"json": members["json"]})
    eight_bit = cv2.imencode(".png", np.zeros((4, 5), np.uint8))[1].tobytes()
    with pytest.raises(SampleError, match="depth must be 4x5 uint16"):
        schema.decode("k", {**members, "depth.png": eight_bit})
    with pytest.raises(SampleError, match="do not decode"):
        schema.decode("k", {**members, "rgb.png": b"garbage"})
    with pytest.raises(SampleError, match="not JSON"):
        schema.decode("k", {**members, "json": b"{"})


@pytest.mark.parametrize("ext", ["rgb.png", "depth.png", "label.png"])
def test_empty_member_is_a_sample_error(ext):
    """cv2.imdecode raises cv2.error, not None, on an empty buffer: verify must report, not crash."""
    rgb = np.zeros((4, 5, 3), np.uint8)
    members = schema.encode(schema.Sample("k", "train", rgb, _meta(5, 4)), rgb_format="png")
    with pytest.raises(SampleError, match="empty member"):
        schema.decode("k", {**members, ext: b""})


def test_schema_table_lists_every_field():
    table = schema.schema_table_markdown()
    for f in schema.FIELDS:
        for ext in f.extensions:
            assert f"KEY.{ext}" in table
