"""Well-log readers: DLIS (dlisio), LAS 2.0 (lasio), HDF5 (h5py) and NPZ, one result type for all.

:func:`read_well_log` returns a :class:`WellLog`: the depth index sorted to increasing values with its
unit, and the requested image and exogenous channels as ``(rows, sectors)`` float64 arrays in which
every null (-999.25, -9999, NaN/inf and, by default, negative pad gaps) is NaN.

A channel is named either exactly (a 2-D DLIS/HDF5/NPZ curve, ``n_depth x n_azimuth``) or by a pattern
in which ``{}`` stands for a sector number (``ABDC{}M`` -> ABDC1M, ABDC2M, ... ordered by that number):
the way LAS files store one column per azimuth sector. A scalar curve is one sector.

HDF5 and NPZ layout: a 1-D ``depth`` array plus one array per channel with ``depth``'s length as first
axis. Units: HDF5 ``units`` (or ``unit``) attributes; NPZ a ``units`` entry holding a JSON object string
(``{"depth": "m", "AMP": "dB"}``). Well name: HDF5 root attribute ``well``, NPZ entry ``well``.
"""

from __future__ import annotations

import json
import logging
import re
import zipfile
import zlib
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from converters.logunits import UNIT_FACTORS, known_units, parse_unit
from datakit.errors import SourceError

log = logging.getLogger(__name__)

# Values that mean "no measurement" in well logs whatever the file's own NULL says.
NULL_VALUES = (-999.25, -9999.0)
INDEX_NAME = "depth"  # the index array of HDF5 and NPZ logs
# Without --image, a family of at least this many numbered scalar columns (ABDC1M..ABDC16M) is an
# image candidate. Azimuthal tools record 4 (quadrants) or more sectors; two numbered curves
# (ACCL1, ACCL2) are far more often two sensors than an image.
MIN_FAMILY_SECTORS = 4


@dataclass(frozen=True)
class Curve:
    """One channel as read: ``values`` (rows, sectors) float64 with NaN = invalid."""

    request: str  # the name or pattern asked for
    members: tuple[str, ...]  # the file's channel names behind it (one per sector for patterns)
    unit: str  # canonical when known, else as in the file
    values: np.ndarray

    @property
    def sectors(self) -> int:
        return int(self.values.shape[1])


@dataclass(frozen=True)
class WellLog:
    """A log with its index increasing; ``image`` and ``depth`` share the index's rows."""

    path: str
    format: str
    well: str
    frame: str  # DLIS frame name, "" for single-table formats
    index_name: str
    index_unit: str
    index: np.ndarray  # (rows,) float64, strictly increasing
    image: Curve
    depth: Curve | None

    @property
    def rows(self) -> int:
        return int(self.index.shape[0])


@dataclass
class _Table:
    """One index and the channels on it (a LAS file, a DLIS frame, an HDF5/NPZ file)."""

    label: str
    well: str
    index_name: str
    index_unit: str | None
    channels: dict[str, tuple[str | None, int | None]]  # name -> (unit, values per row; None: N-D)
    load_index: Callable[[], np.ndarray]
    load: Callable[[str], np.ndarray]
    # Arrays that are not channels on this index, and why (HDF5/NPZ: a row count not the index's).
    unusable: dict[str, str] = field(default_factory=dict)

    def describe(self) -> str:
        names = ", ".join(f"{n}[{k}]" if k and k > 1 else n for n, (_, k) in self.channels.items())
        text = f"{self.label}: {names or '(none)'}" if self.label else names or "(none)"
        if self.unusable:
            text += "; not channels on this index: " + ", ".join(
                f"{n} ({why})" for n, why in self.unusable.items()
            )
        return text


# --- per-format readers: a context manager yielding the file's tables -------------------------


