"""Source converters, dispatched through one explicit registry (name -> "module:Class").

Modules are imported on demand so that ``datakit convert synthetic`` pays only for what it uses.
A new source = one module + one entry here + one fixture builder in tests/conftest.py.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from converters.base import Converter

REGISTRY: dict[str, str] = {
    "synthetic": "converters.synthetic:SyntheticConverter",
    "scannet": "converters.scannet:ScanNetConverter",
    "cityscapes": "converters.cityscapes:CityscapesConverter",
    "nyu": "converters.nyu:NyuConverter",
    "folder": "converters.folder:FolderConverter",
    "borehole": "converters.borehole:BoreholeConverter",
}


def names() -> list[str]:
    return sorted(REGISTRY)


def get(name: str) -> type[Converter]:
    """The converter class registered as ``name``; KeyError lists the known names."""
    try:
        target = REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown source {name!r}; known: {', '.join(names())}") from None
    module, cls = target.split(":")
    return getattr(importlib.import_module(module), cls)  # type: ignore[no-any-return]
