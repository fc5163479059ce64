"""ScanNet converter benchmark: memory on a 2 GB .sens, throughput against the usual export path and
against the codec floor, and --workers 2 against one worker. Every ratio is taken within one run.

    .venv/bin/python bench/scannet.py [--workdir /tmp/datakit-bench-scannet] [--big-gb 2] [--repeats 2]

Scans are generated in the workdir (deleted at the end unless --keep): colour from the real ScanNet
JPEGs in ../shared/fixtures when present (else textured synthetic 1296x968 JPEGs), depth like a
structured-light sensor (noise growing with range squared, holes; see tests/scannet_fixtures.py), so
that zlib and PNG do not get unrealistically smooth input.

- ours: ``datakit convert scannet`` (the writer's convert(), in a child process) at --frame-skip 1/25.
- reference: what users do today: load the whole .sens (SensorData.py, with plain reads instead of
  its per-byte struct.unpack, so the reference is faster than the original), export
  color/N.jpg, depth/N.png, pose/N.txt with PIL's defaults (colour resized to 640x480), tar the folders.
- floor: per kept frame, the bare calls ours cannot avoid, timed one by one: JPEG decode (DCT-halved),
  resize, zlib inflate, encode (JPEG q95 + 16-bit PNG + JSON, as the writer encodes).
- memory: peak RSS of each child, the largest of the process (VmHWM) and its workers (ru_maxrss);
  not the child's own ru_maxrss, which after subprocess's vfork + exec also counts this
  process's peak.
Throughput: ours and the reference interleaved, best of --repeats for each.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import struct
import subprocess
import sys
import tarfile
import time
import zlib
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests import scannet_fixtures as fx  # noqa: E402

FIXTURES = REPO.parent / "shared" / "fixtures"
SIZE = (640, 480)


# --- generated scans --------------------------------------------------------------------------


def frame_pool(seed: int = 0) -> tuple[list[bytes], list[bytes]]:
    rng = np.random.default_rng(seed)
    colours = [p.read_bytes() for p in sorted(FIXTURES.glob("scannet_*/*.jpg"))]
    if not colours:
        colours = [fx.encode_jpeg(fx.colour_image(rng, (1296, 968), i), 90) for i in range(6)]
    depths = [fx.encode_depth(fx.sensor_depth(rng, (640, 480), i)) for i in range(12)]
    return colours, depths


def write_scan(src: Path, name: str, n_frames: int, pool: tuple[list[bytes], list[bytes]]) -> Path:
    colours, depths = pool
    folder = src / "scans" / name
    folder.mkdir(parents=True, exist_ok=True)
    spec = fx.SensSpec(frames=[], name="StructureSensor")

    def frames() -> Any:
        for i in range(n_frames):
            p = fx.NO_POSE if i % 97 == 13 else fx.pose(i)
            c, d = colours[i % len(colours)], depths[(i * 7) % len(depths)]
            yield fx.Frame(p, c, d, 33333 * i, 33333 * i)

    return fx.write_sens(folder / f"{name}.sens", spec, frames(), n_frames)


def frames_for_bytes(nbytes: float, pool: tuple[list[bytes], list[bytes]]) -> int:
    colours, depths = pool
    per = 96 + np.mean([len(c) for c in colours]) + np.mean([len(d) for d in depths])
    return int(nbytes / per)


# --- the reference path -------------------------------------------------------------------------


def reference_export(sens: Path, out: Path, frame_skip: int) -> int:
    """Load the whole .sens like SensorData.py, export with PIL defaults, tar. Returns frames."""
    from PIL import Image

    with open(sens, "rb") as f:  # SensorData.load(): everything into memory
        version, n = struct.unpack("<IQ", f.read(12))
        f.read(n)
        mats = [np.frombuffer(f.read(64), np.float32).reshape(4, 4) for _ in range(4)]
        f.read(8)
        _cw, _ch, dw, dh = struct.unpack("<4I", f.read(16))
        f.read(4)
        (count,) = struct.unpack("<Q", f.read(8))
        frames = []
        for _ in range(count):
            pose = np.frombuffer(f.read(64), np.float32).reshape(4, 4)
            _tc, _td, cs, ds = struct.unpack("<4Q", f.read(32))
            frames.append((pose, f.read(cs), f.read(ds)))
    folder = out / sens.stem
    for sub in ("color", "depth", "pose", "intrinsic"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    for name, m in zip(
        ("intrinsic_color", "extrinsic_color", "intrinsic_depth", "extrinsic_depth"),
        mats,
        strict=True,
    ):
        np.savetxt(folder / "intrinsic" / f"{name}.txt", m, fmt="%f")
    kept = 0
    for i in range(0, count, frame_skip):
        pose, color, depth = frames[i]
        Image.open(io.BytesIO(color)).resize(SIZE).save(folder / "color" / f"{i}.jpg")
        d = np.frombuffer(zlib.decompress(depth), np.uint16).reshape(dh, dw)
        Image.fromarray(d).save(folder / "depth" / f"{i}.png")
        np.savetxt(folder / "pose" / f"{i}.txt", pose, fmt="%f")
        kept += 1
    with tarfile.open(out / f"{sens.stem}.tar", "w") as tar:
        tar.add(folder, arcname=sens.stem)
    return kept


# --- the codec floor ----------------------------------------------------------------------------


def codec_floor(sens: Path, n: int) -> dict[str, float]:
    """Mean CPU seconds per frame of each bare call over the first ``n`` frames of ``sens``."""
    import cv2

    from converters.scannet import _REDUCED, _reduction, _resize
    from converters.sens import SensReader
    from datakit.schema import Sample, encode

    cv2.setNumThreads(1)
    t = {"decode": 0.0, "resize": 0.0, "inflate": 0.0, "encode": 0.0}
    with SensReader(sens) as r:
        h = r.header
        flag = _REDUCED[_reduction(h.color_size, SIZE)]
        frames = [r.read_frame(i) for i in range(min(n, r.num_frames))]
    clock = time.process_time  # CPU time: the machine is shared, wall time is not ours
    for fr in frames:
        t0 = clock()
        bgr = cv2.imdecode(np.frombuffer(fr.color, np.uint8), flag)
        t1 = clock()
        assert bgr is not None
        rgb = _resize(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), SIZE)
        t2 = clock()
        depth = np.frombuffer(zlib.decompress(fr.depth), "<u2").reshape(480, 640)
        t3 = clock()
        meta = {"source": "scannet", "id": "s/0", "split": "train", "width": 640, "height": 480,
                "depth_scale": 0.001, "depth_unit": "m"}  # fmt: skip
        encode(Sample("s_0", "train", rgb, meta, depth), rgb_format="jpg", jpeg_quality=95)
        t4 = clock()
        for k, dt in zip(t, (t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=True):
            t[k] += dt
    return {k: v / len(frames) for k, v in t.items()}


# --- children: one measured conversion each ---------------------------------------------------------


def child(args: argparse.Namespace) -> None:
    import cv2

    cv2.setNumThreads(1)
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    t0, c0, k0 = time.perf_counter(), cpu_seconds(), cpu_seconds(children_only=True)
    if args.child == "ours":
        from converters.scannet import ScanNetConfig, ScanNetConverter
        from datakit.writer import ConvertConfig, convert

        conv = ScanNetConverter(ScanNetConfig(src=args.src, frame_skip=args.skip, size=SIZE))
        res = convert(conv, str(out / "ds"), ConvertConfig(workers=args.workers, progress=False))
        frames = res.num_samples
    else:
        frames = sum(
            reference_export(p, out, args.skip)
            for p in sorted(Path(args.src).glob("scans/*/*.sens"))
        )
    seconds, cpu = time.perf_counter() - t0, cpu_seconds() - c0
    workers_cpu = cpu_seconds(children_only=True) - k0
    rss_mb = peak_rss_mb()
    shutil.rmtree(out, ignore_errors=True)
    print(
        json.dumps({"seconds": seconds, "cpu": cpu, "workers_cpu": workers_cpu, "frames": frames,
                    "rss_mb": rss_mb})
    )  # fmt: skip


def peak_rss_mb() -> float:
    """Peak RSS (MB) of this process (VmHWM) and of its reaped children (the writer's workers).

    Not this process's ru_maxrss (nor os.wait4's in the parent): subprocess starts children with
    vfork + exec, and the kernel then counts the parent's peak RSS as the child's."""
    import resource

    with open("/proc/self/status") as f:
        own_kb = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
    return max(own_kb, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss) / 1024


def cpu_seconds(children_only: bool = False) -> float:
    """CPU time of this process and its reaped children (the writer's workers), or theirs alone."""
    import resource

    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    total = kids.ru_utime + kids.ru_stime
    if not children_only:
        me = resource.getrusage(resource.RUSAGE_SELF)
        total += me.ru_utime + me.ru_stime
    return total


def measure(kind: str, src: Path, skip: int, workers: int, work: Path) -> dict[str, float]:
    cmd = [sys.executable, __file__, "--child", kind, "--src", str(src), "--skip", str(skip),
           "--workers", str(workers), "--out", str(work / "out")]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NO_ALBUMENTATIONS_UPDATE": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, env=env, cwd=REPO)
    assert proc.stdout is not None
    output = proc.stdout.read()
    if proc.wait() != 0:
        raise SystemExit(f"{kind} failed ({proc.returncode})")
    r = json.loads(output.decode().strip().splitlines()[-1])
    r["fps"] = r["frames"] / r["seconds"]  # wall clock
    r["fps_core"] = r["frames"] / r["cpu"]  # per core: frames per CPU second
    print(f"  {kind:4s} skip {skip:2d} workers {workers}: {r['frames']} frames, wall {r['seconds']:.1f} s "
          f"({r['fps']:.1f} frames/s), CPU {r['cpu']:.1f} s ({r['fps_core']:.1f} frames/s/core), "
          f"peak RSS {r['rss_mb']:.0f} MB  [load {os.getloadavg()[0]:.1f}]", flush=True)  # fmt: skip
    return r


def best(runs: list[dict[str, float]], key: str = "fps_core") -> dict[str, float]:
    return max(runs, key=lambda r: r[key])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workdir", default="/tmp/datakit-bench-scannet")
    ap.add_argument("--big-gb", type=float, default=2.0, help="size of the big scan (RSS, skip 25)")
    ap.add_argument("--frames", type=int, default=200, help="frames of the skip-1 scan")
    ap.add_argument("--scaling-frames", type=int, default=800, help="frames of the --workers scan")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--parts", default="throughput,memory,scaling", help="comma-separated subset")
    ap.add_argument("--keep", action="store_true", help="keep the generated scans")
    ap.add_argument("--child", choices=["ours", "ref"], help=argparse.SUPPRESS)
    ap.add_argument("--src", help=argparse.SUPPRESS)
    ap.add_argument("--skip", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--workers", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args)

    work = Path(args.workdir)
    shutil.rmtree(work, ignore_errors=True)
    pool = frame_pool()
    print(f"cores {os.cpu_count()}, load {os.getloadavg()}; colour pool {len(pool[0])} JPEGs "
          f"({'real ScanNet' if FIXTURES.is_dir() else 'synthetic'}), mean "
          f"{np.mean([len(c) for c in pool[0]]) / 1e3:.0f} kB; depth zlib mean "
          f"{np.mean([len(d) for d in pool[1]]) / 1e3:.0f} kB", flush=True)  # fmt: skip
    try:
        small = write_scan(work / "small", "scene0000_00", args.frames, pool)
        mid = write_scan(work / "mid", "scene0001_00", args.scaling_frames, pool)
        scans = [small, mid]
        if {"throughput", "memory"} & set(args.parts.split(",")):
            n_big = frames_for_bytes(args.big_gb * 2**30, pool)
            big = write_scan(work / "big", "scene0002_00", n_big, pool)
            scans.append(big)
        for p in scans:
            print(f"  {p.name}: {p.stat().st_size / 2**30:.2f} GiB", flush=True)
        summary: dict[str, Any] = {"load_start": os.getloadavg()}
        if "throughput" in args.parts:
            floor = codec_floor(small, 100)
            floor_s = sum(floor.values())
            print("floor per frame (ms CPU): " + ", ".join(f"{k} {v * 1e3:.1f}" for k, v in floor.items())
                  + f"; total {floor_s * 1e3:.1f} ms = {1 / floor_s:.1f} frames/s/core", flush=True)  # fmt: skip
            # ours and the reference interleaved, best of --repeats for each (the same for both)
            print("skip 1 (small scan)", flush=True)
            pairs1 = [
                (measure("ours", small.parents[2], 1, 1, work), measure("ref", small.parents[2], 1, 1, work))
                for _ in range(args.repeats)
            ]  # fmt: skip
            ours1, ref1 = best([o for o, _ in pairs1]), best([r for _, r in pairs1])
            print("skip 25 (big scan)", flush=True)
            pairs25 = [
                (measure("ours", big.parents[2], 25, 1, work), measure("ref", big.parents[2], 25, 1, work))
                for _ in range(args.repeats)
            ]  # fmt: skip
            ours25, ref25 = best([o for o, _ in pairs25]), best([r for _, r in pairs25])
            summary.update({
                "floor_ms": {k: v * 1e3 for k, v in floor.items()},
                "per_core_speedup_vs_reference_skip1": ours1["fps_core"] / ref1["fps_core"],
                "per_core_speedup_vs_reference_skip25": ours25["fps_core"] / ref25["fps_core"],
                "cpu_over_floor_skip1": (1 / ours1["fps_core"]) / floor_s,
                "cpu_over_floor_skip25": (1 / ours25["fps_core"]) / floor_s,
                "rss_mb_skip25_big": ours25["rss_mb"],
                "rss_mb_reference_skip25_big": ref25["rss_mb"],
            })  # fmt: skip
        if "memory" in args.parts:
            print("memory: skip 1, one worker, mid and big scan", flush=True)
            rss_mid = measure("ours", mid.parents[2], 1, 1, work)
            rss_big = measure("ours", big.parents[2], 1, 1, work)
            summary.update(rss_mb_skip1_mid=rss_mid["rss_mb"], rss_mb_skip1_big=rss_big["rss_mb"])
        if "scaling" in args.parts:
            print("scaling: skip 1, mid scan, --workers 1 and 2 interleaved", flush=True)
            w1, w2 = [], []
            for _ in range(args.repeats):
                w1.append(measure("ours", mid.parents[2], 1, 1, work))
                w2.append(measure("ours", mid.parents[2], 1, 2, work))

            def med(runs: list[dict[str, float]], k: str) -> float:
                return float(np.median([r[k] for r in runs]))

            summary.update({
                "wall_workers2_over_workers1": med(w2, "fps") / med(w1, "fps"),
                # on 2 free cores: the same work with its CPU time (workers + writer) spread over two
                "cpu_bound_workers2_over_workers1": 2 * med(w1, "cpu") / med(w2, "cpu"),
                "workers2_writer_cpu_s": med(w2, "cpu") - med(w2, "workers_cpu"),
                "workers2_workers_cpu_s": med(w2, "workers_cpu"),
                "workers1_cpu_s": med(w1, "cpu"),
            })  # fmt: skip
        summary["load_end"] = os.getloadavg()
        print(json.dumps(summary, indent=1))
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
