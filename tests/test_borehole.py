"""The borehole converter: every format gives the same samples; nulls, periodic azimuth, windows and
breakout labels are exact; bad input fails with the file named; the real LWD log converts."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from converters.azimuth import azimuth_plan, resample_periodic
from converters.base import Skipped
from converters.borehole import BoreholeConfig, BoreholeConverter, num_windows
from converters.breakouts import BREAKOUT_LABELS, rasterise_breakouts, read_breakouts
from converters.logunits import nice_scale, parse_unit
from converters.welllogs import read_well_log
from datakit.errors import SourceError, UsageError
from datakit.schema import Sample
from tests.borehole_fixtures import (
    WRITERS,
    channel_names,
    invalid_mask,
    make_log,
    with_rows,
    write_breakouts,
    write_log,
)
from tests.converted_fixtures import assert_one_line_error

LWD_LAS = "las_lwd_image/P11-A-02_Composite_MEM_Image_NF.las"
SMALL = {"window": 64, "stride": 32}


def converter(src: Path, **cfg: object) -> BoreholeConverter:
    return BoreholeConverter(BoreholeConfig(src=str(src), **cfg))  # type: ignore[arg-type]


def run(conv: BoreholeConverter) -> list[Sample | Skipped]:
    return [s for u in conv.units() for s in conv.convert(u)]


def samples(conv: BoreholeConverter) -> list[Sample]:
    return [s for s in run(conv) if isinstance(s, Sample)]


def comparable(meta: dict) -> dict:
    """Metadata that must not depend on the file format."""
    return {k: v for k, v in meta.items() if k not in ("file", "format", "index_name", "channels")}


# --- formats ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def log_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("logs")
    log = make_log()
    return {fmt: write_log(log, root / fmt, fmt) for fmt in WRITERS}


def test_every_format_gives_the_same_samples(log_files: dict[str, Path], tmp_path: Path) -> None:
    picks = write_breakouts(tmp_path / "picks.csv", [(1005.0, 1010.0, 90.0, 40.0)])
    got = {}
    for fmt, path in log_files.items():
        image, depth = channel_names(fmt)
        conv = converter(path, image=image, depth=depth, columns=48, breakouts=str(picks), **SMALL)
        info = conv.info()
        assert (info.depth_unit, info.labels) == ("us", BREAKOUT_LABELS)
        got[fmt] = (samples(conv), info)
    ref, ref_info = got["npz"]
    assert len(ref) == num_windows(300, 64, 32) == 8
    for fmt, (ss, info) in got.items():
        assert info.depth_scale == ref_info.depth_scale, fmt
        assert (
            info.extra["borehole"]["wells"]["well"]["image"]["lo"]
            == ref_info.extra["borehole"]["wells"]["well"]["image"]["lo"]
        )
        assert [s.key for s in ss] == [s.key for s in ref]
        for a, b in zip(ss, ref, strict=True):
            assert np.array_equal(a.rgb, b.rgb), (fmt, a.key)
            assert np.array_equal(a.depth, b.depth), (fmt, a.key)
            assert np.array_equal(a.label, b.label), (fmt, a.key)
            assert comparable(a.meta) == comparable(b.meta), fmt
    assert got["las"][0][0].meta["channels"] == {"image": "AMP{}", "depth": "TT{}"}
    assert got["dlis"][0][0].meta["format"] == "dlis"


def test_sample_metadata(log_files: dict[str, Path]) -> None:
    conv = converter(log_files["npz"], image="AMP", depth="TT", columns=32, **SMALL)
    s = samples(conv)[1]
    m = s.meta
    assert s.key == "well-00001" and m["id"] == "well/00001"
    assert (m["well"], m["index_unit"], m["top"], m["bottom"]) == (
        "TESTWELL",
        "m",
        1004.0,
        1011.875,
    )
    assert m["periodic_x"] is True and m["azimuth_reference"] == "sector-1"
    assert (m["width"], m["height"], m["depth_unit"]) == (32, 64, "us")
    assert m["sectors"] == {"image": 16, "depth": 8}
    assert s.rgb.shape == (64, 32, 3) and s.depth.dtype == np.uint16  # type: ignore[union-attr]
    json.dumps(m, allow_nan=False)


# --- nulls, scaling -----------------------------------------------------------------------------


def test_nulls_are_invalid(log_files: dict[str, Path]) -> None:
    log = make_log()
    # columns == sectors: one output column per sector, so the mask compares pixel for pixel.
    conv = converter(
        log_files["las"], image="AMP{}", depth="TT{}", columns=16, window=60, stride=60
    )
    first = samples(conv)[0]
    bad = invalid_mask(log.image[:60])
    assert bad.sum() == 4 + 32 + 1 + 20
    assert np.array_equal(first.rgb[..., 0] == 0, bad)
    assert (first.rgb[~bad] >= 1).all()
    # Depth (8 sectors -> 16 columns): a column is valid where its nearest sector is.
    dbad = np.repeat(invalid_mask(log.tt[:60]), 2, axis=1)
    assert np.array_equal(first.depth == 0, dbad)


def test_per_well_scaling_is_shared_by_windows(log_files: dict[str, Path]) -> None:
    conv = converter(log_files["npz"], image="AMP", columns=16, **SMALL)
    info = conv.info()
    well = info.extra["borehole"]["wells"]["well"]
    log = make_log()
    valid = log.image[~invalid_mask(log.image)]
    assert (well["image"]["lo"], well["image"]["hi"]) == tuple(np.percentile(valid, [1, 99]))
    ss = samples(conv)
    assert {tuple(s.meta["image_range"]) for s in ss} == {
        (well["image"]["lo"], well["image"]["hi"])
    }
    # Same physical value, same code, in every window: rows 32..63 are in windows 0 and 1.
    assert np.array_equal(ss[0].rgb[32:], ss[1].rgb[:32])


def test_no_depth_channel(log_files: dict[str, Path]) -> None:
    conv = converter(log_files["hdf5"], image="AMP", **SMALL)
    info = conv.info()
    assert info.depth_unit is None and info.depth_scale is None
    s = samples(conv)[0]
    assert s.depth is None and s.meta["depth_unit"] is None


def test_depth_codes_cover_the_range(log_files: dict[str, Path]) -> None:
    conv = converter(log_files["npz"], image="AMP", depth="TT", columns=8, **SMALL)
    scale = conv.info().depth_scale
    log = make_log()
    assert scale == nice_scale(float(np.nanmax(log.tt))) == 0.002
    s = samples(conv)[0]
    # columns == depth sectors: codes are the raw values / scale exactly.
    ok = ~invalid_mask(log.tt[:64])
    assert np.allclose(s.depth[ok] * scale, log.tt[:64][ok], atol=scale / 2)  # type: ignore[index]


@pytest.mark.parametrize(
    ("value", "scale"), [(None, 1.0), (65.0, 0.001), (70.0, 0.002), (3000.0, 0.05), (0.5, 1e-5)]
)
def test_nice_scale(value: float | None, scale: float) -> None:
    assert nice_scale(value) == pytest.approx(scale)
    if value:
        assert value / nice_scale(value) <= 65535


def test_unit_parsing() -> None:
    assert parse_unit("0.1 in") == ("in", 0.1)
    assert parse_unit("M") == ("m", 1.0)
    assert parse_unit("gAPI") == ("API", 1.0)
    assert parse_unit("furlong") is None and parse_unit(None) is None


# --- azimuth ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("sectors", "columns"), [(16, 256), (8, 64), (16, 16), (256, 64), (6, 8)])
def test_periodic_resampling_preserves_constants(sectors: int, columns: int) -> None:
    out, valid = resample_periodic(np.full((3, sectors), 7.5), azimuth_plan(sectors, columns))
    assert valid.all() and np.allclose(out, 7.5)


def test_interpolation_wraps_across_the_seam() -> None:
    values = np.zeros((1, 4))
    values[0, 3] = 8.0  # the last sector
    out, _ = resample_periodic(values, azimuth_plan(4, 16))
    # Column 0's centre lies 3/8 of a sector before sector 0's centre, i.e. between sector 3 and 0.
    assert out[0, 0] == pytest.approx(8.0 * 3 / 8)
    assert out[0, 15] == pytest.approx(8.0 * 5 / 8)
    # Symmetric about sector 3's centre (column 13.5), across the seam: column 0 mirrors column 11.
    assert out[0, 13] == out[0, 14] == pytest.approx(7.0)
    assert out[0, 0] == pytest.approx(out[0, 11])


def test_shift_by_one_sector_shifts_the_image(tmp_path: Path) -> None:
    log = make_log(rows=128)
    shifted = replace(log, image=np.roll(log.image, 1, axis=1), tt=np.roll(log.tt, 1, axis=1))
    a = write_log(log, tmp_path / "a", "npz")
    b = write_log(shifted, tmp_path / "b", "npz")
    for columns in (256, 64):
        sa = samples(converter(a, image="AMP", depth="TT", columns=columns, **SMALL))
        sb = samples(converter(b, image="AMP", depth="TT", columns=columns, **SMALL))
        for x, y in zip(sa, sb, strict=True):
            assert np.array_equal(np.roll(x.rgb, columns // 16, axis=1), y.rgb)
            assert np.array_equal(np.roll(x.depth, columns // 8, axis=1), y.depth)  # type: ignore[arg-type]


# --- windows ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rows", "window", "stride", "n"),
    [(300, 64, 32, 8), (64, 64, 1, 1), (63, 64, 32, 0), (7361, 256, 128, 56)],
)
def test_num_windows(rows: int, window: int, stride: int, n: int) -> None:
    assert num_windows(rows, window, stride) == n


def test_window_boundaries_are_exact(log_files: dict[str, Path]) -> None:
    log = make_log()
    ss = samples(converter(log_files["dlis"], image="AMP", columns=16, window=50, stride=45))
    whole = samples(converter(log_files["dlis"], image="AMP", columns=16, window=300))[0]
    assert len(ss) == (300 - 50) // 45 + 1 == 6
    for k, s in enumerate(ss):
        r0 = 45 * k
        assert s.meta["rows"] == [r0, r0 + 50]
        assert (s.meta["top"], s.meta["bottom"]) == (log.index[r0], log.index[r0 + 49])
        ok = ~invalid_mask(log.image[r0 : r0 + 50])
        ref = whole
        assert np.array_equal(s.rgb[ok], ref.rgb[r0 : r0 + 50][ok])


def test_all_null_window_is_skipped_and_counted(tmp_path: Path) -> None:
    log = make_log(rows=192)
    log.image[64:128] = np.nan
    path = write_log(log, tmp_path, "npz")
    out = run(converter(path, image="AMP", window=64, stride=64))
    assert [type(s).__name__ for s in out] == ["Sample", "Skipped", "Sample"]
    assert out[1].source == str(path)  # type: ignore[union-attr]
    assert out[1].reason == "window 1 at 1008-1015.88m: all-null (no valid image sample)"  # type: ignore[union-attr]

    from datakit.writer import ConvertConfig, convert

    conv = converter(path, image="AMP", window=64, stride=64)
    # Counted, not fatal, under the default --on-error fail: null sections are normal in real logs.
    result = convert(conv, str(tmp_path / "ds"), ConvertConfig(progress=False))
    assert (result.num_samples, result.skipped) == (2, 1)
    info = json.loads((tmp_path / "ds" / "_info.json").read_text())
    assert info["errors"]["skipped"] == 1 and info["depth"] is None
    logged = json.loads((tmp_path / "ds" / "errors.jsonl").read_text())
    assert logged["expected"] is True and "all-null" in logged["reason"]


def test_many_null_windows_print_a_few_lines(tmp_path: Path) -> None:
    """Null windows are skipped with the file as their source, so the console shows the first few
    of a log's and one count line (not one line per window); errors.jsonl lists each."""
    from datakit.cli import main
    from datakit.writer import SKIP_LINES_PER_SOURCE

    log = make_log(rows=640)
    log.image[:512] = np.nan
    path = write_log(log, tmp_path, "npz")
    out = tmp_path / "ds"
    res = CliRunner().invoke(
        main,
        ["convert", "borehole", str(path), str(out), "--image", "AMP", "--window", "64"]
        + ["--stride", "64", "--no-progress"],
    )
    assert res.exit_code == 0, res.output
    lines = [ln for ln in res.output.splitlines() if ln.startswith("skipped ")]
    assert len(lines) == SKIP_LINES_PER_SOURCE + 1, res.output
    assert lines[-1].startswith(f"skipped {8 - SKIP_LINES_PER_SOURCE} more from {path} ")
    assert len((out / "errors.jsonl").read_text().splitlines()) == 8


