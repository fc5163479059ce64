"""Segmentation evaluation of a pretrained backbone (``datakit eval``).

Two protocols, both trained on the ``label`` member of ``train_split`` and scored on ``eval_split``
(or, when the dataset has no such split, on a held-out part of ``train_split`` chosen by a stable hash
of the sample key):

- ``linear``: the backbone is frozen (eval mode); a :class:`ProbeHead` (features of the chosen levels
  upsampled to the finest one and concatenated, per-channel standardisation, one 1x1 conv) is trained
  on its features. Frozen features are computed once and cached when they fit in ``cache_mb``.
- ``finetune``: the same head, and the backbone is updated too (lr x ``backbone_lr_scale``), with
  horizontal flips.

Images are resized to the evaluation size (short side ``image_size``, long side keeping the dataset's
aspect, both multiples of 32; RGB by area, labels by nearest) and held in memory as uint8, so
``max_train`` / ``max_eval`` cap what a large dataset costs. mIoU is computed at that resolution from
a confusion matrix (:mod:`training.metrics_seg`).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
import zlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from datakit.errors import DatakitError, UsageError
from training.metrics_seg import SegScores, confusion_matrix, scores
from training.models import LEVELS, Backbone

PROTOCOLS = ("linear", "finetune")
# Defaults that depend on the protocol: epochs and head learning rate (AdamW).
PROTOCOL_DEFAULTS: dict[str, dict[str, Any]] = {
    "linear": {"epochs": 30, "lr": 1e-2},
    "finetune": {"epochs": 15, "lr": 1e-3},
}
MEAN = (0.485, 0.456, 0.406)  # ImageNet statistics, as the training views use
STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class EvalConfig:
    """One evaluation. ``checkpoint`` None means a randomly initialised ``arch`` (the baseline)."""

    data: str = ""
    checkpoint: str | None = None  # RUN/last.pt or a torchvision-style state dict (datakit export)
    out: str | None = None  # EVAL.json
    protocol: str = "linear"
    arch: str = "resnet50"  # for random init; a checkpoint names its own architecture
    levels: tuple[str, ...] = ("c5",)  # ("c3", "c4", "c5"): the concatenated feature maps
    train_split: str = "train"
    eval_split: str = "val"
    holdout: float = 0.2  # fraction of train_split scored when eval_split is missing
    image_size: int = 224  # short side of the evaluation input
    max_train: int | None = None
    max_eval: int | None = None
    epochs: int | None = None  # None: the protocol's default
    batch_size: int = 16
    lr: float | None = None  # head lr; None: the protocol's default
    backbone_lr_scale: float = 0.1  # finetune: backbone lr = lr x this
    weight_decay: float = 1e-4
    cache_mb: int = 2048  # linear: cache frozen features when they fit in this many MiB
    workers: int = 0  # decoding processes while reading the splits
    device: str = "auto"
    seed: int = 0


def validate(cfg: EvalConfig) -> None:
    """Raise UsageError for values out of range."""
    if cfg.protocol not in PROTOCOLS:
        raise UsageError(f"protocol {cfg.protocol!r} is not one of {', '.join(PROTOCOLS)}")
    if not cfg.levels or set(cfg.levels) - set(LEVELS):
        raise UsageError(
            f"levels must be a non-empty subset of {', '.join(LEVELS)}, got {cfg.levels}"
        )
    if cfg.device not in ("auto", "cpu", "cuda"):
        raise UsageError(f"device {cfg.device!r} is not one of auto, cpu, cuda")
    if cfg.image_size < 32 or cfg.batch_size < 1 or (cfg.epochs is not None and cfg.epochs < 1):
        raise UsageError("image_size must be >= 32, batch_size and epochs >= 1")
    if not 0 < cfg.holdout < 1:
        raise UsageError(f"holdout must be in (0, 1), got {cfg.holdout}")


def build_config(*layers: tuple[str, Mapping[str, Any]]) -> EvalConfig:
    """Merge (where, mapping) layers over the defaults, later layers winning (defaults < YAML file <
    flags); ``None`` values are skipped. Raises UsageError for an unknown key or a bad value."""
    names = {f.name for f in dataclasses.fields(EvalConfig)}
    merged: dict[str, Any] = {}
    for where, layer in layers:
        for key, value in layer.items():
            name = key.replace("-", "_")
            if name not in names:
                raise UsageError(f"{where}: unknown eval config key {key!r}")
            if value is None:
                continue
            if name == "levels" and isinstance(value, str):
                value = tuple(v.strip() for v in value.split(",") if v.strip())
            merged[name] = tuple(value) if isinstance(value, list) else value
    try:
        cfg = EvalConfig(**merged)
    except TypeError as exc:
        raise UsageError(f"eval config: {exc}") from None
    validate(cfg)
    return cfg


# --- backbone ----------------------------------------------------------------------------------


def load_backbone(
    checkpoint: str | None, levels: tuple[str, ...] = ("c5",), *, arch: str = "resnet50"
) -> Backbone:
    """The backbone of a ``RUN/last.pt`` (its ``backbone`` entry) or of a plain torchvision ResNet
    state dict (``fc.*`` ignored, architecture read from the keys), returning ``levels``; a randomly
    initialised ``arch`` when ``checkpoint`` is None. Raises DatakitError for a missing or unfit file."""
    if checkpoint is None:
        return Backbone(arch, levels)
    p = Path(checkpoint)
    if not p.is_file():
        raise DatakitError(f"{checkpoint}: no such checkpoint")
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # any unpickling failure means a bad file for the user
        raise DatakitError(f"{checkpoint}: not a readable checkpoint ({exc})") from None
    if isinstance(obj, dict) and isinstance(obj.get("backbone"), dict):
        obj = obj["backbone"]
    if not isinstance(obj, dict) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise DatakitError(f"{checkpoint}: not a backbone state dict")
    state = {k.removeprefix("module."): v for k, v in obj.items() if not k.startswith("fc.")}
    arch = "resnet50" if "layer1.0.conv3.weight" in state else "resnet18"
    backbone = Backbone(arch, levels)
    try:
        missing, unexpected = backbone.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shapes that do not fit
        raise DatakitError(
            f"{checkpoint}: does not fit {arch} ({str(exc).splitlines()[-1].strip()})"
        ) from None
    if missing or unexpected:
        raise DatakitError(
            f"{checkpoint}: does not fit {arch} (missing {len(missing)} keys, e.g. {missing[:2]}; "
            f"unexpected {len(unexpected)}, e.g. {unexpected[:2]})"
        )
    return backbone


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


# --- data --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LabeledImages:
    """images (N, 3, H, W) uint8, labels (N, H, W) int64 with ignore_index kept, keys in order."""

    images: Tensor
    labels: Tensor
    keys: list[str]

    def __len__(self) -> int:
        return len(self.keys)


def eval_size(height: int, width: int, short: int) -> tuple[int, int]:
    """(H, W) with the short side ~``short``, the aspect kept, both multiples of 32."""
    scale = short / min(height, width)
    return (max(32, round(height * scale / 32) * 32), max(32, round(width * scale / 32) * 32))


def in_holdout(key: str, fraction: float) -> bool:
    """Stable across runs and machines: crc32 of the key."""
    return zlib.crc32(key.encode()) % 10_000 < fraction * 10_000


class _SplitReader(torch.utils.data.IterableDataset):  # type: ignore[type-arg]
    def __init__(
        self, urls: list[str], size: tuple[int, int], select: Callable[[str], bool]
    ) -> None:
        self.urls, self.size, self.select = urls, size, select

    def __iter__(self) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
        from datakit.reader import pipeline

        h, w = self.size
        for s in pipeline(self.urls, split_by_worker=True):
            if not self.select(s.key):
                continue
            if s.label is None:
                raise DatakitError(f"{s.url}: sample {s.key} has no label member")
            rgb = cv2.resize(s.rgb, (w, h), interpolation=cv2.INTER_AREA)
            label = cv2.resize(s.label, (w, h), interpolation=cv2.INTER_NEAREST)
            yield s.key, rgb, label.astype(np.int64)


def read_split(
    dataset: Any,
    split: str,
    size: tuple[int, int],
    *,
    select: Callable[[str], bool] = lambda key: True,
    limit: int | None = None,
    workers: int = 0,
) -> LabeledImages:
    """Decode and resize the samples of ``split`` accepted by ``select`` (at most ``limit``, taken from
    the first shards in manifest order, then by key) into memory."""
    urls, entries, counted = [], dataset.info.shards_of(split), 0
    for entry, url in zip(entries, dataset.shard_urls(split), strict=True):
        if limit is not None and counted >= limit:
            break
        urls.append(url)
        counted += entry.num_samples
    if not urls:
        raise DatakitError(f"{dataset.url}: no samples in split {split!r}")
    reader = _SplitReader(urls, size, select)
    loader = torch.utils.data.DataLoader(
        reader, batch_size=None, num_workers=min(workers, len(urls))
    )
    rows = sorted(loader, key=lambda r: r[0])[:limit]
    if not rows:
        raise DatakitError(f"{dataset.url}: no samples selected from split {split!r}")
    images = torch.stack([torch.as_tensor(np.asarray(r[1])).permute(2, 0, 1) for r in rows])
    labels = torch.stack([torch.as_tensor(np.asarray(r[2])) for r in rows])
    return LabeledImages(images.contiguous(), labels, [str(r[0]) for r in rows])


def normalise(images: Tensor) -> Tensor:
    """(B, 3, H, W) uint8 -> float32 normalised with ImageNet statistics."""
    mean = torch.tensor(MEAN, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(STD, device=images.device).view(1, 3, 1, 1)
    return (images.float() / 255.0 - mean) / std


# --- fitting -----------------------------------------------------------------------------------

# Sample indices (B,) -> (features {level: (B, C, h, w)}, labels (B, H, W)) on the device.
Batcher = Callable[[Tensor], tuple[dict[str, Tensor], Tensor]]


def _batches(n: int, batch_size: int, generator: torch.Generator | None) -> Iterator[Tensor]:
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
        for idx in _batches(n, batch_size, gen):
            feats, target = batcher(idx)
            logits = head(feats, tuple(target.shape[-2:]))
            loss = F.cross_entropy(logits, target, ignore_index=ignore_index)
            opt.zero_grad(set_to_none=True)
            if loss.requires_grad:  # a batch with every pixel ignored has no gradient
                loss.backward()
                opt.step()
            sched.step()
            losses.append(float(loss.detach()) if torch.isfinite(loss) else math.nan)
        history.append(float(np.nanmean(losses)) if losses else math.nan)
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
    for idx in _batches(n, batch_size, None):
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


# --- the protocols -----------------------------------------------------------------------------


def _device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA device is available")
    use_cuda = name == "cuda" or (name == "auto" and torch.cuda.is_available())
    return torch.device("cuda" if use_cuda else "cpu")


def _forward(backbone: Backbone, images: Tensor, device: torch.device) -> dict[str, Tensor]:
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        return backbone(normalise(images.to(device, non_blocking=True)))


def _frozen_batcher(
    backbone: Backbone, data: LabeledImages, device: torch.device, cache_mb: int, batch_size: int
) -> Batcher:
    """Features of the frozen backbone: computed once and cached (float16) when they fit."""
    backbone.eval().requires_grad_(False)
    with torch.no_grad():
        probe = _forward(backbone, data.images[:1], device)
    per_sample = sum(f[0].numel() for f in probe.values()) * 2
    if per_sample * len(data) <= cache_mb * 2**20:
        cache: dict[str, list[Tensor]] = {lv: [] for lv in probe}
        with torch.no_grad():
            for idx in _batches(len(data), batch_size, None):
                for lv, f in _forward(backbone, data.images[idx], device).items():
                    cache[lv].append(f.half())
        feats = {lv: torch.cat(parts) for lv, parts in cache.items()}

        def cached(idx: Tensor) -> tuple[dict[str, Tensor], Tensor]:
            on = idx.to(device)
            return {lv: f[on].float() for lv, f in feats.items()}, data.labels[idx].to(device)

        return cached

    @torch.no_grad()
    def streamed(idx: Tensor) -> tuple[dict[str, Tensor], Tensor]:
        return _forward(backbone, data.images[idx], device), data.labels[idx].to(device)

    return streamed


def _tuned_batcher(
    backbone: Backbone, data: LabeledImages, device: torch.device, seed: int
) -> Batcher:
    """Images through the backbone with gradients, flipped horizontally with p = 0.5 (labels too)."""
    gen = torch.Generator().manual_seed(seed + 1)

    def batcher(idx: Tensor) -> tuple[dict[str, Tensor], Tensor]:
        images, labels = data.images[idx], data.labels[idx]
        flip = torch.rand(len(idx), generator=gen) < 0.5
        images = torch.where(flip.view(-1, 1, 1, 1), images.flip(-1), images)
        labels = torch.where(flip.view(-1, 1, 1), labels.flip(-1), labels)
        return _forward(backbone, images, device), labels.to(device)

    return batcher


def _json_float(v: float) -> float | None:
    return None if math.isnan(v) else round(v, 6)


def evaluate(cfg: EvalConfig, *, log: Callable[[str], None] = lambda msg: None) -> dict[str, Any]:
    """Run the protocol and return the result dict (written to ``cfg.out`` as JSON when set):
    ``miou`` (0-1), ``per_class_iou`` (aligned with ``classes``, null for a class absent from both
    targets and predictions), ``classes``, ``pixel_accuracy``, ``confusion`` (rows = target) and the
    run's details. Raises DatakitError for a dataset without labels or a missing split."""
    from datakit.reader import open_dataset

    validate(cfg)
    t0 = time.perf_counter()
    ds = open_dataset(cfg.data)
    label_set = ds.info.labels
    if not label_set:
        raise DatakitError(
            f"{cfg.data}: the dataset has no labels; the probe needs the label member"
        )
    classes, ignore = list(label_set["classes"]), int(label_set["ignore_index"])
    num_classes = len(classes)
    if cfg.train_split not in ds.info.splits:
        raise DatakitError(
            f"{cfg.data}: no split {cfg.train_split!r} (has {', '.join(ds.info.splits)})"
        )
    holdout = cfg.eval_split not in ds.info.splits
    first = ds.take(1, cfg.train_split)[0]
    size = eval_size(first.rgb.shape[0], first.rgb.shape[1], cfg.image_size)

    def keep_train(key: str) -> bool:
        return not (holdout and in_holdout(key, cfg.holdout))

    def keep_eval(key: str) -> bool:
        return not holdout or in_holdout(key, cfg.holdout)

    eval_split = cfg.train_split if holdout else cfg.eval_split
    eval_name = f"{cfg.train_split}[held out {cfg.holdout:.0%}]" if holdout else cfg.eval_split
    train = read_split(
        ds, cfg.train_split, size, select=keep_train, limit=cfg.max_train, workers=cfg.workers
    )
    test = read_split(
        ds, eval_split, size, select=keep_eval, limit=cfg.max_eval, workers=cfg.workers
    )
    unknown = 0
    for part in (train, test):
        bad = (part.labels != ignore) & ((part.labels < 0) | (part.labels >= num_classes))
        unknown += int(bad.sum())
        part.labels[bad] = ignore
    log(
        f"eval: {len(train)} train / {len(test)} {eval_name} samples at {size[1]}x{size[0]}, "
        f"{num_classes} classes, protocol {cfg.protocol}"
    )

    device = _device(cfg.device)
    torch.manual_seed(cfg.seed)
    backbone = load_backbone(cfg.checkpoint, cfg.levels, arch=cfg.arch).to(device)
    defaults = PROTOCOL_DEFAULTS[cfg.protocol]
    epochs = cfg.epochs or defaults["epochs"]
    lr = cfg.lr if cfg.lr is not None else defaults["lr"]
    head = ProbeHead(sum(backbone.channels.values()), num_classes).to(device)
    if cfg.protocol == "linear":
        history = fit_head(
            head,
            _frozen_batcher(backbone, train, device, cfg.cache_mb, cfg.batch_size),
            len(train),
            epochs=epochs,
            lr=lr,
            weight_decay=cfg.weight_decay,
            seed=cfg.seed,
            num_classes=num_classes,
            ignore_index=ignore,
            batch_size=cfg.batch_size,
        )
    else:
        backbone.train()
        history = fit_head(
            head,
            _tuned_batcher(backbone, train, device, cfg.seed),
            len(train),
            epochs=epochs,
            lr=lr,
            weight_decay=cfg.weight_decay,
            seed=cfg.seed,
            extra_params=list(backbone.parameters()),
            extra_lr=lr * cfg.backbone_lr_scale,
            num_classes=num_classes,
            ignore_index=ignore,
            batch_size=cfg.batch_size,
        )
    sc, conf = score_head(
        head,
        _frozen_batcher(backbone, test, device, 0, cfg.batch_size),
        len(test),
        num_classes=num_classes,
        ignore_index=ignore,
        batch_size=cfg.batch_size,
    )
    result: dict[str, Any] = {
        "miou": _json_float(sc.miou),
        "per_class_iou": [_json_float(v) for v in sc.iou],
        "classes": classes,
        "pixel_accuracy": _json_float(sc.pixel_accuracy),
        "support": sc.support,
        "confusion": conf.tolist(),
        "protocol": cfg.protocol,
        "checkpoint": cfg.checkpoint,
        "arch": backbone.arch,
        "levels": list(backbone.levels),
        "labels": label_set.get("name"),
        "ignore_index": ignore,
        "train_split": cfg.train_split,
        "eval_split": eval_name,
        "num_train": len(train),
        "num_eval": len(test),
        "input_size": {"width": size[1], "height": size[0]},
        "unknown_label_pixels": unknown,
        "epochs": epochs,
        "train_loss": [_json_float(v) for v in history],
        "device": str(device),
        "seconds": round(time.perf_counter() - t0, 2),
        "config": {
            k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(cfg).items()
        },
    }
    if cfg.out:
        write_json(cfg.out, result)
    return result


def write_json(path: str, obj: dict[str, Any]) -> None:
    """Atomic write (temporary file beside it, then rename)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=1, allow_nan=False) + "\n")
    os.replace(tmp, p)
