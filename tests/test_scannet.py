"""ScanNet converter: .sens (byte-exact fixtures) and exported folders, labels, splits, bad input."""

from __future__ import annotations

import json
import struct
import zipfile
import zlib
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest

from converters.base import Skipped
from converters.imaging import resize_rgb
from converters.scannet import ScanNetConfig, ScanNetConverter, decode_color, jpeg_size
from converters.scannet_layout import LABELS, SCANNET20_NYU40, label_lut, parse_scenes
from converters.sens import SensReader, SensTruncated
from datakit.errors import SourceError
from datakit.schema import Sample, decode, encode
from tests import scannet_fixtures as fx
from tests.converted_fixtures import assert_one_line_error

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures"
SIZE = (80, 60)  # fixture colour 160x120 (DCT-halved on decode), depth 80x60


def _samples(src: Path, **cfg: object) -> tuple[list[Sample], list[Skipped]]:
    conv = ScanNetConverter(ScanNetConfig(src=str(src), **{"size": SIZE, **cfg}))  # type: ignore[arg-type]
    samples: list[Sample] = []
    skipped: list[Skipped] = []
    for unit in conv.units():
        for s in conv.convert(unit):
            (skipped if isinstance(s, Skipped) else samples).append(s)  # type: ignore[arg-type]
    return samples, skipped


def _rgb(bgr: np.ndarray | None) -> np.ndarray:
    assert bgr is not None
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def _scene(tmp_path: Path, spec: fx.SensSpec, name: str = "scene0001_00") -> Path:
    folder = tmp_path / "scans" / name
    folder.mkdir(parents=True)
    fx.write_sens(folder / f"{name}.sens", spec)
    return folder


@pytest.fixture(scope="module")
def spec() -> fx.SensSpec:
    return fx.make_spec(11, no_pose=(5,), name="Sensor7")  # odd name length, -inf pose, IMU block


# --- the .sens reader against the layout -------------------------------------------------------


def test_reader_parses_header_and_frames(tmp_path: Path, spec: fx.SensSpec) -> None:
    path = fx.write_sens(tmp_path / "s.sens", spec)
    with SensReader(path, "s") as r:
        h = r.header
        assert (h.sensor_name, h.num_frames, h.color_size, h.depth_size) == (
            "Sensor7",
            11,
            (160, 120),
            (80, 60),
        )
        assert (h.color_compression, h.depth_compression, h.depth_shift) == ("jpeg", "zlib", 1000.0)
        np.testing.assert_array_equal(h.intrinsic_color, spec.intrinsic_color)
        np.testing.assert_array_equal(h.intrinsic_depth, spec.intrinsic_depth)
        # starting at frame 7 walks headers only; then random access backwards uses the cache
        for i in (7, 10, 2, 5):
            f = r.read_frame(i)
            assert (f.color, f.depth) == (spec.frames[i].color, spec.frames[i].depth)
            assert (f.timestamp_color, f.timestamp_depth) == (33333 * i, 33333 * i + 7)
        assert r.read_frame(5).pose is None
        np.testing.assert_array_equal(r.read_frame(4).pose, fx.pose(4))
        assert [f.index for f in r.frames(1, None, 4)] == [1, 5, 9]


def test_reader_reports_truncation_with_scan_frame_and_offset(
    tmp_path: Path, spec: fx.SensSpec
) -> None:
    path = fx.write_sens(tmp_path / "t.sens", spec)
    with SensReader(path, "t") as r:
        off6 = r.read_frame(6).offset
    data = path.read_bytes()
    cut = tmp_path / "cut.sens"
    cut.write_bytes(data[: off6 + 100])  # inside frame 6's colour bytes
    with SensReader(cut, "scene0009_00") as r:
        r.read_frame(5)
        with pytest.raises(SourceError, match=rf"scene0009_00.*frame 6 at byte {off6}.*truncated"):
            r.read_frame(6)
    bad = tmp_path / "v3.sens"
    bad.write_bytes(struct.pack("<I", 3) + data[4:])
    with pytest.raises(SourceError, match="version 3"):
        SensReader(bad, "v3")


def test_reader_refuses_implausible_byte_counts_that_fit_in_the_file(
    tmp_path: Path, spec: fx.SensSpec
) -> None:
    # A corrupt colour byte count that still fits in a multi-GB file would be read whole: here
    # 2.5 MB claimed for a 160x120 frame, in a file padded to 3 MB after the frames.
    small = replace(spec, frames=spec.frames[:2], imu=b"\0" * 3_000_000)
    path = fx.write_sens(tmp_path / "c.sens", small)
    with SensReader(path, "c") as r:
        off1 = r.read_frame(1).offset
    data = bytearray(path.read_bytes())
    data[off1 + 80 : off1 + 88] = struct.pack("<Q", 2_500_000)  # frame 1's colour byte count
    path.write_bytes(bytes(data))
    with SensReader(path, "c") as r:
        assert r.read_frame(0).color == spec.frames[0].color
        with pytest.raises(
            SensTruncated, match=rf"frame 1 at byte {off1}: colour byte count 2500000 is implaus"
        ):
            r.read_frame(1)


