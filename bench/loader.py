"""Loader throughput: paired 224 px samples/s of datakit's loader against a per-sample PIL +
torchvision.transforms pipeline doing the same recipe (the way PixPro's reference code loads data).

    python bench/loader.py --data DS                       # per core, ours vs baseline, same run
    python bench/loader.py --data DS --workers 1,2,4,8,16  # scaling of the CPU path with workers
    python bench/loader.py --data DS --gpu --workers 16    # GPU path (nvJPEG + batched resampling)
    python bench/loader.py --make DS --num 512 --size 640x480 --convert-workers 16   # shards first

Per-core numbers run in this process with one thread (num_workers=0), ours and the baseline
interleaved round by round so that a shared machine's noise hits both, counted per second of this
process's CPU time (wall time on a busy 2-core machine says more about the neighbours); the ratio is
of medians.
Prints one JSON object per measurement and a markdown table at the end.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from datakit.loader import make_loader  # noqa: E402
from datakit.reader import open_dataset, pipeline  # noqa: E402
from datakit.views import ViewConfig  # noqa: E402

# --------------------------------------------------------------------------- the PIL baseline


class PixProStyleViews:
    """One sample -> two views, per sample with PIL and torchvision.transforms (PixPro's loader:
    RandomResizedCropCoord, flip, RandomApply(ColorJitter), RandomGrayscale, GaussianBlur via
    ImageFilter, ImageOps.solarize, ToTensor, Normalize), plus depth cropped by NEAREST."""

    def __init__(self, size: int = 224) -> None:
        from torchvision import transforms as T

        self.size = size
        self.colour = [
            T.Compose(
                [
                    T.RandomApply([T.ColorJitter(0.4, 0.4, 0.2, 0.1)], p=0.8),
                    T.RandomGrayscale(p=0.2),
                    T.RandomApply([self._blur], p=blur),
                    T.RandomApply([self._solarize], p=sol),
                    T.ToTensor(),
                    T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
                ]
            )
            for blur, sol in ((1.0, 0.0), (0.1, 0.2))
        ]
        self.crop = T.RandomResizedCrop(size, scale=(0.08, 1.0))

    @staticmethod
    def _blur(img: Any) -> Any:
        import random

        from PIL import ImageFilter

        return img.filter(ImageFilter.GaussianBlur(radius=random.uniform(0.1, 2.0)))

    @staticmethod
    def _solarize(img: Any) -> Any:
        from PIL import ImageOps

        return ImageOps.solarize(img, 128)

    def __call__(self, sample: dict[str, Any]) -> dict[str, Any]:
        import random

        import torchvision.transforms.functional as F
        from PIL import Image

        rgb_ext = next(k for k in sample if k.startswith("rgb."))
        rgb = Image.open(io.BytesIO(sample[rgb_ext])).convert("RGB")
        meta = json.loads(sample["json"])
        depth = Image.open(io.BytesIO(sample["depth.png"])) if "depth.png" in sample else None
        w, h = rgb.size
        out: dict[str, Any] = {}
        for v in (0, 1):
            i, j, ch, cw = self.crop.get_params(rgb, self.crop.scale, self.crop.ratio)
            img = F.resized_crop(
                rgb, i, j, ch, cw, [self.size, self.size], F.InterpolationMode.BILINEAR
            )
            coord = [j / (w - 1), i / (h - 1), (j + cw - 1) / (w - 1), (i + ch - 1) / (h - 1)]
            d = None
            if depth is not None:
                d = F.resized_crop(
                    depth, i, j, ch, cw, [self.size, self.size], F.InterpolationMode.NEAREST
                )
            if random.random() < 0.5:
                img = F.hflip(img)
                coord = [coord[2], coord[1], coord[0], coord[3]]
                d = F.hflip(d) if d is not None else None
            out[f"view{v + 1}"] = self.colour[v](img)
            dep = (
                np.asarray(d, dtype=np.float32) * meta["depth_scale"]
                if d is not None
                else np.zeros((self.size, self.size), np.float32)
            )
            out[f"depth{v + 1}"] = torch.from_numpy(dep)[None]
            out[f"coords{v + 1}"] = torch.tensor(coord)
        return out


def baseline_loader(urls: list[str], batch: int, workers: int, epoch_samples: int) -> Any:
    import webdataset as wds

    pipe = pipeline(
        urls,
        shuffle_shards=True,
        shuffle_buffer=256,
        split_by_worker=True,
        resampled=True,
        decode=False,
    )
    pipe.append(wds.map(PixProStyleViews()))
    pipe.append(wds.batched(batch, collation_fn=torch.utils.data.default_collate, partial=False))
    pipe = pipe.with_epoch(nbatches=max(1, epoch_samples // batch // max(workers, 1)))
    return torch.utils.data.DataLoader(pipe, batch_size=None, num_workers=workers)


# --------------------------------------------------------------------------------- measuring


def rate(
    loader: Any,
    samples: int,
    *,
    cuda: bool = False,
    warmup: int = 1,
    cpu_time: bool = False,
    stats: dict[str, float] | None = None,
) -> float:
    """Paired samples per second after ``warmup`` batches (startup excluded). ``cpu_time``: per
    second of this process's CPU time (robust on a shared machine when all work is in-process).
    ``stats`` receives ``main_cpu``: this process's CPU seconds (all its threads: receiving, pinning,
    the GPU stage) per wall second over the timed window; near 1 or more, the main process is the
    limit, not the workers."""
    clock = time.process_time if cpu_time else time.perf_counter
    it = iter(loader)
    for _ in range(warmup):
        next(it)
    if cuda:
        torch.cuda.synchronize()
    n, t0, cpu0, wall0 = 0, clock(), time.process_time(), time.perf_counter()
    for batch in it:
        n += batch["view1"].shape[0]
        if n >= samples:
            break
    if cuda:
        torch.cuda.synchronize()
    if stats is not None:
        stats["main_cpu"] = (time.process_time() - cpu0) / (time.perf_counter() - wall0)
    return n / (clock() - t0)


def cpu_topology() -> dict[str, Any]:
    """Logical CPUs this process may use and hardware threads per core (SMT siblings share a core:
    16 logical CPUs of 8 cores scale like 8 above 8 workers)."""
    siblings = Path("/sys/devices/system/cpu/cpu0/topology/thread_siblings_list")  # "0,8" or "0-1"
    per_core = None
    if siblings.exists():
        per_core = 0
        for part in siblings.read_text().strip().split(","):
            first, _, last = part.partition("-")
            per_core += int(last or first) - int(first) + 1
    return {"logical_cpus": len(os.sched_getaffinity(0)), "threads_per_core": per_core}


def ours(data: str, batch: int, workers: int, samples: int, *, gpu: bool = False) -> Any:
    return make_loader(
        data,
        batch,
        views=ViewConfig(labels=False),
        num_workers=workers,
        resampled=True,
        shuffle_buffer=256,
        epoch_samples=samples + 8 * batch * (workers + 1),
        device="cuda" if gpu else "cpu",
        pin_memory=gpu or torch.cuda.is_available(),
        prefetch_factor=(2 if gpu else 4) if workers else None,
    )


def _cpu_ms(fn: Any, items: list[Any]) -> tuple[float, list[Any]]:
    t = time.process_time()
    out = [fn(x) for x in items]
    return (time.process_time() - t) / max(len(items), 1) * 1e3, out


def breakdown(data: str, n: int = 64) -> dict[str, float]:
    """CPU milliseconds per sample of each stage of the CPU path on one core, and of the worker
    side of the GPU path: where the time goes."""
    import cv2

    from datakit import png
    from datakit.gpu_views import collate_encoded, prepare_encoded
    from datakit.loader import decode_for_views
    from datakit.photometric import apply_photometric
    from datakit.schema import CODECS
    from datakit.views import (
        PairedViews,
        apply_geometry,
        collate_views,
        is_periodic,
        sample_pair,
        sample_seed,
    )

    cfg = ViewConfig(labels=False)
    urls = open_dataset(data).shard_urls()
    t = time.process_time()
    raw: list[dict[str, Any]] = []
    for s in pipeline(urls, decode=False):
        raw.append(s)
        if len(raw) == n:
            break
    out = {"tar_read": (time.process_time() - t) / len(raw) * 1e3}
    rgb_flag = getattr(cv2, "IMREAD_COLOR_RGB", cv2.IMREAD_COLOR)  # OpenCV >= 4.10: RGB directly
    out["rgb_jpeg_opencv_rgb"], _ = _cpu_ms(
        lambda s: cv2.imdecode(np.frombuffer(s["rgb.jpg"], np.uint8), rgb_flag), raw
    )
    out["rgb_jpeg_schema_codec"], _ = _cpu_ms(lambda s: CODECS["rgb.jpg"].decode(s["rgb.jpg"]), raw)
    out["depth_png16_fast"], _ = _cpu_ms(lambda s: png.decode_gray(s["depth.png"]), raw)
    out["depth_png16_opencv"], _ = _cpu_ms(
        lambda s: cv2.imdecode(np.frombuffer(s["depth.png"], np.uint8), cv2.IMREAD_UNCHANGED), raw
    )
    out["decode_all"], decoded = _cpu_ms(lambda s: decode_for_views(s, labels=False)[0], raw)

    def geometry(s: Any) -> list[Any]:
        h, w = s.rgb.shape[:2]
        params = sample_pair(sample_seed(0, 0, s.key), h, w, cfg, periodic=is_periodic(s))
        return [apply_geometry(s, p, cfg) for p in params]

    out["geometry_2views"], views = _cpu_ms(geometry, decoded)

    def colour(vs: list[Any]) -> PairedViews:
        for v in vs:
            v.rgb = apply_photometric(v.rgb, v.params.photometric)
        return PairedViews(vs[0], vs[1], False)

    out["photometric_2views"], pairs = _cpu_ms(colour, views)
    t = time.process_time()
    for i in range(0, len(pairs), 16):
        collate_views(pairs[i : i + 16], cfg)
    out["collate"] = (time.process_time() - t) / len(pairs) * 1e3
    out["gpu_path_worker_prepare"], enc = _cpu_ms(
        lambda s: prepare_encoded(s, cfg, seed=0, epoch=0), raw
    )
    t = time.process_time()
    collate_encoded(enc, cfg)
    out["gpu_path_worker_collate"] = (time.process_time() - t) / len(enc) * 1e3
    return {k: round(v, 3) for k, v in out.items()}


def gpu_stage(data: str, batch: int = 256, reps: int = 10) -> dict[str, float]:
    """Milliseconds per batch of the GPU side (decode + resample + colour), main thread, synced."""
    from datakit.gpu_views import GpuViews, collate_encoded, prepare_encoded

    cfg = ViewConfig(labels=False)
    urls = open_dataset(data).shard_urls()
    raw: list[dict[str, Any]] = []
    while len(raw) < batch:
        raw.extend(pipeline(urls, decode=False))
    enc = [prepare_encoded(s, cfg, seed=0, epoch=0) for s in raw[:batch]]
    cpu = collate_encoded(enc, cfg)
    pinned = {k: v.pin_memory() if isinstance(v, torch.Tensor) else v for k, v in cpu.items()}
    views = GpuViews(cfg, "cuda")
    res: dict[str, float] = {}
    for name, fn in (
        ("decode_jpeg", lambda: views.decode(pinned)),
        ("full_gpu_stage", lambda: views(pinned)),
    ):
        fn()
        torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(reps):
            fn()
        torch.cuda.synchronize()
        res[f"{name}_ms_per_batch{batch}"] = round((time.perf_counter() - t) / reps * 1e3, 2)
    res["gpu_stage_samples_per_s"] = round(
        batch / res[f"full_gpu_stage_ms_per_batch{batch}"] * 1e3, 1
    )
    return res


def make_dataset(out: str, num: int, size: str, workers: int) -> None:
    if Path(out, "_info.json").exists():
        print(json.dumps({"reusing": out}))
        return
    from converters.synthetic import SyntheticConfig, SyntheticConverter
    from datakit.writer import ConvertConfig, convert

    w, h = (int(x) for x in size.split("x"))
    conv = SyntheticConverter(SyntheticConfig(num=num, size=(w, h)))
    # Small shards: every worker of a big host draws from several (resampled, page-cached).
    convert(conv, out, ConvertConfig(shard_size=max(4, num // 32), workers=workers, progress=False))


def repack_png_filter(src: str, dst: str) -> None:
    """Copy a local dataset, re-encoding its single-channel PNGs (depth, label) with PNG's Up row
    filter: same pixels, still plain 16-bit PNG, decodable by datakit.png's fast path."""
    import hashlib
    import shutil
    import tarfile

    import cv2

    from datakit import schema

    gray_exts = {e for f in schema.FIELDS if f.name in ("depth", "label") for e in f.extensions}
    os.makedirs(dst, exist_ok=True)
    info = json.loads(Path(src, "_info.json").read_text())
    for shard in info["shards"]:
        with (
            tarfile.open(Path(src, shard["name"])) as tin,
            tarfile.open(Path(dst, shard["name"]), "w") as tout,
        ):
            for member in tin:
                data = tin.extractfile(member).read()  # type: ignore[union-attr]
                if member.name.split(".", 1)[1] in gray_exts:
                    arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
                    if arr is None:
                        raise SystemExit(f"{src}/{shard['name']}: {member.name} does not decode")
                    data = cv2.imencode(
                        ".png",
                        arr,
                        [
                            cv2.IMWRITE_PNG_COMPRESSION,
                            1,
                            cv2.IMWRITE_PNG_FILTER,
                            cv2.IMWRITE_PNG_FILTER_UP,
                        ],
                    )[1].tobytes()
                member.size = len(data)
                tout.addfile(member, io.BytesIO(data))
        blob = Path(dst, shard["name"]).read_bytes()
        shard["bytes"], shard["sha256"] = len(blob), hashlib.sha256(blob).hexdigest()
    Path(dst, "_info.json").write_text(json.dumps(info, indent=1))
    for extra in ("errors.jsonl",):
        if Path(src, extra).exists():
            shutil.copy(Path(src, extra), Path(dst, extra))


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--data", help="dataset folder or URL (640x480 frames for the reference numbers)"
    )
    ap.add_argument("--make", help="convert synthetic shards into this folder first")
    ap.add_argument("--num", type=int, default=256)
    ap.add_argument("--size", default="640x480")
    ap.add_argument("--convert-workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--samples", type=int, default=192, help="timed samples per measurement")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--workers", default="", help="comma list: scaling of the CPU (or --gpu) path")
    ap.add_argument("--gpu", action="store_true", help="measure the GPU path (needs CUDA)")
    ap.add_argument("--no-per-core", action="store_true")
    ap.add_argument("--baseline-workers", action="store_true", help="also scale the baseline")
    ap.add_argument("--breakdown", action="store_true", help="per-stage ms/sample on one core")
    ap.add_argument(
        "--repack-up",
        metavar="DIR",
        help="copy --data to DIR with Up-filtered depth/label PNGs and measure that copy",
    )
    args = ap.parse_args()

    if args.make:
        t = time.perf_counter()
        make_dataset(args.make, args.num, args.size, args.convert_workers)
        print(
            json.dumps(
                {"made": args.make, "num": args.num, "seconds": round(time.perf_counter() - t, 1)}
            )
        )
        args.data = args.data or args.make
    if not args.data:
        ap.error("--data or --make is required")
    if args.repack_up:
        repack_png_filter(args.data, args.repack_up)
        args.data = args.repack_up
    ds = open_dataset(args.data)
    urls = ds.shard_urls()
    host = {
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }
    print(json.dumps({"host": host, "data": args.data, "samples_in_dataset": len(ds)}))
    rows: list[tuple[str, str, float]] = []

    if args.breakdown:
        import cv2

        threads = cv2.getNumThreads(), torch.get_num_threads()
        cv2.setNumThreads(1)
        torch.set_num_threads(1)
        bd = breakdown(args.data)
        print(json.dumps({"breakdown_cpu_ms_per_sample": bd}))
        rows += [(f"stage: {k}", "CPU ms/sample", v) for k, v in bd.items()]
        cv2.setNumThreads(threads[0])
        torch.set_num_threads(threads[1])
    if args.gpu and torch.cuda.is_available():
        gs = gpu_stage(args.data)
        print(json.dumps({"gpu_stage": gs}))
        rows += [(f"GPU stage: {k}", "", v) for k, v in gs.items()]

    if not args.no_per_core:
        import cv2

        threads = cv2.getNumThreads(), torch.get_num_threads()
        cv2.setNumThreads(1)
        torch.set_num_threads(1)
        r_ours, r_base = [], []
        for r in range(args.rounds):
            r_ours.append(
                rate(ours(args.data, args.batch, 0, args.samples), args.samples, cpu_time=True)
            )
            r_base.append(
                rate(
                    baseline_loader(urls, args.batch, 0, args.samples + 2 * args.batch),
                    args.samples,
                    cpu_time=True,
                )
            )
            print(
                json.dumps(
                    {
                        "round": r,
                        "ours_per_core": round(r_ours[-1], 1),
                        "baseline_per_core": round(r_base[-1], 1),
                    }
                )
            )
        mo, mb = statistics.median(r_ours), statistics.median(r_base)
        print(
            json.dumps(
                {
                    "per_core_ours": round(mo, 1),
                    "per_core_baseline": round(mb, 1),
                    "ratio": round(mo / mb, 2),
                }
            )
        )
        rows += [
            ("datakit CPU path, 1 core (num_workers=0)", "samples/CPU-s", mo),
            ("PIL + torchvision per sample, 1 core", "samples/CPU-s", mb),
            ("ratio (median of rounds)", "x", mo / mb),
        ]
        cv2.setNumThreads(threads[0])
        torch.set_num_threads(threads[1])

    if args.workers:
        counts = [int(x) for x in args.workers.split(",")]
        print(json.dumps(cpu_topology()))
        base_rate = None
        for n in counts:
            batch = 256 if args.gpu else args.batch
            samples = max(args.samples, 100 * n) if not args.gpu else max(args.samples, 8192)
            stats: dict[str, float] = {}
            rr = rate(
                ours(args.data, batch, n, samples, gpu=args.gpu),
                samples,
                cuda=args.gpu,
                warmup=max(1, n),
                stats=stats,
            )
            if base_rate is None:
                base_rate = rr / n
            eff = rr / (n * base_rate)
            name = "GPU path" if args.gpu else "CPU path"
            print(
                json.dumps(
                    {
                        "path": name,
                        "workers": n,
                        "batch": batch,
                        "samples_per_s": round(rr, 1),
                        "efficiency_vs_first": round(eff, 2),
                        "main_process_cpu": round(stats["main_cpu"], 2),
                    }
                )
            )
            rows.append((f"datakit {name}, {n} workers, batch {batch}", "samples/s", rr))
            if args.baseline_workers and not args.gpu:
                rb = rate(baseline_loader(urls, batch, n, samples + 2 * batch * n), samples)
                print(json.dumps({"path": "baseline", "workers": n, "samples_per_s": round(rb, 1)}))
                rows.append((f"PIL + torchvision baseline, {n} workers", "samples/s", rb))

    print("\n| measurement | unit | value |\n|---|---|---|")
    for name, unit, value in rows:
        print(f"| {name} | {unit} | {'' if math.isnan(value) else round(value, 2)} |")


if __name__ == "__main__":
    main()
