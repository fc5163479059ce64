"""Borehole image logs (DLIS, LAS 2.0, HDF5, NPZ) -> windows of an unrolled borehole wall.

One work unit per log file (a well). The image channel (acoustic amplitude, resistivity, density) is
resampled along azimuth to ``columns`` with periodic interpolation, scaled to 8 bits by robust
per-well percentiles (the same scaling for every window of a well; recorded in ``_info.json``) and
stored as grayscale RGB or through a matplotlib colormap. The optional exogenous channel (transit time,
radius) becomes ``depth`` in its physical unit. The log is cut into windows of ``window`` rows every
``stride`` rows: ``(rows - window) // stride + 1`` windows; rows past the last full window are not
used. Breakout picks (depth top, depth bottom, azimuth centre, azimuth width) become a label mask.

Geometry: row ``r`` of a window is index sample ``r`` (increasing depth); column ``j`` covers azimuth
``[j, j + 1) * 360 / columns`` degrees from the azimuth reference, so sector ``i`` of ``n`` is centred
at ``(i + 0.5) * 360 / n``. Invalid image pixels are black (RGB 0; valid values map to 1..255) and
``ignore_index`` in the label.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import numpy as np

from converters.azimuth import azimuth_plan, resample_periodic
from converters.base import Converter, Skipped, SourceInfo, WorkUnit, make_meta
from converters.breakouts import BREAKOUT_LABELS, picks_for, rasterise_breakouts, read_breakouts
from converters.logunits import convert_units, nice_scale
from converters.welllogs import READERS, WellLog, is_well_log, read_well_log
from datakit.errors import SourceError, UsageError
from datakit.schema import Sample

DEPTH_LEVELS = 65535  # uint16 codes; 0 = invalid


@dataclass(frozen=True)
class BoreholeConfig:
    src: str
    image: str | None = None
    depth: str | None = None
    window: int = 256
    stride: int = 128
    columns: int = 256
    colormap: str | None = None
    breakouts: str | None = None
    azimuth_reference: str = "sector-1"
    negative_invalid: bool = True
    percentiles: tuple[float, float] = (1.0, 99.0)

    def __post_init__(self) -> None:
        if min(self.window, self.stride, self.columns) < 1:
            raise UsageError("--window, --stride and --columns must be at least 1")
        lo, hi = self.percentiles
        if not 0.0 <= lo < hi <= 100.0:
            raise UsageError(
                f"percentiles must satisfy 0 <= lo < hi <= 100, got {self.percentiles}"
            )


@dataclass(frozen=True)
class WellStats:
    """What a survey of one well found: rows, index range, image scaling, exogenous range."""

    unit_id: str
    file: str
    format: str
    well: str
    rows: int
    windows: int
    index_name: str
    index_unit: str
    top: float | None
    bottom: float | None
    image_members: tuple[str, ...]
    image_unit: str
    image_lo: float | None
    image_hi: float | None
    depth_members: tuple[str, ...] | None
    depth_unit: str | None
    depth_max: float | None  # in the well's own exogenous unit

    def to_json(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "format": self.format,
            "well": self.well,
            "rows": self.rows,
            "windows": self.windows,
            "index": {
                "name": self.index_name,
                "unit": self.index_unit,
                "top": self.top,
                "bottom": self.bottom,
            },
            "image": {
                "channels": list(self.image_members),
                "unit": self.image_unit,
                "lo": self.image_lo,
                "hi": self.image_hi,
            },
            "depth": None
            if self.depth_members is None
            else {"channels": list(self.depth_members), "unit": self.depth_unit},
        }


@dataclass(frozen=True)
class Survey:
    """Every well's statistics and the dataset-wide exogenous unit and scale."""

    wells: dict[str, WellStats]
    errors: dict[str, str]  # unit id -> why the well cannot be read (raised again by convert)
    depth_unit: str | None
    depth_scale: float | None


