"""The contact sheet of ``datakit preview``: layout in sheet pixels and drawing (numpy + OpenCV).

One row per sample: RGB | depth (turbo, invalid in :data:`INVALID_RGB`) + colour bar in the dataset's
unit | label overlay + class legend | view 1 | view 2 | the original with both crop boxes (flip
marked) and a sample of positive cell pairs (kept: solid green; removed by the depth filter: dashed
red). Borehole windows (``periodic_x`` with a top/bottom well depth) get a well-depth axis and
azimuth ticks. Every rectangle drawn is recorded in :class:`SheetLayout`, so tests (and the HTML
page) can find panels, legend entries and boxes at computed positions.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from datakit.manifest import DatasetInfo
from datakit.preview import PreviewConfig, PreviewRow

BACKGROUND = (250, 250, 250)
TEXT = (30, 30, 30)
MUTED = (110, 110, 110)
PLACEHOLDER = (225, 225, 225)
INVALID_RGB = (0, 0, 0)  # depth == 0; turbo never reaches pure black
BOX_RGB = ((0, 90, 255), (255, 140, 0))  # crop of view 1, view 2
KEPT_RGB = (0, 190, 60)
REMOVED_RGB = (230, 0, 0)
IGNORE_RGB = (128, 128, 128)

FONT = cv2.FONT_HERSHEY_SIMPLEX
MARGIN, GAP, ROW_GAP = 12, 10, 14
TITLE_H, HEADER_H, CAPTION_H = 30, 18, 16
BAR_W, BAR_TEXT_W = 12, 62
SWATCH, LEGEND_LINE = 10, 14
HEADER_SCALE = 0.42  # font scale of a row's header
AXIS_LEFT, AXIS_BOTTOM = 64, 18
MAX_LEGEND = 43  # legend entries per sample (four columns at the default panel height)
MAX_ASPECT = 2.0  # widest panel = MAX_ASPECT * panel height; wider images shrink to fit
PANELS = ("rgb", "depth", "label", "view1", "view2", "crops")

# Sample-JSON keys of a borehole window's well depth (first match wins) and of its unit.
WELL_TOP_KEYS = ("top_depth", "depth_top", "top_md", "md_top", "top")
WELL_BOTTOM_KEYS = ("bottom_depth", "depth_bottom", "bottom_md", "md_bottom", "bottom")
WELL_UNIT_KEYS = ("well_depth_unit", "depth_index_unit", "index_unit", "md_unit")


@dataclass(frozen=True)
class Rect:
    x: int
    y: int
    w: int
    h: int

    @property
    def x2(self) -> int:
        return self.x + self.w

    @property
    def y2(self) -> int:
        return self.y + self.h

    def union(self, other: Rect) -> Rect:
        x, y = min(self.x, other.x), min(self.y, other.y)
        return Rect(x, y, max(self.x2, other.x2) - x, max(self.y2, other.y2) - y)


@dataclass(frozen=True)
class LegendEntry:
    """One legend line; class_id -1 is the "+N more" line of a crowded legend, and the dataset's
    ignore_index the last line, "ignore", when the label holds such pixels."""

    class_id: int
    name: str
    rgb: tuple[int, int, int]
    swatch: Rect


@dataclass(frozen=True)
class ColorBar:
    rect: Rect  # top = vmax, bottom = vmin
    vmin: float
    vmax: float
    unit: str
    invalid_swatch: Rect


@dataclass
class RowLayout:
    """Where one sample's pieces sit on the sheet. ``panels`` are the image areas exactly;
    ``figures`` add each panel's bar, legend or axes (what the HTML page crops); ``captions`` the
    text drawn above each panel."""

    index: int
    key: str
    rect: Rect
    header: str  # in full (the HTML page's heading)
    header_drawn: str = ""  # what the sheet shows: the header shortened to fit the row
    panels: dict[str, Rect] = field(default_factory=dict)
    captions: dict[str, str] = field(default_factory=dict)
    figures: dict[str, Rect] = field(default_factory=dict)
    legend: list[LegendEntry] = field(default_factory=list)
    colorbar: ColorBar | None = None
    borehole: bool = False


@dataclass
class SheetLayout:
    width: int
    height: int
    title: str
    rows: list[RowLayout]


@dataclass
class Sheet:
    image: np.ndarray  # (H, W, 3) uint8 RGB
    layout: SheetLayout

    def png_bytes(self) -> bytes:
        ok, buf = cv2.imencode(".png", np.ascontiguousarray(self.image[..., ::-1]))
        if not ok:  # pragma: no cover
            raise RuntimeError("PNG encoding failed")
        return buf.tobytes()

    def crop(self, rect: Rect) -> np.ndarray:
        return self.image[rect.y : rect.y2, rect.x : rect.x2]


# ------------------------------------------------------------------------------------------ layout


def row_height(panel: int, borehole: bool) -> int:
    """Height of one row in sheet pixels (the sheet is MARGIN + TITLE_H + n rows + MARGIN tall)."""
    return HEADER_H + CAPTION_H + panel + (AXIS_BOTTOM if borehole else 0) + ROW_GAP


def fitted_size(width: int, height: int, panel: int) -> tuple[int, int]:
    """(w, h) of a width x height image shown at most ``panel`` tall and MAX_ASPECT * panel wide."""
    s = min(panel / height, MAX_ASPECT * panel / width)
    return max(1, round(width * s)), max(1, round(height * s))


def well_depth(meta: dict[str, Any]) -> tuple[float, float, str] | None:
    """(top, bottom, unit) of a borehole window's well depth, or None for other samples."""
    if not meta.get("periodic_x"):
        return None
    top = next((meta[k] for k in WELL_TOP_KEYS if isinstance(meta.get(k), (int, float))), None)
    bottom = next(
        (meta[k] for k in WELL_BOTTOM_KEYS if isinstance(meta.get(k), (int, float))), None
    )
    if top is None or bottom is None:
        return None
    unit = next((str(meta[k]) for k in WELL_UNIT_KEYS if meta.get(k)), "m")
    return float(top), float(bottom), unit


