"""`datakit preview`: sheet content checked at positions computed from the layout and the views'
coords (not just "a file exists"), for every registered converter's fixture; the HTML page in
headless Chromium; reading only the shown samples."""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
import tarfile
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

import converters
from converters.base import Converter, LabelSet, SourceInfo, WorkUnit
from converters.synthetic import CLASSES
from datakit.cli import main
from datakit.manifest import read_info
from datakit.preview import (
    PreviewConfig,
    PreviewResult,
    ReadStats,
    _CountingStream,
    choose_samples,
    preview,
    read_samples,
    read_shard_samples,
    torch_pair_rule,
)
from datakit.preview_sheet import (
    BACKGROUND,
    BOX_RGB,
    HEADER_H,
    IGNORE_RGB,
    INVALID_RGB,
    MARGIN,
    MAX_LEGEND,
    MUTED,
    REMOVED_RGB,
    ROW_GAP,
    TITLE_H,
    legend_classes,
    row_height,
)
from datakit.storage import Location
from datakit.writer import ConvertConfig, convert
from tests.converted_fixtures import assert_one_line_error
from training.losses import DepthRule, positive_pairs

PAIR_RULE = torch_pair_rule(positive_pairs, DepthRule())


def render(dataset: Path | str, tmp: Path | None = None, **cfg: Any) -> PreviewResult:
    out = str(tmp / "sheet.png") if tmp is not None else None
    return preview(str(dataset), out, config=PreviewConfig(**cfg), pair_rule=PAIR_RULE)


@pytest.fixture(scope="module")
def synthetic_sheet(synthetic_dataset: Path) -> PreviewResult:
    return render(synthetic_dataset, n=6, seed=3)


# --- content checks, shared by every converter -------------------------------------------------


def nearest(n_src: int, n_out: int) -> np.ndarray:
    """Source index shown at each panel pixel: the one whose extent holds the pixel's centre."""
    return np.minimum(np.floor((np.arange(n_out) + 0.5) * n_src / n_out).astype(int), n_src - 1)


def check_depth_panels(result: PreviewResult) -> int:
    """Every pixel of a depth panel showing an invalid source pixel has the invalid colour and no
    other pixel does. Returns how many invalid pixels were checked."""
    img, checked = result.sheet.image, 0
    unit = (result.info.depth or {}).get("unit")
    for row, rl in zip(result.rows, result.sheet.layout.rows):
        if row.sample.depth is None:
            continue
        r = rl.panels["depth"]
        d = row.sample.depth
        invalid = (d <= 0)[nearest(d.shape[0], r.h)[:, None], nearest(d.shape[1], r.w)[None, :]]
        panel = img[r.y : r.y2, r.x : r.x2]
        is_invalid_colour = np.all(panel == INVALID_RGB, axis=-1)
        np.testing.assert_array_equal(is_invalid_colour, invalid)
        checked += int(invalid.sum())
        bar = rl.colorbar
        assert bar is not None and bar.unit == (unit or row.sample.meta["depth_unit"])
        assert bar.vmin < bar.vmax
        sw = bar.invalid_swatch
        assert np.all(img[sw.y : sw.y2, sw.x : sw.x2] == INVALID_RGB)
    return checked


def box_corners(coords: np.ndarray, size: int, w: int, h: int, pw: int, ph: int) -> tuple[int, ...]:
    """Independent of the renderer: first/last panel pixel inside the crop's outer edges. The coords
    are the centres of a view's first/last pixels; the crop reaches half a view pixel beyond."""
    x1, y1, x2, y2 = (float(c) for c in coords)
    half_x = 0.5 * abs(x2 - x1) * (w - 1) / (size - 1)
    half_y = 0.5 * abs(y2 - y1) * (h - 1) / (size - 1)
    left = (min(x1, x2) * (w - 1) - half_x + 0.5) * pw / w
    right = (max(x1, x2) * (w - 1) + half_x + 0.5) * pw / w
    top = (min(y1, y2) * (h - 1) - half_y + 0.5) * ph / h
    bottom = (max(y1, y2) * (h - 1) + half_y + 0.5) * ph / h
    return round(left), round(top), round(right) - 1, round(bottom) - 1


