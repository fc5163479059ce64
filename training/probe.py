"""The segmentation probe: a linear head on backbone features, its training and its scoring.

:func:`fit_head` and :func:`score_head` take a *batcher* (sample indices -> features and labels), so
the same code serves frozen cached features, features computed on the fly and fine-tuning.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from training.metrics_seg import SegScores, confusion_matrix, scores
from training.models import LEVELS


class ProbeHead(nn.Module):
    """Features {level: (B, C_l, h_l, w_l)} -> logits (B, K, H, W) at ``size`` (H, W).

    Each level is bilinearly upsampled to the finest level's grid, the levels are concatenated,
    standardised per channel (BatchNorm without affine parameters, so the head stays linear and its
    learning rate fits any feature scale) and mapped by one 1x1 conv; the logits are bilinearly
    upsampled to ``size``. Upsampling and a 1x1 conv are both linear, so this equals a 1x1 conv on
    the upsampled feature map at a fraction of the cost.
    """

    def __init__(self, channels: int, num_classes: int) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(channels, affine=False)
        self.conv = nn.Conv2d(channels, num_classes, 1)

    def forward(self, feats: dict[str, Tensor], size: tuple[int, int]) -> Tensor:
        maps = [feats[lv] for lv in LEVELS if lv in feats]
        grid = max((m.shape[-2:] for m in maps), key=lambda s: s[0] * s[1])
        x = torch.cat(
            [
                m if m.shape[-2:] == grid else F.interpolate(m, size=grid, mode="bilinear")
                for m in maps
            ],
            dim=1,
        )
        logits = self.conv(self.norm(x.float()))
        return F.interpolate(logits, size=size, mode="bilinear")


Batcher = Callable[[Tensor], tuple[dict[str, Tensor], Tensor]]


def batches(n: int, batch_size: int, generator: torch.Generator | None) -> Iterator[Tensor]:
    order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    yield from order.split(batch_size)


def fit_head(
    head: ProbeHead,
    batcher: Batcher,
    n: int,
    *,
    num_classes: int,
    ignore_index: int,
    epochs: int,
    batch_size: int,
    lr: float,
    weight_decay: float,
    seed: int,
    extra_params: list[nn.Parameter] | None = None,
    extra_lr: float = 0.0,
) -> list[float]:
    """Train ``head`` (and ``extra_params`` at ``extra_lr``) with AdamW and a cosine schedule, cross
    entropy with ``ignore_index``; returns the mean loss of each epoch."""
    groups: list[dict[str, Any]] = [{"params": list(head.parameters()), "lr": lr}]
    if extra_params:
        groups.append({"params": extra_params, "lr": extra_lr})
    opt = torch.optim.AdamW(groups, weight_decay=weight_decay)
    total = epochs * math.ceil(n / batch_size)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda k: 0.5 * (1 + math.cos(math.pi * min(k, total) / total))
    )
    gen = torch.Generator().manual_seed(seed)
    head.train()
    history = []
    for _ in range(epochs):
        losses = []
        for idx in batches(n, batch_size, gen):
            feats, target = batcher(idx)
            logits = head(feats, tuple(target.shape[-2:]))
            loss = F.cross_entropy(logits, target, ignore_index=ignore_index)
            opt.zero_grad(set_to_none=True)
            # a batch with every pixel ignored (a NaN loss) has nothing to learn from: no step,
            # or AdamW would still decay the weights and move them by its momentum
            if loss.requires_grad and bool((target != ignore_index).any()):
                loss.backward()
                opt.step()
            sched.step()
            losses.append(float(loss.detach()) if torch.isfinite(loss) else math.nan)
        finite = [x for x in losses if not math.isnan(x)]
        history.append(sum(finite) / len(finite) if finite else math.nan)
    return history


@torch.no_grad()
def score_head(
    head: ProbeHead,
    batcher: Batcher,
    n: int,
    *,
    num_classes: int,
    ignore_index: int,
    batch_size: int,
) -> tuple[SegScores, Tensor]:
    """Scores and the (K, K) confusion matrix of ``head`` over ``n`` samples."""
    head.eval()
    conf = torch.zeros(num_classes, num_classes, dtype=torch.int64)
    for idx in batches(n, batch_size, None):
        feats, target = batcher(idx)
        pred = head(feats, tuple(target.shape[-2:])).argmax(1)
        conf += confusion_matrix(pred, target, num_classes, ignore_index)
    return scores(conf), conf


def fit_probe(
    features: dict[str, Tensor],
    labels: Tensor,
    *,
    num_classes: int,
    ignore_index: int,
    epochs: int = 30,
    batch_size: int = 16,
    lr: float = 1e-2,
    weight_decay: float = 1e-4,
    seed: int = 0,
) -> ProbeHead:
    """A linear probe trained on fixed features {level: (N, C, h, w)} for labels (N, H, W)."""
    torch.manual_seed(seed)
    device = labels.device
    head = ProbeHead(sum(f.shape[1] for f in features.values()), num_classes).to(device)

    def batcher(idx: Tensor) -> tuple[dict[str, Tensor], Tensor]:
        return {lv: f[idx].to(device).float() for lv, f in features.items()}, labels[idx].to(device)

    fit_head(
        head,
        batcher,
        len(labels),
        num_classes=num_classes,
        ignore_index=ignore_index,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        weight_decay=weight_decay,
        seed=seed,
    )
    return head