@pytest.mark.parametrize("fmt", ["las", "npz"])
def test_all_null_image_is_one_error_naming_the_file(tmp_path: Path, fmt: str) -> None:
    """A log whose image channel has no valid value anywhere (a dead tool, the wrong channel) is
    bad input for the well, not 56 skipped windows and 'no samples converted'."""
    from datakit.cli import main

    image = "AMP{}" if fmt == "las" else "AMP"  # LAS stores sectors as numbered columns
    log = make_log(rows=128)
    log.image[:] = np.nan
    path = write_log(log, tmp_path / "src", fmt)
    with pytest.raises(SourceError, match=re.escape(f"image channel {image!r} is null in all 128")):
        run(converter(path, image=image, window=64))
    out = tmp_path / "ds"
    args = ["convert", "borehole", str(path), str(out), "--image", image, "--window", "64"]
    res = CliRunner().invoke(main, [*args, "--stride", "32", "--no-progress"])
    line = assert_one_line_error(res, path, "null in all 128 rows", out=out)
    assert "no samples converted" not in line
    # with a good well beside it and --on-error skip, the well is logged and the rest converted
    write_log(make_log(rows=128, nulls=False), tmp_path / "src", fmt, stem="good")
    args[2] = str(tmp_path / "src")
    res = CliRunner().invoke(main, [*args, "--stride", "32", "--no-progress", "--on-error", "skip"])
    assert res.exit_code == 0, res.output
    info = json.loads((out / "_info.json").read_text())
    assert info["errors"]["skipped"] == 1 and list(info["borehole"]["wells"]) == ["good"]
    assert info["splits"]["train"]["num_samples"] == 3