def check_crop_boxes(result: PreviewResult) -> int:
    """Both crop outlines have their corners where the views' coords say (within a pixel)."""
    img, checked = result.sheet.image, 0
    for row, rl in zip(result.rows, result.sheet.layout.rows):
        r = rl.panels["crops"]
        h, w = row.sample.rgb.shape[:2]
        views = (row.views.view1, row.views.view2)
        corners = [box_corners(v.coords, v.rgb.shape[0], w, h, r.w, r.h) for v in views]
        for k, (x0, y0, x1, y1) in enumerate(corners):
            for cx, cy in ((x0, y0), (x1, y0), (x0, y1), (x1, y1)):
                if k == 0:  # box 2 is drawn last: skip a corner of box 1 lying under its outline
                    a0, b0, a1, b1 = corners[1]
                    on_x = min(abs(cx - a0), abs(cx - a1)) <= 2 and b0 - 2 <= cy <= b1 + 2
                    on_y = min(abs(cy - b0), abs(cy - b1)) <= 2 and a0 - 2 <= cx <= a1 + 2
                    if on_x or on_y:
                        continue
                if row.views.periodic:
                    cx %= r.w
                assert 0 <= cx < r.w and 0 <= cy < r.h, (row.sample.key, k, cx, cy)
                patch = img[
                    r.y + max(cy - 1, 0) : r.y + cy + 2, r.x + max(cx - 1, 0) : r.x + cx + 2
                ]
                assert np.any(np.all(patch == BOX_RGB[k], axis=-1)), (row.sample.key, k, cx, cy)
                checked += 1
    return checked


def check_legends(result: PreviewResult) -> int:
    """One legend entry per class present in the label (ignore excluded), named from _info.json,
    its swatch drawn in its colour; overlay pixels of a class are tinted towards that colour."""
    img, checked = result.sheet.image, 0
    labels = result.info.labels or {}
    classes, ignore = labels.get("classes") or [], labels.get("ignore_index")
    for row, rl in zip(result.rows, result.sheet.layout.rows):
        if row.sample.label is None:
            assert not rl.legend
            continue
        present = sorted(int(c) for c in np.unique(row.sample.label) if int(c) != ignore)
        has_ignore = ignore is not None and bool(np.any(row.sample.label == ignore))
        assert [e.class_id for e in rl.legend] == present + ([ignore] if has_ignore else [])
        for e in rl.legend:
            if e.class_id == ignore:  # last, in the grey ignore pixels are tinted towards
                assert (e.name, e.rgb) == ("ignore", IGNORE_RGB)
            elif e.class_id < len(classes):
                assert e.name == classes[e.class_id][:20]
            s = e.swatch
            assert np.all(img[s.y : s.y2, s.x : s.x2] == e.rgb)
            assert rl.figures["label"].x <= s.x and s.x2 <= rl.figures["label"].x2
        checked += len(present)
    return checked


def check_size(result: PreviewResult, n: int) -> None:
    layout = result.sheet.layout
    assert len(layout.rows) == n
    borehole = any(rl.borehole for rl in layout.rows)
    expected = MARGIN + TITLE_H + n * row_height(PreviewConfig().panel, borehole) + MARGIN - ROW_GAP
    assert result.sheet.image.shape == (expected, layout.width, 3)


def check_headers(result: PreviewResult) -> None:
    """Each row's header ends inside the sheet's right margin: the band it is drawn in is background
    there, and what is drawn still ends with the pair counts."""
    img = result.sheet.image
    for rl in result.sheet.layout.rows:
        band = img[rl.rect.y : rl.rect.y + HEADER_H, img.shape[1] - MARGIN :]
        assert np.all(band == BACKGROUND), (rl.key, rl.header_drawn)
        assert rl.header_drawn.endswith("removed by depth"), rl.header_drawn


