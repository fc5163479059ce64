"""Drawing one row of the preview sheet into the positions :mod:`datakit.preview_sheet` computed.

Source pixel ``i`` has its centre at position ``i`` (:mod:`datakit.views`); a panel showing a
W-wide source at pw pixels puts source position ``x`` at panel position ``(x + 0.5) * pw / W - 0.5``.
Resampling for display is nearest at pixel centres for depth and labels (no colour is invented at
an invalid or class edge) and area/bilinear for RGB.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from datakit.preview import Pairs, PreviewRow
from datakit.preview_sheet import (
    BAR_W,
    BOX_RGB,
    CAPTION_H,
    HEADER_H,
    HEADER_SCALE,
    IGNORE_RGB,
    INVALID_RGB,
    KEPT_RGB,
    MUTED,
    PLACEHOLDER,
    REMOVED_RGB,
    SWATCH,
    ColorBar,
    Rect,
    RowLayout,
    paste,
    put_text,
    well_depth,
)
from datakit.views import View


def draw_row(
    canvas: np.ndarray,
    row: PreviewRow,
    rl: RowLayout,
    *,
    ignore: int | None,
    unit: str,
) -> None:
    """Draw one sample's header, captions and panels at the positions ``rl`` gives; records the
    colour bar and the captions in ``rl``. ``unit``: the dataset's depth unit (the sample's when
    empty)."""
    s = row.sample
    unit = unit or str(s.meta.get("depth_unit", ""))
    header_y = rl.rect.y + HEADER_H - 5
    put_text(canvas, rl.header_drawn, rl.panels["rgb"].x, header_y, scale=HEADER_SCALE)
    cap_y = rl.rect.y + HEADER_H + CAPTION_H - 4
    v1, v2 = row.views.view1, row.views.view2
    valid = ""
    if s.depth is not None:
        valid = f"  valid {percent_floor(int(np.count_nonzero(s.depth > 0)), s.depth.size)}"
    captions = {
        "rgb": "RGB",
        "depth": f"depth [{unit}]{valid}" if s.depth is not None else "depth: none",
        "label": "labels" if s.label is not None else "labels: none",
        "view1": "view 1" + (" (flipped)" if v1.flip else ""),
        "view2": "view 2" + (" (flipped)" if v2.flip else ""),
        "crops": "crops 1, 2 + pairs",
    }
    rl.captions = captions
    for name, text in captions.items():
        put_text(canvas, text, rl.panels[name].x, cap_y, scale=0.4, colour=MUTED)

    p = rl.panels
    paste(canvas, resize_rgb(s.rgb, p["rgb"].w, p["rgb"].h), p["rgb"])
    if s.depth is not None:
        image, vmin, vmax = depth_image(s.depth, p["depth"].w, p["depth"].h)
        paste(canvas, image, p["depth"])
        rl.colorbar = draw_colorbar(canvas, p["depth"], vmin, vmax, unit)
    else:
        placeholder(canvas, p["depth"], "no depth")
    if s.label is not None:
        paste(canvas, label_image(s.rgb, s.label, p["label"].w, p["label"].h, ignore), p["label"])
        for e in rl.legend:
            x, y = e.swatch.x, e.swatch.y
            canvas[y : y + SWATCH, x : x + SWATCH] = e.rgb
            put_text(canvas, e.name, x + SWATCH + 5, y + SWATCH - 1, scale=0.4)
    else:
        placeholder(canvas, p["label"], "no labels")
    pairs = row.pairs
    for k, (name, view) in enumerate((("view1", v1), ("view2", v2))):
        rect = p[name]
        img = resize_rgb(view.rgb, rect.w, rect.h)
        if pairs is not None:
            mark_cells(img, pairs, k)
        paste(canvas, img, rect)
    crops = crops_image(row, p["crops"].w, p["crops"].h)
    paste(canvas, crops, p["crops"])
    bore = well_depth(s.meta)
    if bore is not None:
        depth_axis(canvas, p["rgb"], s.rgb.shape[0], *bore)
        for name in ("rgb", "depth", "label", "crops"):
            azimuth_ticks(canvas, p[name])


# ------------------------------------------------------------------------------------------ panels


def percent_floor(part: int, whole: int) -> str:
    """``part / whole`` as a percentage with one decimal, rounded down (exactly, in integers), so
    that 99.87% valid depth reads 99.8%, never 100%."""
    tenths = part * 1000 // whole if whole else 0
    return f"{tenths // 10}.{tenths % 10}%"


def nearest_index(n_src: int, n_out: int) -> np.ndarray:
    """Source index nearest to each output pixel centre: floor((i + 0.5) * n_src / n_out)."""
    return np.minimum(((np.arange(n_out) + 0.5) * n_src / n_out).astype(np.int64), n_src - 1)


def resize_nearest(a: np.ndarray, w: int, h: int) -> np.ndarray:
    return a[nearest_index(a.shape[0], h)[:, None], nearest_index(a.shape[1], w)[None, :]]


def resize_rgb(rgb: np.ndarray, w: int, h: int) -> np.ndarray:
    shrink = w <= rgb.shape[1] and h <= rgb.shape[0]
    return cv2.resize(rgb, (w, h), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


def turbo(codes: np.ndarray) -> np.ndarray:
    """uint8 codes -> RGB through OpenCV's turbo map (perceptual, 0 = dark blue, 255 = dark red)."""
    return np.ascontiguousarray(cv2.applyColorMap(codes, cv2.COLORMAP_TURBO)[..., ::-1])