@contextmanager
def _las_tables(path: Path) -> Iterator[list[_Table]]:
    import lasio

    try:
        with _library_logging(path):
            las = lasio.read(str(path), ignore_header_errors=False)
    except Exception as exc:  # lasio raises many types for malformed files
        cut = _las_cut_mid_row(path, exc) or (None if _las_has_data(path) else LAS_CUT_IN_HEADER)
        if cut:
            raise SourceError(path, cut) from None
        raise SourceError(path, f"not a readable LAS file ({type(exc).__name__}: {exc})") from None
    if not las.curves or len(las.curves[0].data) == 0:
        if not _las_has_data(path):
            raise SourceError(path, LAS_CUT_IN_HEADER)
        raise SourceError(
            path,
            "no data rows (the ~A section is empty)" if las.curves else "LAS file has no curves",
        )
    index_curve = las.curves[0]
    try:
        well = str(las.well["WELL"].value).strip()
    except KeyError:
        well = ""
    channels: dict[str, tuple[str | None, int | None]] = {
        str(c.mnemonic): (c.unit, 1) for c in las.curves[1:]
    }
    yield [
        _Table(
            label="",
            well=well,
            index_name=index_curve.mnemonic,
            index_unit=index_curve.unit or _las_step_unit(las),
            channels=channels,
            load_index=lambda: np.asarray(index_curve.data, dtype=np.float64),
            load=lambda name: np.asarray(las.curves[name].data, dtype=np.float64),
        )
    ]


LAS_CUT_IN_HEADER = "cut short: the file ends in its header (no ~A section, no data rows)"
# lasio's words for an ~A section whose values do not fill whole rows
_LAS_RESHAPE = re.compile(r"Cannot reshape ~A data size \((\d+),\) into (\d+) columns")


def _las_cut_mid_row(path: Path, exc: Exception) -> str | None:
    """What lasio's "Cannot reshape ~A data size (N,) into K columns" means, or None for other
    errors: the file ends inside its last row (an interrupted copy), or some row lacks values."""
    m = _LAS_RESHAPE.search(str(exc))
    if m is None:
        return None
    values, columns = int(m.group(1)), int(m.group(2))
    left = values % columns
    if left and len(_last_line(path).split()) == left:
        return (
            f"cut short: the ~A section ends mid-row ({left} of {columns} values in its last row)"
        )
    return f"the ~A section's {values} values are not whole rows of {columns} (a row lacks values)"


def _las_has_data(path: Path) -> bool:
    """Whether a LAS file has its ~A (data) section; without it, the file ends in its header."""
    try:
        with open(path, "rb") as f:
            return any(line.lstrip().upper().startswith(b"~A") for line in f)
    except OSError:
        return True  # unknown: the reader's own error stands


def _last_line(path: Path, tail: int = 65536) -> str:
    """The last non-blank line of a text file (read from its last ``tail`` bytes)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            f.seek(max(f.tell() - tail, 0))
            lines = f.read().decode("latin-1").splitlines()
    except OSError:
        return ""
    return next((line for line in reversed(lines) if line.strip()), "")


def _las_step_unit(las: Any) -> str | None:
    """The unit of STRT/STOP/STEP: LAS 2.0 gives the index unit there too, and some files only
    there (``DEPT.   :`` on the ~C line)."""
    units = [las.well[k].unit for k in ("STRT", "STOP", "STEP") if k in las.well]
    return next((u for u in units if u), None)


class _LibraryRecords(logging.Handler):
    """lasio (and dlisio) log through loggers without a handler, so Python's last-resort handler
    printed their warnings as bare stderr lines. This forwards them to our logger, naming the file:
    notes about lasio's own parser choice at debug level, the rest at the level the library gave."""

    _NOTES = ("Only engine='normal' can read wrapped files",)  # lasio then uses that engine itself

    def __init__(self, path: Path, library: str = "lasio") -> None:
        super().__init__()
        self.path = path
        self.library = library

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        level = logging.DEBUG if message in self._NOTES else record.levelno
        log.log(level, "%s: %s: %s", self.path, self.library, message)


@contextmanager
def _library_logging(path: Path, library: str = "lasio") -> Iterator[None]:
    lib_log = logging.getLogger(library)
    handler, propagate = _LibraryRecords(path, library), lib_log.propagate
    lib_log.addHandler(handler)
    lib_log.propagate = False
    try:
        yield
    finally:
        lib_log.removeHandler(handler)
        lib_log.propagate = propagate


def _dlisio_problem(exc: Exception) -> str:
    """dlisio's error as one short line. Its messages are a report over several lines ("Problem:
    File truncated in Logical Record Segment", "Where:", "Severity:", "Action taken:", "Debug
    info:" with byte offsets): the problem is what a user needs."""
    text = str(exc)
    m = re.search(
        r"Problem:\s*(.*?)\s*(?:Where:|Severity:|Action taken:|Debug info:|$)", text, re.S
    )
    if m and m.group(1):
        return " ".join(m.group(1).split())
    return " ".join(f"{type(exc).__name__}: {text}".split())


