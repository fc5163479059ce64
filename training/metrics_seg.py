"""Segmentation scores from a confusion matrix: per-class IoU, mIoU, pixel accuracy.

Conventions follow mmsegmentation: pixels whose target is ``ignore_index`` (or any value outside
``0 .. num_classes - 1``) are not counted; a class that appears neither in the targets nor in the
predictions has no IoU (``nan``, ``null`` in JSON) and is left out of the mean.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor


def confusion_matrix(pred: Tensor, target: Tensor, num_classes: int, ignore_index: int) -> Tensor:
    """pred, target: integer tensors of one shape (e.g. (B, H, W)). Returns (K, K) int64 counts,
    rows = target class, columns = predicted class; ignored targets are dropped."""
    if pred.shape != target.shape:
        raise ValueError(
            f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape"
        )
    t = target.reshape(-1).long()
    p = pred.reshape(-1).long()
    keep = (t != ignore_index) & (t >= 0) & (t < num_classes)
    idx = t[keep] * num_classes + p[keep].clamp(0, num_classes - 1)
    counts = torch.bincount(idx, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes).cpu()


@dataclass(frozen=True)
class SegScores:
    """iou: per-class IoU (nan for a class absent from targets and predictions); miou in 0-1."""

    iou: list[float]
    miou: float
    pixel_accuracy: float
    support: list[int]  # target pixels per class


def scores(conf: Tensor) -> SegScores:
    """Scores of a (K, K) confusion matrix (rows = target, columns = prediction)."""
    c = conf.double()
    tp = c.diag()
    union = c.sum(0) + c.sum(1) - tp
    iou = torch.where(union > 0, tp / union.clamp(min=1), torch.full_like(tp, math.nan))
    present = ~torch.isnan(iou)
    miou = float(iou[present].mean()) if bool(present.any()) else math.nan
    total = float(c.sum())
    acc = float(tp.sum()) / total if total > 0 else math.nan
    return SegScores(
        iou=[float(v) for v in iou],
        miou=miou,
        pixel_accuracy=acc,
        support=[int(v) for v in conf.sum(1)],
    )
