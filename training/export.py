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
from typing import IO

import torch
from torch import Tensor

from datakit.errors import UsageError
from datakit.outputs import OutputFiles
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


Writer = Callable[[IO[bytes]], None]


def _torchvision(ckpt: dict, out: Path) -> Writer:
    state = torchvision_state(ckpt)
    return lambda f: checkpoint.torch_save_to(state, f)


def _detectron2(ckpt: dict, out: Path) -> Writer:
    model = {detectron2_name(k): v for k, v in ckpt["backbone"].items()}
    if out.suffix == ".pkl":
        arrays = {k: v.detach().cpu().numpy() for k, v in model.items()}
        obj = {"model": arrays, "__author__": "datakit", "matching_heuristics": True}
        return lambda f: pickle.dump(obj, f)
    payload = {"model": model, "__author__": "datakit", "matching_heuristics": True}
    return lambda f: checkpoint.torch_save_to(payload, f)


# format -> (checkpoint, OUT) -> what writes the file
FORMATS: dict[str, Callable[[dict, Path], Writer]] = {
    "torchvision": _torchvision,
    "detectron2": _detectron2,
}


def export(checkpoint_path: str, out: str, *, fmt: str = "torchvision") -> Path:
    """Write the backbone of ``checkpoint_path`` (RUN/last.pt) to ``out`` in ``fmt``; ``out``
    appears whole or not at all (:class:`datakit.outputs.OutputFiles`).

    Raises DatakitError for a file that is not a training checkpoint or an ``out`` that cannot be
    written (before the checkpoint is read), UsageError for an unknown format.
    """
    if fmt not in FORMATS:
        raise UsageError(f"unknown export format {fmt!r}; choose from {', '.join(FORMATS)}")
    check_writable(out, "OUT", local_only=True)
    with OutputFiles([out]) as outputs:
        ckpt = checkpoint.load(checkpoint_path)
        outputs.write_with(out, FORMATS[fmt](ckpt, Path(out)))
    return Path(out)