def check_all(result: PreviewResult, n: int) -> None:
    check_size(result, n)
    check_headers(result)
    check_depth_panels(result)
    assert check_crop_boxes(result) > 0
    check_legends(result)


# --- the synthetic dataset ---------------------------------------------------------------------


def test_sheet_size_follows_n(synthetic_dataset: Path, tmp_path: Path) -> None:
    one = render(synthetic_dataset, tmp_path, n=1)
    check_size(one, 1)
    png = cv2.imread(str(tmp_path / "sheet.png"))
    assert png is not None and png.shape == one.sheet.image.shape
    three = render(synthetic_dataset, n=3)
    check_size(three, 3)
    assert three.sheet.image.shape[0] - one.sheet.image.shape[0] == 2 * row_height(160, False)
    info = read_info(Location(str(synthetic_dataset)))
    assert len(choose_samples(info, 100, seed=0)) == 24  # all there is


def test_depth_invalid_pixels_carry_the_invalid_colour(synthetic_sheet: PreviewResult) -> None:
    assert check_depth_panels(synthetic_sheet) > 0


def test_crop_box_corners_sit_where_the_coords_say(synthetic_sheet: PreviewResult) -> None:
    assert check_crop_boxes(synthetic_sheet) >= 4 * len(synthetic_sheet.rows)
    flips = [v.flip for r in synthetic_sheet.rows for v in (r.views.view1, r.views.view2)]
    assert any(flips) and not all(flips)


def test_a_legend_entry_for_each_class_present(synthetic_sheet: PreviewResult) -> None:
    assert check_legends(synthetic_sheet) >= 2 * len(synthetic_sheet.rows)


def test_a_crowded_legend_keeps_the_most_frequent_classes() -> None:
    label = np.repeat(np.arange(60, dtype=np.uint16), np.arange(60) + 1)[
        None, :
    ]  # class c: c + 1 px
    label[0, :3] = 255  # classes 0 (1 px) and 1 (2 px) are gone: 58 present
    ids, more = legend_classes(label, ignore=255)
    assert len(ids) == MAX_LEGEND and more == 58 - MAX_LEGEND
    assert ids == list(range(60 - MAX_LEGEND, 60))
    assert legend_classes(np.array([[1, 2, 2, 255]]), 255) == ([1, 2], 0)


def test_pairs_are_the_training_rule_and_removed_ones_drawn_red(
    synthetic_sheet: PreviewResult,
) -> None:
    import torch

    removed_drawn = 0
    for row, rl in zip(synthetic_sheet.rows, synthetic_sheet.sheet.layout.rows):
        v1, v2, pr = row.views.view1, row.views.view2, row.pairs
        assert pr is not None
        spatial, kept = positive_pairs(
            torch.as_tensor(v1.coords)[None], torch.as_tensor(v2.coords)[None], (7, 7), (7, 7), 224,
            periodic=torch.tensor([False]), depth_q=torch.as_tensor(v1.depth)[None, None],
            depth_k=torch.as_tensor(v2.depth)[None, None], depth_rule=DepthRule(),
        )  # fmt: skip
        np.testing.assert_array_equal(pr.spatial, spatial[0].numpy())
        np.testing.assert_array_equal(pr.kept, kept[0].numpy())
        assert np.all(pr.kept <= pr.spatial)
        for (i, j), k in zip(pr.shown, pr.shown_kept):
            assert pr.spatial[i, j] and pr.kept[i, j] == k
        if not pr.shown_kept.all():
            r = rl.panels["crops"]
            crops = synthetic_sheet.sheet.image[r.y : r.y2, r.x : r.x2].astype(int)
            removed_drawn += int(np.all(np.abs(crops - REMOVED_RGB) < 40, axis=-1).sum())
    assert removed_drawn > 0, "no pair removed by the depth filter was drawn"


def test_choice_is_seeded_distinct_and_in_manifest_order(synthetic_dataset: Path) -> None:
    info = read_info(Location(str(synthetic_dataset)))
    a = choose_samples(info, 5, seed=1)
    assert a == choose_samples(info, 5, seed=1) and a != choose_samples(info, 5, seed=2)
    assert [r.index for r in a] == sorted({r.index for r in a})
    assert all(r.shard.startswith("val") for r in choose_samples(info, 3, 0, split="val"))