class BoreholeConverter(Converter):
    name = "borehole"
    Config = BoreholeConfig
    help = (
        "Borehole image logs cut into windows along depth. SRC is a DLIS, LAS 2.0, HDF5 or NPZ log "
        "or a folder of them; azimuth is periodic; the exogenous channel (--depth) becomes depth."
    )
    params = [
        click.Argument(["src"], type=click.Path(path_type=str)),
        click.Option(
            ["--image"],
            default=None,
            metavar="CH",
            help="Image channel, or a LAS sector pattern like 'ABDC{}M' ({} = sector "
            "number). Default: the file's only multi-sector channel or family of 4+ "
            "numbered columns.",
        ),
        click.Option(
            ["--depth"],
            default=None,
            metavar="CH",
            help="Exogenous channel stored as depth (transit time, radius); same naming "
            "rules. Default: none (samples have no depth member).",
        ),
        click.Option(
            ["--window"],
            type=click.IntRange(min=1),
            default=256,
            show_default=True,
            help="Rows (depth samples) per window = image height.",
        ),
        click.Option(
            ["--stride"],
            type=click.IntRange(min=1),
            default=128,
            show_default=True,
            help="Rows between the tops of consecutive windows.",
        ),
        click.Option(
            ["--columns"],
            type=click.IntRange(min=1),
            default=256,
            show_default=True,
            help="Azimuth columns = image width (periodic resampling).",
        ),
        click.Option(
            ["--colormap"],
            default=None,
            metavar="NAME",
            help="matplotlib colormap for the picture (default: grayscale).",
        ),
        click.Option(
            ["--breakouts"],
            type=click.Path(dir_okay=False, path_type=str),
            default=None,
            metavar="CSV",
            help="Breakout picks: depth top, depth bottom, azimuth centre, azimuth width "
            "(degrees), optional well; rasterised into label masks.",
        ),
        click.Option(
            ["--azimuth-reference"],
            default="sector-1",
            show_default=True,
            help="What azimuth 0 (the left edge) is, recorded in every sample "
            "(e.g. high-side, north).",
        ),
        click.Option(
            ["--negative-invalid/--negative-valid"],
            default=True,
            show_default=True,
            help="Treat negative values (pad gaps) as invalid.",
        ),
    ]

    config: BoreholeConfig

    def __init__(self, config: BoreholeConfig) -> None:
        super().__init__(config)
        self._survey: Survey | None = None
        # The log the survey read last, reused by convert() in the same process (a single-well
        # conversion then parses its file once); never pickled into workers.
        self._last_log: WellLog | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_last_log": None}

    # --- the Converter interface ---------------------------------------------------------------

    def units(self) -> list[WorkUnit]:
        """One unit per log file under ``src`` (sorted); ids are unique sample-key prefixes."""
        src = Path(self.config.src)
        if src.is_dir():
            files = sorted(p for p in src.rglob("*") if p.is_file() and is_well_log(p))
            if not files:
                raise SourceError(src, f"no well logs ({', '.join(READERS)}) in this folder")
        elif src.is_file():
            if not is_well_log(src):
                raise SourceError(src, f"unknown log format; known: {', '.join(READERS)}")
            files = [src]
        else:
            raise SourceError(src, "no such file or directory")
        _colormap_lut(self.config.colormap)  # fail early on a bad name
        if self.config.breakouts is not None:
            read_breakouts(self.config.breakouts)
        units: list[WorkUnit] = []
        used: set[str] = set()
        for f in files:
            rel = f.relative_to(src).with_suffix("") if src.is_dir() else Path(f.stem)
            uid = re.sub(r"[^A-Za-z0-9_-]+", "_", rel.as_posix()).strip("_") or "log"
            if uid in used:
                uid = f"{uid}_{f.suffix.lstrip('.').lower()}"
            while uid in used:
                uid += "_"
            used.add(uid)
            units.append(WorkUnit(uid, "train", str(f)))
        return units

    def info(self) -> SourceInfo:
        """Reads every well once (statistics for the 8-bit scaling and the depth scale)."""
        survey = self.survey()
        c = self.config
        extra = {
            "borehole": {
                "image_channel": c.image,
                "depth_channel": c.depth,
                "window": c.window,
                "stride": c.stride,
                "columns": c.columns,
                "colormap": c.colormap,
                "azimuth_reference": c.azimuth_reference,
                "periodic_x": True,
                "normalisation": {
                    "method": "per-well percentiles -> 1..255 (0 = invalid)",
                    "percentiles": list(c.percentiles),
                },
                "wells": {uid: s.to_json() for uid, s in survey.wells.items()},
                "unreadable": dict(survey.errors),
            }
        }
        return SourceInfo(
            source=self.name,
            depth_unit=survey.depth_unit,
            depth_scale=survey.depth_scale,
            labels=BREAKOUT_LABELS if c.breakouts is not None else None,
            extra=extra,
        )

    def convert(self, unit: WorkUnit) -> Iterator[Sample | Skipped]:
        c = self.config
        survey = self.survey()
        last, self._last_log = self._last_log, None
        log = (
            last
            if last is not None and last.path == str(unit.payload)
            else self._read(unit.payload)
        )
        stats = survey.wells.get(unit.id) or _well_stats(unit.id, log, c)
        depth_values = None
        if log.depth is not None:
            depth_values = _to_dataset_unit(log, survey.depth_unit)
        picks = None
        if c.breakouts is not None:
            names = (log.well, unit.id, Path(log.path).stem)
            picks = picks_for(read_breakouts(c.breakouts), names)
        lut = _colormap_lut(c.colormap)
        image_plan = azimuth_plan(log.image.sectors, c.columns)
        depth_plan = azimuth_plan(log.depth.sectors, c.columns) if log.depth is not None else None
        if stats.windows == 0:
            # a short run is a normal part of the data (counted, never fatal); an empty log is not
            why = f"{log.rows} rows, fewer than one window of {c.window}" if log.rows else ""
            yield Skipped(log.path, why or "no data rows", expected=log.rows > 0)
            return
        for k in range(stats.windows):
            r0, r1 = k * c.stride, k * c.stride + c.window
            z = log.index[r0:r1]
            raw = log.image.values[r0:r1]
            if not np.isfinite(raw).any():
                # the source is the file, so the console shows a few of a log's null windows
                where = f"window {k} at {z[0]:g}-{z[-1]:g}{log.index_unit}"
                yield Skipped(log.path, f"{where}: all-null (no valid image sample)", expected=True)
                continue
            values, valid = resample_periodic(raw, image_plan)
            rgb = to_rgb(values, valid, stats.image_lo, stats.image_hi, lut)
            depth = None
            if depth_values is not None and depth_plan is not None:
                d, dvalid = resample_periodic(depth_values[r0:r1], depth_plan)
                depth = depth_codes(d, dvalid, survey.depth_scale or 1.0)
            label = None
            if picks is not None:
                label = rasterise_breakouts(picks, z, c.columns)
                label[~valid] = BREAKOUT_LABELS.ignore_index
            meta = make_meta(
                source=self.name,
                id=f"{unit.id}/{k:05d}",
                split=unit.split,
                width=c.columns,
                height=c.window,
                depth_scale=survey.depth_scale or 1.0,
                depth_unit=survey.depth_unit,  # None: no depth member
                well=log.well,
                file=Path(log.path).name,
                format=log.format,
                window=k,
                rows=[r0, r1],
                top=float(z[0]),
                bottom=float(z[-1]),
                index_unit=log.index_unit,
                index_name=log.index_name,
                channels={
                    "image": log.image.request,
                    "depth": log.depth.request if log.depth is not None else None,
                },
                sectors={
                    "image": log.image.sectors,
                    "depth": log.depth.sectors if log.depth is not None else None,
                },
                image_unit=log.image.unit,
                image_range=[stats.image_lo, stats.image_hi],
                azimuth_reference=c.azimuth_reference,
                azimuth_deg_per_column=360.0 / c.columns,
                periodic_x=True,
            )
            yield Sample(f"{unit.id}-{k:05d}", unit.split, rgb, meta, depth, label)

    # --- the survey ----------------------------------------------------------------------------

    def survey(self) -> Survey:
        """Statistics of every well, computed once per converter (pickled into workers with it)."""
        if self._survey is None:
            self._survey = self._run_survey()
        return self._survey

    def _read(self, path: str) -> WellLog:
        c = self.config
        log = read_well_log(path, c.image, c.depth, negative_invalid=c.negative_invalid)
        if log.rows and not np.isfinite(log.image.values).any():
            # a dead tool or the wrong channel, not a null section: one error for the well
            raise SourceError(
                path, f"image channel {log.image.request!r} is null in all {log.rows} rows"
            )
        return log

    def _run_survey(self) -> Survey:
        wells: dict[str, WellStats] = {}
        errors: dict[str, str] = {}
        for unit in self.units():
            try:
                log = self._read(unit.payload)
            except SourceError as exc:
                errors[unit.id] = str(exc)
                continue
            wells[unit.id] = _well_stats(unit.id, log, self.config)
            self._last_log = log
        depth_unit = None
        depth_max: float | None = None
        if self.config.depth is not None:
            for uid, s in list(wells.items()):
                if depth_unit is None:
                    depth_unit = s.depth_unit
                m = _convert_scalar(s.depth_max, s.depth_unit, depth_unit)
                if s.depth_max is not None and m is None:
                    errors[uid] = (
                        f"{s.file}: depth channel unit {s.depth_unit!r} does not convert to the "
                        f"dataset's {depth_unit!r}"
                    )
                    del wells[uid]
                    continue
                if m is not None:
                    depth_max = m if depth_max is None else max(depth_max, m)
        scale = nice_scale(depth_max, DEPTH_LEVELS) if self.config.depth is not None else None
        return Survey(wells, errors, depth_unit, scale)


