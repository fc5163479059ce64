"""Cityscapes converter on real-layout trees built in tmp_path, and on the real resized val frame."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from converters.base import Skipped
from converters.cityscapes import (
    LABELS,
    CityscapesConfig,
    CityscapesConverter,
    depth_scale_for,
    disparity_to_depth_codes,
)
from datakit.errors import SourceError, UsageError
from datakit.schema import Sample
from tests.cityscapes_fixtures import (
    CAMERA,
    FrameData,
    build_cityscapes,
    expected_depth_m,
    expected_train_ids,
    write_frame,
)
from tests.converted_fixtures import assert_one_line_error, read_converted


def _run(src: Path, **cfg: object) -> list[Sample | Skipped]:
    conv = CityscapesConverter(CityscapesConfig(src=str(src), **cfg))  # type: ignore[arg-type]
    return [s for u in conv.units() for s in conv.convert(u)]


def _samples(src: Path, **cfg: object) -> list[Sample]:
    out = _run(src, **cfg)
    assert all(isinstance(s, Sample) for s in out), [s for s in out if isinstance(s, Skipped)]
    return out  # type: ignore[return-value]


def test_depth_scale_covers_max_depth_with_half_step_error() -> None:
    s = depth_scale_for(400.0)
    assert 65535 * s == pytest.approx(400.0)
    assert s / 2 < 0.00306  # documented worst case: 3.05 mm


def test_depth_matches_baseline_fx_over_disparity_pixel_by_pixel(tmp_path: Path) -> None:
    frames = build_cityscapes(tmp_path)
    samples = _samples(tmp_path, split=("val",))
    assert [s.key for s in samples] == [f.stem for f in frames]
    for fd, s in zip(frames, samples, strict=True):
        scale = s.meta["depth_scale"]
        assert scale == depth_scale_for(400.0) and s.meta["depth_unit"] == "m"
        z = expected_depth_m(fd.disparity, fd.camera)
        valid = np.isfinite(z) & (z <= 400.0)
        got = s.depth.astype(np.float64) * scale
        assert s.depth.dtype == np.uint16
        np.testing.assert_array_equal(s.depth[~valid], 0)  # p = 0, 1 and beyond 400 m stay 0
        assert np.all(s.depth[valid] > 0)
        assert np.max(np.abs(got[valid] - z[valid])) <= scale / 2 * (1 + 1e-9)
        flat_p = fd.disparity.reshape(-1)
        assert {0, 1, 2, 65535} <= set(flat_p[:8].tolist())
        # p = 2 is d = 1/256 px: ~121 km, invalid; p = 65535 is the nearest depth, valid.
        assert s.depth.reshape(-1)[2] == 0 and s.depth.reshape(-1)[4] > 0
        # both sides of the 400 m boundary occur: p = 303 -> 401.4 m (invalid), 305 -> 398.8 m
        assert s.depth.reshape(-1)[6] == 0 and s.depth.reshape(-1)[7] > 0


def test_labels_map_exactly_to_train_ids_and_meta(tmp_path: Path) -> None:
    frames = build_cityscapes(tmp_path)
    for fd, s in zip(frames, _samples(tmp_path), strict=True):
        assert fd.label_ids is not None and set(np.unique(fd.label_ids)) == set(range(34))
        np.testing.assert_array_equal(s.label, expected_train_ids(fd.label_ids))
        np.testing.assert_array_equal(s.rgb, fd.rgb)
        m = s.meta
        assert (m["city"], m["sequence"], m["frame"]) == (fd.city, fd.sequence, fd.frame)
        assert m["id"] == fd.stem and m["split"] == "val"
        assert m["baseline"] == CAMERA["extrinsic"]["baseline"]
        intr = CAMERA["intrinsic"]
        assert m["intrinsics"] == {
            "fx": intr["fx"],
            "fy": intr["fy"],
            "cx": intr["u0"],
            "cy": intr["v0"],
        }
    info = CityscapesConverter(CityscapesConfig(src=str(tmp_path))).info()
    assert info.labels == LABELS and len(LABELS.classes) == 19 and LABELS.ignore_index == 255


def test_train_extra_has_no_labels(tmp_path: Path) -> None:
    build_cityscapes(tmp_path, {"train_extra": [("augsburg", "000000", "000000")]})
    conv = CityscapesConverter(CityscapesConfig(src=str(tmp_path), split=("train_extra",)))
    assert conv.info().labels is None
    (s,) = _samples(tmp_path, split=("train_extra",))
    assert s.label is None and s.split == "train_extra" and s.depth is not None


def test_default_splits_and_units_are_grouped_and_deterministic(tmp_path: Path) -> None:
    build_cityscapes(tmp_path, {
        "train": [("aachen", "000000", "000019"), ("bochum", "000000", "000313")],
        "val": [("frankfurt", "000000", "000294")],
        "train_extra": [("augsburg", "000000", "000000")],
    })  # fmt: skip
    conv = CityscapesConverter(CityscapesConfig(src=str(tmp_path)))
    units = conv.units()
    assert [u.split for u in units] == ["train", "train", "val"]  # train_extra only on request
    assert [u.id for u in units] == [u.id for u in conv.units()]


def test_resize_scales_intrinsics_and_keeps_codes(tmp_path: Path) -> None:
    (fd,) = build_cityscapes(tmp_path, {"val": [("frankfurt", "000000", "000294")]}, size=(48, 24))
    (full,) = _samples(tmp_path)
    (s,) = _samples(tmp_path, size=(24, 12))
    assert s.rgb.shape == (12, 24, 3) and s.depth.shape == (12, 24) and s.label.shape == (12, 24)
    assert s.meta["width"] == 24 and s.meta["intrinsics"]["fx"] == pytest.approx(
        CAMERA["intrinsic"]["fx"] / 2
    )
    # pixel-centre nearest: output pixel x samples input pixel 2x + 1; no code is invented
    np.testing.assert_array_equal(s.depth, full.depth[1::2, 1::2])
    np.testing.assert_array_equal(s.label, full.label[1::2, 1::2])


@pytest.mark.parametrize(
    "broken", ["no_disparity", "no_camera", "camera_fields", "disparity_8bit", "size"]
)
def test_bad_frame_is_skipped_naming_the_file(tmp_path: Path, broken: str) -> None:
    good, bad = build_cityscapes(tmp_path)
    if broken == "no_disparity":
        bad.paths["disparity"].unlink()
        culprit = bad.paths["disparity"]
    elif broken == "no_camera":
        bad.paths["camera"].unlink()
        culprit = bad.paths["camera"]
    elif broken == "camera_fields":
        bad.paths["camera"].write_text(
            json.dumps({"extrinsic": {}, "intrinsic": CAMERA["intrinsic"]})
        )
        culprit = bad.paths["camera"]
    elif broken == "disparity_8bit":
        cv2.imwrite(str(bad.paths["disparity"]), (bad.disparity >> 8).astype(np.uint8))
        culprit = bad.paths["disparity"]
    else:
        cv2.imwrite(str(bad.paths["disparity"]), bad.disparity[:, :-1])
        culprit = bad.paths["disparity"]
    out = _run(tmp_path)
    assert [type(x) for x in out] == [Sample, Skipped], out
    assert isinstance(out[0], Sample) and out[0].key == good.stem
    skipped = out[1]
    assert isinstance(skipped, Skipped) and skipped.source == str(culprit)
    if broken == "size":
        assert "leftImg8bit.png" in skipped.reason


def test_16bit_label_ids_over_255_are_skipped_not_wrapped(tmp_path: Path) -> None:
    """A 16-bit labelIds value 263 must not become road (263 % 256 = 7) through a uint8 cast."""
    good, bad = build_cityscapes(tmp_path)
    assert bad.label_ids is not None
    cv2.imwrite(str(bad.paths["label"]), bad.label_ids.astype(np.uint16) + 256)
    out = _run(tmp_path)
    assert isinstance(out[0], Sample) and out[0].key == good.stem
    skipped = out[1]
    assert isinstance(skipped, Skipped) and skipped.source == str(bad.paths["label"])
    assert "8-bit" in skipped.reason


def test_missing_tree_and_bad_max_depth(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="leftImg8bit"):
        CityscapesConverter(CityscapesConfig(src=str(tmp_path))).units()
    with pytest.raises(UsageError):
        CityscapesConfig(src=str(tmp_path), max_depth=0)


def test_disparity_to_depth_codes_edge_values() -> None:
    p = np.array([[0, 1, 2, 65535]], dtype=np.uint16)
    codes = disparity_to_depth_codes(
        p, baseline_m=0.2, fx_px=2000.0, depth_scale=0.01, max_depth_m=1e9
    )
    assert codes[0, 0] == 0 and codes[0, 1] == 0
    assert codes[0, 2] == 65535  # 102 km clipped to the top code when max_depth allows it
    assert codes[0, 3] == round(0.2 * 2000 / (65534 / 256) / 0.01)


def test_real_fixture_labels_match_stored_train_ids(shared_fixtures: Path, tmp_path: Path) -> None:
    """The real resized val frame, with a constructed disparity and camera file.

    labelIds and labelTrainIds were resized (nearest) separately upstream, so they disagree on
    77 of 32768 boundary pixels (99.765 % agree). Everywhere both label images are constant over a
    3x3 neighbourhood (the label is unambiguous), the mapping must agree exactly.
    """
    real = shared_fixtures / "cityscapes_mmseg_pseudo"
    stem = "frankfurt_000000_000294"
    src = tmp_path / "cs"
    for kind, name in [("leftImg8bit", "leftImg8bit"), ("gtFine", "gtFine_labelIds")]:
        dst = src / kind / "val" / "frankfurt"
        dst.mkdir(parents=True)
        shutil.copy(real / kind / "val" / "frankfurt" / f"{stem}_{name}.png", dst)
    rgb = cv2.imread(str(src / "leftImg8bit/val/frankfurt" / f"{stem}_leftImg8bit.png"))[..., ::-1]
    h, w = rgb.shape[:2]
    camera = json.loads(json.dumps(CAMERA))
    camera["intrinsic"].update(
        fx=2262.52 * w / 2048, fy=2265.30 * h / 1024, u0=1096.98 * w / 2048, v0=513.137 * h / 1024
    )
    disparity = np.tile(np.linspace(0, 4000, w).astype(np.uint16), (h, 1))
    fd = FrameData("val", "frankfurt", "000000", "000294", rgb, disparity, camera)
    write_frame(src, fd)

    (s,) = _samples(src, split=("val",))
    stored = cv2.imread(
        str(real / "gtFine/val/frankfurt" / f"{stem}_gtFine_labelTrainIds.png"),
        cv2.IMREAD_UNCHANGED,
    )
    label_ids = cv2.imread(
        str(real / "gtFine/val/frankfurt" / f"{stem}_gtFine_labelIds.png"), cv2.IMREAD_UNCHANGED
    )
    kernel = np.ones((3, 3), np.uint8)

    def constant(a: np.ndarray) -> np.ndarray:
        return cv2.dilate(a, kernel, borderType=cv2.BORDER_REPLICATE) == cv2.erode(
            a, kernel, borderType=cv2.BORDER_REPLICATE
        )

    consistent = constant(label_ids) & constant(stored)
    assert consistent.mean() > 0.8
    np.testing.assert_array_equal(s.label[consistent], stored[consistent])
    mismatch = s.label != stored
    assert mismatch.sum() == 77  # the documented 99.77 %: all at boundaries
    for y, x in zip(*np.nonzero(mismatch), strict=True):  # each one is a one-pixel shift
        assert s.label[y, x] in stored[max(0, y - 1) : y + 2, max(0, x - 1) : x + 2]
    z = expected_depth_m(disparity, camera)
    ok = np.isfinite(z) & (z <= 400)
    assert np.abs(s.depth[ok] * s.meta["depth_scale"] - z[ok]).max() <= s.meta[
        "depth_scale"
    ] / 2 * (1 + 1e-9)
    assert np.all(s.depth[~ok] == 0)


def test_cli_convert_val_split(tmp_path: Path) -> None:
    from datakit.cli import main

    frames = build_cityscapes(tmp_path / "src")
    out = tmp_path / "out"
    res = CliRunner().invoke(
        main,
        [
            "convert",
            "cityscapes",
            str(tmp_path / "src"),
            str(out),
            "--split",
            "val",
            "--no-progress",
            "--rgb-format",
            "png",
        ],
    )
    assert res.exit_code == 0, res.output
    info, got = read_converted(out)
    assert info["source"] == "cityscapes" and info["labels"]["name"] == "cityscapes19"
    assert info["depth"]["scale"] == depth_scale_for(400.0) and info["depth"]["unit"] == "m"
    for fd in frames:
        s = got[fd.stem]
        np.testing.assert_array_equal(s.rgb, fd.rgb)
        np.testing.assert_array_equal(s.label, expected_train_ids(fd.label_ids))
        z = expected_depth_m(fd.disparity, fd.camera)
        ok = np.isfinite(z) & (z <= 400)
        assert (
            np.abs(s.depth[ok] - z[ok]).max() <= info["depth"]["scale"] / 2 + 1e-4
        )  # float32 decode


def test_cli_fails_naming_missing_disparity_or_skips(tmp_path: Path) -> None:
    from datakit.cli import main

    _, bad = build_cityscapes(tmp_path / "src")
    bad.paths["disparity"].unlink()
    args = ["convert", "cityscapes", str(tmp_path / "src"), "--no-progress"]
    res = CliRunner().invoke(main, [*args[:3], str(tmp_path / "a"), *args[3:]])
    assert_one_line_error(res, bad.paths["disparity"], out=tmp_path / "a")
    res = CliRunner().invoke(
        main, [*args[:3], str(tmp_path / "b"), *args[3:], "--on-error", "skip"]
    )
    assert res.exit_code == 0, res.output
    info = json.loads((tmp_path / "b" / "_info.json").read_text())
    assert info["errors"]["skipped"] == 1 and info["splits"]["val"]["num_samples"] == 1
    log = (tmp_path / "b" / info["errors"]["log"]).read_text()
    assert str(bad.paths["disparity"]) in log


def test_misnamed_image_is_a_bad_frame_not_a_failed_scan(tmp_path: Path) -> None:
    """An image whose name does not parse stops the run naming it, or with --on-error skip is
    logged and counted while the city's other frames are converted."""
    from datakit.cli import main

    good, other = build_cityscapes(tmp_path / "src")
    odd = other.paths["image"].parent / "lindau_notaframe_leftImg8bit.png"
    shutil.copy(other.paths["image"], odd)
    out = _run(tmp_path / "src")
    assert [s.key for s in out if isinstance(s, Sample)] == [good.stem, other.stem]
    (skip,) = [s for s in out if isinstance(s, Skipped)]
    assert skip.source == str(odd) and "name is not {city}_{seq}_{frame}" in skip.reason
    args = ["convert", "cityscapes", str(tmp_path / "src"), "--no-progress"]
    res = CliRunner().invoke(main, [*args[:3], str(tmp_path / "a"), *args[3:]])
    assert_one_line_error(res, odd, out=tmp_path / "a")
    res = CliRunner().invoke(
        main, [*args[:3], str(tmp_path / "b"), *args[3:], "--on-error", "skip"]
    )
    assert res.exit_code == 0, res.output
    info = json.loads((tmp_path / "b" / "_info.json").read_text())
    assert info["errors"]["skipped"] == 1 and info["splits"]["val"]["num_samples"] == 2


