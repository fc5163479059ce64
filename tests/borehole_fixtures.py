"""Builders of small borehole image logs in their real formats: DLIS (written by dliswriter, 2-D image
channels), LAS 2.0 (lasio, one column per azimuth sector), HDF5 and NPZ.

Every value (index, amplitude, transit time) is a multiple of 1/8, exact in float32, float64 and the
LAS text, so the same log written in every format must read back to the same numbers.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

WELL = "TESTWELL"
IMAGE, DEPTH = "AMP", "TT"  # channel names (LAS: AMP1..AMPn, TT1..TTm)
IMAGE_UNIT, DEPTH_UNIT, INDEX_UNIT = "dB", "us", "m"


@dataclass(frozen=True)
class Log:
    """index (rows,), image (rows, sectors) and tt (rows, depth sectors) with NaN/-999.25/... nulls."""

    index: np.ndarray
    image: np.ndarray
    tt: np.ndarray
    well: str = WELL
    index_unit: str = INDEX_UNIT
    image_unit: str = IMAGE_UNIT
    depth_unit: str = DEPTH_UNIT


def make_log(
    rows: int = 300,
    sectors: int = 16,
    depth_sectors: int = 8,
    *,
    seed: int = 0,
    nulls: bool = True,
    top: float = 1000.0,
) -> Log:
    """A sinusoidal bed plus noise; nulls of every kind at known places when ``nulls``.

    Nulls: rows 10-13 sector 3 NaN, rows 20-21 all sectors -999.25, row 30 sector 0 -9999, rows 40-49
    sectors 6-7 a negative pad gap (-1); transit time NaN in rows 50-52 sector 1.
    """
    rng = np.random.default_rng(seed)
    r = np.arange(rows)[:, None]
    az = (np.arange(sectors)[None, :] + 0.5) * 2 * np.pi / sectors
    image: np.ndarray = 40 + 20 * np.sin(az + r / 15.0) + rng.integers(-8, 9, (rows, sectors))
    image = np.round(image * 8) / 8
    daz = (np.arange(depth_sectors)[None, :] + 0.5) * 2 * np.pi / depth_sectors
    tt = np.round((60 + 10 * np.cos(daz)) * 8) / 8 + rng.integers(0, 5, (rows, depth_sectors)) / 8
    if nulls:
        image[10:14, 3] = np.nan
        image[20:22, :] = -999.25
        image[30, 0] = -9999.0
        image[40:50, 6:8] = -1.0
        tt[50:53, 1] = np.nan
    index = top + 0.125 * np.arange(rows)
    return Log(index.astype(np.float64), image.astype(np.float64), tt.astype(np.float64))


def invalid_mask(values: np.ndarray) -> np.ndarray:
    """Where a raw array holds a null of any kind (what the converter must treat as invalid)."""
    return ~np.isfinite(values) | np.isin(values, (-999.25, -9999.0)) | (values < 0)


def write_las(log: Log, path: Path) -> Path:
    import lasio

    las = lasio.LASFile()
    las.well["WELL"].value = log.well
    las.well["NULL"].value = -999.25
    las.append_curve("DEPT", log.index, unit=log.index_unit)
    for i in range(log.image.shape[1]):
        las.append_curve(f"{IMAGE}{i + 1}", log.image[:, i], unit=log.image_unit)
    for i in range(log.tt.shape[1]):
        las.append_curve(f"{DEPTH}{i + 1}", log.tt[:, i], unit=log.depth_unit)
    with open(path, "w") as f:
        las.write(f, version=2.0, fmt="%.5f")
    return path


def write_dlis(log: Log, path: Path) -> Path:
    from dliswriter import DLISFile

    df = DLISFile()
    lf = df.add_logical_file()
    lf.add_origin("ORIGIN", well_name=log.well)
    index = lf.add_channel("DEPT", data=log.index, units=log.index_unit)
    image = lf.add_channel(IMAGE, data=log.image, units=log.image_unit)
    tt = lf.add_channel(DEPTH, data=log.tt, units=log.depth_unit)
    lf.add_frame("MAIN", channels=[index, image, tt], index_type="BOREHOLE-DEPTH")
    # The default 4 GiB output buffer takes ~20 s to allocate; a small one is instant.
    df.write(str(path), output_chunk_size=1 << 20)
    return path


def write_hdf5(log: Log, path: Path) -> Path:
    import h5py

    with h5py.File(path, "w") as f:
        f.attrs["well"] = log.well
        f.create_dataset("depth", data=log.index).attrs["units"] = log.index_unit
        f.create_dataset(IMAGE, data=log.image).attrs["units"] = log.image_unit
        f.create_dataset(DEPTH, data=log.tt).attrs["units"] = log.depth_unit
    return path


def write_npz(log: Log, path: Path) -> Path:
    units = {"depth": log.index_unit, IMAGE: log.image_unit, DEPTH: log.depth_unit}
    np.savez(
        path,
        depth=log.index,
        **{IMAGE: log.image, DEPTH: log.tt},  # type: ignore[arg-type]
        units=np.array(json.dumps(units)),
        well=np.array(log.well),
    )
    return path


WRITERS: dict[str, Callable[[Log, Path], Path]] = {
    "las": write_las,
    "dlis": write_dlis,
    "hdf5": write_hdf5,
    "npz": write_npz,
}
SUFFIX = {"las": ".las", "dlis": ".dlis", "hdf5": ".h5", "npz": ".npz"}


def channel_names(fmt: str) -> tuple[str, str]:
    """(image, depth) channel requests for a format: LAS stacks sector columns by pattern."""
    return (f"{IMAGE}{{}}", f"{DEPTH}{{}}") if fmt == "las" else (IMAGE, DEPTH)


def write_log(log: Log, folder: Path, fmt: str, stem: str = "well") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return WRITERS[fmt](log, folder / f"{stem}{SUFFIX[fmt]}")


def with_rows(log: Log, rows: slice | np.ndarray) -> Log:
    return replace(log, index=log.index[rows], image=log.image[rows], tt=log.tt[rows])


def write_breakouts(
    path: Path,
    rows: list[tuple[float, float, float, float]],
    *,
    header: bool = True,
    wells: list[str] | None = None,
) -> Path:
    lines = []
    if header:
        lines.append(
            "depth_top,depth_bottom,azimuth_centre,azimuth_width" + (",well" if wells else "")
        )
    for i, r in enumerate(rows):
        lines.append(",".join(f"{v:g}" for v in r) + (f",{wells[i]}" if wells else ""))
    path.write_text("\n".join(lines) + "\n")
    return path