def depth_range(depth: np.ndarray) -> tuple[float, float]:
    """Colour range: 1st..99th percentile of valid depth (a few outliers do not wash the map out)."""
    valid = depth[depth > 0]
    if valid.size == 0:
        return 0.0, 1.0
    lo, hi = (float(v) for v in np.percentile(valid, [1, 99]))
    return lo, hi if hi > lo else lo + max(abs(lo) * 1e-3, 1e-6)


def depth_image(depth: np.ndarray, w: int, h: int) -> tuple[np.ndarray, float, float]:
    """Turbo-coloured depth at (w, h), invalid pixels (0) in INVALID_RGB; returns (image, vmin, vmax)."""
    vmin, vmax = depth_range(depth)
    d = resize_nearest(depth, w, h)
    codes = np.clip(np.rint((d - vmin) / (vmax - vmin) * 255), 0, 255).astype(np.uint8)
    image = turbo(codes)
    image[d <= 0] = INVALID_RGB
    return image, vmin, vmax


def draw_colorbar(canvas: np.ndarray, panel: Rect, vmin: float, vmax: float, unit: str) -> ColorBar:
    x = panel.x2 + 4
    bar = Rect(x, panel.y, BAR_W, max(8, panel.h - 18))
    codes = np.linspace(255, 0, bar.h).round().astype(np.uint8)[:, None].repeat(BAR_W, 1)
    paste(canvas, turbo(codes), bar)
    for v in nice_ticks(vmin, vmax, 4):
        y = bar.y + round((vmax - v) / (vmax - vmin) * (bar.h - 1))
        canvas[y, bar.x2 : bar.x2 + 3] = MUTED
        put_text(canvas, f"{v:g} {unit}", bar.x2 + 5, y + 4, scale=0.35)
    swatch = Rect(x, bar.y2 + 6, BAR_W, min(10, panel.y2 - bar.y2 - 6))
    canvas[swatch.y : swatch.y2, swatch.x : swatch.x2] = INVALID_RGB
    put_text(canvas, "invalid", swatch.x2 + 5, swatch.y2, scale=0.35)
    return ColorBar(bar, vmin, vmax, unit, swatch)