def test_decreasing_index_is_sorted(tmp_path: Path) -> None:
    log = make_log(rows=128)
    up = write_log(log, tmp_path / "up", "npz")
    down = write_log(with_rows(log, slice(None, None, -1)), tmp_path / "down", "las")
    a = samples(converter(up, image="AMP", depth="TT", **SMALL))
    b = samples(converter(down, image="AMP{}", depth="TT{}", **SMALL))
    for x, y in zip(a, b, strict=True):
        assert np.array_equal(x.rgb, y.rgb) and np.array_equal(x.depth, y.depth)
        assert x.meta["top"] < x.meta["bottom"]


# --- labels -------------------------------------------------------------------------------------


def test_breakouts_wrap_across_the_seam(tmp_path: Path) -> None:
    depths = 1000.0 + 0.125 * np.arange(16)
    lobes = [(1000.5, 1001.0, 0.0, 45.0), (1000.5, 1001.0, 180.0, 45.0)]  # a pair, 180 deg apart
    picks = read_breakouts(str(write_breakouts(tmp_path / "p.csv", lobes)))
    label = rasterise_breakouts(picks, depths, 64)  # 5.625 deg per column: 45 deg = 8 columns
    rows = np.flatnonzero(label.any(axis=1))
    assert rows.tolist() == [4, 5, 6, 7, 8]  # 1000.5 ... 1001.0 inclusive
    cols = np.flatnonzero(label[4]).tolist()
    assert cols == [0, 1, 2, 3, 28, 29, 30, 31, 32, 33, 34, 35, 60, 61, 62, 63]
    assert (label[4] == label[8]).all() and label.sum() == 5 * 16