# --- reads only what it shows -------------------------------------------------------------------


class ReplayConverter(Converter):
    """``num`` samples that replay a few rendered synthetic frames under new keys (cheap to write)."""

    name = "replay"
    Config = dict

    def __init__(self, num: int, size: tuple[int, int] = (64, 48), per_unit: int = 100) -> None:
        from converters.synthetic import SyntheticConfig, render_sample

        super().__init__({"num": num})
        cfg = SyntheticConfig(num=4, size=size)
        self.frames = [render_sample(cfg, "train", i) for i in range(4)]
        self.num, self.per_unit = num, per_unit

    def units(self) -> list[WorkUnit]:
        return [WorkUnit(f"u{s}", "train", s) for s in range(0, self.num, self.per_unit)]

    def convert(self, unit: WorkUnit) -> Any:
        for i in range(unit.payload, min(self.num, unit.payload + self.per_unit)):
            f = self.frames[i % len(self.frames)]
            yield replace(f, key=f"s{i:05d}", meta={**f.meta, "id": f"replay/{i:05d}"})

    def info(self) -> SourceInfo:
        return SourceInfo("replay", "m", 0.001, LabelSet("synthetic6", CLASSES, 255))


def tar_layout(path: str) -> list[tuple[int, int, int, int]]:
    """(sample offset, header start, data start, data end) of each member, in archive order."""
    out, key, offset = [], None, -1
    with tarfile.open(path) as tar:
        for m in tar.getmembers():
            k = m.name.split(".", 1)[0]
            if k != key:
                key, offset = k, offset + 1
            out.append((offset, m.offset, m.offset_data, m.offset_data + m.size))
    return out


def seek_cost(path: str, wanted: set[int]) -> int:
    """What walking headers costs: the header blocks of every member up to the first one after the
    last wanted sample, the data of the wanted samples, and one 10 KiB record of slack."""
    last = max(wanted)
    cost = 10240
    for offset, header, data, end in tar_layout(path):
        if offset > last + 1:
            break
        cost += (data - header) + (end - data + 511 if offset in wanted else 0)
    return cost


def stream_cost(path: str, wanted: set[int]) -> int:
    """What a forward-only read costs: everything up to the end of the first member after the last
    wanted sample, plus two 10 KiB records of read-ahead."""
    last = max(wanted)
    ends = [end for offset, _, _, end in tar_layout(path) if offset <= last + 1]
    return ends[-1] + 2 * 10240


class ForwardOnly:
    def __init__(self, raw: Any) -> None:
        self.raw = raw

    def read(self, n: int = -1) -> bytes:
        return self.raw.read(n)


def test_preview_of_1000_samples_reads_only_the_shown_ones(tmp_path: Path) -> None:
    # The default --shard-size: 1,000 samples are one shard; a second copy in shards of 100.
    for shard_size in (1000, 100):
        ds = tmp_path / f"big{shard_size}"
        convert(
            ReplayConverter(1000), str(ds), ConvertConfig(shard_size=shard_size, progress=False)
        )
        loc = Location(str(ds))
        info = read_info(loc)
        assert info.num_samples() == 1000 and len(info.shards) == 1000 // shard_size
        refs = choose_samples(info, 8, seed=0)
        stats = ReadStats()
        got = read_samples(loc, refs, stats)
        assert [s.key for s in got] == [f"s{r.index:05d}" for r in refs]
        assert sorted(stats.shards_opened) == sorted({r.shard for r in refs})
        wanted = {sh: {r.offset for r in refs if r.shard == sh} for sh in stats.shards_opened}
        bound = sum(seek_cost(loc.path(sh), w) for sh, w in wanted.items())
        assert stats.bytes_read <= bound < info.total_bytes() / 4, (shard_size, stats)
        if shard_size == 1000:  # the whole command: the same reads
            result = render(ds, n=8)
            assert len(result.rows) == 8 and result.stats.bytes_read <= bound
    # A forward-only (remote) stream is read up to the last wanted sample and no further.
    path = loc.path(info.shards[3].name)
    for wanted_offsets in ({0}, {5, 40}):
        stats = ReadStats()
        with open(path, "rb") as raw:
            stream = _CountingStream(ForwardOnly(raw), stats)  # type: ignore[arg-type]
            got_by_offset = read_shard_samples(stream, wanted_offsets, path)  # type: ignore[arg-type]
        assert sorted(got_by_offset) == sorted(wanted_offsets)
        assert stats.bytes_read <= stream_cost(path, wanted_offsets)


