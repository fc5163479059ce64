"""Folder converter: pairing by stem across extensions and sub-folders, depth formats and kinds."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from converters.base import Skipped
from converters.folder import FolderConfig, FolderConverter
from datakit.errors import SourceError, UsageError
from datakit.schema import Sample
from tests.converted_fixtures import assert_one_line_error, read_converted
from tests.folder_fixtures import build_mixed_tree, rgb_image, write_depth, write_rgb


def _run(src: Path, **cfg: object) -> list[Sample | Skipped]:
    args: dict[str, object] = {
        "rgb": "rgb/**/*",
        "depth": "depth/**/*",
        "depth_scale": 1.0,
        "depth_kind": "metric",
    }
    conv = FolderConverter(FolderConfig(src=str(src), **{**args, **cfg}))  # type: ignore[arg-type]
    return [s for u in conv.units() for s in conv.convert(u)]


def _one(src: Path, **cfg: object) -> Sample:
    (s,) = _run(src, **cfg)
    assert isinstance(s, Sample), s
    return s


def test_pairs_by_stem_across_extensions_and_subfolders(tmp_path: Path) -> None:
    written = build_mixed_tree(tmp_path)
    out = _run(tmp_path)
    assert all(isinstance(s, Sample) for s in out), out
    assert [s.meta["id"] for s in out] == sorted(written)  # type: ignore[union-attr]
    assert [s.key for s in out] == ["0003", "seq1_0001", "seq1_0002", "seq2_0001"]
    for s in out:
        assert isinstance(s, Sample)
        w = written[s.meta["id"]]
        assert s.meta["files"]["rgb"] == str(Path(w["rgb_path"]).relative_to(tmp_path))  # type: ignore[arg-type]
        assert s.meta["files"]["depth"] == str(Path(w["depth_path"]).relative_to(tmp_path))  # type: ignore[arg-type]
        if str(w["rgb_path"]).endswith(".png"):
            np.testing.assert_array_equal(s.rgb, w["rgb"])


def test_patterns_with_fixed_extensions_and_suffixes(tmp_path: Path) -> None:
    for scene in ("a", "b"):
        write_rgb(tmp_path / scene / "color" / "frame-000.png", rgb_image(6, 8, 0))
        write_depth(tmp_path / scene / "depth" / "frame-000_depth.png", np.ones((6, 8), np.uint16))
    out = _run(tmp_path, rgb="*/color/*.png", depth="*/depth/*_depth.png", depth_scale=0.001)
    assert [s.meta["id"] for s in out] == ["a/frame-000", "b/frame-000"]  # type: ignore[union-attr]


def test_an_extension_matched_by_a_second_wildcard_is_dropped(tmp_path: Path) -> None:
    """docs/converters/folder.md: files pair whatever their extensions, also under '*.*'."""
    write_rgb(tmp_path / "rgb/0001.jpg", rgb_image(6, 8, 0))
    write_depth(tmp_path / "depth/0001.png", np.ones((6, 8), np.uint16))
    (s,) = _run(tmp_path, rgb="rgb/*.*", depth="depth/*.*", depth_scale=0.001)
    assert isinstance(s, Sample) and s.meta["id"] == "0001" and s.key == "0001", s


def test_linked_folders_are_followed(tmp_path: Path) -> None:
    """A SRC assembled from links to the data pairs as glob would; a link cycle ends."""
    write_rgb(tmp_path / "data/rgb/0001.png", rgb_image(6, 8, 0))
    write_depth(tmp_path / "data/depth/0001.png", np.ones((6, 8), np.uint16))
    (tmp_path / "src").mkdir()
    for role in ("rgb", "depth"):
        (tmp_path / "src" / role).symlink_to(tmp_path / "data" / role, target_is_directory=True)
    (tmp_path / "data/rgb/loop").symlink_to(tmp_path / "data/rgb", target_is_directory=True)
    (s,) = _run(tmp_path / "src", rgb="rgb/**/*.png", depth="depth/**/*.png", depth_scale=0.001)
    assert isinstance(s, Sample) and s.meta["files"] == {
        "rgb": "rgb/0001.png",
        "depth": "depth/0001.png",
    }


def test_16bit_png_metric_is_stored_losslessly(tmp_path: Path) -> None:
    mm = np.arange(6 * 8, dtype=np.uint16).reshape(6, 8) * 1000
    write_rgb(tmp_path / "rgb/x.png", rgb_image(6, 8, 0))
    write_depth(tmp_path / "depth/x.png", mm)
    s = _one(tmp_path, depth_scale=0.001)
    np.testing.assert_array_equal(s.depth, mm)
    assert (
        s.meta["depth_scale"] == 0.001
        and s.meta["depth_unit"] == "m"
        and s.meta["depth_kind"] == "metric"
    )


@pytest.mark.parametrize("ext", ["tiff", "tif", "npy", "pfm"])
def test_float_metres_become_millimetre_codes(tmp_path: Path, ext: str) -> None:
    rng = np.random.default_rng(0)
    metres = rng.uniform(0.2, 60.0, size=(6, 8)).astype(np.float32)
    metres[0, :5] = [
        np.nan,
        -2.0,
        0.0,
        0.0001,
        70.0,
    ]  # invalid, invalid, invalid, tiny -> 1, too far
    write_rgb(tmp_path / "rgb/x.png", rgb_image(6, 8, 0))
    write_depth(tmp_path / f"depth/x.{ext}", metres)
    s = _one(tmp_path, depth_scale=1.0)
    assert s.meta["depth_scale"] == 0.001
    np.testing.assert_array_equal(s.depth[0, :5], [0, 0, 0, 1, 0])
    ok = np.ones(metres.shape, bool)
    ok[0, :5] = False
    assert np.abs(s.depth[ok] * 0.001 - metres[ok]).max() <= 0.0005 + 1e-6


def test_8bit_png_with_decimetre_scale(tmp_path: Path) -> None:
    dm = np.arange(48, dtype=np.uint8).reshape(6, 8) * 5
    write_rgb(tmp_path / "rgb/x.png", rgb_image(6, 8, 0))
    write_depth(tmp_path / "depth/x.png", dm)
    s = _one(tmp_path, depth_scale=0.1)  # metric default code scale 0.001: codes = dm * 100
    np.testing.assert_array_equal(s.depth, dm.astype(np.uint16) * 100)
    same = _one(tmp_path, depth_scale=0.1, code_scale=0.1)  # or stored as-is
    np.testing.assert_array_equal(same.depth, dm)
    assert same.meta["depth_scale"] == 0.1


def test_inverse_and_relative_kinds(tmp_path: Path) -> None:
    inv = np.full((6, 8), 0.5, np.float32)  # 1/m: 2 m away
    write_rgb(tmp_path / "rgb/x.png", rgb_image(6, 8, 0))
    write_depth(tmp_path / "depth/x.tiff", inv)
    s = _one(tmp_path, depth_kind="inverse")
    assert s.meta["depth_unit"] == "1/m" and s.meta["depth_scale"] == 0.0001
    np.testing.assert_array_equal(s.depth, 5000)
    conv = FolderConverter(
        FolderConfig(
            src=str(tmp_path), rgb="rgb/*", depth="depth/*", depth_scale=1.0, depth_kind="inverse"
        )
    )
    assert conv.info().depth_unit == "1/m" and conv.info().extra == {"depth_kind": "inverse"}
    # relative float maps have no natural step: --code-scale is required, and the file is named
    (skipped,) = _run(tmp_path, depth_kind="relative")
    assert (
        isinstance(skipped, Skipped)
        and skipped.source.endswith("x.tiff")
        and "--code-scale" in skipped.reason
    )
    r = _one(tmp_path, depth_kind="relative", code_scale=0.001)
    assert r.meta["depth_unit"] == "relative"
    np.testing.assert_array_equal(r.depth, 500)


def test_relative_16bit_png_is_kept_as_is(tmp_path: Path) -> None:
    rel = np.arange(48, dtype=np.uint16).reshape(6, 8) * 1365
    write_rgb(tmp_path / "rgb/x.png", rgb_image(6, 8, 0))
    write_depth(tmp_path / "depth/x.png", rel)
    s = _one(tmp_path, depth_kind="relative", depth_scale=1.0)
    np.testing.assert_array_equal(s.depth, rel)
    assert s.meta["depth_scale"] == 1.0


def test_mismatched_sizes_are_refused_naming_both_files(tmp_path: Path) -> None:
    write_rgb(tmp_path / "rgb/x.png", rgb_image(6, 8, 0))
    write_depth(tmp_path / "depth/x.png", np.ones((5, 8), np.uint16))
    (s,) = _run(tmp_path, depth_scale=0.001)
    assert isinstance(s, Skipped)
    assert s.source == str(tmp_path / "depth/x.png") and str(tmp_path / "rgb/x.png") in s.reason
    assert "8x5" in s.reason and "8x6" in s.reason


def test_unpaired_files_are_listed_together(tmp_path: Path) -> None:
    build_mixed_tree(tmp_path)
    write_rgb(tmp_path / "rgb/seq3/0009.png", rgb_image(12, 20, 0))
    write_depth(tmp_path / "depth/seq4/0007.npy", np.ones((12, 20), np.float32))
    out = _run(tmp_path)
    skipped = [s for s in out if isinstance(s, Skipped)]
    assert [s.source for s in skipped] == [
        str(tmp_path / "rgb/seq3/0009.png"),
        str(tmp_path / "depth/seq4/0007.npy"),
    ]
    first = skipped[0].reason
    assert (
        first.startswith(f"2 unpaired file(s) under {tmp_path}")
        and "seq3/0009.png" in first
        and "seq4/0007.npy" in first
    )
    assert sum(isinstance(s, Sample) for s in out) == 4


def test_labels_and_classes(tmp_path: Path) -> None:
    write_rgb(tmp_path / "rgb/x.png", rgb_image(6, 8, 0))
    write_depth(tmp_path / "depth/x.png", np.ones((6, 8), np.uint16))
    lab = (np.arange(48).reshape(6, 8) % 3).astype(np.uint8)
    write_depth(tmp_path / "label/x.png", lab)
    (tmp_path / "classes.txt").write_text("floor\nwall\nthing\n")
    cfg = {"label": "label/*.png", "classes": str(tmp_path / "classes.txt"), "depth_scale": 0.001}
    s = _one(tmp_path, **cfg)
    np.testing.assert_array_equal(s.label, lab)
    conv = FolderConverter(
        FolderConfig(src=str(tmp_path), rgb="rgb/*", depth="depth/*", depth_kind="metric", **cfg)
    )  # type: ignore[arg-type]
    assert conv.info().labels.classes == ("floor", "wall", "thing")


def test_cli_missing_classes_file_is_named_once(tmp_path: Path) -> None:
    from datakit.cli import main

    write_rgb(tmp_path / "src/rgb/x.png", rgb_image(6, 8, 0))
    write_depth(tmp_path / "src/depth/x.png", np.ones((6, 8), np.uint16))
    missing = tmp_path / "missing.txt"
    args = ["convert", "folder", str(tmp_path / "src"), str(tmp_path / "out"), "--rgb", "rgb/*",
            "--depth", "depth/*", "--label", "rgb/*", "--classes", str(missing),
            "--depth-scale", "0.001", "--depth-kind", "metric", "--no-progress"]  # fmt: skip
    line = assert_one_line_error(CliRunner().invoke(main, args), missing, out=tmp_path / "out")
    assert line == f"Error: {missing}: cannot read class names (No such file or directory)"


def test_resize_and_bad_config(tmp_path: Path) -> None:
    write_rgb(tmp_path / "rgb/x.png", rgb_image(6, 8, 0))
    write_depth(tmp_path / "depth/x.png", np.arange(48, dtype=np.uint16).reshape(6, 8) + 1)
    s = _one(tmp_path, depth_scale=0.001, size=(4, 3))
    assert s.rgb.shape == (3, 4, 3) and s.depth.shape == (3, 4) and s.meta["width"] == 4
    np.testing.assert_array_equal(s.depth, (np.arange(48).reshape(6, 8) + 1)[1::2, 1::2])
    with pytest.raises(UsageError):
        FolderConfig(src="x", rgb="a", depth="b", depth_scale=0.0, depth_kind="metric")
    with pytest.raises(UsageError):
        FolderConfig(src="x", rgb="a", depth="b", depth_scale=1.0, depth_kind="disparity")


def test_ambiguous_key_and_empty_source(tmp_path: Path) -> None:
    write_rgb(tmp_path / "rgb/x.png", rgb_image(6, 8, 0))
    write_rgb(tmp_path / "rgb/x.jpg", rgb_image(6, 8, 0))
    write_depth(tmp_path / "depth/x.png", np.ones((6, 8), np.uint16))
    with pytest.raises(SourceError, match="x.png"):
        _run(tmp_path)
    with pytest.raises(SourceError, match="no files match"):
        _run(tmp_path, rgb="nothing/*.png")


def test_cli_convert_fails_listing_unpaired_then_skips(tmp_path: Path) -> None:
    from datakit.cli import main

    build_mixed_tree(tmp_path / "src")
    write_rgb(tmp_path / "src/rgb/lonely.png", rgb_image(12, 20, 0))
    write_rgb(tmp_path / "src/rgb/alone.png", rgb_image(12, 20, 0))
    base = ["convert", "folder", str(tmp_path / "src")]
    opts = [
        "--rgb",
        "rgb/**/*",
        "--depth",
        "depth/**/*",
        "--depth-scale",
        "1",
        "--depth-kind",
        "metric",
        "--no-progress",
    ]
    res = CliRunner().invoke(main, [*base, str(tmp_path / "a"), *opts])
    line = assert_one_line_error(res, tmp_path / "src/rgb/alone.png", out=tmp_path / "a")
    assert "2 unpaired" in line and "lonely.png" in line and "alone.png" in line
    res = CliRunner().invoke(
        main, [*base, str(tmp_path / "b"), *opts, "--on-error", "skip", "--rgb-format", "png"]
    )
    assert res.exit_code == 0, res.output
    info, got = read_converted(tmp_path / "b")
    assert info["errors"]["skipped"] == 2 and info["splits"]["train"]["num_samples"] == 4
    assert (
        info["depth"]["unit"] == "m"
        and info["depth"]["scale"] == 0.001
        and info["depth_kind"] == "metric"
    )
    log = [
        json.loads(line)
        for line in (tmp_path / "b" / info["errors"]["log"]).read_text().splitlines()
    ]
    assert sorted(Path(e["source"]).name for e in log) == ["alone.png", "lonely.png"]
    assert set(got) == {"0003", "seq1_0001", "seq1_0002", "seq2_0001"}


def test_cli_labels_without_classes_convert_and_verify(tmp_path: Path) -> None:
    """docs/converters/folder.md: without --classes the class list is empty; verify accepts that."""
    from datakit.cli import main

    write_rgb(tmp_path / "src/rgb/x.png", rgb_image(6, 8, 0))
    write_depth(tmp_path / "src/depth/x.png", np.ones((6, 8), np.uint16))
    write_depth(tmp_path / "src/label/x.png", (np.arange(48).reshape(6, 8) % 3).astype(np.uint8))
    out = str(tmp_path / "out")
    res = CliRunner().invoke(
        main,
        ["convert", "folder", str(tmp_path / "src"), out, "--rgb", "rgb/*.png", "--depth",
         "depth/*.png", "--label", "label/*.png", "--depth-scale", "0.001", "--depth-kind",
         "metric", "--no-progress"],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(main, ["verify", "-q", out])
    assert res.exit_code == 0, res.output


def test_cli_label_values_outside_the_classes_are_bad_input(tmp_path: Path) -> None:
    """A label value that is neither a class of --classes nor --ignore-index fails the frame
    (naming its label file), or is skipped and counted with --on-error skip; what is written
    then verifies. --ignore-index must fit a 16-bit label PNG."""
    from datakit.cli import main

    good = (np.arange(48).reshape(6, 8) % 3).astype(np.uint8)
    bad = good.copy()
    bad[0, 0], bad[0, 1] = 7, 255  # 7: no such class; 255: the ignore index
    for key, lab in (("x", bad), ("y", good)):
        write_rgb(tmp_path / f"src/rgb/{key}.png", rgb_image(6, 8, 0))
        write_depth(tmp_path / f"src/depth/{key}.png", np.ones((6, 8), np.uint16))
        write_depth(tmp_path / f"src/label/{key}.png", lab)
    (tmp_path / "classes.txt").write_text("floor\nwall\nthing\n")
    args = ["convert", "folder", str(tmp_path / "src"), "--rgb", "rgb/*.png", "--depth",
            "depth/*.png", "--label", "label/*.png", "--classes", str(tmp_path / "classes.txt"),
            "--depth-scale", "0.001", "--depth-kind", "metric", "--no-progress"]  # fmt: skip
    out = tmp_path / "out"
    res = CliRunner().invoke(main, [*args, str(out)])
    lines = res.output.strip().splitlines()
    assert res.exit_code == 1 and len(lines) == 1, res.output
    assert lines[0].startswith(f"Error: {tmp_path / 'src/label/x.png'}: label value(s) 7 outside")
    assert not out.exists()
    res = CliRunner().invoke(main, [*args, str(out), "--on-error", "skip"])
    assert res.exit_code == 0 and "1 sample in 1 shard" in res.output, res.output
    info, got = read_converted(out)
    assert info["errors"]["skipped"] == 1 and set(got) == {"y"}
    res = CliRunner().invoke(main, ["verify", "-q", str(out)])
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(main, [*args, str(tmp_path / "o2"), "--ignore-index", "70000"])
    assert res.exit_code == 2 and "--ignore-index 70000: must be within 0..65535" in res.output
    assert not (tmp_path / "o2").exists()


def test_cli_undecodable_image_is_one_line_without_opencv_logs(tmp_path: Path) -> None:
    """OpenCV logs its own "[ WARN..." / "[ERROR..." lines to stderr when a file does not decode;
    the command's stderr must hold our one line only (a real process: OpenCV writes to fd 2)."""
    import os
    import subprocess
    import sys

    write_rgb(tmp_path / "src/rgb/x.png", rgb_image(6, 8, 0))
    png = (tmp_path / "src/rgb/x.png").read_bytes()
    (tmp_path / "src/rgb/x.png").write_bytes(png[:8] + png[16:40])  # IHDR chunk cut short
    write_depth(tmp_path / "src/depth/x.png", np.ones((6, 8), np.uint16))
    env = {k: v for k, v in os.environ.items() if k != "OPENCV_LOG_LEVEL"}
    proc = subprocess.run(
        [sys.executable, "-m", "datakit", "convert", "folder", str(tmp_path / "src"),
         str(tmp_path / "out"), "--rgb", "rgb/*.png", "--depth", "depth/*.png", "--depth-scale",
         "0.001", "--depth-kind", "metric", "--no-progress"],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        f"Error: {tmp_path / 'src/rgb/x.png'}: truncated: the file ends before its end-of-image marker"
    ], proc.stderr


