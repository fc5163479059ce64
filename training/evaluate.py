"""Segmentation evaluation of a pretrained backbone (``datakit eval``).

Two protocols, both trained on the ``label`` member of ``train_split`` and scored on ``eval_split``
(left unset: ``val``, or, when the dataset has no ``val``, a held-out part of ``train_split`` chosen by
a stable hash of the sample key; a named split the dataset lacks is an error):

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
import time
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from datakit import skips
from datakit.errors import DatakitError, UsageError
from datakit.outputs import OutputFiles
from datakit.urls import check_writable, redact, register_url_credentials
from training.config import coerce
from training.eval_data import (
    LabeledImages,
    LabelRange,
    eval_size,
    in_holdout,
    normalise,
    read_split,
)
from training.models import (
    LEVELS,
    Backbone,
    arch_of_state,
    load_backbone_weights,
    read_backbone_state,
    read_weights,
)
from training.probe import Batcher, ProbeHead, batches, fit_head, score_head

PROTOCOLS = ("linear", "finetune")
DEFAULT_EVAL_SPLIT = "val"  # scored when eval_split is None; a hold-out of train when absent
# Defaults that depend on the protocol: epochs and head learning rate (AdamW).
PROTOCOL_DEFAULTS: dict[str, dict[str, Any]] = {
    "linear": {"epochs": 30, "lr": 1e-2},
    "finetune": {"epochs": 15, "lr": 1e-3},
}


@dataclass(frozen=True)
class EvalConfig:
    """One evaluation. ``checkpoint`` None means a randomly initialised ``arch`` (the baseline)."""

    data: str = ""
    checkpoint: str | None = None  # RUN/last.pt or a torchvision-style state dict (datakit export)
    out: str | None = None  # EVAL.json
    protocol: str = "linear"
    arch: str | None = None  # random init: [resnet50]; a checkpoint names its own (must agree)
    levels: tuple[str, ...] = ("c5",)  # ("c3", "c4", "c5"): the concatenated feature maps
    train_split: str = "train"
    eval_split: str | None = None  # None: val, or a hold-out of train_split when there is no val
    holdout: float = 0.2  # fraction of train_split scored when eval_split is None and no val
    image_size: int = 224  # short side of the evaluation input
    max_train: int | None = None
    max_eval: int | None = None
    epochs: int | None = None  # None: the protocol's default
    batch_size: int = 16
    lr: float | None = None  # head lr; None: the protocol's default
    backbone_lr_scale: float = 0.1  # finetune: backbone lr = lr x this
    weight_decay: float = 1e-4
    cache_mb: int = 2048  # linear: cache frozen features when they fit in this many MiB
    # Re-estimate the backbone's BatchNorm statistics on the probe's train images first (a random
    # backbone's running statistics are the initial 0/1, not its activations').
    recalibrate_bn: bool = False
    workers: int = 0  # decoding processes while reading the splits
    on_error: str = "fail"  # fail | skip: a bad sample or unreadable shard stops, or is skipped
    device: str = "auto"
    seed: int = 0


def validate(cfg: EvalConfig) -> None:
    """Raise UsageError for values out of range."""
    if cfg.protocol not in PROTOCOLS:
        raise UsageError(f"protocol {cfg.protocol!r} is not one of {', '.join(PROTOCOLS)}")
    if not cfg.levels or set(cfg.levels) - set(LEVELS):
        raise UsageError(
            f"--levels must be a non-empty subset of {', '.join(LEVELS)} (comma-separated), "
            f"got {','.join(cfg.levels) or 'none'}"
        )
    if cfg.on_error not in ("fail", "skip"):
        raise UsageError(f"on_error {cfg.on_error!r} is not one of fail, skip")
    if cfg.device not in ("auto", "cpu", "cuda"):
        raise UsageError(f"device {cfg.device!r} is not one of auto, cpu, cuda")
    if cfg.image_size < 32 or cfg.batch_size < 1 or (cfg.epochs is not None and cfg.epochs < 1):
        raise UsageError("image_size must be >= 32, batch_size and epochs >= 1")
    if cfg.lr is not None and not cfg.lr > 0:
        raise UsageError(f"lr must be positive, got {cfg.lr}")
    if not 0 < cfg.holdout < 1:
        raise UsageError(f"holdout must be in (0, 1), got {cfg.holdout}")
    if cfg.out:
        check_writable(cfg.out, "--out", local_only=True)


def build_config(*layers: tuple[str, Mapping[str, Any]]) -> EvalConfig:
    """Merge (where, mapping) layers over the defaults, later layers winning (defaults < YAML file <
    flags); ``None`` values are skipped. Raises UsageError for an unknown key or a bad value."""
    hints = typing.get_type_hints(EvalConfig)
    merged: dict[str, Any] = {}
    for where, layer in layers:
        for key, value in layer.items():
            name = key.replace("-", "_")
            if name not in hints:
                raise UsageError(f"{where}: unknown eval config key {key!r}")
            if value is None:
                continue
            if name != "levels":
                merged[name] = coerce(name, value, hints[name])
                continue
            if isinstance(value, str):
                value = [v.strip() for v in value.split(",") if v.strip()]
            if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
                raise UsageError(
                    f"config levels: expected c5 or a list like [c3, c4, c5], got {value!r}"
                )
            merged[name] = tuple(value)
    if isinstance(merged.get("data"), str):  # keep user:secret@ out of EVAL.json
        merged["data"] = register_url_credentials(merged["data"])
    try:
        cfg = EvalConfig(**merged)
    except TypeError as exc:
        raise UsageError(f"eval config: {exc}") from None
    validate(cfg)
    return cfg


# --- backbone ----------------------------------------------------------------------------------


def load_backbone(
    checkpoint: str | None,
    levels: tuple[str, ...] = ("c5",),
    *,
    arch: str | None = None,
    state: dict[str, Any] | None = None,
) -> Backbone:
    """The backbone of a ``RUN/last.pt`` (its ``backbone`` entry) or of a plain torchvision ResNet
    state dict (``fc.*`` ignored, architecture read from the keys; ``state`` when already read),
    returning ``levels``; a randomly initialised ``arch`` (resnet50) when ``checkpoint`` is None.
    Raises DatakitError for a missing or unfit file, UsageError for an ``arch`` it does not hold."""
    if checkpoint is None:
        return Backbone(arch or "resnet50", levels)
    if state is None:
        state = read_backbone_state(checkpoint, "checkpoint")
    backbone = Backbone(_held_arch(checkpoint, state, arch), levels)
    load_backbone_weights(backbone, checkpoint, state)
    return backbone


def _held_arch(checkpoint: str, state: dict[str, Any], arch: str | None) -> str:
    """The architecture ``state`` holds; UsageError when ``arch`` (--arch) names another."""
    held = arch_of_state(state)
    if arch is not None and arch != held:
        raise UsageError(
            f"--arch {arch}: {checkpoint} holds a {held} backbone (a checkpoint names its own "
            f"architecture; leave --arch out)"
        )
    return held


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
            for idx in batches(len(data), batch_size, None):
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


@torch.no_grad()
def recalibrate_bn(
    backbone: Backbone, data: LabeledImages, device: torch.device, batch_size: int
) -> None:
    """Replace every BatchNorm's running statistics by their average over ``data`` (one pass)."""
    norms = [m for m in backbone.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the pass
    backbone.train()
    for idx in batches(len(data), batch_size, None):
        _forward(backbone, data.images[idx], device)
    backbone.eval()
    # finetune goes on updating them: as a moving average, not a cumulative one from this pass on
    for m, momentum in zip(norms, momenta, strict=True):
        m.momentum = momentum


def _json_float(v: float) -> float | None:
    return None if math.isnan(v) else round(v, 6)


def evaluate(cfg: EvalConfig, *, log: Callable[[str], None] = lambda msg: None) -> dict[str, Any]:
    """Run the protocol and return the result dict (written to ``cfg.out`` as JSON when set):
    ``miou`` (0-1), ``per_class_iou`` (aligned with ``classes``, null for a class absent from both
    targets and predictions), ``classes``, ``pixel_accuracy``, ``confusion`` (rows = target) and the
    run's details: ``pretraining`` (the checkpoint's method and step; null for random init or plain
    weights) and ``config``, the resolved configuration (the architecture used, the protocol's
    epochs and lr, the split scored). Raises DatakitError for a dataset without labels or without
    ``train_split`` and for an ``out`` that cannot be written (before any work), UsageError for an
    ``eval_split`` the dataset does not have."""
    validate(cfg)
    if not cfg.out:
        return _evaluate(cfg, log)
    with OutputFiles([cfg.out]) as outputs:
        result = _evaluate(cfg, log)
        outputs.write(cfg.out, (json.dumps(result, indent=1, allow_nan=False) + "\n").encode())
    return result


def _evaluate(cfg: EvalConfig, log: Callable[[str], None]) -> dict[str, Any]:
    from datakit.reader import open_dataset

    state, pretraining = None, None  # the checkpoint is read, its architecture checked, first
    if cfg.checkpoint is not None:
        state, pretraining = read_weights(cfg.checkpoint, "checkpoint")
        _held_arch(cfg.checkpoint, state, cfg.arch)
    t0 = time.perf_counter()
    ds = open_dataset(cfg.data)
    label_set = ds.info.labels
    if not label_set:
        raise DatakitError(
            f"{cfg.data}: the dataset has no labels; the probe needs the label member"
        )
    if not label_set.get("classes"):  # convert folder --label without --classes
        raise DatakitError(
            f"{cfg.data}: _info.json's labels list no classes; the probe needs the class names "
            "(convert folder: --classes FILE)"
        )
    classes, ignore = list(label_set["classes"]), int(label_set["ignore_index"])
    num_classes = len(classes)
    if cfg.train_split not in ds.info.splits:
        raise DatakitError(
            f"{cfg.data}: no split {cfg.train_split!r} (has {', '.join(ds.info.splits)})"
        )
    if cfg.eval_split is not None and cfg.eval_split not in ds.info.splits:
        raise UsageError(
            f"--eval-split {cfg.eval_split!r}: {redact(cfg.data)} has no such split "
            f"(has {', '.join(ds.info.splits)})"
        )
    named = cfg.eval_split or DEFAULT_EVAL_SPLIT
    if named == cfg.train_split and cfg.eval_split is not None:
        raise UsageError(
            f"--train-split and --eval-split are both {named!r}: the probe would be scored on the "
            "images it was trained on (leave out --eval-split to score a held-out part of it)"
        )
    # no other split to score on (or the default one is the training split): hold out a part
    holdout = named not in ds.info.splits or named == cfg.train_split
    skip = cfg.on_error == "skip"
    taken = _first_sample(ds, cfg.train_split, skip)
    if not taken:  # every shard of the split skipped as unreadable (--on-shard-error skip)
        raise DatakitError(f"{redact(cfg.data)}: no readable sample in split {cfg.train_split!r}")
    first = taken[0]
    size = eval_size(first.rgb.shape[0], first.rgb.shape[1], cfg.image_size)

    def keep_train(key: str) -> bool:
        return not (holdout and in_holdout(key, cfg.holdout))

    def keep_eval(key: str) -> bool:
        return not holdout or in_holdout(key, cfg.holdout)

    eval_split = cfg.train_split if holdout else named
    eval_name = f"{cfg.train_split}[held out {cfg.holdout:.0%}]" if holdout else named

    def none_in(side: str, left: str) -> str:
        """What a split read empty adds when a hold-out picked its samples: a hash of each key picks
        them, so a small split may hold out none or all."""
        if not holdout:
            return ""
        return (
            f" {side} the {cfg.holdout:.0%} held out for scoring (a hash of each key picks them; "
            f"of its {ds.info.num_samples(cfg.train_split)} samples, none is {left}: add a val "
            "split or more samples, or set holdout in --config)"
        )

    values = LabelRange(num_classes, ignore)
    train = read_split(
        ds,
        cfg.train_split,
        size,
        select=keep_train,
        limit=cfg.max_train,
        workers=cfg.workers,
        skip=skip,
        label_range=values,
        none_selected=none_in("outside", "left to train on"),
    )
    test = read_split(
        ds,
        eval_split,
        size,
        select=keep_eval,
        limit=cfg.max_eval,
        workers=cfg.workers,
        skip=skip,
        label_range=values,
        none_selected=none_in("for", "held out"),
    )
    skipped = train.skipped + test.skipped
    for part, name, what in (
        (train, cfg.train_split, "train the probe on"),
        (test, eval_name, "score"),
    ):
        if not bool((part.labels != ignore).any()):
            raise DatakitError(
                f"{cfg.data}: every label pixel of the {skips.plural(len(part), name + ' sample')} "
                f"is ignore_index {ignore}: nothing to {what}"
            )
    log(
        f"eval: {len(train)} train / {len(test)} {eval_name} samples at {size[1]}x{size[0]}, "
        f"{num_classes} classes, protocol {cfg.protocol}"
    )

    device = _device(cfg.device)
    torch.manual_seed(cfg.seed)
    backbone = load_backbone(cfg.checkpoint, cfg.levels, arch=cfg.arch, state=state).to(device)
    if cfg.recalibrate_bn:
        recalibrate_bn(backbone, train, device, cfg.batch_size)
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
    resolved = dataclasses.replace(
        cfg,
        arch=backbone.arch,
        eval_split=None if holdout else named,
        epochs=epochs,
        lr=lr,
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
        "pretraining": pretraining,
        "arch": backbone.arch,
        "levels": list(backbone.levels),
        "labels": label_set.get("name"),
        "ignore_index": ignore,
        "train_split": cfg.train_split,
        "eval_split": eval_name,
        "num_train": len(train),
        "num_eval": len(test),
        "input_size": {"width": size[1], "height": size[0]},
        "skipped": skipped.as_dict(),
        "epochs": epochs,
        "train_loss": [_json_float(v) for v in history],
        "device": str(device),
        "seconds": round(time.perf_counter() - t0, 2),
        "config": {
            k: list(v) if isinstance(v, tuple) else v
            for k, v in dataclasses.asdict(resolved).items()
        },
    }
    return result


def _first_sample(ds: Any, split: str, skip: bool) -> list[Any]:
    """The split's first sample (a list of one, or empty), for the evaluation size. With ``skip``,
    bad samples and shards are passed over quietly: the splits' reads report them."""
    if not skip:
        return list(ds.take(1, split))
    with skips.unreported():
        return list(ds.take(1, split, handler=skips.skip_handler))
