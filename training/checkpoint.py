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
| ``rng`` | ``{"torch": ByteTensor, "python": list, "numpy": dict}`` of rank 0 |
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from datakit.errors import DatakitError

FORMAT = "datakit-train/1"
CHECKPOINT_NAME = "last.pt"


def save(path: Path, state: dict[str, Any]) -> None:
    """Write ``state`` to ``path`` atomically (temporary file in the same folder, then rename)."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def load(path: str | Path) -> dict[str, Any]:
    """Read a training checkpoint with ``weights_only=True``; raises DatakitError for a file that is
    missing or is not a datakit checkpoint."""
    p = Path(path)
    if not p.is_file():
        raise DatakitError(f"{path}: no such checkpoint")
    try:
        state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # any unpickling failure means a bad file for the user
        raise DatakitError(f"{path}: not a readable checkpoint ({exc})") from None
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


def _listify(x: Any) -> Any:
    return [_listify(v) for v in x] if isinstance(x, tuple | list) else x


def _tuplify(x: Any) -> Any:
    return tuple(_tuplify(v) for v in x) if isinstance(x, list) else x