def test_breakout_labels_in_samples(tmp_path: Path) -> None:
    log = make_log(rows=64, nulls=False)
    log.image[0:4, 0] = np.nan  # invalid image under the pick -> ignore
    a = write_log(log, tmp_path / "a", "npz", stem="A")
    write_log(log, tmp_path / "a", "npz", stem="B")
    csv = write_breakouts(tmp_path / "p.csv", [(1000.0, 1000.25, 350.0, 30.0)], wells=["A"])
    out = samples(
        converter(a.parent, image="AMP", columns=16, window=64, stride=64, breakouts=str(csv))
    )
    assert [s.key for s in out] == ["A-00000", "B-00000"]
    la, lb = out[0].label, out[1].label
    assert la is not None and lb is not None and not (lb == 1).any()
    expected = np.zeros((64, 16), np.uint8)
    expected[0:3, [15, 0]] = 1  # 350 +- 15 deg: columns centred at 348.75 and 11.25
    expected[0:4, 0] = 255
    assert np.array_equal(la, expected)


def test_breakouts_csv_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("top,bottom,azimuth,width\n1000,999,10,20\n")
    with pytest.raises(SourceError, match="row 2"):
        read_breakouts(str(bad))
    bad.write_text("top,bottom,azimuth\n1,2,3\n")
    with pytest.raises(SourceError, match="width"):
        read_breakouts(str(bad))
    plain = tmp_path / "plain.csv"
    plain.write_text("# no header\n1000,1001,90,20\n")
    assert read_breakouts(str(plain))[0].azimuth == 90.0
    with pytest.raises(SourceError) as err:  # the file named once, before the reason
        read_breakouts(str(tmp_path / "nope.csv"))
    assert (
        str(err.value)
        == f"{tmp_path / 'nope.csv'}: cannot read breakout picks (No such file or directory)"
    )


# --- bad input ----------------------------------------------------------------------------------


def test_missing_channel_lists_channels_present(log_files: dict[str, Path]) -> None:
    for fmt, path in log_files.items():
        with pytest.raises(SourceError) as err:
            read_well_log(path, "NOPE")
        assert str(path) in str(err.value) and "channels present" in str(err.value), fmt
        assert "AMP" in str(err.value) and "TT" in str(err.value)


def test_without_image_a_single_numbered_family_is_the_image(tmp_path: Path) -> None:
    log = make_log(rows=96)
    only_amp = write_log(replace(log, tt=log.tt[:, :0]), tmp_path / "one", "las")
    got = read_well_log(only_amp, None)
    assert got.image.request == "AMP{}" and got.image.members == tuple(
        f"AMP{i}" for i in range(1, 17)
    )
    explicit = read_well_log(only_amp, "AMP{}")
    assert np.array_equal(got.image.values, explicit.image.values, equal_nan=True)
    auto = samples(converter(only_amp, **SMALL))
    assert [s.meta["channels"]["image"] for s in auto] == ["AMP{}"] * 2
    assert [s.rgb.tobytes() for s in auto] == [
        s.rgb.tobytes() for s in samples(converter(only_amp, image="AMP{}", **SMALL))
    ]
    # two families (AMP1..16, TT1..8): the error lists both with the --image to give
    with pytest.raises(SourceError) as err:
        read_well_log(write_log(log, tmp_path / "two", "las"), None)
    assert "2 candidate image channels: 'AMP{}' (16 sectors), 'TT{}' (8 sectors)" in str(err.value)
    assert "--image 'AMP{}'" in str(err.value)
    # ... unless one of them is the exogenous channel: --depth 'TT{}' leaves AMP{} the image
    both = read_well_log(tmp_path / "two" / "well.las", None, "TT{}")
    assert both.image.request == "AMP{}" and both.depth is not None
    assert both.depth.request == "TT{}"


def test_without_image_gapped_or_small_families_are_not_images(tmp_path: Path) -> None:
    import lasio

    las = lasio.LASFile()
    las.append_curve("DEPT", np.arange(8.0), unit="m")
    for name in ("RES1", "RES2", "RES3", "RES5", "ACCL1", "ACCL2", "GR"):
        las.append_curve(name, np.ones(8), unit="ohm.m")
    path = tmp_path / "gaps.las"
    with open(path, "w") as f:
        las.write(f, version=2.0)
    with pytest.raises(SourceError, match="no image channel to pick.*ACCL1, ACCL2, GR$"):
        read_well_log(path, None)
    assert read_well_log(path, "ACCL{}").image.sectors == 2  # named, two sectors are fine


