"""``RUN/last.pt``: written atomically, loadable with ``torch.load(path, weights_only=True)``.

Keys of the checkpoint dict (``FORMAT`` = ``"datakit-train/1"``):

| key | content |
|---|---|
| ``format`` | ``"datakit-train/1"`` |
| ``step`` | optimiser steps completed |
| ``method``, ``arch`` | e.g. ``"pixpro-depth"``, ``"resnet50"`` |
| ``config`` | the resolved :class:`~training.config.TrainConfig` as a plain dict |
| ``backbone`` | the online backbone's state dict, torchvision ResNet names without ``fc.*`` |
| ``model`` | the whole method's state dict (online and momentum networks, heads, queues) |
| ``optimizer`` | the optimiser's state dict |
| ``data`` | per-rank stream positions: list of ``{"epoch": e, "batch": i}`` |
| ``skipped`` | ``{"shards": n, "samples": m}`` skipped up to ``step``, all ranks (absent in older files) |
| ``rng`` | ``{"torch": ByteTensor, "python": list, "numpy": dict}`` of rank 0 |
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
from torch import nn

from datakit.errors import DatakitError, naming_write
from training.config import TrainConfig, to_dict

FORMAT = "datakit-train/1"
CHECKPOINT_NAME = "last.pt"


def atomic_write(path: Path, write: Callable[[Path], object]) -> None:
    """Call ``write(tmp)`` on a temporary name in the same folder, flush it to disk, then rename it to
    ``path``: readers, and a machine that crashes, see the old file or the new one, never half of
    one."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with naming_write(path):  # a full disk: one line naming ``path``
            write(tmp)
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)  # else the rename can reach the disk before the data does
            finally:
                os.close(fd)
            os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def torch_save(obj: Any, path: Path) -> None:
    """``torch.save`` through a Python file (:func:`torch_save_to`)."""
    with open(path, "wb") as f:
        torch_save_to(obj, f)


def torch_save_to(obj: Any, f: IO[bytes]) -> None:
    """``torch.save`` to an open file: a write that fails then raises its OSError (torch's own file
    writer says only ``unexpected pos``). torch wraps what the file's ``write`` raised in a
    RuntimeError: unwrapped here, as is a Ctrl-C that lands inside a write."""
    try:
        torch.save(obj, f)
    except RuntimeError as exc:
        if isinstance(exc.__context__, (OSError, KeyboardInterrupt)):
            raise exc.__context__ from None
        raise


def save(path: Path, state: dict[str, Any]) -> None:
    """Write a checkpoint atomically."""
    atomic_write(path, lambda p: torch_save(state, p))


def build_state(
    cfg: TrainConfig,
    method: nn.Module,
    optimizer: torch.optim.Optimizer,
    step: int,
    positions: list[dict[str, int]],
    *,
    skipped: dict[str, int] | None = None,
) -> dict[str, Any]:
    """The checkpoint dict of the table above (tensors moved to the CPU). ``backbone`` shares its
    tensors with ``model``, so the file holds them once."""
    model = {k: v.detach().cpu() for k, v in method.state_dict().items()}
    return {
        "format": FORMAT,
        "step": step,
        "method": cfg.method,
        "arch": cfg.arch,
        "config": to_dict(cfg),
        "backbone": {k[9:]: v for k, v in model.items() if k.startswith("backbone.")},
        "model": model,
        "optimizer": _to_cpu(optimizer.state_dict()),
        "data": positions,
        "skipped": skipped or {"shards": 0, "samples": 0},
        "rng": rng_state(),
    }


def read_torch_file(path: str | Path, what: str = "checkpoint") -> Any:
    """``torch.load(path, weights_only=True)`` onto the CPU; raises DatakitError naming ``path`` for
    a missing or unreadable file or a folder (never unpickles arbitrary objects)."""
    p = Path(path)
    if p.is_dir():  # a run folder given for RUN/last.pt
        raise DatakitError(f"{path}: is a folder, not a {what} file")
    if not p.is_file():
        raise DatakitError(f"{path}: no such {what}")
    try:
        return torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # any unpickling failure means a bad file for the user
        raise DatakitError(f"{path}: not a readable {what} ({_load_failure(exc)})") from None


def _load_failure(exc: Exception) -> str:
    """The cause in ``torch.load``'s message, in one short clause: its own text runs to pages, and
    the weights-only preamble advises ``weights_only=False``, which is never right for a bad file."""
    text = str(exc)
    if "WeightsUnpickler error:" in text:
        text = text.split("WeightsUnpickler error:", 1)[1]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        return f"{type(exc).__name__}: cut short or empty"
    return lines[0].split(". ")[0].rstrip(".")[:200]


def load(path: str | Path) -> dict[str, Any]:
    """Read a training checkpoint; raises DatakitError for a file that is missing or is not a
    datakit checkpoint."""
    state = read_torch_file(path)
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise DatakitError(f"{path}: not a datakit training checkpoint (no format {FORMAT!r})")
    return state


def rng_state() -> dict[str, Any]:
    """The host RNG states as weights-only-loadable values."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "python": _listify(random.getstate()),
        "numpy": {
            "kind": str(kind),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "gauss": float(gauss),
        },
    }


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(_tuplify(state["python"]))
    n = state["numpy"]
    np.random.set_state(
        (n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"])
    )


def _to_cpu(x: Any) -> Any:
    """Tensors in nested dicts and lists moved to the CPU (a GPU run's optimiser state)."""
    if isinstance(x, torch.Tensor):
        return x.detach().cpu()
    if isinstance(x, dict):
        return {k: _to_cpu(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return type(x)(_to_cpu(v) for v in x)
    return x


def _listify(x: Any) -> Any:
    return [_listify(v) for v in x] if isinstance(x, tuple | list) else x


def _tuplify(x: Any) -> Any:
    return tuple(_tuplify(v) for v in x) if isinstance(x, list) else x