def _well_stats(unit_id: str, log: WellLog, c: BoreholeConfig) -> WellStats:
    img = log.image.values
    valid = img[np.isfinite(img)]
    lo = hi = None
    if valid.size:
        lo, hi = (float(v) for v in np.percentile(valid, c.percentiles))
    dmax = None
    if log.depth is not None and np.isfinite(log.depth.values).any():
        dmax = float(np.nanmax(log.depth.values))
    return WellStats(
        unit_id=unit_id,
        file=Path(log.path).name,
        format=log.format,
        well=log.well,
        rows=log.rows,
        windows=num_windows(log.rows, c.window, c.stride),
        index_name=log.index_name,
        index_unit=log.index_unit,
        top=float(log.index[0]) if log.rows else None,
        bottom=float(log.index[-1]) if log.rows else None,
        image_members=log.image.members,
        image_unit=log.image.unit,
        image_lo=lo,
        image_hi=hi,
        depth_members=log.depth.members if log.depth is not None else None,
        depth_unit=log.depth.unit if log.depth is not None else None,
        depth_max=dmax,
    )


def _convert_scalar(v: float | None, src: str | None, dst: str | None) -> float | None:
    if v is None or src is None or dst is None:
        return v
    out = convert_units(np.array([v]), src, dst)
    return None if out is None else float(out[0])


