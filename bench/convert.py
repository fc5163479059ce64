"""Conversion throughput of `datakit convert synthetic` with 1 and 2 workers (samples/s).

    python bench/convert.py --num 128 --size 320x240

Runs each configuration in the same process sequence, reports samples/s and the 2-worker/1-worker
ratio (the scaling figure; absolute rates depend on the machine and its load).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time


def run(num: int, size: str, workers: int, out: str) -> float:
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "datakit", "convert", "synthetic", out, "--num", str(num), "--size", size,
         "--shard-size", "64", "--workers", str(workers), "--no-progress"],
        check=True, capture_output=True,
    )
    return num / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--num", type=int, default=128)
    ap.add_argument("--size", default="320x240")
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="bench-convert-")
    try:
        rates: dict[int, float] = {}
        for w in (1, 2):
            rates[w] = max(run(args.num, args.size, w, os.path.join(tmp, f"w{w}")) for _ in range(args.repeats))
        print(f"| size | samples | workers=1 samples/s | workers=2 samples/s | ratio |")
        print(f"|---|---|---|---|---|")
        print(f"| {args.size} | {args.num} | {rates[1]:.1f} | {rates[2]:.1f} | {rates[2] / rates[1]:.2f}x |")
        print(f"load average after: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
