"""Streaming shards from a local S3 server against reading the same shards from disk, and the
reader's memory over long streams.

    .venv/bin/python bench/storage.py [--num 512] [--size 320x240] [--shard-size 32] [--repeats 3]

One synthetic conversion to a folder; the same shards and manifest uploaded to a SeaweedFS
``weed mini`` on 127.0.0.1 (tests/s3server.py, the test server). In one process, disk and S3 passes
interleaved, best of ``--repeats``:

- ``decoded``: ``datakit.reader.pipeline(urls)`` samples/s (tar + JPEG/PNG decode: what a loader
  worker pays per sample before the views);
- ``raw``: ``pipeline(urls, decode=False)`` samples/s and MB/s (tar bytes only: the storage path alone);
- ``cached``: S3 through ``--cache-dir``, second pass (served from the local copy);
- the server's ceiling: boto3 ``GetObject`` of the same objects, bytes only, one after another.

ratio = S3 rate / disk rate (disk shards are in the page cache after the first pass). Memory: peak
RSS (/proc/self/statm, sampled every 8 samples) of a fresh process that streams N shard reads
from S3 (decoded), for two N: a bounded reader shows the same peak for both.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from datakit.reader import open_dataset, pipeline  # noqa: E402
from datakit.storage import Location, StorageConfig  # noqa: E402
from tests.s3server import start_seaweedfs  # noqa: E402

RSS_SCRIPT = """
import json, os, sys
def rss():
    return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
import cv2, webdataset
from datakit.reader import pipeline
urls = json.loads(sys.argv[1]); n = int(sys.argv[2])
before = peak = rss(); count = 0
for count, _ in enumerate(pipeline([urls[i % len(urls)] for i in range(n)]), start=1):
    if count % 8 == 0:
        peak = max(peak, rss())
print(json.dumps({"samples": count, "rss_before_mib": before, "rss_peak_mib": max(peak, rss())}))
"""


def timed_pass(
    urls: list[str], *, decode: bool, storage: StorageConfig | None = None
) -> tuple[float, int]:
    t0 = time.perf_counter()
    n = sum(1 for _ in pipeline(urls, decode=decode, storage=storage))
    return time.perf_counter() - t0, n


def peak_rss(urls: list[str], n: int, env: dict[str, str]) -> dict[str, int]:
    out = subprocess.run(
        [sys.executable, "-c", RSS_SCRIPT, json.dumps(urls), str(n)],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--num", type=int, default=512)
    ap.add_argument("--size", default="320x240")
    ap.add_argument("--shard-size", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument(
        "--passes", type=int, default=4, help="each timed pass reads every shard this often"
    )
    ap.add_argument("--rss-reads", default="16,256", help="shard reads of the two memory runs")
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-storage-"))
    server = start_seaweedfs(work / "s3")
    try:
        os.environ.update(server.env())
        local = work / "ds"
        subprocess.run(
            [
                sys.executable,
                "-m",
                "datakit",
                "convert",
                "synthetic",
                str(local),
                "--num",
                str(args.num),
                "--size",
                args.size,
                "--shard-size",
                str(args.shard_size),
                "--workers",
                "2",
                "--no-progress",
            ],
            check=True,
            capture_output=True,
        )
        bucket = server.new_bucket("bench")
        remote = Location(f"s3://{bucket}/ds")
        for name in sorted(os.listdir(local)):
            tmp = work / f"up-{name}"
            shutil.copyfile(local / name, tmp)
            remote.put_file(str(tmp), name)
        disk_urls = open_dataset(str(local)).shard_urls() * args.passes
        s3_urls = open_dataset(remote.url).shard_urls() * args.passes
        total_bytes = sum(os.path.getsize(u) for u in disk_urls)
        total = args.num * args.passes
        cache = StorageConfig.from_env(cache_dir=str(work / "cache"))

        best: dict[str, float] = {}
        timed_pass(disk_urls, decode=True)  # page cache, imports
        timed_pass(s3_urls, decode=False, storage=cache)  # fills the cache
        for _ in range(args.repeats):
            for name, urls, decode, storage in (
                ("disk decoded", disk_urls, True, None),
                ("s3 decoded", s3_urls, True, None),
                ("disk raw", disk_urls, False, None),
                ("s3 raw", s3_urls, False, None),
                ("s3 cached decoded", s3_urls, True, cache),
            ):
                seconds, n = timed_pass(urls, decode=decode, storage=storage)
                assert n == total, (name, n)
                best[name] = min(best.get(name, float("inf")), seconds)
            # the server's ceiling: boto3 GetObject of the same objects, bytes only, no tar parsing
            client, t0 = server.client(), time.perf_counter()
            for url in s3_urls:
                client.get_object(Bucket=bucket, Key=url.split("/", 3)[3])["Body"].read()
            best["boto3 get"] = min(best.get("boto3 get", float("inf")), time.perf_counter() - t0)

        reads = [int(x) for x in args.rss_reads.split(",")]
        rss = {n: peak_rss(s3_urls[: len(s3_urls) // args.passes], n, server.env()) for n in reads}
        results = {
            "samples": args.num,
            "shards": len(disk_urls),
            "size": args.size,
            "dataset_mib": total_bytes / 2**20,
            "seconds": best,
            "samples_per_s": {k: total / v for k, v in best.items()},
            "ratio_decoded": best["disk decoded"] / best["s3 decoded"],
            "ratio_raw": best["disk raw"] / best["s3 raw"],
            "ratio_cached": best["disk decoded"] / best["s3 cached decoded"],
            "raw_mib_per_s": {
                "disk": total_bytes / 2**20 / best["disk raw"],
                "s3": total_bytes / 2**20 / best["s3 raw"],
                "boto3_get": total_bytes / 2**20 / best["boto3 get"],
            },
            "rss_mib": {str(n): r for n, r in rss.items()},
            "load_avg": os.getloadavg()[0],
        }
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)

    sps = results["samples_per_s"]
    print(
        f"{args.num} samples at {args.size} in {results['shards'] // args.passes} shards, each read "
        f"{args.passes}x a pass ({results['dataset_mib']:.1f} MiB); best of {args.repeats}; "
        f"load {results['load_avg']:.1f}"
    )
    print("| path | disk samples/s | S3 samples/s | S3 / disk |")
    print("|---|---|---|---|")
    print(
        f"| decoded (pipeline) | {sps['disk decoded']:.0f} | {sps['s3 decoded']:.0f} | "
        f"{results['ratio_decoded']:.2f} |"
    )
    print(
        f"| raw tar (decode=False) | {sps['disk raw']:.0f} ({results['raw_mib_per_s']['disk']:.0f} MiB/s) | "
        f"{sps['s3 raw']:.0f} ({results['raw_mib_per_s']['s3']:.0f} MiB/s) | {results['ratio_raw']:.2f} |"
    )
    print(
        f"| decoded, --cache-dir 2nd pass | {sps['disk decoded']:.0f} | {sps['s3 cached decoded']:.0f} | "
        f"{results['ratio_cached']:.2f} |"
    )
    print(
        f"server ceiling: boto3 GetObject of the same objects, bytes only: "
        f"{results['raw_mib_per_s']['boto3_get']:.0f} MiB/s"
    )
    print(
        "RSS streaming from S3 (after imports -> peak): "
        + ", ".join(
            f"{n} shard reads {v['rss_before_mib']:.0f} -> {v['rss_peak_mib']:.0f} MiB"
            for n, v in results["rss_mib"].items()
        )
    )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