def _to_dataset_unit(log: WellLog, unit: str | None) -> np.ndarray:
    assert log.depth is not None
    if unit is None:
        return log.depth.values
    out = convert_units(log.depth.values, log.depth.unit, unit)
    if out is None:
        raise SourceError(
            log.path,
            f"depth channel unit {log.depth.unit!r} does not convert to the dataset's {unit!r}",
        )
    return out


def num_windows(rows: int, window: int, stride: int) -> int:
    """Full windows of ``window`` rows every ``stride`` rows in a log of ``rows`` rows."""
    return 0 if rows < window else (rows - window) // stride + 1


# --- pixel encodings ---------------------------------------------------------------------------


def to_rgb(
    values: np.ndarray,
    valid: np.ndarray,
    lo: float | None,
    hi: float | None,
    lut: np.ndarray | None,
) -> np.ndarray:
    """Physical values -> HxWx3 uint8: [lo, hi] -> 1..255 (clipped), invalid -> 0."""
    lo = 0.0 if lo is None else lo
    span = (hi - lo) if hi is not None and hi > lo else 1.0
    scaled = np.clip((values - lo) / span, 0.0, 1.0)
    codes = np.where(valid, 1 + np.rint(scaled * 254), 0).astype(np.uint8)
    if lut is None:
        return np.repeat(codes[:, :, None], 3, axis=2)
    return lut[codes]


def depth_codes(values: np.ndarray, valid: np.ndarray, scale: float) -> np.ndarray:
    """Physical values -> uint16 codes ``round(v / scale)`` in 1..65535; invalid (and <= 0) -> 0."""
    codes = np.clip(np.rint(values / scale), 1, DEPTH_LEVELS)
    return np.where(valid & (values > 0), codes, 0).astype(np.uint16)


def _colormap_lut(name: str | None) -> np.ndarray | None:
    """256x3 uint8: entry 0 black (invalid), 1..255 the colormap from low to high."""
    if name is None or name.lower() in ("gray", "grey", "none"):
        return None
    import matplotlib

    try:
        cmap = matplotlib.colormaps[name]
    except KeyError:
        raise UsageError(
            f"--colormap: unknown colormap {name!r} (e.g. gray, viridis, magma, copper, YlOrBr)"
        ) from None
    lut = np.zeros((256, 3), dtype=np.uint8)
    lut[1:] = np.rint(cmap(np.linspace(0.0, 1.0, 255))[:, :3] * 255).astype(np.uint8)
    return lut