# --- samples -----------------------------------------------------------------------------------


def test_sens_samples_carry_every_value(tmp_path: Path, spec: fx.SensSpec) -> None:
    _scene(tmp_path, spec)
    samples, skipped = _samples(tmp_path, frame_skip=3)  # 11 frames: 0 3 6 9
    assert not skipped
    assert [s.key for s in samples] == [f"scene0001_00_{i:06d}" for i in (0, 3, 6, 9)]
    for s in samples:
        i = s.meta["frame"]
        assert s.meta["id"] == f"scene0001_00/{i:06d}" and s.meta["scene"] == "scene0001_00"
        assert (s.split, s.meta["split"], s.meta["source"]) == ("train", "train", "scannet")
        assert (s.meta["depth_scale"], s.meta["depth_unit"]) == (0.001, "m")
        assert s.rgb.shape == (60, 80, 3) and s.depth is not None and s.depth.dtype == np.uint16
        np.testing.assert_array_equal(s.depth, fx.depth_of(spec, i))  # pixel-exact millimetres
        np.testing.assert_array_equal(s.meta["pose"], fx.pose(i))
        # colour intrinsic (148.5, 147.25, 80.25, 59.5) at 160x120 -> 80x60, pixel centres:
        # f' = f / 2, c' = (c + 0.5) / 2 - 0.5
        assert s.meta["intrinsics"] == pytest.approx(
            {"fx": 74.25, "fy": 73.625, "cx": 39.875, "cy": 29.5}, abs=1e-9
        )
        assert s.meta["depth_intrinsics"] == pytest.approx(
            {"fx": 74.25, "fy": 73.5, "cx": 39.75, "cy": 29.625}
        )
        # colour: DCT-halved decode then area resize, close to a full decode + area resize
        full = _rgb(cv2.imdecode(np.frombuffer(spec.frames[i].color, np.uint8), cv2.IMREAD_COLOR))
        assert np.abs(s.rgb.astype(int) - resize_rgb(full, SIZE).astype(int)).mean() < 3
        encode(s)  # valid against the schema


def test_minus_inf_pose_is_omitted_and_frame_kept(tmp_path: Path, spec: fx.SensSpec) -> None:
    _scene(tmp_path, spec)
    samples, _ = _samples(tmp_path, frame_skip=5)
    by_frame = {s.meta["frame"]: s for s in samples}
    assert sorted(by_frame) == [0, 5, 10]
    assert "pose" not in by_frame[5].meta and "pose" in by_frame[10].meta


def test_depth_and_labels_resized_by_nearest(tmp_path: Path, spec: fx.SensSpec) -> None:
    folder = _scene(tmp_path, spec)
    ids = np.zeros((120, 160), np.uint16)
    ids[:, :40], ids[:, 40:80], ids[:, 80:120], ids[:60, 120:] = 1, 2, 6, 999  # wall chair books ?
    ids[60:, 120:] = 40  # refrigerator (nyu40 24)
    ids[0, 0] = 3000  # nyu40 39 otherfurniture
    fx.write_label_zip(folder / "scene0001_00_2d-label-filt.zip", {0: ids, 4: ids[::-1].copy()})
    fx.write_label_map(tmp_path / "scannetv2-labels.combined.tsv")
    samples, skipped = _samples(tmp_path, frame_skip=4, labels=True, size=(40, 30))
    assert [s.meta["frame"] for s in samples] == [0, 4]
    assert [k.source for k in skipped] == [str(folder / "scene0001_00_2d-label-filt.zip")]
    assert "frame 8: no label image" in skipped[0].reason
    lab = samples[0].label
    assert lab is not None and lab.dtype == np.uint8 and lab.shape == (30, 40)
    expected = np.full(ids.shape, 255, np.uint8)
    for sid, train in ((1, 0), (2, 4), (40, 14), (3000, 19)):
        expected[ids == sid] = train
    # pixel-centre nearest: output pixel x samples input floor((x + 0.5) * 4) = 4x + 2 (labels,
    # 160x120 -> 40x30) and floor((x + 0.5) * 2) = 2x + 1 (depth, 80x60 -> 40x30)
    np.testing.assert_array_equal(lab, expected[2::4, 2::4])
    assert set(np.unique(lab)) == {0, 4, 14, 255}
    np.testing.assert_array_equal(samples[1].label, expected[::-1][2::4, 2::4])
    np.testing.assert_array_equal(samples[0].depth, fx.depth_of(spec, 0)[1::2, 1::2])
    assert LABELS.classes[14] == "refrigerator" and len(LABELS.classes) == 20