def test_missing_depth_channel_is_named_without_image(log_files: dict[str, Path]) -> None:
    for fmt, path in log_files.items():
        with pytest.raises(SourceError) as err:
            read_well_log(path, None, "NOPE")
        assert str(err.value).startswith(f"{path}: no channel 'NOPE'; channels present: "), fmt


@pytest.mark.parametrize("fmt", ["npz", "hdf5"])
def test_channel_off_the_index_says_rows_vs_index(tmp_path: Path, fmt: str) -> None:
    log = make_log(rows=64)
    path = write_log(replace(log, image=log.image[:60], tt=log.tt[:60]), tmp_path, fmt)
    want = "'AMP' has 60 rows, the index 'depth' has 64"
    with pytest.raises(SourceError) as err:
        read_well_log(path, "AMP")
    assert str(err.value) == f"{path}: channel {want}"
    with pytest.raises(SourceError) as err:
        read_well_log(path, None)
    assert str(err.value).startswith(f"{path}: no channel on the index: {want}")
    assert "'TT' has 60 rows" in str(err.value)


def test_lasio_parser_notes_do_not_reach_stderr(
    shared_fixtures: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import logging
    import subprocess
    import sys

    wrapped = shared_fixtures / "las" / "1001178549.las"  # WRAP=YES
    caplog.set_level(logging.DEBUG, logger="converters.welllogs")
    read_well_log(wrapped, "ACCL{}")
    notes = [r for r in caplog.records if "Only engine" in r.getMessage()]
    assert notes and all(
        r.levelno == logging.DEBUG and r.name == "converters.welllogs" for r in notes
    )
    assert str(wrapped) in notes[0].getMessage()
    code = f"from converters.welllogs import read_well_log; read_well_log({str(wrapped)!r}, 'ACCL{{}}')"
    root = Path(__file__).resolve().parents[1]
    res = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True)
    assert res.returncode == 0 and res.stderr == "", res.stderr
    # a real lasio warning still comes through, naming the file
    conflicting = tmp_path / "conflict.las"
    conflicting.write_text(wrapped.read_text().replace("STRT .FT", "STRT .M ", 1))
    caplog.clear()
    read_well_log(conflicting, "ACCL{}")
    (warning,) = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert (
        "Conflicting index units" in warning.getMessage()
        and str(conflicting) in warning.getMessage()
    )


def test_real_dlis_fixtures_have_no_image_channels(shared_fixtures: Path) -> None:
    for name, listed in [
        ("pyborehole_test_dlis.dlis", "CALIPER.PD"),
        ("206_05a-_3_DWL_DWL_WIRE_258276498.DLIS", "TENS_SL"),
    ]:
        path = shared_fixtures / "dlis" / name
        for image in ("AMP", None):
            with pytest.raises(SourceError) as err:
                read_well_log(path, image)
            assert str(path) in str(err.value) and listed in str(err.value)
    with pytest.raises(SourceError, match="more than one axis"):
        read_well_log(shared_fixtures / "dlis" / "multidimensions-ints-various.dlis", "CHD32")
    with pytest.raises(SourceError, match="unknown unit"):
        read_well_log(shared_fixtures / "dlis" / "multidimensions-ints-various.dlis", "CHD4")


def test_non_monotonic_index(tmp_path: Path) -> None:
    log = make_log(rows=64)
    log.index[10] = log.index[12]
    with pytest.raises(SourceError, match=r"not monotonic \(row 10"):
        read_well_log(write_log(log, tmp_path, "npz"), "AMP")


@pytest.mark.parametrize(
    ("field", "unit", "match"),
    [
        ("index_unit", "furlong", "unknown unit 'furlong' of index"),
        ("index_unit", "API", "unknown unit 'API' of index"),
        ("depth_unit", "", "unknown unit '' of channel 'TT'"),
    ],
)
def test_unknown_units(tmp_path: Path, field: str, unit: str, match: str) -> None:
    path = write_log(replace(make_log(rows=64), **{field: unit}), tmp_path, "hdf5")
    with pytest.raises(SourceError, match=match):
        read_well_log(path, "AMP", "TT")


def test_bad_unit_in_one_well_is_a_unit_error(tmp_path: Path) -> None:
    from datakit.errors import DatakitError
    from datakit.writer import ConvertConfig, convert

    write_log(make_log(rows=64), tmp_path / "src", "npz", stem="good")
    odd = write_log(
        replace(make_log(rows=64), index_unit="furlong"), tmp_path / "src", "npz", stem="odd"
    )
    conv = converter(tmp_path / "src", image="AMP", window=64)
    result = convert(conv, str(tmp_path / "ds"), ConvertConfig(on_error="skip", progress=False))
    assert (result.num_samples, result.skipped) == (1, 1)
    (logged,) = (json.loads(x) for x in (tmp_path / "ds" / "errors.jsonl").read_text().splitlines())
    assert logged["source"] == str(odd)  # the file, named once: not the unit id beside it
    assert logged["reason"].startswith("unknown unit 'furlong' of index 'depth'")
    with pytest.raises(DatakitError, match="furlong") as err:
        convert(
            converter(tmp_path / "src", image="AMP", window=64),
            str(tmp_path / "ds2"),
            ConvertConfig(progress=False),
        )
    assert str(odd) in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "ds2").exists()


