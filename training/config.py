"""The training configuration: one frozen dataclass, resolved as defaults < YAML file < flags.

Unknown keys are an error; the resolved configuration (every ``None`` replaced by the value it stands
for) is written to ``RUN/config.yaml``.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from datakit.errors import UsageError
from datakit.urls import check_writable, register_url_credentials

LEVEL_NAMES = ("c3", "c4", "c5")

# The recipe of each method's paper where the user leaves a knob at None.
METHOD_DEFAULTS: dict[str, dict[str, Any]] = {
    "pixpro": {"optimizer": "lars", "base_lr": 1.0, "weight_decay": 1e-5},
    "pixpro-depth": {"optimizer": "lars", "base_lr": 1.0, "weight_decay": 1e-5},
    "pixcon": {"optimizer": "sgd", "base_lr": 0.4, "weight_decay": 1e-4},
}


@dataclass(frozen=True)
class TrainConfig:
    """Everything one training run needs. See docs/training.md for each knob."""

    # data and run
    data: str = ""
    out: str = ""
    split: str = "train"
    method: str = "pixpro"
    arch: str = "resnet50"
    weights: str | None = None  # local torchvision state dict to start the backbone from
    steps: int = 1000  # optimiser steps
    batch_size: int = 64  # GLOBAL batch per optimiser step (all ranks, all accumulation steps)
    accum_steps: int = 1
    image_size: int = 224
    workers: int = 4  # data-loading processes per rank
    device: str = "auto"  # auto | cpu | cuda
    seed: int = 0
    resume: bool = False
    # views and loading
    crop_scale_min: float = 0.08
    photometric: bool = True
    shuffle_buffer: int = 1000  # samples
    resampled: bool = False  # draw shards with replacement, ranks no longer disjoint
    epoch_samples: int | None = None  # samples per "epoch" when resampled (None = the split's)
    prefetch: int | None = None  # batches prepared ahead in a thread; None = 2 on CUDA, 0 on CPU
    gpu_views: bool | None = None  # decode JPEGs and resample views on the GPU; None = on for CUDA
    on_error: str = (
        "fail"  # fail | skip: a bad sample or unreadable shard stops the run, or is skipped
    )
    # optimisation
    optimizer: str | None = None  # lars | sgd | adamw; None = the method's recipe
    lr: float | None = None  # None = base_lr * batch_size / 256
    base_lr: float | None = None
    weight_decay: float | None = None
    momentum: float = 0.9  # SGD / LARS momentum
    lars_trust: float = 0.001
    warmup_steps: int | None = None  # None = 5 epochs of the split, at most steps // 2
    ema: float = 0.99  # base momentum of the momentum encoder
    # speed
    precision: str = "auto"  # auto (bf16 on CUDA, fp32 on CPU) | bf16 | fp32
    channels_last: bool | None = None  # None = on for CUDA
    compile: bool = False
    sync_bn: bool = True  # SyncBatchNorm when distributed on CUDA
    deterministic: bool = False
    # logging and checkpoints
    log_every: int = 10
    ckpt_every: int = 500
    tensorboard: bool = True
    progress: bool = True
    # PixPro and its depth-aware variant
    radius: float = 0.7
    proj_hidden: int = 4096
    proj_dim: int = 256
    ppm_gamma: float = 2.0
    multiscale: bool = False  # loss on C3, C4, C5 (else C5 only)
    level_weights: tuple[float, float, float] = (1.0, 1.0, 1.0)  # C3, C4, C5
    depth_mode: str = "norm"  # norm | log | abs
    depth_threshold: float = 0.2
    depth_min_valid: float = 0.25  # fraction of a cell's pixels with valid depth
    depth_fallback: str = "spatial"  # spatial | drop
    # PixCon
    matching: str = "feature"  # feature | coord
    reweight: bool = True
    tau: float = 0.2
    queue_size: int = 65536
    dense_weight: float = 0.5  # lambda
    head_hidden: int = 2048
    head_dim: int = 128
    pred_hidden: int = 2048
    head_bn: bool = True  # BatchNorm in the heads' and predictors' hidden layers (released code)

    @property
    def levels(self) -> tuple[str, ...]:
        return LEVEL_NAMES if self.multiscale else ("c5",)

    @property
    def level_weight(self) -> dict[str, float]:
        return dict(zip(LEVEL_NAMES, self.level_weights, strict=True))


KEYS = tuple(f.name for f in dataclasses.fields(TrainConfig))
CHOICES: dict[str, tuple[str, ...]] = {
    "method": tuple(METHOD_DEFAULTS),
    "arch": ("resnet18", "resnet50"),
    "device": ("auto", "cpu", "cuda"),
    "on_error": ("fail", "skip"),
    "optimizer": ("lars", "sgd", "adamw"),
    "precision": ("auto", "bf16", "fp32"),
    "depth_mode": ("norm", "log", "abs"),
    "depth_fallback": ("spatial", "drop"),
    "matching": ("feature", "coord"),
}


FLOAT_TEXT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def coerce(name: str, value: Any, tp: Any) -> Any:
    """Check and convert one YAML/flag value to the field's type; raises UsageError."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return coerce(name, value, args[0])
    if origin is tuple:
        item_types = typing.get_args(tp)
        if not isinstance(value, list | tuple) or len(value) != len(item_types):
            raise UsageError(
                f"config {name}: expected a list of {len(item_types)} values, got {value!r}"
            )
        return tuple(coerce(name, v, t) for v, t in zip(value, item_types, strict=True))
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise UsageError(f"config {name}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise UsageError(f"config {name}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str) and FLOAT_TEXT.fullmatch(value.strip()):
            return float(value)  # 1e-4: YAML 1.1 (PyYAML) reads a float without a dot as a string
        raise UsageError(f"config {name}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise UsageError(f"config {name}: expected a string, got {value!r}")
    raise TypeError(f"unsupported config type {tp!r}")


def _apply(base: dict[str, Any], updates: Mapping[str, Any], where: str) -> None:
    hints = typing.get_type_hints(TrainConfig)
    for key, value in updates.items():
        name = key.replace("-", "_")
        if name not in hints:
            raise UsageError(f"{where}: unknown config key {key!r}")
        base[name] = coerce(name, value, hints[name])


def read_yaml(path: str | Path) -> dict[str, Any]:
    """A YAML mapping from a file; raises UsageError for a missing file or a non-mapping."""
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"{path}: no such config file")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        reason = " ".join(str(exc).split())  # PyYAML's messages span lines: keep one
        raise UsageError(f"{path}: not valid YAML ({reason})") from None
    if not isinstance(data, dict):
        raise UsageError(f"{path}: a config file must be a mapping of key: value")
    return data


