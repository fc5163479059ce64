"""``_info.json``: the manifest written last, read first by every consumer (SPEC 2).

Its first keys (``name``, ``splits`` with ``num_samples``/``filenames``/``shard_lengths``) are the
layout timm's WebDataset reader reads; the rest is ours.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from datakit.errors import DatakitError, DatasetIncomplete, UsageError
from datakit.schema import SCHEMA_VERSION
from datakit.storage import Location, StorageError

INFO_NAME = "_info.json"
ERRORS_NAME = "errors.jsonl"
PROGRESS_NAME = "_progress.json"
PARTS_DIR = "_parts"
KEYS_DIR = "_keys"  # one key list per completed shard while a conversion runs (see keys_name)
SHARD_NAME = re.compile(r"^(?P<split>[A-Za-z0-9_]+)-(?:p(?P<part>\d{3})-)?(?P<index>\d{6})\.tar$")


def shard_name(split: str, index: int, part: int | None = None) -> str:
    """``{split}-{index:06d}.tar`` or, for a ``--part`` run, ``{split}-p{part:03d}-{index:06d}.tar``."""
    if part is None:
        return f"{split}-{index:06d}.tar"
    return f"{split}-p{part:03d}-{index:06d}.tar"


def keys_name(shard: str) -> str:
    """``_keys/{shard minus .tar}.txt``: the keys of a completed shard, one a line, kept until the
    conversion completes so that ``--resume`` knows them without reading the shard."""
    return f"{KEYS_DIR}/{shard.removesuffix('.tar')}.txt"


def errors_name(part: int | None) -> str:
    """The error log a run (or part ``part`` of a parallel conversion) writes."""
    return ERRORS_NAME if part is None else f"errors.p{part:03d}.jsonl"


def part_manifest_name(part: int) -> str:
    return f"{PARTS_DIR}/part-{part:03d}.json"


@dataclass(frozen=True)
class ShardEntry:
    name: str
    split: str
    num_samples: int
    bytes: int
    sha256: str

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> ShardEntry:
        return cls(d["name"], d["split"], int(d["num_samples"]), int(d["bytes"]), d["sha256"])

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "split": self.split,
            "num_samples": self.num_samples,
            "bytes": self.bytes,
            "sha256": self.sha256,
        }


@dataclass(frozen=True)
class DepthStats:
    """Running statistics of valid depth in physical units."""

    count: int = 0  # valid pixels
    pixels: int = 0  # all pixels of samples with a depth member
    min: float | None = None
    max: float | None = None

    def merge(self, other: DepthStats) -> DepthStats:
        mins = [v for v in (self.min, other.min) if v is not None]
        maxs = [v for v in (self.max, other.max) if v is not None]
        return DepthStats(
            self.count + other.count,
            self.pixels + other.pixels,
            min(mins) if mins else None,
            max(maxs) if maxs else None,
        )

    def to_json(self) -> dict[str, Any]:
        return {"count": self.count, "pixels": self.pixels, "min": self.min, "max": self.max}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> DepthStats:
        return cls(int(d["count"]), int(d["pixels"]), d.get("min"), d.get("max"))


class DatasetInfo:
    """A parsed ``_info.json``."""

    def __init__(self, raw: dict[str, Any], *, where: str = "") -> None:
        self.raw = raw
        try:
            self.shards = [
                ShardEntry(
                    s["name"], s["split"], int(s["num_samples"]), int(s["bytes"]), s["sha256"]
                )
                for s in raw["shards"]
            ]
        except (KeyError, TypeError, ValueError) as exc:
            raise DatakitError(f"{where}{INFO_NAME}: malformed shard list ({exc})") from None

    @property
    def name(self) -> str:
        return str(self.raw.get("name", ""))

    @property
    def source(self) -> str:
        return str(self.raw.get("source", ""))

    @property
    def splits(self) -> list[str]:
        return list(self.raw.get("splits", {}))

    @property
    def labels(self) -> dict[str, Any] | None:
        return self.raw.get("labels")

    @property
    def depth(self) -> dict[str, Any] | None:
        return self.raw.get("depth")

    def shards_of(self, split: str | None = None) -> list[ShardEntry]:
        if split is not None and split not in self.splits:  # a wrong --split: usage, exit 2
            raise UsageError(f"no split {split!r} in {self.name or 'dataset'}; have {self.splits}")
        return [s for s in self.shards if split is None or s.split == split]

    def num_samples(self, split: str | None = None) -> int:
        return sum(s.num_samples for s in self.shards_of(split))

    def total_bytes(self, split: str | None = None) -> int:
        return sum(s.bytes for s in self.shards_of(split))


def read_info(location: Location) -> DatasetInfo:
    """Read and parse ``_info.json``; a missing one means an incomplete dataset.

    Raises :class:`DatasetIncomplete` or :class:`DatakitError` (malformed JSON).
    """
    try:
        data = location.read_bytes(INFO_NAME)
    except StorageError as exc:
        if location.is_local and not location.exists(""):
            raise DatasetIncomplete(f"{location.display}: no such dataset folder") from None
        if location.is_local and os.path.isfile(location.url):
            raise DatasetIncomplete(
                f"{location.display}: a file, not a dataset folder "
                f"(pass the folder that holds {INFO_NAME})"
            ) from None
        missing = "not found" in str(exc) or "No such file" in str(exc)
        if missing and not location.is_local and _nothing_under(location):
            raise DatasetIncomplete(
                f"{location.display}: no such dataset (nothing stored under this URL)"
            ) from None
        if missing and PARTS_DIR in location.listdir():  # --part runs: joined by merge alone
            raise DatasetIncomplete(
                f"{location.display}: no {INFO_NAME}: converted in parts ({PARTS_DIR}/) that are "
                f"not merged yet; run `datakit merge {location.display}` once every part is done"
            ) from None
        if missing:
            raise DatasetIncomplete(
                f"{location.display}: no {INFO_NAME}: the dataset is incomplete "
                "(conversion unfinished or interrupted; rerun it with --resume) or not a datakit dataset"
            ) from None
        raise
    try:
        raw = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DatakitError(f"{location.path(INFO_NAME)}: not valid JSON ({exc})") from None
    if not isinstance(raw, dict) or "shards" not in raw:
        raise DatakitError(f"{location.path(INFO_NAME)}: not a datakit manifest (no shard list)")
    return DatasetInfo(raw, where=location.display + "/")


def _nothing_under(location: Location) -> bool:
    """True when a bucket URL holds no object at all under its prefix (a typo, not an unfinished
    conversion); only asked after ``_info.json`` was not found, and never over http(s), which
    cannot be listed."""
    if location.url.startswith(("http://", "https://")):
        return False
    try:
        return not location.exists("")
    except StorageError:
        return False


def splits_of(shards: Iterable[ShardEntry]) -> dict[str, dict[str, Any]]:
    """The manifest's ``splits`` section (timm's reader reads it) for a list of shards."""
    splits: dict[str, dict[str, Any]] = {}
    for s in shards:
        sp = splits.setdefault(s.split, {"num_samples": 0, "filenames": [], "shard_lengths": []})
        sp["num_samples"] += s.num_samples
        sp["filenames"].append(s.name)
        sp["shard_lengths"].append(s.num_samples)
    return splits


def build_info(
    *,
    name: str,
    source: str,
    created_by: str,
    args: Mapping[str, Any],
    shards: Iterable[ShardEntry],
    depth_unit: str | None,
    depth_scale: float | None,
    depth_stats: DepthStats,
    labels: Mapping[str, Any] | None,
    skipped: int,
    errors_log: str | None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The ``_info.json`` object of SPEC 2 (key order fixed so the bytes are reproducible)."""
    shards = list(shards)
    splits = splits_of(shards)
    depth: dict[str, Any] | None = None
    if depth_unit is not None:
        depth = {
            "unit": depth_unit,
            "scale": depth_scale,
            "min": depth_stats.min,
            "max": depth_stats.max,
            "valid_fraction": (depth_stats.count / depth_stats.pixels)
            if depth_stats.pixels
            else 0.0,
        }
    info: dict[str, Any] = {
        "name": name,
        "splits": splits,
        "schema_version": SCHEMA_VERSION,
        "source": source,
        "created_by": created_by,
        "args": dict(args),
        "shards": [s.to_json() for s in shards],
        "depth": depth,
        "labels": dict(labels) if labels is not None else None,
        "errors": {"skipped": skipped, "log": errors_log},
    }
    if extra:
        for k, v in extra.items():
            info.setdefault(k, v)
    return info


def dumps(obj: Any) -> bytes:
    return (json.dumps(obj, indent=1, allow_nan=False) + "\n").encode()