def test_exogenous_units_convert_across_wells(tmp_path: Path) -> None:
    log = make_log(rows=64)
    write_log(log, tmp_path, "npz", stem="a_us")
    write_log(replace(log, tt=log.tt / 1000, depth_unit="ms"), tmp_path, "npz", stem="b_ms")
    ss = samples(converter(tmp_path, image="AMP", depth="TT", window=64))
    a, b = (s.depth.astype(np.int64) for s in ss)  # type: ignore[union-attr]
    assert np.array_equal(a == 0, b == 0) and np.abs(a - b).max() <= 1  # ms -> us rounding
    assert ss[1].meta["depth_unit"] == "us"


def test_colormap(log_files: dict[str, Path]) -> None:
    s = samples(converter(log_files["npz"], image="AMP", colormap="viridis", **SMALL))[0]
    assert not np.array_equal(s.rgb[..., 0], s.rgb[..., 1])
    with pytest.raises(UsageError, match="colormap"):
        converter(log_files["npz"], image="AMP", colormap="nope").units()


def test_units_are_unique_and_deterministic(log_files: dict[str, Path]) -> None:
    root = next(iter(log_files.values())).parent.parent
    units = converter(root, image="AMP").units()
    assert [u.id for u in units] == ["dlis_well", "hdf5_well", "las_well", "npz_well"]
    assert units == converter(root, image="AMP").units()


# --- the real LWD log ----------------------------------------------------------------------------


def test_real_lwd_las_converts(shared_fixtures: Path) -> None:
    path = shared_fixtures / LWD_LAS
    conv = converter(path, image="ABDC{}M", depth="GRAS{}M")
    info = conv.info()
    well = info.extra["borehole"]["wells"]["P11-A-02_Composite_MEM_Image_NF"]
    assert (well["rows"], well["windows"]) == (7361, num_windows(7361, 256, 128))
    assert well["index"] == {"name": "DEPTH", "unit": "m", "top": 1950.0, "bottom": 2686.0}
    assert well["image"]["channels"] == [f"ABDC{i}M" for i in range(1, 17)]
    assert info.depth_unit == "API"
    out = run(conv)
    assert len(out) == 56
    ss = [s for s in out if isinstance(s, Sample)]
    assert ss[0].meta["top"] == 1950.0 and ss[-1].meta["bottom"] == pytest.approx(
        1950.0 + 0.1 * 7295
    )
    # Rows 0-46 hold no density: black (invalid) at the top of the first window.
    assert (ss[0].rgb[:47] == 0).all() and (ss[0].rgb[47:60] > 0).any()
    assert all(s.meta["well"] == "P11-A-02A" and s.meta["periodic_x"] for s in ss)


# --- CLI ----------------------------------------------------------------------------------------


def test_cli_convert_and_errors(log_files: dict[str, Path], tmp_path: Path) -> None:
    from datakit.cli import main

    picks = write_breakouts(tmp_path / "p.csv", [(1001.0, 1003.0, 10.0, 60.0)])
    out = tmp_path / "ds"
    runner = CliRunner()
    res = runner.invoke(
        main,
        [
            "convert",
            "borehole",
            str(log_files["las"]),
            str(out),
            "--image",
            "AMP{}",
            "--depth",
            "TT{}",
            "--window",
            "64",
            "--stride",
            "32",
            "--columns",
            "64",
            "--breakouts",
            str(picks),
            "--no-progress",
            "--rgb-format",
            "png",
        ],
    )
    assert res.exit_code == 0, res.output
    info = json.loads((out / "_info.json").read_text())
    assert info["depth"]["unit"] == "us" and info["labels"]["classes"] == ["background", "breakout"]
    assert info["splits"]["train"]["num_samples"] == 8
    from datakit.reader import iter_tar_members
    from datakit.schema import decode

    with open(out / info["shards"][0]["name"], "rb") as f:
        key, members = next(iter_tar_members(f, "shard"))
    s = decode(key, members)
    assert s.label is not None and (s.label == 1).any() and s.meta["periodic_x"] is True
    assert s.depth is not None and s.depth.max() == pytest.approx(
        np.nanmax(make_log().tt[:64]), abs=0.01
    )

    res = runner.invoke(
        main,
        [
            "convert",
            "borehole",
            str(log_files["dlis"]),
            str(tmp_path / "x"),
            "--image",
            "NOPE",
            "--no-progress",
        ],
    )
    line = assert_one_line_error(res, log_files["dlis"], out=tmp_path / "x")
    assert "channels present: frame MAIN: AMP[16], TT[8]" in line