def parse_override(text: str) -> tuple[str, Any]:
    """``key=value`` with a YAML scalar value (``--set depth_mode=log``)."""
    if "=" not in text:
        raise UsageError(f"--set {text!r}: expected KEY=VALUE")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def build_config(*layers: tuple[str, Mapping[str, Any]]) -> TrainConfig:
    """Merge (where, mapping) layers over the defaults, later layers winning, then validate."""
    merged: dict[str, Any] = {}
    for where, layer in layers:
        _apply(merged, layer, where)
    if isinstance(merged.get("data"), str):  # keep user:secret@ out of config.yaml and last.pt
        merged["data"] = register_url_credentials(merged["data"])
    cfg = TrainConfig(**merged)
    validate(cfg)
    return cfg


def from_layers(
    *,
    saved: str | Path | None = None,
    config_file: str | None = None,
    flags: Mapping[str, Any] | None = None,
    overrides: list[str] | tuple[str, ...] = (),
) -> TrainConfig:
    """defaults < ``saved`` (a resumed run's config.yaml) < ``config_file`` < flags (None = not
    given) < ``--set KEY=VALUE`` overrides."""
    layers: list[tuple[str, Mapping[str, Any]]] = []
    if saved is not None and Path(saved).is_file():
        layers.append((str(saved), read_yaml(saved)))
    if config_file:
        layers.append((config_file, read_yaml(config_file)))
    layers.append(("flags", {k: v for k, v in (flags or {}).items() if v is not None}))
    layers.append(("--set", dict(parse_override(o) for o in overrides)))
    return build_config(*layers)