def label_image(
    rgb: np.ndarray, label: np.ndarray, w: int, h: int, ignore: int | None
) -> np.ndarray:
    """RGB (greyed) with each labelled pixel blended 60% towards its class colour."""
    from datakit.preview_sheet import palette

    lab = resize_nearest(label, w, h)
    gray = cv2.cvtColor(resize_rgb(rgb, w, h), cv2.COLOR_RGB2GRAY).astype(np.float32)
    out = np.repeat(gray[..., None], 3, axis=2)
    for c in np.unique(lab):
        mask = lab == c
        colour = np.array(IGNORE_RGB if int(c) == ignore else palette(int(c)), np.float32)
        weight = 0.2 if int(c) == ignore else 0.6
        out[mask] = (1 - weight) * out[mask] + weight * colour
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def placeholder(canvas: np.ndarray, rect: Rect, text: str) -> None:
    canvas[rect.y : rect.y2, rect.x : rect.x2] = PLACEHOLDER
    put_text(canvas, text, rect.x + 8, rect.y + rect.h // 2, colour=MUTED)


def mark_cells(img: np.ndarray, pairs: Pairs, which: int) -> None:
    """Dots on a view at the cells of the drawn pairs (view 1: i, view 2: j)."""
    g, h, w = pairs.grid, img.shape[0], img.shape[1]
    for (i, j), kept in zip(pairs.shown, pairs.shown_kept):
        cell = (i, j)[which]
        r, c = divmod(int(cell), g)
        centre = (round((c + 0.5) * w / g - 0.5), round((r + 0.5) * h / g - 0.5))
        cv2.circle(img, centre, 3, KEPT_RGB if kept else REMOVED_RGB, -1, cv2.LINE_AA)


# ------------------------------------------------------------------------------------------- crops


def crop_corners(
    coords: np.ndarray, size: int, src_w: int, src_h: int, pw: int, ph: int
) -> tuple[float, float, float, float]:
    """Outer edges (left, top, right, bottom) of a view's crop in panel positions (continuous, 0 =
    the panel's left edge, pw its right edge). ``coords`` are the centres of the view's first/last
    pixels (:mod:`datakit.views`); the crop reaches half an output pixel beyond them. Left may
    exceed right only by wrapping: it never does here (x is unwrapped for periodic samples)."""
    x1, y1, x2, y2 = (float(v) for v in coords)
    hx = 0.5 * abs(x2 - x1) * (src_w - 1) / (size - 1)
    hy = 0.5 * abs(y2 - y1) * (src_h - 1) / (size - 1)
    left, right = min(x1, x2) * (src_w - 1) - hx, max(x1, x2) * (src_w - 1) + hx
    top, bottom = min(y1, y2) * (src_h - 1) - hy, max(y1, y2) * (src_h - 1) + hy
    sx, sy = pw / src_w, ph / src_h
    return (left + 0.5) * sx, (top + 0.5) * sy, (right + 0.5) * sx, (bottom + 0.5) * sy


def box_pixels(
    coords: np.ndarray, size: int, src_w: int, src_h: int, pw: int, ph: int
) -> tuple[int, int, int, int]:
    """First and last panel pixel (x0, y0, x1, y1) inside the crop's outer edges."""
    left, top, right, bottom = crop_corners(coords, size, src_w, src_h, pw, ph)
    return (
        math.floor(left + 1e-6),
        math.floor(top + 1e-6),
        math.ceil(right - 1e-6) - 1,
        math.ceil(bottom - 1e-6) - 1,
    )


def crops_image(row: PreviewRow, pw: int, ph: int) -> np.ndarray:
    s = row.sample
    src_h, src_w = s.rgb.shape[:2]
    img = np.rint(0.55 * resize_rgb(s.rgb, pw, ph) + 0.45 * 255).astype(np.uint8)
    shifts = (-pw, 0, pw) if row.views.periodic else (0,)
    sx, sy = pw / src_w, ph / src_h
    period = src_w / max(src_w - 1, 1)

    def to_panel(u: float, v: float) -> tuple[float, float]:
        return (u * (src_w - 1) + 0.5) * sx - 0.5, (v * (src_h - 1) + 0.5) * sy - 0.5

    if row.pairs is not None:
        pr = row.pairs
        for (i, j), kept in zip(pr.shown, pr.shown_kept):
            u1, v1 = pr.cells1[i]
            u2, v2 = pr.cells2[j]
            if row.views.periodic:  # the nearer copy of cell j across the seam
                u2 = u2 - period * round((u2 - u1) / period)
            a, b = to_panel(u1, v1), to_panel(u2, v2)
            for dx in shifts:
                pa, pb = (round(a[0] + dx), round(a[1])), (round(b[0] + dx), round(b[1]))
                if kept:
                    cv2.line(img, pa, pb, KEPT_RGB, 1, cv2.LINE_AA)
                else:
                    dashed_line(img, pa, pb, REMOVED_RGB)
                cv2.circle(img, pa, 2, BOX_RGB[0], -1, cv2.LINE_AA)
                cv2.circle(img, pb, 2, BOX_RGB[1], -1, cv2.LINE_AA)
    views = (row.views.view1, row.views.view2)
    # Marks first, outlines last: no number or arrow of one box hides a corner of the other.
    for k, view in enumerate(views):
        box_marks(img, view, k, src_w, src_h, shifts)
    for k, view in enumerate(views):
        x0, y0, x1, y1 = box_pixels(view.coords, view.rgb.shape[0], src_w, src_h, pw, ph)
        for dx in shifts:
            outline(img, x0 + dx, y0, x1 + dx, y1, BOX_RGB[k])
    return img


def box_marks(
    img: np.ndarray, view: View, k: int, src_w: int, src_h: int, shifts: tuple[int, ...]
) -> None:
    """The crop's number, 'F' when flipped and an arrow along its top edge pointing the way the
    view's x axis runs (left when flipped)."""
    ph, pw = img.shape[:2]
    x0, y0, x1, _ = box_pixels(view.coords, view.rgb.shape[0], src_w, src_h, pw, ph)
    colour = BOX_RGB[k]
    for dx in shifts:
        a, b = x0 + dx, x1 + dx
        put_text(
            img,
            f"{k + 1}F" if view.flip else f"{k + 1}",
            a + 4,
            y0 + 15 + 10 * k,
            scale=0.4,
            colour=colour,
        )
        ya = y0 + 5 + 3 * k
        ends = ((a + 4, ya), (b - 4, ya)) if not view.flip else ((b - 4, ya), (a + 4, ya))
        if b - a > 16:
            cv2.arrowedLine(
                img, ends[0], ends[1], colour, 1, cv2.LINE_AA, tipLength=min(0.3, 8 / (b - a))
            )


def outline(
    img: np.ndarray, x0: int, y0: int, x1: int, y1: int, colour: tuple[int, int, int]
) -> None:
    """A 2-pixel outline just inside the inclusive pixel rectangle (x0, y0)-(x1, y1)."""
    fill(img, x0, y0, x1, y0 + 1, colour)
    fill(img, x0, y1 - 1, x1, y1, colour)
    fill(img, x0, y0, x0 + 1, y1, colour)
    fill(img, x1 - 1, y0, x1, y1, colour)


def fill(img: np.ndarray, x0: int, y0: int, x1: int, y1: int, colour: tuple[int, int, int]) -> None:
    """Fill the inclusive pixel rectangle, clipped to the image."""
    h, w = img.shape[:2]
    xa, xb, ya, yb = max(x0, 0), min(x1, w - 1), max(y0, 0), min(y1, h - 1)
    if xa <= xb and ya <= yb:
        img[ya : yb + 1, xa : xb + 1] = colour


def dashed_line(
    img: np.ndarray,
    a: tuple[int, int],
    b: tuple[int, int],
    colour: tuple[int, int, int],
    dash: int = 4,
) -> None:
    length = math.hypot(b[0] - a[0], b[1] - a[1])
    steps = max(1, int(length // dash))
    for s in range(0, steps, 2):
        t0, t1 = s / steps, min(1.0, (s + 1) / steps)
        p = (round(a[0] + (b[0] - a[0]) * t0), round(a[1] + (b[1] - a[1]) * t0))
        q = (round(a[0] + (b[0] - a[0]) * t1), round(a[1] + (b[1] - a[1]) * t1))
        cv2.line(img, p, q, colour, 1, cv2.LINE_AA)


# -------------------------------------------------------------------------------------- borehole


def nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """Round values within [lo, hi], about n of them (1, 2, 5 x 10^k steps)."""
    if not hi > lo:
        return [lo]
    raw = (hi - lo) / max(n - 1, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step - 1e-9) * step
    return [round(first + k * step, 10) for k in range(int((hi - first) / step + 1e-9) + 1)]


def depth_axis(
    canvas: np.ndarray, panel: Rect, src_h: int, top: float, bottom: float, unit: str
) -> None:
    """Well depth down the left side of ``panel``. ``top``/``bottom`` are the depths of the centres
    of the first and last of the ``src_h`` source rows."""
    x = panel.x - 3
    canvas[panel.y : panel.y2, x] = MUTED
    put_text(canvas, f"[{unit}]", panel.x - 60, panel.y - 4, scale=0.35, colour=MUTED)
    lo, hi = min(top, bottom), max(top, bottom)
    for v in nice_ticks(lo, hi, 5):
        row = (v - top) / (bottom - top) * (src_h - 1) if bottom != top else 0.0
        y = min(max(round((row + 0.5) * panel.h / src_h - 0.5), 0), panel.h - 1) + panel.y
        canvas[y, x - 4 : x] = MUTED
        text = f"{v:g}"
        tw = int(cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, 0.35, 1)[0][0])
        put_text(canvas, text, x - 6 - tw, y + 4, scale=0.35)


def azimuth_ticks(canvas: np.ndarray, panel: Rect) -> None:
    """Azimuth 0..360 degrees along the bottom of ``panel`` (column edges span the full turn)."""
    y = panel.y2
    for deg in (0, 90, 180, 270, 360):
        x = min(panel.x + round(deg / 360 * panel.w), panel.x2 - 1)
        canvas[y : y + 4, x] = MUTED
        text = f"{deg}"
        tw = int(cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, 0.33, 1)[0][0])
        put_text(
            canvas,
            text,
            min(max(x - tw // 2, panel.x - 4), panel.x2 - tw + 4),
            y + 14,
            scale=0.33,
            colour=MUTED,
        )
