"""Conversion throughput of `datakit convert synthetic` with 1 and 2 workers (samples/s).

    python bench/convert.py --num 128 --size 320x240

Runs each configuration in turn and reports wall-clock samples/s, samples per CPU-second (per core:
the figure that does not depend on what else the machine is doing) and the 2-worker/1-worker
wall-clock ratio (the scaling figure, meaningful only on an otherwise idle machine).
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def run(num: int, size: str, workers: int, out: str) -> tuple[float, float]:
    """(wall-clock samples/s, samples per CPU-second) of one conversion."""
    shutil.rmtree(out, ignore_errors=True)
    c0 = _children_cpu()
    t0 = time.perf_counter()
    subprocess.run(
        [
            sys.executable,
            "-m",
            "datakit",
            "convert",
            "synthetic",
            out,
            "--num",
            str(num),
            "--size",
            size,
            "--shard-size",
            "64",
            "--workers",
            str(workers),
            "--no-progress",
        ],
        check=True,
        capture_output=True,
        # One BLAS/OpenMP thread per process, as the writer's workers run: N workers = N cores.
        env={**os.environ, **dict.fromkeys(("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS"), "1")},
    )
    wall = time.perf_counter() - t0
    return num / wall, num / (_children_cpu() - c0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--num", type=int, default=128)
    ap.add_argument("--size", default="320x240")
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="bench-convert-")
    try:
        load0 = os.getloadavg()[0]
        rates: dict[int, tuple[float, float]] = {}
        for w in (1, 2):
            runs = [
                run(args.num, args.size, w, os.path.join(tmp, f"w{w}")) for _ in range(args.repeats)
            ]
            rates[w] = (max(r[0] for r in runs), max(r[1] for r in runs))
        print(
            "| size | samples | workers=1 samples/s | workers=2 samples/s | 2w/1w | samples per CPU-s (1w) | load before/after |"
        )
        print("|---|---|---|---|---|---|---|")
        print(
            f"| {args.size} | {args.num} | {rates[1][0]:.1f} | {rates[2][0]:.1f} | "
            f"{rates[2][0] / rates[1][0]:.2f}x | {rates[1][1]:.1f} | {load0:.1f} / {os.getloadavg()[0]:.1f} |"
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