def test_preview_over_http_matches_the_local_one(
    synthetic_dataset: Path, http_server: tuple[str, Path]
) -> None:
    url, root = http_server
    shutil.copytree(synthetic_dataset, root / "preview-ds", dirs_exist_ok=True)
    remote = render(f"{url}/preview-ds", n=2, seed=5)
    local = render(synthetic_dataset, n=2, seed=5)
    assert [r.sample.key for r in remote.rows] == [r.sample.key for r in local.rows]
    np.testing.assert_array_equal(remote.sheet.image, local.sheet.image)
    assert len(remote.stats.shards_opened) <= 2


# --- every registered converter -----------------------------------------------------------------


def _synthetic(tmp: Path) -> Converter:
    from converters.synthetic import SyntheticConfig, SyntheticConverter

    return SyntheticConverter(SyntheticConfig(num=6, size=(64, 48)))


def _scannet(tmp: Path) -> Converter:
    from converters.scannet import ScanNetConfig, ScanNetConverter
    from tests import scannet_fixtures as fx

    spec = fx.make_spec(3)
    folder = tmp / "scans" / "scene0001_00"
    folder.mkdir(parents=True)
    fx.write_sens(folder / "scene0001_00.sens", spec)
    ids = np.zeros((120, 160), np.uint16)
    ids[:, :50], ids[:, 50:100], ids[60:, 100:] = 1, 3, 2  # wall floor chair; rest 0 = ignore
    fx.write_label_zip(folder / "scene0001_00_2d-label-filt.zip", {i: ids for i in range(3)})
    fx.write_label_map(tmp / "scannetv2-labels.combined.tsv")
    return ScanNetConverter(ScanNetConfig(src=str(tmp), frame_skip=1, size=(80, 60), labels=True))


def _cityscapes(tmp: Path) -> Converter:
    from converters.cityscapes import CityscapesConfig, CityscapesConverter
    from tests.cityscapes_fixtures import build_cityscapes

    build_cityscapes(tmp / "cs")
    return CityscapesConverter(CityscapesConfig(src=str(tmp / "cs")))


def _nyu(tmp: Path) -> Converter:
    from converters.nyu import NyuConfig, NyuConverter
    from tests.nyu_fixtures import build_nyu

    fx = build_nyu(tmp / "nyu.mat", n=3, size=(32, 24))
    return NyuConverter(NyuConfig(mat=str(fx.path)))


def _folder(tmp: Path) -> Converter:
    from converters.folder import FolderConfig, FolderConverter
    from tests.folder_fixtures import build_mixed_tree

    build_mixed_tree(tmp / "tree")
    return FolderConverter(
        FolderConfig(
            src=str(tmp / "tree"),
            rgb="rgb/**/*",
            depth="depth/**/*",
            depth_scale=1.0,
            depth_kind="metric",
        )
    )


def _borehole(tmp: Path) -> Converter:
    from converters.borehole import BoreholeConfig, BoreholeConverter
    from tests.borehole_fixtures import channel_names, make_log, write_breakouts, write_log

    path = write_log(make_log(rows=300), tmp / "logs", "las")
    image, depth = channel_names("las")
    picks = write_breakouts(tmp / "picks.csv", [(1005.0, 1030.0, 350.0, 60.0)])
    return BoreholeConverter(
        BoreholeConfig(
            src=str(path),
            image=image,
            depth=depth,
            window=64,
            stride=32,
            columns=64,
            breakouts=str(picks),
        )
    )