@contextmanager
def _dlis_tables(path: Path) -> Iterator[list[_Table]]:
    from dlisio import dlis

    try:
        files = dlis.load(str(path))
    except Exception as exc:  # dlisio raises RuntimeError/OSError/ValueError for bad files
        raise SourceError(path, f"not a readable DLIS file ({_dlisio_problem(exc)})") from None
    with files, _library_logging(path, "dlisio"):
        tables: list[_Table] = []
        for lf in files:
            wells = [str(o.well_name).strip() for o in lf.origins if o.well_name]
            for frame in lf.frames:
                chans = list(frame.channels)
                if not chans:
                    continue
                try:
                    # The names frame.curves() gives: the mnemonic, or NAME.origin.copy where one
                    # mnemonic is on several channels of the frame (dlisio's own example: TIME).
                    labels = list(frame.dtype().names[1:])
                except ValueError as exc:  # a channel the file does not define (a broken link)
                    raise SourceError(path, f"frame {frame.name}: {exc}") from None
                # With an index type the first channel is the index; without, the frame number.
                indexed = frame.index_type is not None
                index_name = labels[0] if indexed else "FRAMENO"
                index_unit = chans[0].units if indexed else None
                catalogue: dict[str, tuple[str | None, int | None]] = {}
                for label, c in list(zip(labels, chans))[1 if indexed else 0 :]:
                    dims = list(c.dimension or [1])
                    catalogue[label] = (c.units, dims[0] if len(dims) == 1 else None)
                tables.append(
                    _Table(
                        label=f"frame {frame.name}",
                        well=wells[0] if wells else "",
                        index_name=str(index_name),
                        index_unit=index_unit,
                        channels=catalogue,
                        load_index=_dlis_loader(frame, index_name),
                        load=_dlis_loader(frame, None),
                    )
                )
        yield tables


def _dlis_loader(frame: object, fixed: str | None) -> Callable[..., np.ndarray]:
    cache: dict[str, np.ndarray] = {}

    def load(name: str | None = None) -> np.ndarray:
        if "curves" not in cache:
            cache["curves"] = frame.curves()  # type: ignore[attr-defined]
        key = fixed if fixed is not None else name
        return np.asarray(cache["curves"][key], dtype=np.float64)

    return load


@contextmanager
def _hdf5_tables(path: Path) -> Iterator[list[_Table]]:
    import h5py

    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise SourceError(path, f"not a readable HDF5 file ({exc})") from None
    with f:
        if INDEX_NAME not in f or not isinstance(f[INDEX_NAME], h5py.Dataset):
            raise SourceError(path, f"no '{INDEX_NAME}' dataset (the index of an HDF5 log)")
        rows = f[INDEX_NAME].shape[0] if f[INDEX_NAME].ndim == 1 else -1
        found: dict[str, tuple[str | None, int | None]] = {}
        unusable: dict[str, str] = {}

        def visit(name: str, obj: Any) -> None:
            if name == INDEX_NAME or not isinstance(obj, h5py.Dataset):
                return
            why = _why_not_a_channel(obj.shape, obj.dtype, rows)
            if why is None:
                found[name] = (_attr_unit(obj.attrs), 1 if obj.ndim == 1 else obj.shape[1])
            elif obj.dtype.kind in "fiu":
                unusable[name] = why

        f.visititems(visit)
        well = f.attrs.get("well", "")
        yield [
            _Table(
                label="",
                well=well.decode() if isinstance(well, bytes) else str(well),
                index_name=INDEX_NAME,
                index_unit=_attr_unit(f[INDEX_NAME].attrs),
                channels=found,
                load_index=lambda: np.asarray(f[INDEX_NAME][()], dtype=np.float64),
                load=lambda name: np.asarray(f[name][()], dtype=np.float64),
                unusable=unusable,
            )
        ]


def _why_not_a_channel(shape: tuple[int, ...], dtype: np.dtype, rows: int) -> str | None:
    """None when an array of this shape and dtype is a channel on an index of ``rows`` rows."""
    if dtype.kind not in "fiu":
        return f"{dtype} values, not numbers"
    if len(shape) not in (1, 2):
        return f"shape {shape}: need (rows,) or (rows, sectors)"
    if shape[0] != rows:
        return f"{shape[0]} rows, the index {INDEX_NAME!r} has {rows}"
    return None


