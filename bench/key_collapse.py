"""How far a run's keys have collapsed: mean cosine between the embeddings of *different* images.

Loads a ``datakit train`` checkpoint (or, with ``--init``, the same method freshly initialised from
its config and seed), draws one training batch exactly as the trainer does, and prints for the
momentum (key) side the mean off-diagonal cosine of the global keys (PixCon) and of the pooled
backbone C5 features, plus the loss terms on that batch. A cosine near 1 means every image gets the
same key, so InfoNCE against a queue of such keys sits at log(K + 1) (docs/results.md, section 1).

    python bench/key_collapse.py RUN/last.pt [--init] [--batch-size 32]
"""

from __future__ import annotations

import argparse
import json
import sys

import torch
import torch.nn.functional as F
from torch import Tensor

from datakit.reader import open_dataset
from training.checkpoint import load
from training.config import build_config
from training.data import BatchStream
from training.methods import PixCon, build_method


def offdiag_cos(x: Tensor) -> float:
    """Mean cosine between distinct rows of x (N, D)."""
    xn = F.normalize(x.float(), dim=1)
    sim = xn @ xn.t()
    n = sim.shape[0]
    return float((sim.sum() - sim.diagonal().sum()) / (n * (n - 1)))


@torch.no_grad()
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("checkpoint")
    ap.add_argument("--init", action="store_true", help="the method at its initialisation instead")
    ap.add_argument("--batch-size", type=int, default=32)
    args = ap.parse_args(argv)
    state = load(args.checkpoint)
    cfg = build_config((f"{args.checkpoint} config", state["config"]))
    torch.manual_seed(cfg.seed)
    net = build_method(cfg)
    if not args.init:
        net.load_state_dict(state["model"])
    net.train()  # as in training: BatchNorm on batch statistics
    stream = BatchStream(
        open_dataset(cfg.data), cfg, per_rank=args.batch_size, position={"epoch": 0, "batch": 0}
    )
    batch = next(stream)
    stream.close()
    feats = net.backbone_m(batch["view1"])["c5"]
    row: dict[str, float | str] = {
        "checkpoint": args.checkpoint,
        "state": "init" if args.init else f"step {state['step']}",
        "pooled_c5_cos": offdiag_cos(feats.mean((2, 3))),
    }
    if isinstance(net, PixCon):
        row["global_key_cos"] = offdiag_cos(net.global_head_m(feats))
    out = net(batch)
    row.update({k: float(v) for k, v in out.metrics.items()})
    row["loss"] = float(out.loss)
    print(json.dumps({k: round(v, 5) if isinstance(v, float) else v for k, v in row.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
