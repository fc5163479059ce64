"""Breakout picks: a CSV of lobes (depth interval, azimuth centre and width) -> label masks.

A breakout is usually two lobes 180 degrees apart; each row of the CSV is one lobe. Masks follow the
column geometry of :mod:`converters.azimuth` and wrap across the 0/360 degree seam.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from converters.base import LabelSet
from datakit.errors import SourceError

BREAKOUT_LABELS = LabelSet("breakouts", ("background", "breakout"), 255)


@dataclass(frozen=True)
class BreakoutPick:
    """One breakout lobe: depth interval (the well's index unit) and azimuth centre/width (deg)."""

    top: float
    bottom: float
    azimuth: float
    width: float
    well: str | None = None


_PICK_COLUMNS = {
    "top": ("top", "depth_top", "top_depth"),
    "bottom": ("bottom", "depth_bottom", "bottom_depth", "base"),
    "azimuth": ("azimuth", "azimuth_centre", "azimuth_center", "centre", "center"),
    "width": ("width", "azimuth_width"),
    "well": ("well",),
}


def read_breakouts(path: str) -> list[BreakoutPick]:
    """Picks from a CSV with a header naming top, bottom, azimuth, width (and optionally well), or
    without header in that order. Raises :class:`SourceError` for a malformed row."""
    try:
        with open(path, newline="") as f:
            rows = [
                r
                for r in csv.reader(f)
                if r and any(x.strip() for x in r) and not r[0].lstrip().startswith("#")
            ]
    except OSError as exc:  # its text names the file again: the reason alone
        raise SourceError(path, f"cannot read breakout picks ({exc.strerror or exc})") from None
    except UnicodeDecodeError as exc:
        raise SourceError(path, f"cannot read breakout picks ({exc})") from None
    if not rows:
        return []
    cols = {"top": 0, "bottom": 1, "azimuth": 2, "width": 3, "well": 4}
    start = 0
    if not _is_number(rows[0][0]):
        header = [h.strip().lower().replace(" ", "_") for h in rows[0]]
        cols = {}
        for key, names in _PICK_COLUMNS.items():
            hit = [i for i, h in enumerate(header) if h in names]
            if hit:
                cols[key] = hit[0]
            elif key != "well":
                raise SourceError(path, f"header lacks a {key!r} column (have {', '.join(header)})")
        start = 1
    picks = []
    for n, row in enumerate(rows[start:], start=start + 1):
        try:
            top, bottom, az, width = (
                float(row[cols[k]]) for k in ("top", "bottom", "azimuth", "width")
            )
        except (ValueError, IndexError):
            raise SourceError(
                path, f"row {n}: need numbers for top, bottom, azimuth, width"
            ) from None
        if not all(map(math.isfinite, (top, bottom, az, width))) or bottom < top or width <= 0:
            raise SourceError(path, f"row {n}: need top <= bottom and width > 0")
        well = row[cols["well"]].strip() if "well" in cols and cols["well"] < len(row) else None
        picks.append(BreakoutPick(top, bottom, az, width, well or None))
    return picks


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def picks_for(picks: list[BreakoutPick], names: Iterable[str]) -> list[BreakoutPick]:
    """The picks without a well and those whose well is one of ``names`` (case-insensitive)."""
    wanted = {n.lower() for n in names}
    return [p for p in picks if p.well is None or p.well.lower() in wanted]


def rasterise_breakouts(picks: list[BreakoutPick], depths: np.ndarray, columns: int) -> np.ndarray:
    """(rows, columns) uint8 mask: 1 where a row's depth is within [top, bottom] and the column
    centre's azimuth within width/2 of the pick's centre, measured around the circle."""
    label = np.zeros((depths.shape[0], columns), dtype=np.uint8)
    centres = (np.arange(columns) + 0.5) * 360.0 / columns
    for p in picks:
        eps = 1e-9 * max(1.0, abs(p.top), abs(p.bottom))
        rows = (depths >= p.top - eps) & (depths <= p.bottom + eps)
        if not rows.any():
            continue
        dist = np.abs((centres - p.azimuth + 180.0) % 360.0 - 180.0)
        cols = dist <= p.width / 2.0 + 1e-9
        label[np.ix_(rows, cols)] = 1
    return label