def test_workers_give_the_same_shards(tmp_path: Path) -> None:
    """The survey travels to worker processes with the converter; the bytes do not depend on it."""
    import pickle

    from datakit.writer import ConvertConfig, convert

    for stem in ("a", "b"):
        write_log(make_log(rows=96, seed=ord(stem)), tmp_path / "src", "npz", stem=stem)
    conv = converter(tmp_path / "src", image="AMP", depth="TT", **SMALL)
    conv.info()
    assert conv._last_log is not None and pickle.loads(pickle.dumps(conv))._last_log is None
    infos = []
    for workers in (1, 2):
        conv = converter(tmp_path / "src", image="AMP", depth="TT", **SMALL)
        out = tmp_path / f"w{workers}"
        convert(conv, str(out), ConvertConfig(workers=workers, progress=False, shard_size=3))
        infos.append(json.loads((out / "_info.json").read_text()))
    assert infos[0]["shards"] == infos[1]["shards"] and infos[0]["borehole"] == infos[1]["borehole"]
    assert infos[0]["splits"]["train"]["num_samples"] == 4


def test_dlis_tenth_inch_index_logged_upwards(tmp_path: Path) -> None:
    """DLIS habits: index in '0.1 in', decreasing (logged upwards) -> inches, increasing."""
    log = make_log(rows=64)
    up = replace(
        with_rows(log, slice(None, None, -1)), index=log.index[::-1] * 10, index_unit="0.1 in"
    )
    got = read_well_log(write_log(up, tmp_path, "dlis"), "AMP", "TT")
    assert got.index_unit == "in" and np.allclose(got.index, log.index)
    assert np.array_equal(
        got.image.values,
        read_well_log(write_log(log, tmp_path, "npz"), "AMP").image.values,
        equal_nan=True,
    )


def test_empty_log_is_reported(tmp_path: Path) -> None:
    path = write_log(with_rows(make_log(rows=8, nulls=False), slice(0, 0)), tmp_path, "npz")
    conv = converter(path, image="AMP", depth="TT")
    json.dumps(conv.info().extra, allow_nan=False)
    (item,) = run(conv)
    assert isinstance(item, Skipped) and item.reason == "no data rows"
    assert not item.expected  # an empty log is bad input
    short = write_log(make_log(rows=8, nulls=False), tmp_path / "short", "npz")
    (item,) = run(converter(short, image="AMP", depth="TT", window=16))
    assert isinstance(item, Skipped) and item.reason == "8 rows, fewer than one window of 16"
    assert item.expected  # a short run: counted and logged even under --on-error fail, not fatal