def _attr_unit(attrs: object) -> str | None:
    for key in ("units", "unit"):
        if key in attrs:  # type: ignore[operator]
            v = attrs[key]  # type: ignore[index]
            return v.decode() if isinstance(v, bytes) else str(v)
    return None


@contextmanager
def _npz_tables(path: Path) -> Iterator[list[_Table]]:
    try:
        npz = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise SourceError(path, f"not a readable NPZ file ({exc})") from None
    with npz:
        if INDEX_NAME not in npz.files:
            raise SourceError(path, f"no '{INDEX_NAME}' array (the index of an NPZ log)")
        units: dict[str, str] = {}
        if "units" in npz.files:
            try:
                units = dict(json.loads(str(npz["units"][()])))
            except (ValueError, TypeError) as exc:
                raise SourceError(path, f"'units' is not a JSON object string ({exc})") from None
        well = str(npz["well"][()]) if "well" in npz.files else ""
        index = np.asarray(npz[INDEX_NAME], dtype=np.float64)
        channels: dict[str, tuple[str | None, int | None]] = {}
        arrays: dict[str, np.ndarray] = {}
        unusable: dict[str, str] = {}
        for name in npz.files:
            if name in (INDEX_NAME, "units", "well"):
                continue
            arr = npz[name]
            why = _why_not_a_channel(arr.shape, arr.dtype, index.shape[0])
            if why is None:
                arrays[name] = arr
                channels[name] = (units.get(name), 1 if arr.ndim == 1 else arr.shape[1])
            elif arr.dtype.kind in "fiu":
                unusable[name] = why
        yield [
            _Table(
                label="",
                well=well,
                index_name=INDEX_NAME,
                index_unit=units.get(INDEX_NAME),
                channels=channels,
                load_index=lambda: index,
                load=lambda name: np.asarray(arrays[name], dtype=np.float64),
                unusable=unusable,
            )
        ]


READERS: dict[str, Callable[[Path], AbstractContextManager[list[_Table]]]] = {
    ".las": _las_tables,
    ".dlis": _dlis_tables,
    ".h5": _hdf5_tables,
    ".hdf5": _hdf5_tables,
    ".npz": _npz_tables,
}
FORMAT_NAMES = {".las": "las", ".dlis": "dlis", ".h5": "hdf5", ".hdf5": "hdf5", ".npz": "npz"}


def is_well_log(path: Path) -> bool:
    return path.suffix.lower() in READERS


# --- the common part ----------------------------------------------------------------------------


