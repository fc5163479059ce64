"""Why PixCon's global branch collapses on short runs: its InfoNCE under three sets of negatives.

Trains only PixCon's global branch (backbone, global head and predictor, their momentum copies;
``dense_weight`` 0) with the trainer's own data stream, optimiser and schedules, and every few steps
prints the global loss against chance, the mean cosine of each query with its positive key and with
its negatives, and how alike the embeddings of *different* images are (mean off-diagonal cosine of
the online predictions ``q`` and of the momentum keys ``k``; 1 is a collapse). Negatives:

- ``queue``: the trainer's queue of K keys, which starts as K random unit vectors (as MoCo's does);
- ``filled``: the same queue, but only the slots that already hold a real key count;
- ``batch``: no queue, the other images' keys of the current step (both views).

``--split-bn N`` emulates MoCo's shuffle BN on one device (as MoCo's single-GPU demo does): every
BatchNorm of both backbones takes its statistics over N interleaved groups of the batch, and the
momentum backbone sees the batch shuffled, so a query and its positive key are normalised among
different images. It tests whether BatchNorm's intra-batch leak drives the collapse (it does not).

    python bench/pixcon_negatives.py --data DATASET [--steps 40] [--lr 0.6] [--queue 4096]

docs/results.md (section 1) has the table and the command that produced it.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.key_collapse import offdiag_cos  # noqa: E402
from datakit.reader import open_dataset  # noqa: E402
from training.config import build_config, resolve  # noqa: E402
from training.data import BatchStream, split_size  # noqa: E402
from training.methods import PixCon, build_method, momentum_at  # noqa: E402
from training.optim import build_optimizer, lr_at  # noqa: E402

NEGATIVES = ("queue", "filled", "batch")


def negatives_logits(q: Tensor, keys: Tensor, own: int, negs: Tensor | None) -> Tensor:
    """Cosines of each query (B, D) with its negatives: the rows of ``negs`` (queue variants) or,
    when ``negs`` is None, every key of ``keys`` (2B, D: both views) except the query's own two
    (``own`` = B)."""
    if negs is not None:
        return q @ negs.t()
    sim = q @ keys.t()
    rows = torch.arange(own)
    mask = torch.zeros_like(sim, dtype=torch.bool)
    mask[rows, rows] = True
    mask[rows, rows + own] = True
    return sim[~mask].view(own, -1)


class SplitBatchNorm(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics are taken over ``splits`` interleaved groups of the
    batch (images i, i + splits, ...); the running statistics are the groups' mean."""

    def __init__(self, bn: nn.BatchNorm2d, splits: int) -> None:
        super().__init__(bn.num_features, eps=bn.eps, momentum=bn.momentum)
        self.load_state_dict(bn.state_dict())
        self.weight.requires_grad_(bn.weight.requires_grad)
        self.bias.requires_grad_(bn.bias.requires_grad)
        self.splits = splits

    def forward(self, x: Tensor) -> Tensor:
        if not self.training:
            return super().forward(x)
        n, c, h, w = x.shape
        s = self.splits
        assert self.running_mean is not None and self.running_var is not None
        mean, var = self.running_mean.repeat(s), self.running_var.repeat(s)
        out = F.batch_norm(
            x.reshape(n // s, c * s, h, w), mean, var, self.weight.repeat(s),
            self.bias.repeat(s), True, self.momentum or 0.1, self.eps,
        )  # fmt: skip
        with torch.no_grad():
            self.running_mean.copy_(mean.view(s, c).mean(0))
            self.running_var.copy_(var.view(s, c).mean(0))
        return out.reshape(n, c, h, w)


def split_bn(module: nn.Module, splits: int) -> None:
    """Replace every BatchNorm2d under ``module`` by a :class:`SplitBatchNorm`."""
    for name, child in module.named_children():
        if type(child) is nn.BatchNorm2d:
            setattr(module, name, SplitBatchNorm(child, splits))
        else:
            split_bn(child, splits)


def shuffled(backbone: nn.Module, x: Tensor) -> dict[str, Tensor]:
    """``backbone(x)`` computed on a random permutation of the batch, returned in batch order."""
    perm = torch.randperm(len(x))
    out = backbone(x[perm])
    inv = torch.argsort(perm)
    return {k: v[inv] for k, v in out.items()}


def run(args: argparse.Namespace, negatives: str) -> list[dict[str, float | int | str | None]]:
    torch.manual_seed(args.seed)
    cfg = build_config(
        (
            "bench",
            {
                "data": args.data,
                "out": "unused",
                "method": "pixcon",
                "arch": args.arch,
                "image_size": args.image_size,
                "batch_size": args.batch_size,
                "workers": 0,
                "queue_size": args.queue,
                "lr": args.lr,
                "warmup_steps": args.warmup,
                "steps": args.steps,
                "seed": args.seed,
                "dense_weight": 0.0,
            },
        )
    )
    dataset = open_dataset(cfg.data)
    cfg = resolve(cfg, num_samples=split_size(dataset, cfg.split))
    net = build_method(cfg)
    assert isinstance(net, PixCon)
    if args.split_bn > 1:
        if args.batch_size % args.split_bn:
            raise SystemExit("--split-bn must divide --batch-size")
        split_bn(net.backbone, args.split_bn)
        split_bn(net.backbone_m, args.split_bn)
    net.train()

    def key_c5(v: Tensor) -> Tensor:
        return (shuffled(net.backbone_m, v) if args.split_bn > 1 else net.backbone_m(v))["c5"]

    optimizer = build_optimizer(net, cfg)
    stream = BatchStream(dataset, cfg, per_rank=cfg.batch_size, position={"epoch": 0, "batch": 0})
    queue = net.queue_global
    filled = 0
    rows: list[dict[str, float | int | str | None]] = []
    try:
        for step in range(cfg.steps):
            lr = lr_at(
                step, lr=float(cfg.lr or 0), total=cfg.steps, warmup=int(cfg.warmup_steps or 0)
            )
            for group in optimizer.param_groups:
                group["lr"] = lr
            net.momentum_update(momentum_at(step, cfg.steps, cfg.ema))
            batch = next(stream)
            views = (batch["view1"], batch["view2"])
            q = [
                F.normalize(net.global_pred(net.global_head(net.backbone(v)["c5"])), dim=1)
                for v in views
            ]
            with torch.no_grad():
                k = [F.normalize(net.global_head_m(key_c5(v)), dim=1) for v in views]
            keys = torch.cat(k)
            if negatives == "queue":
                negs: Tensor | None = queue.queue
            elif negatives == "filled":
                negs = queue.queue[: min(filled, len(queue.queue))]
            else:
                negs = None
            loss = torch.zeros(())
            pos_cos, neg_cos, n_neg = 0.0, 0.0, 0
            for a, o in ((0, 1), (1, 0)):
                pos = (q[a] * k[o]).sum(1, keepdim=True)
                neg = negatives_logits(q[a], keys, len(pos), negs)
                logits = torch.cat((pos, neg), 1) / cfg.tau
                target = torch.zeros(len(pos), dtype=torch.long)
                loss = loss + F.cross_entropy(logits, target) / 2
                pos_cos += float(pos.detach().mean()) / 2
                neg_cos += float(neg.detach().mean()) / 2 if neg.numel() else 0.0
                n_neg = neg.shape[1]
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            queue.push(keys)
            filled += len(keys)
            if step % args.every == 0 or step == cfg.steps - 1:
                row: dict[str, float | int | str | None] = {
                    "negatives": negatives,
                    "step": step,
                    "loss": round(loss.item(), 4),
                    "chance": round(math.log(n_neg + 1), 4),
                    "pos_cos": round(pos_cos, 4),
                    # null, not NaN (which is not JSON), while "filled" has no real key yet
                    "neg_cos": round(neg_cos, 4) if n_neg else None,
                    "q_cos": round(offdiag_cos(q[0].detach()), 5),
                    "k_cos": round(offdiag_cos(k[0]), 5),
                }
                print(json.dumps(row), flush=True)
                rows.append(row)
    finally:
        stream.close()
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument(
        "--data", required=True, help="a dataset folder (e.g. datakit convert synthetic)"
    )
    ap.add_argument("--negatives", nargs="+", choices=NEGATIVES, default=list(NEGATIVES))
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--lr", type=float, default=0.6, help="SGD lr (0.6: the CPU preset's)")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--queue", type=int, default=4096)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--arch", default="resnet18")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--every", type=int, default=10, help="print a row every N steps")
    ap.add_argument(
        "--split-bn",
        type=int,
        default=1,
        metavar="N",
        help="MoCo's shuffle BN on one device: BN statistics over N groups, keys on a shuffled batch",
    )
    ap.add_argument("--out", type=Path, help="also write all rows to this JSON file")
    args = ap.parse_args(argv)
    rows = [r for neg in args.negatives for r in run(args, neg)]
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"args": vars(args) | {"out": str(args.out)}, "rows": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
