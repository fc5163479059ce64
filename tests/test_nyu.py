"""NYU Depth v2 converter on files written in the .mat v7.3 (HDF5) layout with h5py."""

from __future__ import annotations

import re
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from converters.base import Skipped
from converters.nyu import (
    KINECT_RGB_INTRINSICS,
    NYU40_CLASSES,
    NyuConfig,
    NyuConverter,
    metres_to_codes,
)
from datakit.errors import SourceError
from datakit.schema import Sample
from tests.converted_fixtures import assert_one_line_error, read_converted
from tests.nyu_fixtures import build_nyu, write_class_mapping, write_nyu, write_splits


def _samples(**cfg: object) -> list[Sample]:
    conv = NyuConverter(NyuConfig(**cfg))  # type: ignore[arg-type]
    out = [s for u in conv.units() for s in conv.convert(u)]
    assert not any(isinstance(s, Skipped) for s in out)
    return out  # type: ignore[return-value]


def test_frames_land_upright_and_exact(tmp_path: Path) -> None:
    fx = build_nyu(tmp_path / "nyu.mat", n=3, size=(32, 24))
    samples = _samples(mat=str(fx.path))
    assert [s.key for s in samples] == ["nyu_0001", "nyu_0002", "nyu_0003"]
    for i, s in enumerate(samples):
        assert s.rgb.shape == (24, 32, 3) and s.rgb.flags.c_contiguous
        np.testing.assert_array_equal(s.rgb, fx.rgb[i])
        assert s.depth.dtype == np.uint16 and s.depth.shape == (24, 32)
        np.testing.assert_array_equal(s.depth, np.rint(fx.depth[i].astype(np.float64) * 1000))
        assert np.abs(s.depth * 0.001 - fx.depth[i]).max() <= 0.0005 + 1e-6
        assert s.label.dtype == np.uint16
        np.testing.assert_array_equal(s.label, fx.labels[i])
        assert s.meta["depth_scale"] == 0.001 and s.meta["depth_unit"] == "m"
        assert s.meta["scene"] == fx.scenes[i] and s.meta["id"] == f"{i + 1:04d}"
        assert s.split == "train" and "intrinsics" not in s.meta  # not the 640x480 Kinect frame
    info = NyuConverter(NyuConfig(mat=str(fx.path))).info()
    assert info.labels.name == "nyu894" and info.labels.classes == ("unlabeled", *fx.names)
    assert info.labels.ignore_index == 0 and info.depth_scale == 0.001


def test_orientation_on_a_wide_frame(tmp_path: Path) -> None:
    """A 40x16 frame whose pixels encode their own x, y: rows stay rows, the origin stays top-left."""
    fx = build_nyu(tmp_path / "nyu.mat", n=1, size=(40, 16), coords=True)
    (s,) = _samples(mat=str(fx.path))
    assert s.rgb.shape[:2] == (16, 40) and s.depth.shape == (16, 40) and s.label.shape == (16, 40)
    ys, xs = np.mgrid[0:16, 0:40]
    np.testing.assert_array_equal(s.rgb[..., 0], xs)
    np.testing.assert_array_equal(s.rgb[..., 1], ys)
    np.testing.assert_array_equal(s.label, ys * 40 + xs)


def test_raw_depth_field_keeps_holes(tmp_path: Path) -> None:
    fx = build_nyu(tmp_path / "nyu.mat", n=2)
    (s, _) = _samples(mat=str(fx.path), depth_field="rawDepths")
    assert np.all(s.depth[:2, :3] == 0) and np.all(s.depth[2:] > 0)


def test_label_map_and_splits(tmp_path: Path) -> None:
    fx = build_nyu(tmp_path / "nyu.mat", n=4, num_classes=12)
    mapping = [1, 2, 3, 40, 0, 5, 6, 7, 8, 9, 10, 11]  # raw class 5 -> nyu40 0 (unlabeled)
    map_path = write_class_mapping(tmp_path / "classMapping40.mat", mapping)
    split_path = write_splits(tmp_path / "splits.mat", train=[3, 1], test=[2])
    conv = NyuConverter(
        NyuConfig(mat=str(fx.path), label_map=str(map_path), splits=str(split_path))
    )
    assert [(u.split, u.payload) for u in conv.units()] == [("train", (0, 2)), ("test", (1,))]
    assert conv.info().labels.name == "nyu40" and conv.info().labels.classes == NYU40_CLASSES
    samples = [s for u in conv.units() for s in conv.convert(u)]
    assert [(s.key, s.split) for s in samples] == [
        ("nyu_0001", "train"),
        ("nyu_0003", "train"),
        ("nyu_0002", "test"),
    ]
    for s in samples:
        raw = fx.labels[s.meta["index"] - 1]
        expected = np.full(raw.shape, 255, np.uint8)
        for k, nyu40 in enumerate(mapping, start=1):
            if nyu40 > 0:
                expected[raw == k] = nyu40 - 1
        assert s.label.dtype == np.uint8
        np.testing.assert_array_equal(s.label, expected)
    # the same mapping as text
    txt = tmp_path / "map.txt"
    txt.write_text("\n".join(map(str, mapping)))
    (t, *_) = _samples(mat=str(fx.path), label_map=str(txt))
    np.testing.assert_array_equal(t.label, samples[0].label)