def read_well_log(
    path: str | Path, image: str | None, depth: str | None = None, *, negative_invalid: bool = True
) -> WellLog:
    """Read the ``image`` (and optional exogenous ``depth``) channel of one log file.

    ``image`` None picks the file's only image candidate: a multi-sector channel or a family of
    numbered columns (see :func:`_image_candidates`). Raises :class:`SourceError` naming the file
    when a channel is absent (the message lists the channels present) or there is no single
    candidate (the message lists them with the ``--image`` to give), the index is not monotonic or
    has nulls, or the index or exogenous channel has a unit that is not known.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in READERS:
        raise SourceError(path, f"unknown log format {suffix!r}; known: {', '.join(READERS)}")
    try:
        with READERS[suffix](path) as tables:
            table = _pick_table(path, tables, image, depth)
            image_name = image if image is not None else _only_image_channel(path, table, depth)
            image_curve = _load_curve(path, table, image_name, negative_invalid, min_sectors=2)
            depth_curve = None
            if depth is not None:
                depth_curve = _load_curve(path, table, depth, negative_invalid, min_sectors=1)
                if parse_unit(depth_curve.unit) is None:
                    raise SourceError(
                        path,
                        f"unknown unit {depth_curve.unit!r} of channel {depth!r}; known: "
                        f"{', '.join(known_units())}",
                    )
            index = table.load_index().reshape(-1)
            index_unit = parse_unit(table.index_unit)
            if index_unit is None or UNIT_FACTORS.get(index_unit[0], ("",))[0] not in (
                "length",
                "time",
            ):
                raise SourceError(
                    path,
                    f"unknown unit {table.index_unit!r} of index {table.index_name!r} "
                    "(need a length such as m, ft, 0.1 in, or a time such as ms)",
                )
    except (OSError, ValueError, TypeError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        # Lazy reads (NPZ members, HDF5 chunks) fail here on a truncated or corrupt file.
        reason = " ".join(f"{type(exc).__name__}: {exc}".split())
        raise SourceError(
            path, f"not a readable {FORMAT_NAMES[suffix].upper()} file ({reason})"
        ) from None
    if not np.all(np.isfinite(index)) or np.any(np.isin(index, NULL_VALUES)):
        bad = int(np.flatnonzero(~np.isfinite(index) | np.isin(index, NULL_VALUES))[0])
        raise SourceError(path, f"index {table.index_name!r} has a null at row {bad}")
    index = index * index_unit[1]  # nulls are values in the file's unit: scale after the check
    order = _monotonic_order(path, table.index_name, index)
    image_curve = _reordered(image_curve, order)
    if depth_curve is not None:
        unit, factor = parse_unit(depth_curve.unit)  # type: ignore[misc]
        depth_curve = _reordered(
            Curve(depth_curve.request, depth_curve.members, unit, depth_curve.values * factor),
            order,
        )
    return WellLog(
        path=str(path),
        format=FORMAT_NAMES[suffix],
        well=table.well or path.stem,
        frame=table.label,
        index_name=table.index_name,
        index_unit=index_unit[0],
        index=index[order] if order is not None else index,
        image=image_curve,
        depth=depth_curve,
    )


def _pick_table(path: Path, tables: list[_Table], image: str | None, depth: str | None) -> _Table:
    """The first table holding every requested channel (and, without ``image``, an image
    candidate); else an error saying what is missing and listing what is there."""
    if not tables:
        raise SourceError(path, "no frames with channels")
    wanted = [n for n in (image, depth) if n is not None]
    for t in tables:
        if all(_resolve(t, n) for n in wanted) and (
            image is not None or _image_candidates(t, depth)
        ):
            return t
    present = "; ".join(t.describe() for t in tables)
    missing = [n for n in wanted if not any(_resolve(t, n) for t in tables)]
    for name in missing:
        for t in tables:
            why = _unusable(t, name)
            if why is not None:
                raise SourceError(path, f"channel {why}")
    if missing:
        what = " and ".join(repr(n) for n in missing)
        raise SourceError(path, f"no channel {what}; channels present: {present}")
    if image is None:
        off_index = [f"{n!r} has {why}" for t in tables for n, why in t.unusable.items()]
        if off_index and not any(t.channels for t in tables):
            raise SourceError(path, f"no channel on the index: {'; '.join(off_index)}")
        raise SourceError(
            path,
            "no image channel to pick: no multi-sector channel and no family of "
            f"{MIN_FAMILY_SECTORS} or more numbered columns (like ABDC1M..ABDC16M); name one "
            f"with --image (a pattern like 'NAME{{}}' stacks numbered columns); channels "
            f"present: {present}",
        )
    raise SourceError(
        path, f"channels {image!r} and {depth!r} are not on one index; channels present: {present}"
    )


def _unusable(table: _Table, request: str) -> str | None:
    """``'NAME' has WHY`` when ``request`` names an array that is not a channel on the index."""
    folded = [n for n in table.unusable if n.lower() == request.lower()]
    name = request if request in table.unusable else folded[0] if len(folded) == 1 else None
    return None if name is None else f"{name!r} has {table.unusable[name]}"


def _image_candidates(table: _Table, depth: str | None = None) -> dict[str, int]:
    """Requests that could be the image, with their sector counts: every multi-sector channel, and
    every family of numbered scalar columns (``ABDC{}M`` for ABDC1M..ABDC16M) numbered without gaps
    from 0 or 1, with at least :data:`MIN_FAMILY_SECTORS` members; not the channels ``depth`` (the
    exogenous channel's request) names."""
    taken = set(_resolve(table, depth)) if depth is not None else set()
    out = {
        n: k for n, (_, k) in table.channels.items() if k is not None and k > 1 and n not in taken
    }
    seen: set[tuple[str, ...]] = set()
    for name, (_, k) in table.channels.items():
        if k != 1:
            continue
        for m in re.finditer(r"\d+", name):
            pattern = f"{name[: m.start()]}{{}}{name[m.end() :]}"
            sectors = _sectors(table, pattern)
            members = tuple(n for _, n in sectors)
            if members in seen or len(members) < MIN_FAMILY_SECTORS:
                continue
            seen.add(members)
            numbers = [i for i, _ in sectors]
            first = numbers[0]
            scalar = all(table.channels[n][1] == 1 for n in members) and not taken & set(members)
            if scalar and first in (0, 1) and numbers == list(range(first, first + len(numbers))):
                out[pattern] = len(members)
    return out


def _only_image_channel(path: Path, table: _Table, depth: str | None) -> str:
    candidates = _image_candidates(table, depth)
    if len(candidates) != 1:
        listed = ", ".join(f"{n!r} ({k} sectors)" for n, k in candidates.items())
        raise SourceError(
            path,
            f"{len(candidates)} candidate image channels: {listed or 'none'}; choose one with "
            f"--image, e.g. --image '{next(iter(candidates), 'NAME{}')}'",
        )
    return next(iter(candidates))


def _resolve(table: _Table, request: str) -> list[str]:
    """Channel names behind ``request``: one exact (or case-insensitive) name, or a ``{}`` pattern."""
    if "{}" in request:
        return [name for _, name in _sectors(table, request)]
    if request in table.channels:
        return [request]
    folded = [n for n in table.channels if n.lower() == request.lower()]
    return folded if len(folded) == 1 else []


def _sectors(table: _Table, pattern: str) -> list[tuple[int, str]]:
    """(sector number, channel name) of every channel matching ``pattern``, by number."""
    head, _, tail = pattern.partition("{}")
    rx = re.compile(re.escape(head) + r"(\d+)" + re.escape(tail), re.IGNORECASE)
    return sorted((int(m.group(1)), name) for name in table.channels if (m := rx.fullmatch(name)))


def _load_curve(
    path: Path, table: _Table, request: str, negative_invalid: bool, *, min_sectors: int
) -> Curve:
    names = _resolve(table, request)
    if "{}" in request:
        numbers = [k for k, _ in _sectors(table, request)]
        if len(set(numbers)) != len(numbers):
            raise SourceError(
                path, f"pattern {request!r} matches one sector twice: {', '.join(names)}"
            )
        wide = [n for n in names if table.channels[n][1] != 1]
        if wide:
            raise SourceError(
                path, f"pattern {request!r} matches non-scalar channels {', '.join(wide)}"
            )
        units = {table.channels[n][0] or "" for n in names}
        if len(units) > 1:
            raise SourceError(path, f"sectors of {request!r} disagree on units: {sorted(units)}")
        values = np.column_stack([table.load(n).reshape(-1) for n in names])
    else:
        (name,) = names
        k = table.channels[name][1]
        if k is None:
            raise SourceError(
                path,
                f"channel {name!r} has more than one axis per row; need one azimuth vector per depth",
            )
        values = table.load(name).reshape(-1, k)
    if values.shape[1] < min_sectors:
        raise SourceError(
            path,
            f"channel {request!r} has {values.shape[1]} value per depth, an image needs "
            f"{min_sectors} or more azimuth sectors (a pattern like 'ABDC{{}}M' stacks sector columns)",
        )
    unit = table.channels[names[0]][0] or ""
    parsed = parse_unit(unit)
    return Curve(
        request,
        tuple(names),
        parsed[0] if parsed and parsed[1] == 1.0 else unit,
        mask_nulls(values, negative_invalid=negative_invalid),
    )


def mask_nulls(values: np.ndarray, *, negative_invalid: bool = True) -> np.ndarray:
    """A float64 copy with every null (-999.25, -9999, NaN/inf, optionally < 0) set to NaN."""
    out = np.array(values, dtype=np.float64, copy=True)
    bad = ~np.isfinite(out) | np.isin(out, NULL_VALUES)
    if negative_invalid:
        bad |= out < 0
    out[bad] = np.nan
    return out


def _monotonic_order(path: Path, name: str, index: np.ndarray) -> np.ndarray | None:
    """None when already increasing, a reversing slice when decreasing; else SourceError."""
    if index.size < 2:
        return None
    step = np.diff(index)
    if np.all(step > 0):
        return None
    if np.all(step < 0):
        return np.arange(index.size - 1, -1, -1)
    bad = int(np.flatnonzero(step <= 0)[0] if step[0] > 0 else np.flatnonzero(step >= 0)[0])
    raise SourceError(
        path, f"index {name!r} is not monotonic (row {bad}: {index[bad]:g} -> {index[bad + 1]:g})"
    )


def _reordered(curve: Curve, order: np.ndarray | None) -> Curve:
    if order is None:
        return curve
    return Curve(curve.request, curve.members, curve.unit, curve.values[order])