def test_cli_truncated_jpeg_and_png_are_refused_not_greyed(tmp_path: Path) -> None:
    """libjpeg decodes a cut-off JPEG to a partly grey picture with only "Premature end of JPEG
    file" on stderr, and libpng prints "libpng error: ..." for a cut-off PNG: each must be one line
    naming the file (a real process: the libraries write to fd 2), and skip converts the rest."""
    import os
    import subprocess
    import sys

    src = tmp_path / "src"
    for i in range(3):
        write_rgb(src / f"rgb/{i}.jpg", rgb_image(48, 64, i))
        write_depth(src / f"depth/{i}.png", np.full((48, 64), 1000 + i, np.uint16))
    jpg = (src / "rgb/1.jpg").read_bytes()
    (src / "rgb/1.jpg").write_bytes(jpg[: len(jpg) // 2])
    png = (src / "depth/2.png").read_bytes()
    (src / "depth/2.png").write_bytes(png[: len(png) - 20])
    env = {k: v for k, v in os.environ.items() if k != "OPENCV_LOG_LEVEL"}
    args = [sys.executable, "-m", "datakit", "convert", "folder", str(src), str(tmp_path / "out"),
            "--rgb", "rgb/*.jpg", "--depth", "depth/*.png", "--depth-scale", "0.001",
            "--depth-kind", "metric", "--no-progress"]  # fmt: skip
    proc = subprocess.run(args, capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 1 and not (tmp_path / "out").exists()
    reason = "truncated: the file ends before its end-of-image marker"
    assert proc.stderr.strip().splitlines() == [f"Error: {src / 'rgb/1.jpg'}: {reason}"]
    proc = subprocess.run(
        [*args, "--on-error", "skip"], capture_output=True, text=True, env=env, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    lines = (proc.stdout + proc.stderr).splitlines()
    assert [ln for ln in lines if not ln.startswith("1 sample in")] == [
        f"skipped {src / 'rgb/1.jpg'}: {reason}",
        f"skipped {src / 'depth/2.png'}: {reason}",
    ]
    info = json.loads((tmp_path / "out/_info.json").read_text())
    assert info["errors"]["skipped"] == 2 and info["splits"]["train"]["num_samples"] == 1


def test_cut_off_keeps_whole_progressive_and_trailed_jpegs(tmp_path: Path) -> None:
    from PIL import Image

    from converters.imaging import cut_off

    Image.fromarray(rgb_image(64, 64, 0)).save(tmp_path / "p.jpg", progressive=True)
    data = (tmp_path / "p.jpg").read_bytes()
    assert not cut_off(data) and not cut_off(data + b"SEFT trailer")  # data after the end marker
    assert all(cut_off(data[:n]) for n in (len(data) // 3, len(data) // 2, len(data) - 2))


def test_cli_refuses_mismatched_sizes_naming_both(tmp_path: Path) -> None:
    from datakit.cli import main

    write_rgb(tmp_path / "src/rgb/x.png", rgb_image(6, 8, 0))
    write_depth(tmp_path / "src/depth/x.png", np.ones((6, 9), np.uint16))
    res = CliRunner().invoke(
        main,
        ["convert", "folder", str(tmp_path / "src"), str(tmp_path / "out"), "--rgb", "rgb/*.png",
         "--depth", "depth/*.png", "--depth-scale", "0.001", "--depth-kind", "metric", "--no-progress"],
    )  # fmt: skip
    assert_one_line_error(
        res, tmp_path / "src/rgb/x.png", tmp_path / "src/depth/x.png", out=tmp_path / "out"
    )


def test_converter_and_units_pickle_for_workers(tmp_path: Path) -> None:
    import pickle

    build_mixed_tree(tmp_path)
    conv = FolderConverter(
        FolderConfig(
            src=str(tmp_path),
            rgb="rgb/**/*",
            depth="depth/**/*",
            depth_scale=1.0,
            depth_kind="metric",
        )
    )
    clone = pickle.loads(pickle.dumps(conv))
    (unit,) = pickle.loads(pickle.dumps(conv.units()))
    assert len([s for s in clone.convert(unit) if isinstance(s, Sample)]) == 4


def test_hidden_files_exif_rotation_and_palette_labels(tmp_path: Path) -> None:
    """What a real folder brings: macOS ``._`` companions and hidden folders are ignored (as glob's
    ``*`` ignores them); a JPEG's EXIF orientation is not applied (the depth map is in the stored
    pixel order); a palette PNG label (Pascal VOC style) gives its indices, not colours."""
    from PIL import Image

    rgb = rgb_image(6, 8, 0)
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees to display
    Image.fromarray(rgb).save(tmp_path / "rgb.jpg", quality=100, exif=exif)
    (tmp_path / "rgb").mkdir()
    (tmp_path / "rgb.jpg").rename(tmp_path / "rgb/x.jpg")
    (tmp_path / "rgb/._x.jpg").write_bytes(b"\0\5\26\7 AppleDouble")
    write_rgb(tmp_path / "rgb/.cache/y.png", rgb)
    write_depth(tmp_path / "depth/x.png", np.full((6, 8), 1000, np.uint16))
    write_depth(tmp_path / "depth/._x.png", np.full((6, 8), 1000, np.uint16))
    lab = (np.arange(48).reshape(6, 8) % 3).astype(np.uint8)
    pal = Image.fromarray(lab, mode="P")
    pal.putpalette([0, 0, 0, 128, 0, 0, 0, 128, 0] + [0] * (253 * 3))
    (tmp_path / "label").mkdir()
    pal.save(tmp_path / "label/x.png")
    (tmp_path / "classes.txt").write_text("a\nb\nc\n")
    s = _one(
        tmp_path, label="label/*.png", classes=str(tmp_path / "classes.txt"), depth_scale=0.001
    )
    with Image.open(tmp_path / "rgb/x.jpg") as img:  # PIL leaves EXIF orientation alone
        stored = np.asarray(img.convert("RGB")).astype(int)
    assert s.rgb.shape == (6, 8, 3) and np.abs(s.rgb.astype(int) - stored).max() <= 2
    np.testing.assert_array_equal(s.label, lab)