BUILDERS: dict[str, Callable[[Path], Converter]] = {
    "synthetic": _synthetic,
    "scannet": _scannet,
    "cityscapes": _cityscapes,
    "nyu": _nyu,
    "folder": _folder,
    "borehole": _borehole,
}


@pytest.mark.parametrize("name", converters.names())
def test_sheet_for_every_converter_fixture(name: str, tmp_path: Path) -> None:
    if name not in BUILDERS:
        pytest.fail(
            f"converter {name!r} is registered but test_preview.BUILDERS has no fixture for it"
        )
    (tmp_path / "src").mkdir()
    conv = BUILDERS[name](tmp_path / "src")
    ds = tmp_path / "ds"
    convert(conv, str(ds), ConvertConfig(shard_size=2, progress=False))
    n = min(3, read_info(Location(str(ds))).num_samples())
    result = render(ds, tmp_path, n=n, seed=1)
    check_all(result, n)
    assert (tmp_path / "sheet.png").stat().st_size > 0
    assert (
        result.sheet.layout.title.startswith("datakit preview")
        and name in result.sheet.layout.title
    )


def test_borehole_rows_have_depth_axis_and_azimuth_ticks(tmp_path: Path) -> None:
    ds = tmp_path / "ds"
    (tmp_path / "src").mkdir()
    convert(_borehole(tmp_path / "src"), str(ds), ConvertConfig(shard_size=4, progress=False))
    result = render(ds, n=2)
    img = result.sheet.image
    for row, rl in zip(result.rows, result.sheet.layout.rows):
        assert rl.borehole and row.views.periodic
        rgb = rl.panels["rgb"]
        assert np.all(img[rgb.y : rgb.y2, rgb.x - 3] == MUTED)  # the well-depth axis line
        assert rl.figures["rgb"].x == rgb.x - 64
        for name in ("rgb", "depth", "crops"):
            p = rl.panels[name]
            for deg in (0, 90, 180, 270):
                x = p.x + round(deg / 360 * p.w)
                assert np.all(img[p.y2 : p.y2 + 4, x] == MUTED), (name, deg)
    check_all(result, 2)


def test_a_long_borehole_header_is_shortened_to_fit_its_row(tmp_path: Path) -> None:
    """The real LWD log's name made the header run off the sheet ("...36 rem"): the id, which only
    repeats the key, goes first, then long names are shortened in the middle."""
    from converters.borehole import BoreholeConfig, BoreholeConverter
    from tests.borehole_fixtures import channel_names, make_log, write_log

    stem = "P11-A-02_Composite_MEM_Image_NF_with_a_much_longer_name_than_any_real_well_has"
    path = write_log(make_log(rows=300), tmp_path / "logs", "las", stem=stem)
    image, depth = channel_names("las")
    conv = BoreholeConverter(
        BoreholeConfig(src=str(path), image=image, depth=depth, window=64, stride=32, columns=64)
    )
    ds = tmp_path / "ds"
    convert(conv, str(ds), ConvertConfig(progress=False))
    result = render(ds, n=2)
    check_headers(result)
    for row, rl in zip(result.rows, result.sheet.layout.rows):
        assert row.sample.key in rl.header and f"id {row.sample.meta['id']}" in rl.header
        assert " id " not in rl.header_drawn and "..." in rl.header_drawn
        assert rl.header_drawn.split("  ")[2].startswith("key P11-A-02_")
        assert row.sample.key[-6:] in rl.header_drawn  # the window number stays


# --- HTML in headless Chromium ------------------------------------------------------------------

CHECK_SCRIPT = """<script>
window.addEventListener('load', function () {
  var ok = 0, all = document.images.length;
  for (var i = 0; i < all; i++) {
    var im = document.images[i];
    if (im.complete && im.naturalWidth > 0) ok++;
  }
  var d = document.createElement('div'); d.id = 'img-check';
  d.textContent = 'loaded ' + ok + ' of ' + all; document.body.appendChild(d);
});
</script>"""