def validate(cfg: TrainConfig) -> None:
    """Raise UsageError for values out of range or contradicting each other."""
    for key, options in CHOICES.items():
        value = getattr(cfg, key)
        if value is not None and value not in options:
            raise UsageError(f"config {key}: {value!r} is not one of {', '.join(options)}")
    if not cfg.data:
        raise UsageError("no dataset: pass --data DATASET (or data: in the config)")
    if not cfg.out:
        raise UsageError("no run folder: pass --out RUN")
    check_writable(cfg.out, "--out", local_only=True)
    positive = (
        "steps",
        "batch_size",
        "accum_steps",
        "image_size",
        "log_every",
        "ckpt_every",
        "queue_size",
        "proj_hidden",
        "proj_dim",
        "head_hidden",
        "head_dim",
        "pred_hidden",
    )
    for key in positive:
        if getattr(cfg, key) < 1:
            raise UsageError(f"config {key}: must be at least 1, got {getattr(cfg, key)}")
    if cfg.epoch_samples is not None and cfg.epoch_samples < 1:
        raise UsageError(f"config epoch_samples: must be at least 1, got {cfg.epoch_samples}")
    for key in (
        "workers",
        "shuffle_buffer",
        "warmup_steps",
        "weight_decay",
        "seed",
    ):  # None: derived
        value = getattr(cfg, key)
        if value is not None and value < 0:
            raise UsageError(f"config {key}: must be >= 0, got {value}")
    for key in ("tau", "lars_trust"):
        if not getattr(cfg, key) > 0:
            raise UsageError(f"config {key}: must be positive, got {getattr(cfg, key)}")
    if not 0 <= cfg.momentum < 1:
        raise UsageError(f"config momentum: must be in [0, 1), got {cfg.momentum}")
    if not 0 <= cfg.ema <= 1:
        raise UsageError(f"config ema: must be in [0, 1], got {cfg.ema}")
    if cfg.image_size % 32:
        raise UsageError(
            f"config image_size: must be a multiple of 32 (the C5 stride), got {cfg.image_size}"
        )
    for key in ("lr", "base_lr"):  # None: derived from the method's recipe
        value = getattr(cfg, key)
        if value is not None and not value > 0:
            raise UsageError(f"config {key}: must be positive, got {value}")
    if not 0 < cfg.crop_scale_min <= 1:
        raise UsageError(f"config crop_scale_min: must be in (0, 1], got {cfg.crop_scale_min}")
    if not 0 <= cfg.dense_weight <= 1:
        raise UsageError(f"config dense_weight: must be in [0, 1], got {cfg.dense_weight}")
    if not all(w >= 0 for w in cfg.level_weights) or not sum(cfg.level_weights) > 0:
        raise UsageError(
            "config level_weights: must be >= 0 (C3, C4, C5) and not all 0, "
            f"got {list(cfg.level_weights)}"
        )
    if not cfg.multiscale and not cfg.level_weights[-1] > 0:
        raise UsageError("config level_weights: C5's weight must be positive without multiscale")


def resolve(cfg: TrainConfig, *, num_samples: int) -> TrainConfig:
    """Fill every None with the value it stands for (method recipe, lr scaling, warmup length)."""
    recipe = METHOD_DEFAULTS[cfg.method]
    base_lr = cfg.base_lr if cfg.base_lr is not None else recipe["base_lr"]
    steps_per_epoch = max(1, num_samples // cfg.batch_size)
    warmup = cfg.warmup_steps
    if warmup is None:
        warmup = min(5 * steps_per_epoch, cfg.steps // 2)
    return dataclasses.replace(
        cfg,
        optimizer=cfg.optimizer or recipe["optimizer"],
        base_lr=base_lr,
        lr=cfg.lr if cfg.lr is not None else base_lr * cfg.batch_size / 256,
        weight_decay=cfg.weight_decay if cfg.weight_decay is not None else recipe["weight_decay"],
        warmup_steps=warmup,
    )


def to_dict(cfg: TrainConfig) -> dict[str, Any]:
    """Plain YAML/JSON-able values (tuples become lists)."""
    out: dict[str, Any] = {}
    for key in KEYS:
        value = getattr(cfg, key)
        out[key] = list(value) if isinstance(value, tuple) else value
    return out


def dump_yaml(cfg: TrainConfig) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)
