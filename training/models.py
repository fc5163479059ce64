"""Backbones: torchvision ResNet-18/50 with the feature levels C3-C5 (strides 8, 16, 32).

The backbone keeps torchvision's parameter names (``conv1``, ``layer1`` ... ``layer4``) so that its
state dict is a torchvision ResNet state dict minus ``fc`` (see :mod:`training.export`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torchvision
from torch import Tensor, nn

from datakit.errors import DatakitError

LEVELS = ("c3", "c4", "c5")
STRIDES = {"c3": 8, "c4": 16, "c5": 32}
# Output channels of layer2/3/4 (C3/C4/C5) per architecture.
CHANNELS = {
    "resnet18": {"c3": 128, "c4": 256, "c5": 512},
    "resnet50": {"c3": 512, "c4": 1024, "c5": 2048},
}
ARCHS: dict[str, Callable[..., torchvision.models.ResNet]] = {
    "resnet18": torchvision.models.resnet18,
    "resnet50": torchvision.models.resnet50,
}


class Backbone(nn.Module):
    """A torchvision ResNet without its classifier, returning the requested feature levels.

    ``forward(x)``: x (B, 3, S, S) -> {level: (B, C_level, S / stride, S / stride)}.
    """

    def __init__(self, arch: str, levels: tuple[str, ...] = ("c5",)) -> None:
        super().__init__()
        if arch not in ARCHS:
            raise DatakitError(f"unknown architecture {arch!r}; choose from {sorted(ARCHS)}")
        unknown = set(levels) - set(LEVELS)
        if unknown or not levels:
            raise DatakitError(
                f"feature levels must be a non-empty subset of {LEVELS}, got {levels}"
            )
        net = ARCHS[arch](weights=None)
        self.arch = arch
        self.levels = tuple(lv for lv in LEVELS if lv in levels)
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = (
            net.layer1,
            net.layer2,
            net.layer3,
            net.layer4,
        )

    @property
    def channels(self) -> dict[str, int]:
        return {lv: CHANNELS[self.arch][lv] for lv in self.levels}

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        c2 = self.layer1(x)
        c3 = self.layer2(c2)
        c4 = self.layer3(c3)
        c5 = self.layer4(c4)
        feats = {"c3": c3, "c4": c4, "c5": c5}
        return {lv: feats[lv] for lv in self.levels}


def build_backbone(
    arch: str, levels: tuple[str, ...] = ("c5",), weights: str | None = None
) -> Backbone:
    """A randomly initialised backbone, or one loaded from a local torchvision state dict file.

    ``weights`` may hold a plain torchvision ResNet state dict (``fc.*`` is ignored), the output of
    ``datakit export``, or a ``RUN/last.pt`` checkpoint (its ``backbone`` entry). Raises
    :class:`DatakitError` when the file is missing or its keys do not fit ``arch``.
    """
    backbone = Backbone(arch, levels)
    if weights:
        load_backbone_weights(backbone, weights)
    return backbone


def read_backbone_state(path: str, what: str = "weights file") -> dict[str, Tensor]:
    """The backbone tensors of a torchvision ResNet state dict, a ``datakit export`` file or a
    ``RUN/last.pt`` (its ``backbone`` entry): ``module.`` prefixes dropped, ``fc.*`` ignored.
    Raises :class:`DatakitError` for a missing, unreadable or non-state-dict file."""
    return read_weights(path, what)[0]


def read_weights(
    path: str, what: str = "weights file"
) -> tuple[dict[str, Tensor], dict[str, Any] | None]:
    """:func:`read_backbone_state`, and where the file is a ``RUN/last.pt`` what pretrained it:
    ``{"method", "step", "steps"}`` (the step it was saved at, of the run's ``steps``); None for
    plain weights. Raises as :func:`read_backbone_state`."""
    from training.checkpoint import FORMAT, read_torch_file

    obj = read_torch_file(path, what)
    pretraining = None
    if isinstance(obj, dict) and obj.get("format") == FORMAT:
        config = obj["config"] if isinstance(obj.get("config"), dict) else {}
        pretraining = {
            "method": obj.get("method"),
            "step": obj.get("step"),
            "steps": config.get("steps"),
        }
    if isinstance(obj, dict) and isinstance(obj.get("backbone"), dict):
        obj = obj["backbone"]
    if not isinstance(obj, dict) or not all(isinstance(v, Tensor) for v in obj.values()):
        found = f"keys {', '.join(map(str, list(obj)[:4]))}" if isinstance(obj, dict) else None
        hint = (
            "; detectron2's layout: pass RUN/last.pt or a torchvision-format export"
            if isinstance(obj, dict) and "matching_heuristics" in obj
            else ""
        )
        raise DatakitError(
            f"{path}: not a ResNet state dict (holds {found or type(obj).__name__}){hint}"
        )
    state = {k.removeprefix("module."): v for k, v in obj.items() if not k.startswith("fc.")}
    return state, pretraining


def arch_of_state(state: dict[str, Tensor]) -> str:
    """resnet50 (bottleneck blocks have conv3) or resnet18."""
    return "resnet50" if "layer1.0.conv3.weight" in state else "resnet18"


def load_backbone_weights(
    backbone: Backbone, path: str, state: dict[str, Tensor] | None = None
) -> None:
    """Load ``path`` (or its already read ``state``) into ``backbone``; every key must fit."""
    if state is None:
        state = read_backbone_state(path)
    try:
        missing, unexpected = backbone.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # tensors of the wrong shape
        raise DatakitError(
            f"{path}: does not fit {backbone.arch} ({str(exc).splitlines()[-1].strip()})"
        ) from None
    if missing or unexpected:
        raise DatakitError(
            f"{path}: does not fit {backbone.arch} (missing {len(missing)} keys, e.g. "
            f"{missing[:2]}; unexpected {len(unexpected)}, e.g. {unexpected[:2]})"
        )