def chromium(args: list[str], profile: Path) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("chromium")
    assert exe is not None
    cmd = [
        exe,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={profile}",
        *args,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=180, check=False)


@pytest.mark.skipif(
    shutil.which("chromium") is None,
    reason="Debian's chromium is not installed (.ci/run installs it; "
    "locally: apt-get install -y chromium)",
)
def test_html_page_shows_every_image_in_headless_chromium(
    synthetic_dataset: Path, tmp_path: Path
) -> None:
    page = tmp_path / "page.html"
    result = preview(
        str(synthetic_dataset),
        None,
        html=str(page),
        config=PreviewConfig(n=3, seed=2),
        pair_rule=PAIR_RULE,
    )
    text = page.read_text()
    srcs = re.findall(r'src="([^"]*)"', text)
    assert len(srcs) == 6 * 3 and all(s.startswith("data:image/png;base64,") for s in srcs)
    assert "http://" not in text and "https://" not in text and "<link" not in text
    for row in result.rows:  # the sample JSON beside its panels
        assert html.escape(json.dumps(row.sample.meta["id"])) in text
    probe = tmp_path / "probe.html"
    probe.write_text(text.replace("</body>", CHECK_SCRIPT + "</body>"))
    dom = chromium(["--virtual-time-budget=10000", "--dump-dom", probe.as_uri()], tmp_path / "p1")
    m = re.search(r"loaded (\d+) of (\d+)", dom.stdout)
    assert m is not None, dom.stderr[-2000:]
    assert (int(m.group(1)), int(m.group(2))) == (18, 18)
    shot = tmp_path / "shot.png"
    chromium([f"--screenshot={shot}", "--window-size=1400,1000", page.as_uri()], tmp_path / "p2")
    img = cv2.imread(str(shot))
    assert img is not None and img.shape[:2] == (1000, 1400)
    background = np.all(np.abs(img.astype(int) - 250) <= 6, axis=-1)
    assert background.mean() < 0.8 and img.std() > 30
    colours = len(np.unique(img.reshape(-1, 3), axis=0))
    assert colours > 2000  # photographs and colour maps, not text alone


# --- the command ----------------------------------------------------------------------------------


def test_cli_preview_writes_sheet_and_page(synthetic_dataset: Path, tmp_path: Path) -> None:
    sheet, page = tmp_path / "out" / "sheet.png", tmp_path / "page.html"
    res = CliRunner().invoke(
        main,
        [
            "preview",
            str(synthetic_dataset),
            "-o",
            str(sheet),
            "--html",
            str(page),
            "--n",
            "2",
            "--seed",
            "4",
        ],
    )
    assert res.exit_code == 0, res.output
    img = cv2.imread(str(sheet))
    assert img is not None
    assert img.shape[0] == MARGIN + TITLE_H + 2 * row_height(160, False) + MARGIN - ROW_GAP
    assert page.read_text().count("<img") == 12
    # The command draws the same sheet as the library given the trainer's pair rule (pairs included).
    np.testing.assert_array_equal(
        img[..., ::-1], render(synthetic_dataset, n=2, seed=4).sheet.image
    )


def test_cli_preview_bad_input_is_one_line(tmp_path: Path) -> None:
    res = CliRunner().invoke(
        main, ["preview", str(tmp_path / "nope"), "-o", str(tmp_path / "s.png")]
    )
    line = assert_one_line_error(res, tmp_path / "nope")
    assert "no such dataset" in line
    assert list(tmp_path.iterdir()) == []  # no sheet, no temporary


def test_cli_preview_unknown_split_is_a_usage_error(
    synthetic_dataset: Path, tmp_path: Path
) -> None:
    res = CliRunner().invoke(
        main, ["preview", str(synthetic_dataset), "--split", "nope", "-o", str(tmp_path / "s.png")]
    )
    assert res.exit_code == 2 and "no split 'nope'" in res.output and "'train', 'val'" in res.output
    assert not (tmp_path / "s.png").exists()