def test_memory_does_not_grow_with_frames(tmp_path: Path) -> None:
    """Peak Python/numpy allocation while converting 4 vs 48 frames of 128x96: flat, far below the file."""
    size = (128, 96)
    frame_bytes = 128 * 96 * (3 + 4 + 2)

    def peak(n: int) -> int:
        fx = build_nyu(tmp_path / f"nyu{n}.mat", n=n, size=size, seed=n)
        conv = NyuConverter(NyuConfig(mat=str(fx.path)))
        units = conv.units()
        tracemalloc.start()
        try:
            count = 0
            for u in units:
                for _s in conv.convert(u):
                    count += 1
            assert count == n
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    small, large = peak(4), peak(48)
    assert large < small + 2 * frame_bytes, (small, large)
    assert large < 48 * frame_bytes / 4, (large, 48 * frame_bytes)


def test_metres_to_codes_edges() -> None:
    d = np.array([[0.0, -1.0, np.nan, np.inf, 0.0004, 0.0006, 65.535, 65.6]], np.float32)
    np.testing.assert_array_equal(metres_to_codes(d), [[0, 0, 0, 0, 0, 1, 65535, 0]])


def test_kinect_intrinsics_at_640x480(tmp_path: Path) -> None:
    fx = build_nyu(tmp_path / "nyu.mat", n=1, size=(640, 480), num_classes=3)
    (s,) = _samples(mat=str(fx.path), labels=False)
    assert s.meta["intrinsics"] == KINECT_RGB_INTRINSICS and s.label is None


def test_bad_inputs_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="missing"):
        NyuConverter(NyuConfig(mat=str(tmp_path / "nope.mat"))).units()
    junk = tmp_path / "junk.mat"
    junk.write_bytes(b"MATLAB 5.0 MAT-file" + b"\0" * 200)
    with pytest.raises(SourceError, match="junk.mat"):
        NyuConverter(NyuConfig(mat=str(junk))).units()
    fx = build_nyu(tmp_path / "nyu.mat", n=2)
    bad_split = write_splits(tmp_path / "splits.mat", train=[1, 9], test=[2])
    with pytest.raises(SourceError, match="splits.mat"):
        NyuConverter(NyuConfig(mat=str(fx.path), splits=str(bad_split))).units()
    repeated = write_splits(tmp_path / "repeated.mat", train=[1, 1], test=[2])
    with pytest.raises(SourceError, match="repeated.mat: trainNdxs lists a frame more than once"):
        NyuConverter(NyuConfig(mat=str(fx.path), splits=str(repeated))).units()
    fractional = write_splits(tmp_path / "fractional.mat", train=[1.5], test=[2])  # type: ignore[list-item]
    with pytest.raises(SourceError, match="fractional.mat: trainNdxs must hold whole frame num"):
        NyuConverter(NyuConfig(mat=str(fx.path), splits=str(fractional))).units()
    bad_map = tmp_path / "map.txt"
    bad_map.write_text("1 2 41")
    with pytest.raises(SourceError, match="map.txt"):
        NyuConverter(NyuConfig(mat=str(fx.path), label_map=str(bad_map))).units()


def test_short_label_map_or_wrong_variable_is_one_error_line(tmp_path: Path) -> None:
    """A label map shorter than the file's class list would map every class past its end to
    255 without a word; a .mat without the variable said only "'mapClass'" (a KeyError)."""
    from datakit.cli import main

    fx = build_nyu(tmp_path / "nyu.mat", n=2, num_classes=12)
    short = write_class_mapping(tmp_path / "short.mat", [1, 2, 3])
    res = CliRunner().invoke(
        main, ["convert", "nyu", str(fx.path), str(tmp_path / "out"), "--label-map", str(short)]
    )
    line = assert_one_line_error(res, short, fx.path, out=tmp_path / "out")
    assert "label map has 3 entries" in line and "names 12 classes" in line
    splits = write_splits(tmp_path / "splits.mat", train=[1], test=[2])
    with pytest.raises(SourceError, match=r"splits.mat: not a label map: no variable 'mapClass'$"):
        NyuConverter(NyuConfig(mat=str(fx.path), label_map=str(splits))).units()
    with pytest.raises(SourceError, match=r"short.mat: .*: no variable 'trainNdxs'$"):
        NyuConverter(NyuConfig(mat=str(fx.path), splits=str(short))).units()


