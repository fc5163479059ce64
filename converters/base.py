"""The one converter interface.

A converter lists its work units cheaply and deterministically (:meth:`Converter.units`) and turns one
unit into samples (:meth:`Converter.convert`). It never touches tar files, sharding, workers, retries
or progress bars: :mod:`datakit.writer` does all of that once. A converter is pickled into worker
processes, so keep its state small (paths and a frozen config, no open files).
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field, is_dataclass
from typing import Any, ClassVar

import click

from datakit.schema import Sample


@dataclass(frozen=True)
class WorkUnit:
    """One independent piece of work: a scan, a chunk of frames, a well. ``payload`` must pickle."""

    id: str
    split: str
    payload: Any = None


@dataclass(frozen=True)
class Skipped:
    """A sub-unit (a frame, a window) the converter could not use: ``source`` names it.

    With ``--on-error skip`` the writer logs and counts it; with ``fail`` it stops the run with
    ``"{source}: {reason}"``. ``expected`` marks what is a normal part of the data rather than bad
    input (an all-null window of a well log): it is logged and counted under either policy.
    """

    source: str
    reason: str
    expected: bool = False


@dataclass(frozen=True)
class LabelSet:
    name: str
    classes: tuple[str, ...]
    ignore_index: int = 255

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "classes": list(self.classes), "ignore_index": self.ignore_index}


@dataclass(frozen=True)
class SourceInfo:
    """What a converter says about the whole dataset; lands in ``_info.json``."""

    source: str
    depth_unit: str | None  # None: samples carry no depth member
    depth_scale: float | None  # None when it varies per sample (each KEY.json has its own)
    labels: LabelSet | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class Converter(ABC):
    """Base class of every source. Subclasses set ``name``, ``Config`` and ``params``."""

    name: ClassVar[str]
    # A frozen dataclass; its fields are the source-specific CLI parameters' names.
    Config: ClassVar[type]
    # Source-specific click parameters (SRC arguments and options); the common convert options
    # (--shard-size, --workers, ...) and OUT are added by the CLI.
    params: ClassVar[Sequence[click.Parameter]] = ()
    help: ClassVar[str] = ""

    def __init__(self, config: Any) -> None:
        self.config = config

    @classmethod
    def from_cli(cls, **kwargs: Any) -> Converter:
        """Build from the CLI's keyword arguments (names of ``params``)."""
        return cls(cls.Config(**kwargs))

    def config_dict(self) -> dict[str, Any]:
        """The converter's arguments as written to ``_info.json["args"]``."""
        cfg = self.config
        fields = asdict(cfg) if is_dataclass(cfg) and not isinstance(cfg, type) else {}
        return {k: _jsonable(v) for k, v in fields.items()}

    @abstractmethod
    def units(self) -> list[WorkUnit]:
        """All work units, grouped by split, in a deterministic order. Cheap: no decoding.

        Raises :class:`datakit.errors.SourceError` when the source is missing or malformed.
        """

    @abstractmethod
    def convert(self, unit: WorkUnit) -> Iterator[Sample | Skipped]:
        """Samples of one unit, in a deterministic order (raw uint16 depth codes, see Sample)."""

    @abstractmethod
    def info(self) -> SourceInfo:
        """Source name, depth unit and scale, label set, extra manifest entries."""


def _jsonable(v: Any) -> Any:
    if isinstance(v, tuple | list):
        return [_jsonable(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, str | int | float | bool) or v is None:
        return v
    return str(v)


class SizeType(click.ParamType):
    """``WxH`` -> ``(W, H)``."""

    name = "WxH"

    def convert(self, value: Any, param: Any, ctx: Any) -> tuple[int, int]:
        if isinstance(value, tuple):
            return value
        m = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", str(value))
        if not m or int(m.group(1)) < 1 or int(m.group(2)) < 1:
            self.fail(f"{value!r} is not a size like 640x480", param, ctx)
        return int(m.group(1)), int(m.group(2))


SIZE = SizeType()


def make_meta(
    *,
    source: str,
    id: str,
    split: str,
    width: int,
    height: int,
    depth_scale: float,
    depth_unit: str | None,
    intrinsics: dict[str, float] | None = None,
    pose: Any = None,
    **extra: Any,
) -> dict[str, Any]:
    """The sample JSON of SPEC 2, with the optional keys only when known."""
    meta: dict[str, Any] = {
        "source": source,
        "id": id,
        "split": split,
        "width": int(width),
        "height": int(height),
        "depth_scale": float(depth_scale),
        "depth_unit": depth_unit,
    }
    if intrinsics is not None:
        meta["intrinsics"] = {k: float(intrinsics[k]) for k in ("fx", "fy", "cx", "cy")}
    if pose is not None:
        meta["pose"] = [[float(x) for x in row] for row in pose]
    meta.update(extra)
    return meta