def class_names(info: DatasetInfo) -> tuple[list[str], int | None]:
    labels = info.labels or {}
    return list(labels.get("classes") or []), labels.get("ignore_index")


def palette(class_id: int) -> tuple[int, int, int]:
    """A fixed, distinct colour per class id (tab20 order, then golden-ratio hues)."""
    if class_id < len(_TAB20):
        return _TAB20[class_id]
    hue = int((class_id * 0.618033988749895 % 1.0) * 180)
    hsv = np.array([[[hue, 200, 220]]], np.uint8)
    r, g, b = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0]
    return int(r), int(g), int(b)


_TAB20 = [
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
    (227, 119, 194), (188, 189, 34), (23, 190, 207), (174, 199, 232), (255, 187, 120),
    (152, 223, 138), (255, 152, 150), (197, 176, 213), (196, 156, 148), (247, 182, 210),
    (219, 219, 141), (158, 218, 229), (57, 59, 121), (99, 121, 57),
]  # fmt: skip


def legend_classes(label: np.ndarray | None, ignore: int | None) -> tuple[list[int], int]:
    """Class ids the legend lists (ascending) and how many present ones it leaves out: all present
    classes up to MAX_LEGEND, else the MAX_LEGEND most frequent."""
    if label is None:
        return [], 0
    ids, counts = np.unique(label, return_counts=True)
    keep = ids != ignore if ignore is not None else np.ones(len(ids), bool)
    ids, counts = ids[keep], counts[keep]
    if len(ids) > MAX_LEGEND:
        top = np.sort(ids[np.argsort(-counts, kind="stable")[:MAX_LEGEND]])
        return [int(c) for c in top], len(ids) - MAX_LEGEND
    return [int(c) for c in ids], 0


def _legend_items(row: PreviewRow, names: list[str], ignore: int | None) -> list[tuple[int, str]]:
    label = row.sample.label
    ids, more = legend_classes(label, ignore)
    items = [(c, _ascii(names[c] if c < len(names) else f"class {c}")[:20]) for c in ids]
    items += [(-1, f"+{more} more")] if more else []
    if ignore is not None and label is not None and bool(np.any(label == ignore)):
        items.append((ignore, "ignore"))
    return items