@pytest.mark.parametrize("name", ["splits.mat", "classMapping40.mat", "map.npy"])
def test_empty_splits_or_label_map_is_one_error_line(tmp_path: Path, name: str) -> None:
    """An empty file (a failed download) raises scipy's MatReadError / numpy's EOFError, which are
    neither OSError nor ValueError: they must still become one line naming the file."""
    from datakit.cli import main

    fx = build_nyu(tmp_path / "nyu.mat", n=2)
    empty = tmp_path / name
    empty.write_bytes(b"")
    option = "--splits" if name == "splits.mat" else "--label-map"
    with pytest.raises(SourceError, match=re.escape(str(empty))):
        NyuConverter(
            NyuConfig(mat=str(fx.path), **{option[2:].replace("-", "_"): str(empty)})
        ).units()
    res = CliRunner().invoke(
        main, ["convert", "nyu", str(fx.path), str(tmp_path / "out"), option, str(empty)]
    )
    assert_one_line_error(res, empty, out=tmp_path / "out")


@pytest.mark.parametrize(
    ("field", "dtype", "want"),
    [
        ("rgb", np.float32, "'images' is float32, expected uint8"),
        ("depth", np.uint16, "'depths' is uint16, expected float32 metres"),
        ("labels", np.int32, "'labels' is int32, expected uint16"),
    ],
)
def test_dataset_dtypes_name_the_file_and_dataset(
    tmp_path: Path, field: str, dtype: type, want: str
) -> None:
    from dataclasses import replace

    fx = build_nyu(tmp_path / "nyu.mat", n=2)
    write_nyu(replace(fx, **{field: getattr(fx, field).astype(dtype)}))
    with pytest.raises(SourceError, match=f"^{re.escape(str(fx.path))}: dataset {want}"):
        NyuConverter(NyuConfig(mat=str(fx.path))).units()
    from datakit.cli import main

    res = CliRunner().invoke(main, ["convert", "nyu", str(fx.path), str(tmp_path / "out")])
    assert_one_line_error(res, f"{fx.path}: dataset {want}", out=tmp_path / "out")


def test_unreadable_frame_is_skipped_naming_file_dataset_and_frame(tmp_path: Path) -> None:
    import h5py

    fx = build_nyu(tmp_path / "nyu.mat", n=3)
    with h5py.File(fx.path, "r") as f:
        chunk = f["images"].id.get_chunk_info(1)  # frame 2's gzip chunk
    data = bytearray(fx.path.read_bytes())
    data[chunk.byte_offset : chunk.byte_offset + chunk.size] = b"\0" * chunk.size
    fx.path.write_bytes(bytes(data))
    conv = NyuConverter(NyuConfig(mat=str(fx.path)))
    out = [s for u in conv.units() for s in conv.convert(u)]
    assert [s.key for s in out if isinstance(s, Sample)] == ["nyu_0001", "nyu_0003"]
    (skip,) = [s for s in out if isinstance(s, Skipped)]
    assert skip.source == str(fx.path)
    assert skip.reason.startswith("dataset 'images', frame 2: does not read")


def test_cli_convert(tmp_path: Path) -> None:
    from datakit.cli import main

    fx = build_nyu(tmp_path / "nyu.mat", n=3)
    out = tmp_path / "out"
    res = CliRunner().invoke(
        main, ["convert", "nyu", str(fx.path), str(out), "--no-progress", "--rgb-format", "png"]
    )
    assert res.exit_code == 0, res.output
    info, got = read_converted(out)
    assert info["source"] == "nyu" and info["depth"]["scale"] == 0.001
    assert info["labels"]["name"] == "nyu894" and info["splits"]["train"]["num_samples"] == 3
    for i in range(3):
        s = got[f"nyu_{i + 1:04d}"]
        np.testing.assert_array_equal(s.rgb, fx.rgb[i])
        np.testing.assert_array_equal(s.label, fx.labels[i])
        np.testing.assert_array_equal(s.depth_raw, np.rint(fx.depth[i].astype(np.float64) * 1000))


def test_converter_and_units_pickle_for_workers(tmp_path: Path) -> None:
    import pickle

    fx = build_nyu(tmp_path / "nyu.mat", n=2)
    conv = NyuConverter(NyuConfig(mat=str(fx.path)))
    clone = pickle.loads(pickle.dumps(conv))
    (unit,) = pickle.loads(pickle.dumps(conv.units()))
    assert [s.key for s in clone.convert(unit)] == ["nyu_0001", "nyu_0002"]  # type: ignore[union-attr]