@pytest.mark.parametrize("fmt", sorted(WRITERS))
def test_truncated_log_is_one_line_naming_the_file(tmp_path: Path, fmt: str) -> None:
    path = write_log(make_log(rows=64), tmp_path, fmt)
    data = path.read_bytes()
    cut = tmp_path / f"cut{path.suffix}"
    cut.write_bytes(data[: len(data) // 2])
    why = "cut short: the ~A section ends mid-row" if fmt == "las" else "not a readable"
    with pytest.raises(SourceError, match=why) as err:
        read_well_log(cut, "AMP")
    assert str(cut) in str(err.value) and "\n" not in str(err.value)


def _cut_las(data: bytes, where: str) -> bytes:
    a = data.index(b"~A")
    if where == "header":  # inside the ~C section
        return data[: data.index(b"~C") + 40]
    if where == "after ~A":
        return data[: data.index(b"\n", a) + 1]
    start = data.index(b"\n", a + (len(data) - a) // 2) + 1  # "mid-row": half a row of data
    return data[: start + (data.index(b"\n", start) - start) // 2].rstrip()


@pytest.mark.parametrize(
    ("where", "reason"),
    [
        (
            "header",
            re.escape("cut short: the file ends in its header (no ~A section, no data rows)"),
        ),
        ("after ~A", re.escape("no data rows (the ~A section is empty)")),
        ("mid-row", r"cut short: the ~A section ends mid-row \(\d+ of 25 values in its last row\)"),
        ("dlis", re.escape("not a readable DLIS file (File truncated in Logical Record Segment)")),
    ],
    ids=["header", "after-A", "mid-row", "dlis"],
)
def test_cut_log_is_one_line_naming_the_file_once(tmp_path: Path, where: str, reason: str) -> None:
    """A log cut short is one plain line: the path once (no well id before it) and what is wrong,
    not lasio's "Cannot reshape ..." or dlisio's Problem/Where/Severity/Debug report."""
    from datakit.cli import main

    fmt = "dlis" if where == "dlis" else "las"
    data = write_log(make_log(rows=64), tmp_path / "src", fmt).read_bytes()
    cut = tmp_path / f"cut.{fmt}"
    cut.write_bytes(data[: len(data) // 2] if fmt == "dlis" else _cut_las(data, where))
    image = channel_names(fmt)[0]
    args = ["convert", "borehole", str(cut), str(tmp_path / "out"), "--image", image]
    res = CliRunner().invoke(main, [*args, "--no-progress"])
    line = assert_one_line_error(res, cut, out=tmp_path / "out")
    assert re.fullmatch(f"Error: {re.escape(str(cut))}: {reason}", line), line


def test_non_numeric_npz_index_is_a_source_error(tmp_path: Path) -> None:
    path = tmp_path / "strings.npz"
    np.savez(path, depth=np.array(["a"] * 8), AMP=np.zeros((8, 4)))
    with pytest.raises(SourceError, match="not a readable NPZ file"):
        read_well_log(path, "AMP")


def test_dlis_duplicated_mnemonics_are_told_apart(tmp_path: Path) -> None:
    """dlisio names curves NAME.origin.copy where a frame holds one mnemonic twice (its own example
    is the index, TIME); the index and channels are looked up by those names."""
    from dliswriter import DLISFile

    log = make_log(rows=64)
    df = DLISFile()
    lf = df.add_logical_file()
    lf.add_origin("ORIGIN", well_name=log.well)
    chans = [
        lf.add_channel("DEPT", data=log.index, units="m"),
        lf.add_channel("AMP", data=log.image, units="dB"),
        lf.add_channel("DEPU", data=log.index + 1.0, units="m"),  # renamed DEPT (copy 1) below
    ]
    lf.add_frame("MAIN", channels=chans, index_type="BOREHOLE-DEPTH")
    df.write(str(tmp_path / "w.dlis"), output_chunk_size=1 << 20)
    data = (tmp_path / "w.dlis").read_bytes()
    assert data.count(b"\x00\x04DEPU") == 2  # OBNAME: copy 0, "DEPU" (definition, frame)
    path = tmp_path / "dup.dlis"
    path.write_bytes(data.replace(b"\x00\x04DEPU", b"\x01\x04DEPT"))
    got = read_well_log(path, "AMP")
    assert got.index_name == "DEPT.0.0" and np.array_equal(got.index, log.index)
    npz = read_well_log(write_log(log, tmp_path, "npz"), "AMP")
    assert np.array_equal(got.image.values, npz.image.values, equal_nan=True)
    with pytest.raises(SourceError, match=r"channels present: frame MAIN: AMP\[16\], DEPT\.0\.1"):
        read_well_log(path, "NOPE")


def test_dlis_frame_with_an_undefined_channel_is_one_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A frame listing a channel the file does not define (dlisio gives None) names the file;
    dlisio's warning about it goes to our logger, naming the file, not to stderr."""
    data = write_log(make_log(rows=64), tmp_path, "dlis").read_bytes()
    assert data.count(b"\x00\x02TT") == 2  # the channel's definition, then the frame's reference
    path = tmp_path / "broken.dlis"
    path.write_bytes(data.replace(b"\x00\x02TT", b"\x00\x02TX", 1))
    with pytest.raises(SourceError) as err:
        read_well_log(path, "AMP")
    assert str(err.value).startswith(f"{path}: frame MAIN: ") and "'TT'" in str(err.value)
    assert "\n" not in str(err.value)
    linked = [r for r in caplog.records if "Unable to find linked object" in r.getMessage()]
    assert linked and all(
        r.name == "converters.welllogs" and str(path) in r.getMessage() for r in linked
    )


def test_las_index_unit_from_strt_when_the_curve_has_none(tmp_path: Path) -> None:
    """``DEPT.   :`` on the ~C line: the index unit is the one of STRT/STOP/STEP."""
    log = make_log(rows=64)
    path = write_log(log, tmp_path, "las")
    text = path.read_text()
    assert "\nDEPT .m   :" in text and "\nSTRT.m " in text
    path.write_text(text.replace("\nDEPT .m   :", "\nDEPT .     :", 1))
    got = read_well_log(path, "AMP{}")
    assert got.index_unit == "m" and np.array_equal(got.index, log.index)


def test_null_in_a_scaled_index_is_found(tmp_path: Path) -> None:
    """-999.25 in a '0.1 in' index is a null, not -99.925 in (which a decreasing index accepted)."""
    log = make_log(rows=64)
    down = replace(
        with_rows(log, slice(None, None, -1)), index=log.index[::-1] * 10, index_unit="0.1 in"
    )
    down.index[-1] = -999.25
    with pytest.raises(SourceError, match="index 'depth' has a null at row 63"):
        read_well_log(write_log(down, tmp_path, "npz"), "AMP")


def test_cli_a_run_that_converts_nothing_fails_and_leaves_nothing(tmp_path: Path) -> None:
    """A short run is an expected skip, but a conversion whose every unit is skipped has made no
    dataset: exit 1 naming OUT and the first skip, and no _info.json (OUT, created by the run, is
    removed again)."""
    from click.testing import CliRunner

    from datakit.cli import main

    path = write_log(make_log(rows=8, nulls=False), tmp_path / "src", "npz")
    out = tmp_path / "out"
    res = CliRunner().invoke(
        main,
        ["convert", "borehole", str(path.parent), str(out), "--image", "AMP", "--depth", "TT",
         "--window", "16", "--no-progress"],
    )  # fmt: skip
    assert res.exit_code == 1, res.output
    assert f"{out}: no samples converted (all 1 skipped, the first: {path}: 8 rows" in res.output
    assert not out.exists()
