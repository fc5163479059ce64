"""Trainer throughput: the model-only step rate on synthetic tensors versus the end-to-end rate from
local shards, in one run on one GPU, through the same :class:`training.loop.Stepper` that
``datakit train`` uses (momentum update, forward, loss, backward, LARS step).

    python bench/train.py --data DS                    # ResNet-50 PixPro, 224 px, batch 128
    python bench/train.py --data DS --variants fp32,bf16-cl,bf16-cl-compile --e2e-workers 14
    python bench/train.py --make DS --num 3000 --size 320x240 --convert-workers 16   # shards first

A "sample" is one pair of views (two 224 px images): pairs/s = samples/s and images/s = 2 x that.
Model-only reuses one synthetic batch already on the GPU. End-to-end reads shards through
``BatchStream`` (loader workers + nvJPEG views on the GPU, resampled shards so that a small dataset
needs no epoch restarts) with the last variant's compiled model. Each rate is the median over
``--rounds`` timed windows of ``--steps`` steps, each window bracketed by ``torch.cuda.synchronize``.
Prints one JSON object per measurement and a markdown table at the end.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from training.config import TrainConfig, resolve  # noqa: E402
from training.loop import Runtime, Stepper, build_stepper  # noqa: E402

VARIANTS: dict[str, dict[str, Any]] = {
    "fp32": {"precision": "fp32", "channels_last": False, "compile": False},
    "bf16-cl": {"precision": "bf16", "channels_last": True, "compile": False},
    "bf16-cl-compile": {"precision": "bf16", "channels_last": True, "compile": True},
}


def synthetic_batch(b: int, s: int, device: torch.device) -> dict[str, torch.Tensor]:
    g = torch.Generator(device="cpu").manual_seed(0)
    lo = torch.rand(b, 2, generator=g) * 0.4
    coords = torch.cat([lo, lo + 0.5], dim=1)
    batch = {
        "view1": torch.randn(b, 3, s, s, generator=g),
        "view2": torch.randn(b, 3, s, s, generator=g),
        "depth1": 0.5 + 5 * torch.rand(b, 1, s, s, generator=g),
        "depth2": 0.5 + 5 * torch.rand(b, 1, s, s, generator=g),
        "coords1": coords,
        "coords2": coords + 0.05,
        "periodic": torch.zeros(b, dtype=torch.bool),
    }
    return {k: v.to(device) for k, v in batch.items()}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(
    stepper: Stepper, fetch: Callable[[], dict[str, Any]], *, warmup: int, steps: int, rounds: int
) -> dict[str, Any]:
    t0 = time.perf_counter()
    for i in range(warmup):
        stepper(i, fetch)
    sync(stepper.device)
    warm_s = time.perf_counter() - t0
    rates, waits = [], []
    step = warmup
    for _ in range(rounds):
        sync(stepper.device)
        t0, wait = time.perf_counter(), 0.0
        for _ in range(steps):
            wait += stepper(step, fetch).wait
            step += 1
        sync(stepper.device)
        dt = time.perf_counter() - t0
        rates.append(stepper.cfg.batch_size * steps / dt)
        waits.append(wait / dt)
    return {
        "pairs_per_s": statistics.median(rates),
        "images_per_s": 2 * statistics.median(rates),
        "rounds": [round(r, 1) for r in rates],
        "data_wait": statistics.median(waits),
        "warmup_s": round(warm_s, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--data", help="dataset for the end-to-end rate (omit: model-only)")
    ap.add_argument("--make", help="convert synthetic shards into this folder first (then --data)")
    ap.add_argument("--num", type=int, default=3000)
    ap.add_argument("--size", default="320x240")
    ap.add_argument("--convert-workers", type=int, default=16)
    ap.add_argument("--arch", default="resnet50")
    ap.add_argument("--method", default="pixpro")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--variants", default="fp32,bf16-cl,bf16-cl-compile")
    ap.add_argument("--warmup", type=int, default=8)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--e2e-workers", type=int, default=max(1, (os.cpu_count() or 2) - 2))
    ap.add_argument("--json", help="write all measurements here")
    ap.add_argument(
        "--prefetch", default="2", help="batches prepared ahead in a thread (list: 0,2)"
    )
    ap.add_argument("--device", default="cuda", help="cuda (the point) or cpu (a smoke test)")
    args = ap.parse_args()
    device = torch.device(args.device)
    if args.make:
        t0 = time.perf_counter()
        cmd = [sys.executable, "-m", "datakit", "convert", "synthetic", args.make, "--num", str(args.num),
               "--size", args.size, "--shard-size", "100", "--workers", str(args.convert_workers),
               "--no-progress", "--overwrite"]  # fmt: skip
        subprocess.run(cmd, check=True)
        print(
            json.dumps({"convert_s": round(time.perf_counter() - t0, 1), "num": args.num}),
            flush=True,
        )
        args.data = args.data or args.make
    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    rt = Runtime(device)
    base = TrainConfig(
        data=args.data or "-", out="-", method=args.method, arch=args.arch, batch_size=args.batch_size,
        image_size=args.image_size, steps=100_000, workers=args.e2e_workers, progress=False,
        resampled=True, epoch_samples=10_000_000,
    )  # fmt: skip
    base = resolve(base, num_samples=1_281_167)
    results: list[dict[str, Any]] = []
    batch = synthetic_batch(args.batch_size, args.image_size, device)
    stepper = None
    for name in args.variants.split(","):
        cfg = dataclasses.replace(base, **VARIANTS[name])
        if device.type == "cuda":  # peak_gib of this variant, not of the ones before it
            torch.cuda.reset_peak_memory_stats(device)
        stepper = build_stepper(cfg, rt)
        r = timed(stepper, lambda: batch, warmup=args.warmup, steps=args.steps, rounds=args.rounds)
        r.update(
            mode="model-only",
            variant=name,
            peak_gib=round(torch.cuda.max_memory_allocated() / 2**30, 1),
        )
        print(json.dumps(r), flush=True)
        results.append(r)
        if name != args.variants.split(",")[-1]:
            del stepper
            torch.cuda.empty_cache()
    if args.data and stepper is not None:
        from datakit.reader import open_dataset
        from training.data import BatchStream

        model_only = results[-1]["pairs_per_s"]
        for prefetch in (int(p) for p in str(args.prefetch).split(",")):
            stream = BatchStream(
                open_dataset(args.data), stepper.cfg, per_rank=args.batch_size,
                position={"epoch": 0, "batch": 0}, device=str(device), gpu_views=device.type == "cuda",
                prefetch=prefetch,
            )  # fmt: skip
            try:
                r = timed(
                    stepper,
                    functools.partial(next, stream),
                    warmup=args.warmup,
                    steps=args.steps,
                    rounds=args.rounds,
                )
            finally:
                stream.close()
            r.update(mode=f"end-to-end, prefetch {prefetch}", variant=args.variants.split(",")[-1],
                     workers=args.e2e_workers, of_model_only=r["pairs_per_s"] / model_only)  # fmt: skip
            print(json.dumps(r), flush=True)
            results.append(r)
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    env = {"gpu": gpu, "torch": torch.__version__, "arch": args.arch,
           "method": args.method, "batch": args.batch_size, "image_size": args.image_size}  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps({"env": env, "results": results}, indent=1))
    print(f"\n{env}\n")
    print("| mode | variant | pairs/s | images/s | of model-only | data wait | warm-up s |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for r in results:
        share = f"{100 * r['of_model_only']:.0f}%" if "of_model_only" in r else ""
        print(f"| {r['mode']} | {r['variant']} | {r['pairs_per_s']:.0f} | {r['images_per_s']:.0f} | {share} | "
              f"{100 * r['data_wait']:.1f}% | {r['warmup_s']} |")  # fmt: skip


if __name__ == "__main__":
    main()
