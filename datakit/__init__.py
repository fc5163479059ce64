"""datakit: RGB-D datasets to verified WebDataset shards, and pixel-level contrastive pretraining.

Heavy modules (torch) are imported lazily: ``import datakit`` stays cheap for ``datakit convert``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from datakit.reader import Dataset, open_dataset

__all__ = ["Dataset", "ViewConfig", "__version__", "make_loader", "open_dataset"]

_LAZY = {
    "open_dataset": "datakit.reader",
    "Dataset": "datakit.reader",
    "ViewConfig": "datakit.views",
    "make_loader": "datakit.loader",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'datakit' has no attribute {name!r}")
