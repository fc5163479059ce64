"""How much bf16 autocast changes the methods' losses and their gradients.

Under ``precision: bf16`` (the CUDA default) the losses' matrix products (PixPro's cosines, the
InfoNCE logits against the queue, DenseCL's backbone similarity) run inside the step's autocast
region, so in bf16, although the losses cast their inputs to float32. This computes each loss on
the same inputs with and without CPU bf16 autocast (bf16 rounding is the same on any device) at
the GPU preset's shapes and prints the relative differences:

    python bench/bf16_losses.py [--seed 0]

docs/training.md ("Precision") has the numbers.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from training import losses  # noqa: E402


def loss_and_grad(fn: Callable[[Tensor], Tensor], x: Tensor, *, bf16: bool) -> tuple[float, Tensor]:
    x = x.detach().clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        out = fn(x).float().mean()
    out.backward()
    assert x.grad is not None
    return out.item(), x.grad


def compare(name: str, fn: Callable[[Tensor], Tensor], x: Tensor) -> dict[str, float | str]:
    l32, g32 = loss_and_grad(fn, x, bf16=False)
    l16, g16 = loss_and_grad(fn, x, bf16=True)
    return {
        "loss": name,
        "fp32": l32,
        "bf16": l16,
        "loss rel. diff": abs(l16 - l32) / abs(l32),
        "grad rel. diff": float((g16 - g32).norm() / g32.norm()),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--queue", type=int, default=4096)
    args = ap.parse_args(argv)
    torch.manual_seed(args.seed)
    b, d, k = 64, 128, args.queue
    # embeddings as alike as a young run's (mean cosine between images ~0.6), positives closer
    shared = F.normalize(torch.randn(1, d), dim=1)
    q = F.normalize(shared + 0.8 * torch.randn(b, d) / d**0.5, dim=1)
    key = F.normalize(q + 0.3 * torch.randn(b, d) / d**0.5, dim=1)
    queue = F.normalize(shared + 0.8 * torch.randn(k, d) / d**0.5, dim=1)
    # PixPro at 224 px / C5 (7x7 cells, 256-d), a fifth of the cell pairs positive
    y = torch.randn(b, 256, 7, 7)
    y_k = y + 0.5 * torch.randn_like(y)
    pos = torch.rand(b, 49, 49) < 0.2
    # PixCon's dense loss: 7x7 cells of 128-d, matched cell by cell, weights in [0, 1]
    qd = torch.randn(b, d, 7, 7)
    kd = qd + 0.3 * torch.randn_like(qd)
    idx = torch.arange(49).expand(b, 49)
    w = torch.rand(b, 49)
    rows = [
        compare("info_nce (global)", lambda x: losses.info_nce(x, key, queue), q),
        compare("dense_info_nce", lambda x: losses.dense_info_nce(x, kd, queue, idx, w), qd),
        compare("pixpro_loss", lambda x: losses.pixpro_loss(x, y_k, pos), y),
    ]
    feats = torch.randn(b, 512, 7, 7).relu()
    other = feats + 0.3 * torch.randn_like(feats)
    s32 = losses.backbone_similarity(feats, other)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        s16 = losses.backbone_similarity(feats, other).float()
    print("| loss | fp32 | bf16 autocast | loss rel. diff | grad rel. diff |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['loss']} | {r['fp32']:.6f} | {r['bf16']:.6f} | {r['loss rel. diff']:.1e} "
            f"| {r['grad rel. diff']:.1e} |"
        )
    agree = float((s16.argmax(2) == s32.argmax(2)).float().mean())
    print(
        f"\nbackbone_similarity (DenseCL matching): max |diff| {float((s16 - s32).abs().max()):.1e}, "
        f"same argmax match for {100 * agree:.2f}% of cells"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