def test_label_map_follows_the_benchmark_ids() -> None:
    real = FIXTURES / "scannet_meta"
    if not real.is_dir():
        pytest.skip("../shared/fixtures absent")
    lut = label_lut(str(real / "scannetv2-labels.combined.tsv"))
    bench = [
        int(line.split()[0])
        for line in (real / "classes_SemVoxLabel-nyu40id.txt").read_text().splitlines()
        if line.strip()
    ]
    assert tuple(bench) == SCANNET20_NYU40
    assert (lut[1], lut[2], lut[0], lut[65535]) == (
        0,
        4,
        255,
        255,
    )  # wall, chair, unannotated, unknown


def test_label_map_repeated_id_last_row_wins(tmp_path: Path) -> None:
    # The real table repeats ids with different nyu40 classes (188: "shower door" 8, then
    # "shower doors" 38). ScanNet's read_label_mapping fills a dict row by row: the last row wins.
    rows = (
        (188, "shower door", 8), (188, "shower doors", 38),  # door, then otherstructure
        (385, "cabinet door", 8), (385, "cabinet doors", 3),  # door, then cabinet
    )  # fmt: skip
    lut = label_lut(str(fx.write_label_map(tmp_path / "labels.tsv", rows)))
    assert (lut[188], lut[385]) == (255, 2)
    real = FIXTURES / "scannet_meta" / "scannetv2-labels.combined.tsv"
    if real.is_file():
        assert label_lut(str(real))[188] == 255


def test_chunks_and_frame_skip_not_dividing(tmp_path: Path, spec: fx.SensSpec) -> None:
    _scene(tmp_path, spec)
    conv = ScanNetConverter(
        ScanNetConfig(src=str(tmp_path), size=SIZE, frame_skip=2, chunk_frames=2)
    )
    units = conv.units()
    assert [(u.payload.start, u.payload.stop) for u in units] == [(0, 3), (4, 7), (8, 11)]
    keys = [s.key for u in units for s in conv.convert(u) if isinstance(s, Sample)]
    whole, _ = _samples(tmp_path, frame_skip=2)
    assert keys == [s.key for s in whole] == [f"scene0001_00_{i:06d}" for i in (0, 2, 4, 6, 8, 10)]


def test_exported_route_gives_identical_samples(tmp_path: Path, spec: fx.SensSpec) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    _scene(a, spec)
    fx.write_exported(b / "scans" / "scene0001_00", spec, frame_indices=range(0, 11, 2))
    ids = np.full((120, 160), 2, np.uint16)
    for root in (a, b):
        fx.write_label_zip(
            root / "scans" / "scene0001_00" / "scene0001_00_2d-label-filt.zip",
            {i: ids for i in range(11)},
        )
        fx.write_label_map(root / "scannetv2-labels.combined.tsv")
    sa, _ = _samples(a, frame_skip=4, labels=True)
    sb, _ = _samples(b, frame_skip=4, labels=True)  # exported frames 0 2 4 ..: keeps 0 4 8
    assert (
        [s.key for s in sa] == [s.key for s in sb] == [f"scene0001_00_{i:06d}" for i in (0, 4, 8)]
    )
    for x, y in zip(sa, sb, strict=True):
        assert encode(x) == encode(y)  # byte-identical members: rgb, depth, label, json
    # every frame exported (frame 5 has a -inf pose, written as "-inf" text): still identical
    c = tmp_path / "c"
    fx.write_exported(c / "scans" / "scene0001_00", spec)
    sa, _ = _samples(a, frame_skip=5)
    sc, _ = _samples(c, frame_skip=5)
    assert [s.meta["frame"] for s in sc] == [0, 5, 10] and "pose" not in sc[1].meta
    assert [encode(x) for x in sa] == [encode(y) for y in sc]