def legend_colour(class_id: int, ignore: int | None) -> tuple[int, int, int]:
    """The swatch of a legend line: the colour its pixels are tinted towards in the overlay."""
    if class_id == ignore:
        return IGNORE_RGB
    return palette(class_id) if class_id >= 0 else BACKGROUND  # -1: "+N more", no swatch


def _text_width(s: str, scale: float = 0.4) -> int:
    return int(cv2.getTextSize(s, FONT, scale, 1)[0][0])


def compute_layout(
    rows: list[PreviewRow], info: DatasetInfo, config: PreviewConfig, title: str
) -> SheetLayout:
    """Column widths are the widest over all rows, so panels line up in columns."""
    ph = config.panel
    names, ignore = class_names(info)
    sizes = [fitted_size(r.sample.rgb.shape[1], r.sample.rgb.shape[0], ph) for r in rows]
    img_w = max(w for w, _ in sizes)
    items = [_legend_items(r, names, ignore) for r in rows]
    per_col = max(1, (ph - 4) // LEGEND_LINE)
    col_w = SWATCH + 6 + max([_text_width(n) for it in items for _, n in it] or [0]) + 8
    legend_w = max([-(-len(it) // per_col) * col_w for it in items] or [0])
    boreholes = [well_depth(r.sample.meta) is not None for r in rows]
    any_bore = any(boreholes)
    left = MARGIN + (AXIS_LEFT if any_bore else 0)
    widths = {
        "rgb": img_w,
        "depth": img_w + 4 + BAR_W + BAR_TEXT_W,
        "label": img_w + 6 + legend_w,
        "view1": ph,
        "view2": ph,
        "crops": img_w,
    }
    xs, x = {}, left
    for name in PANELS:
        xs[name] = x
        x += widths[name] + GAP
    width = max(x - GAP + MARGIN, _text_width(title, 0.55) + 2 * MARGIN)
    rh = row_height(ph, any_bore)
    out: list[RowLayout] = []
    for i, (row, (pw, pph)) in enumerate(zip(rows, sizes)):
        y0 = MARGIN + TITLE_H + i * rh
        py = y0 + HEADER_H + CAPTION_H
        header = _header(row, i, len(rows))
        rl = RowLayout(
            i,
            row.sample.key,
            Rect(0, y0, width, rh),
            header,
            fit_header(header, row, width - left - MARGIN),
            borehole=boreholes[i],
        )
        for name in ("rgb", "depth", "label", "crops"):
            rl.panels[name] = Rect(xs[name], py, pw, pph)
        for name in ("view1", "view2"):
            rl.panels[name] = Rect(xs[name], py, ph, ph)
        for name in PANELS:
            rl.figures[name] = rl.panels[name]
        if rl.borehole:
            axes = Rect(xs["rgb"] - AXIS_LEFT, py, AXIS_LEFT + pw, pph + AXIS_BOTTOM)
            rl.figures["rgb"] = rl.panels["rgb"].union(axes)
            for name in ("depth", "label", "crops"):
                p = rl.panels[name]
                rl.figures[name] = p.union(Rect(p.x, p.y, p.w, p.h + AXIS_BOTTOM))
        dp = rl.panels["depth"]
        rl.figures["depth"] = rl.figures["depth"].union(
            Rect(dp.x2, py, 4 + BAR_W + BAR_TEXT_W, pph)
        )
        lp = rl.panels["label"]
        for k, (cid, name) in enumerate(items[i]):
            sx = lp.x2 + 6 + (k // per_col) * col_w
            sy = py + 2 + (k % per_col) * LEGEND_LINE
            swatch = Rect(sx, sy, SWATCH, SWATCH)
            rl.legend.append(LegendEntry(cid, name, legend_colour(cid, ignore), swatch))
        if rl.legend:
            rl.figures["label"] = rl.figures["label"].union(
                Rect(lp.x2, py, 6 + legend_w, max(pph, per_col * LEGEND_LINE))
            )
        out.append(rl)
    height = MARGIN + TITLE_H + len(rows) * rh + MARGIN - ROW_GAP
    return SheetLayout(width, height, title, out)


def _header(row: PreviewRow, i: int, n: int) -> str:
    m, s = row.sample.meta, row.sample
    h, w = s.rgb.shape[:2]
    size = row.views.view1.rgb.shape[0]
    text = (
        f"{i + 1}/{n}  {m.get('source', '?')}  id {m.get('id', '?')}  key {s.key}  "
        f"[{m.get('split', '?')}]  {w}x{h} -> views {size}x{size}  "
        f"({row.ref.shard} #{row.ref.offset})"
    )
    if row.pairs is not None:
        sp, kept = int(row.pairs.spatial.sum()), int(row.pairs.kept.sum())
        text += f"  pairs {sp} spatial, {kept} kept, {sp - kept} removed by depth"
    return _ascii(text)


def fit_header(header: str, row: PreviewRow, max_w: int) -> str:
    """``header`` as drawn in ``max_w`` sheet pixels: whole when it fits; else without the id where
    the id only repeats the key (borehole ``well/00028`` and key ``well-00028``), then with the id,
    key and shard name shortened in the middle (their ends, the frame or window number, stay), and
    as a last resort cut at the end; "..." marks what is left out."""
    if _text_width(header, HEADER_SCALE) <= max_w:
        return header
    ident, key = _ascii(str(row.sample.meta.get("id", "?"))), _ascii(row.sample.key)
    text = header
    if re.sub(r"[^A-Za-z0-9]", "", ident) == re.sub(r"[^A-Za-z0-9]", "", key):
        text = text.replace(f"  id {ident}  ", "  ", 1)
    names = [n for n in (ident, key, row.ref.shard) if n in text]
    while _text_width(text, HEADER_SCALE) > max_w:
        longest = max(names, key=len, default="")
        if len(longest) <= 12:
            break
        short = _elide_middle(longest, len(longest) - 4)
        text = text.replace(longest, short)
        names = [short if n == longest else n for n in names]
    while len(text) > 4 and _text_width(text, HEADER_SCALE) > max_w:
        text = text[: len(text) - 4].rstrip() + "..."
    return text


def _elide_middle(name: str, length: int) -> str:
    """``name`` in ``length`` characters: its start and end joined by "..."."""
    keep = max(length - 3, 2)
    return name[: keep - keep // 2] + "..." + name[len(name) - keep // 2 :]


def _ascii(s: str) -> str:
    return s.encode("ascii", "replace").decode()


# ------------------------------------------------------------------------------------------ drawing


def render_sheet(
    rows: list[PreviewRow], info: DatasetInfo, config: PreviewConfig, *, title: str
) -> Sheet:
    """Lay out and draw the sheet. Returns the image (RGB uint8) with its layout."""
    from datakit.preview_panels import draw_row

    layout = compute_layout(rows, info, config, title)
    canvas = np.empty((layout.height, layout.width, 3), np.uint8)
    canvas[:] = BACKGROUND
    put_text(canvas, _ascii(title), MARGIN, MARGIN + 18, scale=0.55, thickness=1)
    _, ignore = class_names(info)
    unit = str((info.depth or {}).get("unit") or "")
    for row, rl in zip(rows, layout.rows):
        draw_row(canvas, row, rl, ignore=ignore, unit=unit)
    return Sheet(canvas, layout)


def put_text(
    img: np.ndarray,
    text: str,
    x: int,
    y: int,
    *,
    scale: float = 0.4,
    colour: tuple[int, int, int] = TEXT,
    thickness: int = 1,
) -> None:
    """Draw ASCII text with its baseline at y."""
    cv2.putText(img, _ascii(text), (int(x), int(y)), FONT, scale, colour, thickness, cv2.LINE_AA)


def paste(canvas: np.ndarray, image: np.ndarray, rect: Rect) -> None:
    canvas[rect.y : rect.y2, rect.x : rect.x2] = image[: rect.h, : rect.w]
