"""Conversion throughput of `datakit convert borehole`, per source format, against a floor.

    python bench/borehole.py --rows 20000 --sectors 64 --repeats 2

Writes one synthetic log (rows x sectors amplitude + 8-sector transit time) as LAS, DLIS, HDF5 and NPZ
(and takes the real LWD LAS fixture when ../shared/fixtures is present); for each, in the same run:
  - library load: the format library alone (lasio.read, dlisio frame.curves(), h5py, np.load);
  - read_well_log: the library + null masking, index sorting, unit checks, sector stacking;
  - encode: `schema.encode` of the produced samples (JPEG 95 + 16-bit PNG);
  - convert: the whole conversion through the shard writer (1 worker). It reads a file twice (once
    for the per-well statistics of `info()`, once to cut windows), except in a single-well run like
    this one, which keeps the survey's parse.
The baseline ("floor") is library load + encode, the work no converter can avoid; convert / floor is
our overhead (resampling, scaling, tar + sha256, manifest). Times are CPU seconds of this process,
best of --repeats: everything runs in-process on one core, and on a shared machine CPU time is what
the work costs, while wall time mostly measures the neighbours.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

from converters.borehole import BoreholeConfig, BoreholeConverter, num_windows  # noqa: E402
from converters.welllogs import read_well_log  # noqa: E402
from datakit import schema  # noqa: E402
from datakit.schema import Sample  # noqa: E402
from datakit.writer import ConvertConfig, convert  # noqa: E402
from tests.borehole_fixtures import channel_names, make_log, write_log  # noqa: E402

LWD = REPO.parent / "shared" / "fixtures" / "las_lwd_image" / "P11-A-02_Composite_MEM_Image_NF.las"


def library_load(fmt: str, path: Path) -> None:
    """The baseline: what the format's own library needs to hand over every value."""
    if fmt == "las":
        import lasio

        lasio.read(str(path))
    elif fmt == "dlis":
        from dlisio import dlis

        with dlis.load(str(path)) as files:
            for lf in files:
                for frame in lf.frames:
                    frame.curves()
    elif fmt == "hdf5":
        import h5py

        with h5py.File(path, "r") as f:
            for name in f:
                f[name][()]
    else:
        with np.load(path) as z:
            for name in z.files:
                z[name]


def best(fn: Callable[[], object], repeats: int) -> float:
    """Least CPU time of this process over ``repeats`` runs (everything here runs in-process on one
    core, so CPU time is the work done, and it is far less disturbed by other jobs than wall time)."""
    times = []
    for _ in range(repeats):
        t0 = time.process_time()
        fn()
        times.append(time.process_time() - t0)
    return min(times)


def encode_all(samples: list[Sample]) -> None:
    for s in samples:
        schema.encode(s)


def convert_once(path: Path, out: Path, image: str, depth: str | None) -> None:
    shutil.rmtree(out, ignore_errors=True)
    conv = BoreholeConverter(BoreholeConfig(src=str(path), image=image, depth=depth))
    convert(conv, str(out), ConvertConfig(progress=False, shard_size=500))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=20000)
    ap.add_argument("--sectors", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-borehole-"))
    try:
        log = make_log(rows=args.rows, sectors=args.sectors)
        windows = num_windows(args.rows, 256, 128)
        print(
            f"log: {args.rows} rows x {args.sectors} sectors (+8 transit time); {windows} windows"
        )
        print(
            "| format | MB | library load CPU s | read_well_log CPU s | encode CPU s | convert CPU s "
            "| windows/s | rows/s | convert / (load + encode) |"
        )
        print("|---|---|---|---|---|---|---|---|---|")
        cases = [
            (fmt, write_log(log, tmp / fmt, fmt), *channel_names(fmt))
            for fmt in ("las", "dlis", "hdf5", "npz")
        ]
        if LWD.exists():
            cases.append(("real LWD LAS (7361 x 16)", LWD, "ABDC{}M", "GRAS{}M"))
        for fmt, path, image, depth in cases:
            lib_fmt = "las" if fmt.startswith("real") else fmt
            conv = BoreholeConverter(BoreholeConfig(src=str(path), image=image, depth=depth))
            produced = [s for u in conv.units() for s in conv.convert(u) if isinstance(s, Sample)]
            t_lib = best(partial(library_load, lib_fmt, path), args.repeats)
            t_read = best(partial(read_well_log, path, image, depth), args.repeats)
            t_enc = best(partial(encode_all, produced), args.repeats)
            t_conv = best(partial(convert_once, path, tmp / "out", image, depth), args.repeats)
            rows = read_well_log(path, image, depth).rows
            n = num_windows(rows, 256, 128)
            mb = path.stat().st_size / 1e6
            print(
                f"| {fmt} | {mb:.1f} | {t_lib:.2f} | {t_read:.2f} | {t_enc:.2f} | {t_conv:.2f} "
                f"| {n / t_conv:.1f} | {rows / t_conv:.0f} | {t_conv / (t_lib + t_enc):.2f}x |"
            )
        print(f"load average after: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