def test_cli_preview_writes_both_outputs_or_neither(
    synthetic_dataset: Path, tmp_path: Path
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    sheet = tmp_path / "new" / "sheet.png"
    res = CliRunner().invoke(
        main,
        ["preview", str(synthetic_dataset), "-o", str(sheet), "--html", str(blocker / "p.html"),
         "--n", "1"],
    )  # fmt: skip
    lines = res.output.strip().splitlines()
    assert res.exit_code == 1 and len(lines) == 1, res.output
    assert lines[0].startswith(f"Error: {blocker / 'p.html'}: cannot be written")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]  # no sheet, no temporaries


def test_valid_depth_percentage_is_never_rounded_up(tmp_path: Path) -> None:
    """99.87% valid depth reads 99.8%, not 100% (the depth caption of the sheet)."""
    from converters.folder import FolderConfig, FolderConverter
    from tests.folder_fixtures import rgb_image, write_depth, write_rgb

    depth = np.full((100, 100), 1000, np.uint16)
    depth.flat[:13] = 0  # 9987 of 10000 pixels valid
    write_rgb(tmp_path / "src/rgb/x.png", rgb_image(100, 100, 0))
    write_depth(tmp_path / "src/depth/x.png", depth)
    conv = FolderConverter(
        FolderConfig(src=str(tmp_path / "src"), rgb="rgb/*.png", depth="depth/*.png",
                     depth_scale=0.001, depth_kind="metric")
    )  # fmt: skip
    convert(conv, str(tmp_path / "ds"), ConvertConfig(progress=False))
    result = render(tmp_path / "ds", n=1)
    assert result.sheet.layout.rows[0].captions["depth"] == "depth [m]  valid 99.8%"


def test_bad_member_is_one_line_naming_the_shard(synthetic_dataset: Path, tmp_path: Path) -> None:
    from tests.conftest import with_bad_member

    shard = with_bad_member(synthetic_dataset, tmp_path / "bad", "train_000001.label.png")
    res = CliRunner().invoke(
        main, ["preview", str(tmp_path / "bad"), "-o", str(tmp_path / "s.png"), "--n", "24"]
    )
    line = assert_one_line_error(res)
    assert f"{shard}: train_000001.label.png: image bytes do not decode" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad"]  # no sheet, no temporary


def test_cut_or_missing_shard_is_named_or_skipped_with_on_shard_error(
    synthetic_dataset: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A shard cut short fails the preview with one line giving its size against the manifest's
    (not a confusing "missing member" of the sample the cut falls in); with --on-shard-error skip
    the cut and the missing shard are logged and left out, and the other shards' samples shown."""
    ds = tmp_path / "ds"
    shutil.copytree(synthetic_dataset, ds)
    cut, gone = ds / "train-000001.tar", ds / "train-000002.tar"
    whole = cut.read_bytes()
    cut.write_bytes(whole[: len(whole) // 2])
    gone.unlink()
    sheet = tmp_path / "s.png"
    args = ["preview", str(ds), "-o", str(sheet), "--n", "24"]  # every sample: both shards chosen
    line = assert_one_line_error(CliRunner().invoke(main, args), cut)
    assert f"size {len(whole) // 2} bytes, manifest says {len(whole)}" in line
    assert not sheet.exists()
    # --on-shard-error sets DATAKIT_ON_SHARD_ERROR for the process: undone after this test
    monkeypatch.setenv("DATAKIT_ON_SHARD_ERROR", "fail")
    res = CliRunner().invoke(main, ["--on-shard-error", "skip", *args])
    assert res.exit_code == 0, res.output
    logged = [r.getMessage() for r in caplog.records if r.name == "datakit.skips"]
    assert len(logged) == 2 and logged[0].startswith(f"skipping shard: {cut}: size "), logged
    assert logged[1] == f"skipping shard: {gone}: unreadable shard (no such file or directory)"
    assert (
        "16 samples from 4 shards" in res.output and "(2 unreadable shards skipped)" in res.output
    )
    assert sheet.exists()
