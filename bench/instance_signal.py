"""How much instance signal PixCon's global branch starts from, on the synthetic scenes and on a
control set of visually distinct images.

PixCon's global InfoNCE asks a query to pick its own image's key out of other images' keys. This
prints, for an untrained PixCon (the trainer's own data stream, views and networks), the mean
cosine between two views of one image (``pos``) and of different images (``neg``) and how often an
image's view-1 embedding is nearest to its own view-2 embedding among the batch (``top1``; chance is
1 / batch) at three places: the momentum backbone's pooled C5, the momentum key head, and the online
query (head + predictor) against the key. ``distinct`` writes the control set: images of random
gratings and discs in random colours, each unlike the others, with a plane as depth (so the folder
converter takes them):

    python bench/instance_signal.py distinct SRC --num 256
    python -m datakit convert folder SRC DATA --rgb 'rgb/*.png' --depth 'depth/*.png' \\
        --depth-scale 1000 --depth-kind metric
    python bench/instance_signal.py measure DATA SYNTHETIC_DATA

docs/results.md (section 1, "A control with distinct images") has the numbers.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from datakit.reader import open_dataset  # noqa: E402
from training.config import build_config, resolve  # noqa: E402
from training.data import BatchStream, split_size  # noqa: E402
from training.methods import PixCon, build_method  # noqa: E402


def distinct_image(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """HxWx3 uint8: three gratings of random orientation, frequency and colour, plus 2-5 discs."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    img = np.zeros((height, width, 3), np.float32)
    for _ in range(3):
        theta, freq, phase = (
            rng.uniform(0, np.pi),
            rng.uniform(0.03, 0.3),
            rng.uniform(0, 2 * np.pi),
        )
        wave = np.sin(freq * (np.cos(theta) * xx + np.sin(theta) * yy) + phase)
        img += wave[..., None] * rng.uniform(0, 1, 3)[None, None, :]
    for _ in range(int(rng.integers(2, 6))):
        centre = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        colour = tuple(float(v) for v in rng.uniform(-2, 2, 3))
        cv2.circle(img, centre, int(rng.integers(5, 25)), colour, -1)
    img = (img - img.min()) / (img.max() - img.min() + 1e-6) * 255
    return img.astype(np.uint8)


def write_distinct(out: Path, num: int, size: tuple[int, int], seed: int) -> None:
    """``num`` distinct images under out/rgb and a depth plane (mm, 1-3 m) for each under out/depth."""
    width, height = size
    rng = np.random.default_rng(seed)
    (out / "rgb").mkdir(parents=True, exist_ok=True)
    (out / "depth").mkdir(parents=True, exist_ok=True)
    rows = np.arange(height, dtype=np.float32)[:, None] / height
    for i in range(num):
        cv2.imwrite(str(out / "rgb" / f"{i:04d}.png"), distinct_image(rng, height, width))
        depth = np.broadcast_to(1000 + 2000 * rows + 300 * rng.uniform(), (height, width))
        cv2.imwrite(str(out / "depth" / f"{i:04d}.png"), depth.astype(np.uint16))


def instance_stats(a: Tensor, b: Tensor) -> tuple[float, float, float]:
    """(mean cosine of row i of ``a`` with row i of ``b``, mean over i != j, share of rows of ``a``
    whose most similar row of ``b`` is their own)."""
    s = F.normalize(a, dim=1) @ F.normalize(b, dim=1).t()
    n = len(s)
    pos = s.diag().mean().item()
    neg = (s.sum() - s.diag().sum()).item() / (n * n - n)
    top1 = (s.argmax(1) == torch.arange(n)).float().mean().item()
    return pos, neg, top1


def measure(data: str, args: argparse.Namespace) -> dict[str, tuple[float, float, float]]:
    torch.manual_seed(args.seed)
    settings = {
        "data": data,
        "out": "unused",
        "method": "pixcon",
        "arch": args.arch,
        "image_size": args.image_size,
        "batch_size": args.batch_size,
        "workers": 0,
        "seed": args.seed,
    }
    cfg = build_config(("bench", settings))
    dataset = open_dataset(cfg.data)
    cfg = resolve(cfg, num_samples=split_size(dataset, cfg.split))
    net = build_method(cfg)
    assert isinstance(net, PixCon)
    net.train()  # BatchNorm as in training: batch statistics
    stream = BatchStream(dataset, cfg, per_rank=cfg.batch_size, position={"epoch": 0, "batch": 0})
    sums: dict[str, np.ndarray] = {}
    try:
        with torch.no_grad():
            for _ in range(args.batches):
                batch = next(stream)
                f1, f2 = (net.backbone_m(batch[v])["c5"] for v in ("view1", "view2"))
                k1, k2 = net.global_head_m(f1), net.global_head_m(f2)
                q1 = net.global_pred(net.global_head(net.backbone(batch["view1"])["c5"]))
                for name, a, b in (
                    ("pooled C5", f1.mean((2, 3)), f2.mean((2, 3))),
                    ("key-key", k1, k2),
                    ("query-key", q1, k2),
                ):
                    sums[name] = sums.get(name, 0) + np.array(instance_stats(a, b)) / args.batches
    finally:
        stream.close()
    return {k: (float(v[0]), float(v[1]), float(v[2])) for k, v in sums.items()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("distinct", help="write the control images")
    d.add_argument("out", type=Path)
    d.add_argument("--num", type=int, default=256)
    d.add_argument("--size", default="128x96", help="WxH")
    d.add_argument("--seed", type=int, default=0)
    m = sub.add_parser("measure", help="print the instance signal of an untrained PixCon")
    m.add_argument("data", nargs="+")
    m.add_argument("--batches", type=int, default=4)
    m.add_argument("--batch-size", type=int, default=32)
    m.add_argument("--image-size", type=int, default=64)
    m.add_argument("--arch", default="resnet18")
    m.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.cmd == "distinct":
        w, h = (int(v) for v in args.size.lower().split("x"))
        write_distinct(args.out, args.num, (w, h), args.seed)
        print(f"{args.num} images -> {args.out}")
        return 0
    print(f"chance top1 {1 / args.batch_size:.3f}")
    for data in args.data:
        print(data)
        for name, (pos, neg, top1) in measure(data, args).items():
            print(f"  {name:10s} pos {pos:.3f}  neg {neg:.3f}  top1 {top1:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