def test_corrupt_frames_are_skipped_with_reason(tmp_path: Path, spec: fx.SensSpec) -> None:
    frames = list(spec.frames[:4])
    frames[1] = replace(frames[1], color=frames[1].color[: len(frames[1].color) // 2])  # cut JPEG
    frames[2] = replace(frames[2], depth=b"not zlib at all")
    frames[3] = replace(frames[3], depth=zlib.compress(b"\0" * 100))
    folder = _scene(tmp_path, replace(spec, frames=frames))
    samples, skipped = _samples(tmp_path, frame_skip=1)
    assert [s.meta["frame"] for s in samples] == [0]
    # each names the .sens file, the scan, the frame and its byte offset
    assert [k.source for k in skipped] == [str(folder / "scene0001_00.sens")] * 3
    assert [k.reason.split(" at byte")[0] for k in skipped] == [
        f"scan scene0001_00: frame {i}" for i in (1, 2, 3)
    ]
    assert (
        "colour jpeg truncated: the file ends before its end-of-image marker" in skipped[0].reason
    )
    assert "does not inflate" in skipped[1].reason
    assert "inflates to 100 bytes, expected 80x60x2" in skipped[2].reason


def test_truncated_sens_keeps_intact_frames_and_counts_lost_ones(
    tmp_path: Path, spec: fx.SensSpec
) -> None:
    folder = _scene(tmp_path, spec)
    sens = folder / "scene0001_00.sens"
    with SensReader(sens) as r:
        off4 = r.read_frame(4).offset
    sens.write_bytes(sens.read_bytes()[: off4 + 100])  # inside frame 4's colour bytes
    conv = ScanNetConverter(
        ScanNetConfig(src=str(tmp_path), size=SIZE, frame_skip=3, chunk_frames=2)
    )  # kept 0 3 | 6 9: frame 3 is intact, 6 and 9 are lost, in the second chunk
    out = [s for u in conv.units() for s in conv.convert(u)]
    assert [s.key for s in out if isinstance(s, Sample)] == [
        "scene0001_00_000000",
        "scene0001_00_000003",
    ]
    lost = [s for s in out if isinstance(s, Skipped)]
    assert [k.source for k in lost] == [str(sens)] * 2  # one per lost kept frame
    assert lost[0].reason.startswith(f"scan scene0001_00: frame 4 at byte {off4}: ")
    assert "truncated" in lost[0].reason and "kept frames from 6 on are lost" in lost[0].reason
    assert lost[1].reason == f"frame 9 is lost to the truncation at frame 4 (byte {off4})"
    # a count the file has no room for (a corrupt count, or a cut deep into a long scan): only
    # as many frames are listed as headers could fit, and frame 0 is still converted
    with SensReader(sens) as r:
        end0, count_at = r.read_frame(1).offset, r.header.frames_offset - 8
    data = bytearray(sens.read_bytes()[: end0 + 50])
    data[count_at : count_at + 8] = struct.pack("<Q", 10**12)
    sens.write_bytes(bytes(data))
    conv = ScanNetConverter(ScanNetConfig(src=str(tmp_path), size=SIZE, frame_skip=1))
    assert len(conv.units()) <= 4  # (end0 + 50) / 96 frame headers at most, 50 a unit
    samples, lost = _samples(tmp_path, frame_skip=1)
    assert [s.meta["frame"] for s in samples] == [0]
    assert (
        f"frame 1 at byte {end0}" in lost[0].reason
        and "says 1000000000000 frames" in lost[0].reason
    )
    assert all("truncation at frame 1 (byte" in k.reason for k in lost[1:])


def test_cli_truncated_sens_skip_counts_frames(tmp_path: Path, spec: fx.SensSpec) -> None:
    from click.testing import CliRunner

    from datakit.cli import main

    folder = _scene(tmp_path / "src", spec)
    sens = folder / "scene0001_00.sens"
    with SensReader(sens) as r:
        off1 = r.read_frame(1).offset
    sens.write_bytes(sens.read_bytes()[: off1 + 200])
    out = tmp_path / "out"
    args = ["convert", "scannet", str(tmp_path / "src"), str(out), "--frame-skip", "5"]
    res = CliRunner().invoke(
        main, [*args, "--size", "80x60", "--no-progress", "--on-error", "skip"]
    )
    assert res.exit_code == 0, res.output
    info = json.loads((out / "_info.json").read_text())
    assert info["splits"]["train"]["num_samples"] == 1  # frame 0, read before the cut
    assert info["errors"]["skipped"] == 2  # frames 5 and 10
    log = [json.loads(line) for line in (out / "errors.jsonl").read_text().splitlines()]
    assert [e["source"] for e in log] == [str(sens)] * 2
    assert sum(f"frame 1 at byte {off1}" in e["reason"] for e in log) == 1  # reported once
    res = CliRunner().invoke(main, [*args[:3], str(tmp_path / "f"), *args[4:], "--no-progress"])
    line = assert_one_line_error(res, sens, out=tmp_path / "f")
    assert line.startswith(f"Error: {sens}: scan scene0001_00: frame 1 at byte {off1}"), line


def test_cli_deep_truncation_prints_a_few_lines_and_logs_every_frame(
    tmp_path: Path, spec: fx.SensSpec
) -> None:
    from click.testing import CliRunner

    from datakit.cli import main
    from datakit.writer import SKIP_LINES_PER_SOURCE

    sens = _scene(tmp_path / "src", spec) / "scene0001_00.sens"
    with SensReader(sens) as r:
        off1 = r.read_frame(1).offset
    sens.write_bytes(sens.read_bytes()[: off1 + 200])  # frames 1..10 lost, one unit
    out = tmp_path / "out"
    res = CliRunner().invoke(
        main,
        ["convert", "scannet", str(tmp_path / "src"), str(out), "--frame-skip", "1"]
        + ["--size", "80x60", "--no-progress", "--on-error", "skip"],
    )
    assert res.exit_code == 0, res.output
    lines = [ln for ln in res.output.splitlines() if ln.startswith("skipped ")]
    assert len(lines) == SKIP_LINES_PER_SOURCE + 1
    assert f"frame 1 at byte {off1}" in lines[0]
    assert lines[-1] == (
        f"skipped {10 - SKIP_LINES_PER_SOURCE} more from {sens} (each is listed in errors.jsonl)"
    )
    log = (out / "errors.jsonl").read_text().splitlines()
    assert len(log) == 10 == json.loads((out / "_info.json").read_text())["errors"]["skipped"]


def test_implausible_header_sizes_are_errors_naming_the_file(
    tmp_path: Path, spec: fx.SensSpec
) -> None:
    small = replace(spec, frames=spec.frames[:2])
    folder = _scene(tmp_path, replace(small, color_size=(100000, 100000)))
    conv = ScanNetConverter(ScanNetConfig(src=str(tmp_path), size=SIZE, frame_skip=1))
    (unit,) = conv.units()
    with pytest.raises(
        SourceError, match=r"scene0001_00\.sens: .*colour size 100000x100000 is implausible"
    ):
        list(conv.convert(unit))
    for bad in ((160, 0), (0, 60), (70000, 60)):
        fx.write_sens(folder / "scene0001_00.sens", replace(small, depth_size=bad))
        with pytest.raises(SourceError, match=f"depth size {bad[0]}x{bad[1]} is implausible"):
            SensReader(folder / "scene0001_00.sens")
    # plausible but wrong: every frame disagrees with the header, nothing is scaled by it
    fx.write_sens(folder / "scene0001_00.sens", replace(small, color_size=(320, 240)))
    samples, skipped = _samples(tmp_path, frame_skip=1)
    assert not samples and [k.source for k in skipped] == [str(folder / "scene0001_00.sens")] * 2
    assert "colour jpeg is 160x120, the header says 320x240" in skipped[0].reason


def test_missing_label_zip_fails_the_scan(tmp_path: Path, spec: fx.SensSpec) -> None:
    _scene(tmp_path, spec)
    fx.write_label_map(tmp_path / "scannetv2-labels.combined.tsv")
    conv = ScanNetConverter(
        ScanNetConfig(src=str(tmp_path), size=SIZE, labels=True, frame_skip=1, chunk_frames=2)
    )
    (unit,) = conv.units()  # one failure for the scan, not one per chunk of frames
    with pytest.raises(SourceError, match="scene0001_00_2d-label-filt.zip"):
        list(conv.convert(unit))
    (tmp_path / "scannetv2-labels.combined.tsv").unlink()
    with pytest.raises(SourceError, match="label map"):
        conv.units()


def test_splits_scenes_and_broken_headers(tmp_path: Path) -> None:
    small = fx.make_spec(2)
    for name in ("scene0000_00", "scene0001_00", "scene0002_00"):
        _scene(tmp_path, small, name)
    (tmp_path / "scans" / "notascan").mkdir()
    fx.write_split_lists(
        tmp_path, {"train": ["scene0000_00", "scene0002_00"], "val": ["scene0001_00"]}
    )
    test_dir = tmp_path / "scans_test" / "scene0707_00"
    test_dir.mkdir(parents=True)
    (test_dir / "scene0707_00.sens").write_bytes(b"\4\0\0\0garbage")
    conv = ScanNetConverter(ScanNetConfig(src=str(tmp_path), size=SIZE, frame_skip=1))
    units = conv.units()
    assert [(u.split, u.id) for u in units] == [
        ("train", "scene0000_00-000000"), ("train", "scene0002_00-000000"),
        ("val", "scene0001_00-000000"), ("test", "scene0707_00"),
    ]  # fmt: skip
    with pytest.raises(SourceError, match="scene0707_00.*header"):
        list(conv.convert(units[-1]))
    val = ScanNetConverter(ScanNetConfig(src=str(tmp_path), size=SIZE, split="val")).units()
    assert [u.payload.scan.name for u in val] == ["scene0001_00"]
    picked = ScanNetConverter(ScanNetConfig(src=str(tmp_path), scenes=("scene0002_00",))).units()
    assert [u.payload.scan.name for u in picked] == ["scene0002_00"]
    with pytest.raises(SourceError, match="scenes not found: scene9999_00"):
        ScanNetConverter(ScanNetConfig(src=str(tmp_path), scenes=("scene9999_00",))).units()
    with pytest.raises(SourceError, match="no ScanNet scans"):
        ScanNetConverter(ScanNetConfig(src=str(tmp_path / "scans" / "notascan"))).units()
    (tmp_path / "list.txt").write_text("scene0001_00  # a comment\n\nscene0000_00\n")
    assert parse_scenes(f"@{tmp_path / 'list.txt'}") == ("scene0001_00", "scene0000_00")
    assert parse_scenes(" a, b ,") == ("a", "b")


def test_colour_decoding_helpers() -> None:
    rng = np.random.default_rng(1)
    jpg = fx.encode_jpeg(fx.colour_image(rng, (1296, 968)))
    assert jpeg_size(jpg) == (1296, 968)
    rgb = decode_color(jpg, "jpeg", (1296, 968), (640, 480))
    assert rgb is not None and rgb.shape == (480, 640, 3)
    assert decode_color(jpg[:-500], "jpeg", (1296, 968), (640, 480)) is None
    assert decode_color(b"\xff\xd8garbage\xff\xd9", "jpeg", (1296, 968), (640, 480)) is None
    # cv2.imdecode raises (not None) on an empty buffer: an empty colour file must be "no image"
    assert decode_color(b"", "png", None, (640, 480)) is None


def test_empty_exported_colour_file_is_skipped(tmp_path: Path, spec: fx.SensSpec) -> None:
    scene = tmp_path / "scans" / "scene0001_00"
    fx.write_exported(scene, spec, frame_indices=range(3))
    empty = next((scene / "color").glob("1.*"))
    empty.write_bytes(b"")
    (scene / "depth" / "2.png").write_bytes(b"not a png")
    samples, skipped = _samples(tmp_path, frame_skip=1)
    assert [s.meta["frame"] for s in samples] == [0]
    assert [k.source for k in skipped] == [str(empty), str(scene / "depth" / "2.png")]
    assert skipped[0].reason == "scan scene0001_00: frame 1: colour image does not decode"
    assert "frame 2: missing or not a 16-bit" in skipped[1].reason


def test_malformed_exported_pose_skips_only_that_frame(tmp_path: Path, spec: fx.SensSpec) -> None:
    scene = tmp_path / "scans" / "scene0001_00"
    fx.write_exported(scene, spec, frame_indices=range(4))
    bad = scene / "pose" / "1.txt"
    bad.write_text("0.0 1.0\n")  # cut short (disk full, interrupted export)
    samples, skipped = _samples(tmp_path, frame_skip=1)  # one unit: frames 0..3
    assert [s.meta["frame"] for s in samples] == [0, 2, 3]
    assert [k.source for k in skipped] == [str(bad)]
    assert skipped[0].reason.startswith("scan scene0001_00: frame 1: not a 4x4 matrix")


# --- the real fixtures ----------------------------------------------------------------------------


def test_real_constructed_sens_fixture(tmp_path: Path) -> None:
    sens = FIXTURES / "scannet_sens_constructed" / "scene0000_00_fixture.sens"
    posed = FIXTURES / "scannet_mmdet3d_posed_images"
    if not sens.is_file():
        pytest.skip("../shared/fixtures absent")
    scene = tmp_path / "scans" / "scene0000_00"
    scene.mkdir(parents=True)
    (scene / "scene0000_00.sens").symlink_to(sens)
    samples, skipped = _samples(tmp_path, frame_skip=1, size=(640, 480))
    assert not skipped and [s.key for s in samples] == [f"scene0000_00_{i:06d}" for i in range(3)]
    for s, name in zip(samples, ("00000", "00011", "00102"), strict=True):
        np.testing.assert_allclose(s.meta["pose"], np.loadtxt(posed / f"{name}.txt"), atol=1e-6)
        assert s.depth is not None and s.depth.shape == (480, 640)
        assert not s.depth[:20, :20].any() and s.depth[20:].min() >= 1500 and s.depth.max() <= 3457
        ref = _rgb(cv2.imread(str(posed / f"{name}.jpg")))
        assert np.abs(s.rgb.astype(int) - resize_rgb(ref, (640, 480)).astype(int)).mean() < 3
        k = s.meta["intrinsics"]
        assert k["fx"] == pytest.approx(1169.621094 * 640 / 1296, rel=1e-6)
        assert k["cy"] == pytest.approx((489.927032 + 0.5) * 480 / 968 - 0.5, rel=1e-6)
        dec = decode(s.key, encode(s))
        np.testing.assert_array_equal(dec.depth_raw, s.depth)


def test_fixture_writer_reproduces_the_constructed_sens_byte_for_byte(tmp_path: Path) -> None:
    """The .sens the other tests build comes from fx.write_sens; fed the header and frames of the
    shared constructed file (written by a separate writer from the official layout), it must give
    back that file exactly, so the fixtures are the real layout and not this project's reading."""
    sens = FIXTURES / "scannet_sens_constructed" / "scene0000_00_fixture.sens"
    if not sens.is_file():
        pytest.skip("../shared/fixtures absent")
    with SensReader(sens) as r:
        h = r.header
        frames = [r.read_frame(i) for i in range(h.num_frames)]
    spec = fx.SensSpec(
        frames=[
            fx.Frame(
                pose=fx.NO_POSE if f.pose is None else f.pose, color=f.color, depth=f.depth,
                timestamp_color=f.timestamp_color, timestamp_depth=f.timestamp_depth,
            )
            for f in frames
        ],
        name=h.sensor_name, color_size=h.color_size, depth_size=h.depth_size,
        intrinsic_color=h.intrinsic_color, extrinsic_color=h.extrinsic_color,
        intrinsic_depth=h.intrinsic_depth, extrinsic_depth=h.extrinsic_depth,
        depth_shift=h.depth_shift,
    )  # fmt: skip
    assert (h.color_compression, h.depth_compression) == ("jpeg", "zlib")
    assert (spec.color_compression, spec.depth_compression) == (2, 1)
    written = fx.write_sens(tmp_path / "again.sens", spec)  # the IMU block: a count of 0
    assert written.read_bytes() == sens.read_bytes()


def test_real_split_lists(tmp_path: Path) -> None:
    meta = FIXTURES / "scannet_meta"
    if not meta.is_dir():
        pytest.skip("../shared/fixtures absent")
    for f in meta.glob("scannetv2_*.txt"):
        (tmp_path / f.name).symlink_to(f)
    small = fx.make_spec(1)
    for name in ("scene0000_00", "scene0011_00", "scene0707_00"):
        _scene(tmp_path, small, name)
    units = ScanNetConverter(ScanNetConfig(src=str(tmp_path))).units()
    assert [(u.payload.scan.name, u.split) for u in units] == [
        ("scene0000_00", "train"), ("scene0011_00", "val"), ("scene0707_00", "test"),
    ]  # fmt: skip


# --- end to end through the CLI and the writer ------------------------------------------------------


def _two_scans(tmp_path: Path, spec: fx.SensSpec) -> Path:
    src = tmp_path / "src"
    for name in ("scene0000_00", "scene0001_00"):
        folder = _scene(src, spec, name)
        ids = np.full((120, 160), 1, np.uint16)
        ids[60:] = 2
        fx.write_label_zip(folder / f"{name}_2d-label-filt.zip", {i: ids for i in range(11)})
    fx.write_label_map(src / "scannetv2-labels.combined.tsv")
    fx.write_split_lists(src, {"train": ["scene0000_00"], "val": ["scene0001_00"]})
    return src


def test_cli_convert_roundtrip(tmp_path: Path, spec: fx.SensSpec) -> None:
    from click.testing import CliRunner

    from datakit import open_dataset
    from datakit.cli import main

    src = _two_scans(tmp_path, spec)
    out = tmp_path / "out"
    args = ["convert", "scannet", str(src), str(out), "--frame-skip", "3", "--size", "80x60"]
    res = CliRunner().invoke(main, [*args, "--labels", "--shard-size", "3", "--no-progress"])
    assert res.exit_code == 0, res.output
    ds = open_dataset(str(out))
    assert ds.info.labels == LABELS.to_json()
    assert (ds.info.num_samples("train"), ds.info.num_samples("val")) == (4, 4)
    info = json.loads((out / "_info.json").read_text())
    assert info["depth"]["unit"] == "m" and info["depth"]["scale"] == 0.001
    assert info["source"] == "scannet" and info["args"]["frame_skip"] == 3
    expected, _ = _samples(src, frame_skip=3, labels=True)
    got = list(ds)
    assert [s.key for s in got] == [s.key for s in expected]
    for g, e in zip(got, expected, strict=True):
        np.testing.assert_array_equal(g.depth_raw, e.depth)  # millimetres, bit-exact
        np.testing.assert_array_equal(g.label, e.label)
        assert g.meta == {**e.meta, "has_depth": True}
        assert g.depth is not None and g.depth.max() == pytest.approx(e.depth.max() / 1000)  # type: ignore[union-attr]


def test_cli_on_error_skip_and_fail(tmp_path: Path, spec: fx.SensSpec) -> None:
    from click.testing import CliRunner

    from datakit.cli import main

    frames = list(spec.frames[:4])
    frames[2] = replace(frames[2], color=b"\xff\xd8broken\xff\xd9")
    src = tmp_path / "src"
    _scene(src, replace(spec, frames=frames))
    args = ["convert", "scannet", str(src), "--frame-skip", "1", "--size", "80x60", "--no-progress"]
    res = CliRunner().invoke(main, [*args[:3], str(tmp_path / "a"), *args[3:]])
    sens = src / "scans" / "scene0001_00" / "scene0001_00.sens"
    line = assert_one_line_error(res, out=tmp_path / "a")
    assert line.startswith(f"Error: {sens}: scan scene0001_00: frame 2 at byte "), line
    assert "colour jpeg does not decode" in line
    res = CliRunner().invoke(
        main, [*args[:3], str(tmp_path / "b"), *args[3:], "--on-error", "skip"]
    )
    assert res.exit_code == 0, res.output
    log = (tmp_path / "b" / "errors.jsonl").read_text().splitlines()
    assert len(log) == 1 and json.loads(log[0])["source"] == str(sens)
    assert "frame 2 at byte" in json.loads(log[0])["reason"]
    # the bad frame is counted and the rest goes on: frames 0, 1 and 3 are in the dataset
    info = json.loads((tmp_path / "b" / "_info.json").read_text())
    assert info["errors"] == {"skipped": 1, "log": "errors.jsonl"}
    assert info["splits"]["train"]["num_samples"] == 3


def test_cli_workers_give_identical_shards(tmp_path: Path, spec: fx.SensSpec) -> None:
    from click.testing import CliRunner

    from datakit.cli import main

    src = _two_scans(tmp_path, spec)
    outs = []
    for workers in ("1", "2"):
        out = tmp_path / f"w{workers}"
        args = ["convert", "scannet", str(src), str(out), "--frame-skip", "1", "--size", "80x60"]
        res = CliRunner().invoke(
            main, [*args, "--workers", workers, "--no-progress", "--shard-size", "5"]
        )
        assert res.exit_code == 0, res.output
        outs.append(out)
    # chunk units (50 frames) are smaller than a scan at scale; here check bytes across workers
    names = sorted(p.name for p in outs[0].glob("*.tar"))
    assert names and names == sorted(p.name for p in outs[1].glob("*.tar"))
    for n in names:
        assert (outs[0] / n).read_bytes() == (outs[1] / n).read_bytes()


def test_cli_cut_off_exported_frames_are_one_line_without_library_noise(
    tmp_path: Path, spec: fx.SensSpec
) -> None:
    """An exported colour JPEG or depth PNG cut short is one line naming the file and frame (libpng
    prints its own "libpng error" lines to fd 2 otherwise): fatal under fail, counted under skip."""
    import os
    import subprocess
    import sys

    scene = tmp_path / "src" / "scans" / "scene0001_00"
    fx.write_exported(scene, spec, frame_indices=range(4))
    jpg, png = scene / "color" / "1.jpg", scene / "depth" / "2.png"
    jpg.write_bytes(jpg.read_bytes()[: len(jpg.read_bytes()) // 2])
    png.write_bytes(png.read_bytes()[:-20])
    env = {k: v for k, v in os.environ.items() if k != "OPENCV_LOG_LEVEL"}
    args = [sys.executable, "-m", "datakit", "convert", "scannet", str(tmp_path / "src"),
            str(tmp_path / "out"), "--frame-skip", "1", "--size", "80x60", "--no-progress"]  # fmt: skip
    proc = subprocess.run(args, capture_output=True, text=True, env=env, timeout=120)
    reason = "truncated: the file ends before its end-of-image marker"
    assert proc.returncode == 1 and not (tmp_path / "out").exists()
    assert proc.stderr.strip().splitlines() == [
        f"Error: {jpg}: scan scene0001_00: frame 1: {reason}"
    ], proc.stderr
    proc = subprocess.run(
        [*args, "--on-error", "skip"], capture_output=True, text=True, env=env, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    lines = [
        ln for ln in (proc.stdout + proc.stderr).splitlines() if not ln.startswith("2 samples")
    ]
    assert lines == [
        f"skipped {jpg}: scan scene0001_00: frame 1: {reason}",
        f"skipped {png}: scan scene0001_00: frame 2: {reason}",
    ]


def test_cut_off_png_colour_and_label_in_a_sens_scan_are_skipped(
    tmp_path: Path, spec: fx.SensSpec
) -> None:
    """A .sens with PNG colour (compression 1) whose frame 1 PNG is cut short, and a label PNG cut
    short in the label zip: each skipped naming the file and frame, before libpng sees it."""
    frames = []
    for fr in spec.frames[:4]:
        rgb = cv2.imdecode(np.frombuffer(fr.color, np.uint8), cv2.IMREAD_COLOR)
        ok, buf = cv2.imencode(".png", rgb)
        assert ok
        frames.append(replace(fr, color=buf.tobytes()))
    frames[1] = replace(frames[1], color=frames[1].color[:-20])
    folder = _scene(tmp_path, replace(spec, frames=frames, color_compression=1))
    ids = np.ones(spec.depth_size[::-1], np.uint16)
    labels = fx.write_label_zip(
        folder / "scene0001_00_2d-label-filt.zip", {i: ids for i in range(4)}
    )
    with zipfile.ZipFile(labels) as z:
        members = {n: z.read(n) for n in z.namelist()}
    cut_name = next(n for n in members if n.endswith("/2.png") or n == "2.png")
    members[cut_name] = members[cut_name][:-20]
    with zipfile.ZipFile(labels, "w") as z:
        for n, d in members.items():
            z.writestr(n, d)
    fx.write_label_map(tmp_path / "scannetv2-labels.combined.tsv")
    samples, skipped = _samples(tmp_path, frame_skip=1, labels=True)
    assert [s.meta["frame"] for s in samples] == [0, 3]
    sens = folder / "scene0001_00.sens"
    assert [k.source for k in skipped] == [str(sens), str(labels)]
    assert skipped[0].reason.startswith("scan scene0001_00: frame 1 at byte ")
    assert skipped[0].reason.endswith(
        ": colour png truncated: the file ends before its end-of-image marker"
    )
    assert skipped[1].reason == (
        f"scan scene0001_00: frame 2: label {cut_name} is truncated: the file ends before its "
        "end-of-image marker"
    )
