"""``datakit export``: the pretrained backbone of ``RUN/last.pt`` as a file other frameworks load.

- ``torchvision``: a plain state dict for ``torchvision.models.resnet18/50()``, loadable with
  ``strict=True``. ``fc.weight``/``fc.bias`` are torchvision's default initialisation (seed 0):
  pretraining learns no classifier, and the fine-tuning recipe replaces it anyway.
- ``detectron2``: the layout of detectron2's ``convert-torchvision-to-d2.py`` (``stem.conv1``,
  ``res2.0.conv1.norm`` ...) under ``{"model": ..., "__author__": ..., "matching_heuristics": True}``;
  a pickle of numpy arrays when OUT ends in ``.pkl``, else a torch file. Use it with
  ``MODEL.RESNETS.STRIDE_IN_1X1 False`` and RGB input normalised with ImageNet's mean and std.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

from datakit.errors import UsageError
from datakit.urls import check_writable
from training import checkpoint
from training.models import ARCHS


def torchvision_state(ckpt: dict) -> dict[str, Tensor]:
    """The checkpoint's backbone plus a default ``fc`` -> torchvision ResNet state dict."""
    arch = ckpt["arch"]
    with torch.random.fork_rng():
        torch.manual_seed(0)
        fc = ARCHS[arch](weights=None).fc.state_dict()
    state = {k: v.clone() for k, v in ckpt["backbone"].items()}
    state.update({f"fc.{k}": v for k, v in fc.items()})
    return state


def detectron2_name(key: str) -> str:
    """torchvision ResNet key -> detectron2 ResNet key (convert-torchvision-to-d2.py's rules)."""
    if "layer" not in key:
        key = "stem." + key
    for t in (1, 2, 3, 4):
        key = key.replace(f"layer{t}", f"res{t + 1}")
    for t in (1, 2, 3):
        key = key.replace(f"bn{t}", f"conv{t}.norm")
    return key.replace("downsample.0", "shortcut").replace("downsample.1", "shortcut.norm")


def _write_torchvision(ckpt: dict, out: Path) -> None:
    checkpoint.atomic_write(out, lambda p: checkpoint.torch_save(torchvision_state(ckpt), p))


def _write_detectron2(ckpt: dict, out: Path) -> None:
    model = {detectron2_name(k): v for k, v in ckpt["backbone"].items()}
    if out.suffix == ".pkl":
        arrays = {k: v.detach().cpu().numpy() for k, v in model.items()}
        obj = {"model": arrays, "__author__": "datakit", "matching_heuristics": True}

        def write(p: Path) -> None:
            with p.open("wb") as f:
                pickle.dump(obj, f)

        checkpoint.atomic_write(out, write)
    else:
        payload = {"model": model, "__author__": "datakit", "matching_heuristics": True}
        checkpoint.atomic_write(out, lambda p: checkpoint.torch_save(payload, p))


FORMATS: dict[str, Callable[[dict, Path], None]] = {
    "torchvision": _write_torchvision,
    "detectron2": _write_detectron2,
}


def export(checkpoint_path: str, out: str, *, fmt: str = "torchvision") -> Path:
    """Write the backbone of ``checkpoint_path`` (RUN/last.pt) to ``out`` in ``fmt``.

    Raises DatakitError for a file that is not a training checkpoint, UsageError for an unknown format.
    """
    if fmt not in FORMATS:
        raise UsageError(f"unknown export format {fmt!r}; choose from {', '.join(FORMATS)}")
    check_writable(out, "OUT", local_only=True)
    ckpt = checkpoint.load(checkpoint_path)
    path = Path(out)
    if path.parent:
        path.parent.mkdir(parents=True, exist_ok=True)
    FORMATS[fmt](ckpt, path)
    return path