def test_converter_and_units_pickle_for_workers(tmp_path: Path) -> None:
    import pickle

    build_cityscapes(tmp_path)
    conv = CityscapesConverter(CityscapesConfig(src=str(tmp_path), size=(24, 12)))
    clone = pickle.loads(pickle.dumps(conv))
    unit = pickle.loads(pickle.dumps(conv.units()))[0]
    a, b = list(conv.convert(unit)), list(clone.convert(unit))
    assert [s.key for s in a] == [s.key for s in b]  # type: ignore[union-attr]
    np.testing.assert_array_equal(a[0].depth, b[0].depth)  # type: ignore[union-attr]


@pytest.mark.parametrize("member", ["image", "disparity", "label"])
def test_cli_cut_off_png_is_one_line_without_libpng_noise(tmp_path: Path, member: str) -> None:
    """A PNG cut short (no IEND) is refused before decoding: libpng would print "libpng error" /
    OpenCV "[ WARN..." lines to fd 2. One line naming it under fail, logged and counted under skip
    (a real process: the libraries write to fd 2, which CliRunner does not capture)."""
    import os
    import subprocess
    import sys

    _, bad = build_cityscapes(tmp_path / "src")
    cut = bad.paths[member]
    data = cut.read_bytes()
    cut.write_bytes(data[: len(data) - 20])
    env = {k: v for k, v in os.environ.items() if k != "OPENCV_LOG_LEVEL"}
    args = [sys.executable, "-m", "datakit", "convert", "cityscapes", str(tmp_path / "src"),
            str(tmp_path / "out"), "--no-progress"]  # fmt: skip
    proc = subprocess.run(args, capture_output=True, text=True, env=env, timeout=120)
    reason = "truncated: the file ends before its end-of-image marker"
    assert proc.returncode == 1 and not (tmp_path / "out").exists()
    assert proc.stderr.strip().splitlines() == [f"Error: {cut}: {reason}"], proc.stderr
    proc = subprocess.run(
        [*args, "--on-error", "skip"], capture_output=True, text=True, env=env, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    lines = [
        ln for ln in (proc.stdout + proc.stderr).splitlines() if not ln.startswith("1 sample in")
    ]
    assert lines == [f"skipped {cut}: {reason}"]
    info = json.loads((tmp_path / "out" / "_info.json").read_text())
    assert info["errors"]["skipped"] == 1 and info["splits"]["val"]["num_samples"] == 1
