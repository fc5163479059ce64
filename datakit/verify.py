"""``datakit verify``: sha256 of every shard, then decode and validate every sample.

Every fault is reported (missing shard, size or hash mismatch, broken tar, undecodable or invalid
sample, count mismatch, a key in two shards, ``splits`` disagreeing with the shard list, a shard file
the manifest does not list); the dataset is good only when there are none.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO, Any
from urllib.parse import urlsplit

import numpy as np

from datakit import png, schema
from datakit.errors import DatakitError
from datakit.jpeg import jpeg_header
from datakit.manifest import (
    INFO_NAME,
    SHARD_NAME,
    DatasetInfo,
    ShardEntry,
    read_info,
    splits_of,
)
from datakit.reader import iter_tar_members
from datakit.storage import Location, StorageError
from datakit.urls import READ_ONLY_SCHEMES


@dataclass
class VerifyReport:
    location: str
    shards: int = 0
    samples: int = 0
    bytes: int = 0
    faults: list[str] = field(default_factory=list)
    keys: dict[str, str] = field(default_factory=dict, repr=False)  # sample key -> its shard

    @property
    def ok(self) -> bool:
        return not self.faults


class _HashingReader:
    """A read-only stream that hashes what passes through it."""

    def __init__(self, f: IO[bytes]) -> None:
        self.f = f
        self.sha = hashlib.sha256()
        self.size = 0

    def read(self, n: int = -1) -> bytes:
        data = self.f.read(n)
        self.sha.update(data)
        self.size += len(data)
        return data

    def drain(self) -> None:
        while self.read(1 << 20):
            pass


def verify(
    path_or_url: str, *, on_shard: Callable[[ShardEntry], Any] | None = None
) -> VerifyReport:
    """Check a dataset against its manifest. Raises only when the manifest itself is unreadable."""
    loc = Location(path_or_url)
    info = read_info(loc)
    report = VerifyReport(loc.display)
    report.faults += _manifest_faults(loc, info)
    listed: set[str] = set()
    for entry in info.shards:
        if entry.name in listed:
            report.faults.append(f"{loc.path(entry.name)}: listed twice in {INFO_NAME}")
            continue
        listed.add(entry.name)
        report.faults += verify_shard(loc, info, entry, report)
        if on_shard is not None:
            on_shard(entry)
    return report


def _manifest_faults(loc: Location, info: DatasetInfo) -> list[str]:
    """``splits`` (what timm's reader reads) against the shard list, and shard files not listed."""
    where = loc.path(INFO_NAME)
    expected = splits_of(info.shards)
    splits = info.raw.get("splits")
    faults: list[str] = []
    if not isinstance(splits, dict):
        faults.append(f"{where}: splits is not an object")
        splits = {}
    for name in sorted(set(splits) | set(expected)):
        got, want = splits.get(name), expected.get(name)
        if want is None:
            faults.append(f"{where}: splits lists {name!r}, which has no shard")
        elif not isinstance(got, dict):
            faults.append(f"{where}: splits lacks {name!r} (or it is not an object)")
        elif got.get("num_samples") != want["num_samples"]:
            faults.append(
                f"{where}: splits[{name!r}] says {got.get('num_samples')} samples, "
                f"the shard list {want['num_samples']}"
            )
        else:
            faults += [
                f"{where}: splits[{name!r}].{k} disagrees with the shard list"
                for k in ("filenames", "shard_lengths")
                if got.get(k) != want[k]
            ]
    if urlsplit(loc.url).scheme not in READ_ONLY_SCHEMES:  # http(s) cannot be listed
        try:
            names = loc.listdir()
        except StorageError:  # a reader allowed to get objects but not to list them
            names = []
        listed = {s.name for s in info.shards}
        faults += [
            f"{loc.path(n)}: shard not listed in {INFO_NAME} (stale or foreign)"
            for n in names
            if SHARD_NAME.match(n) and n not in listed
        ]
    return faults


def verify_shard(
    loc: Location, info: DatasetInfo, entry: ShardEntry, report: VerifyReport
) -> list[str]:
    where = loc.path(entry.name)
    faults: list[str] = []
    try:
        stream_cm = loc.open(entry.name)
        f = stream_cm.__enter__()
    except (OSError, StorageError) as exc:
        return [f"{where}: missing or unreadable ({_reason(exc)})"]
    try:
        reader = _HashingReader(f)
        count = 0
        try:
            for key, members in iter_tar_members(reader, where):  # type: ignore[arg-type]
                count += 1
                problem = check_sample(key, members, info, entry)
                if problem:
                    faults.append(f"{where}: {problem}")
                first = report.keys.setdefault(key, entry.name)
                if first != entry.name:
                    faults.append(f"{where}: {key}: duplicate key, also in {first}")
        except DatakitError as exc:
            faults.append(str(exc))
        reader.drain()
    except (OSError, StorageError) as exc:
        faults.append(f"{where}: read failed ({_reason(exc)})")
        return faults
    finally:
        stream_cm.__exit__(None, None, None)
    report.shards += 1
    report.samples += count
    report.bytes += reader.size
    head = []  # the whole-file faults first; a wrong size (a cut shard) says more than its sha
    if reader.size != entry.bytes:
        head.append(f"{where}: size {reader.size} bytes, manifest says {entry.bytes}")
    if reader.sha.hexdigest() != entry.sha256:
        head.append(f"{where}: sha256 mismatch (corrupt or modified shard)")
    faults[:0] = head
    if count != entry.num_samples:
        faults.append(f"{where}: {count} samples, manifest says {entry.num_samples}")
    return faults


def check_sample(
    key: str, members: dict[str, bytes], info: DatasetInfo, entry: ShardEntry
) -> str | None:
    """Decode and validate one sample; the problem as text, or None."""
    try:
        schema.validate_key(key)
        s = schema.decode(key, members)
    except DatakitError as exc:
        return str(exc)
    if s.meta.get("split") != entry.split:
        return f"{key}: metadata split {s.meta.get('split')!r} in a {entry.split!r} shard"
    problem = _rgb_problem(key, members)
    if problem:
        return problem
    depth = info.depth
    problem = _depth_presence(key, s, depth is not None)
    if problem:
        return problem
    if (
        s.depth_raw is not None
        and depth is not None
        and depth.get("scale") is not None
        and not np.isclose(float(s.meta["depth_scale"]), float(depth["scale"]))
    ):
        return f"{key}: depth_scale {s.meta['depth_scale']} differs from the manifest's {depth['scale']}"
    labels = info.labels
    if s.label is not None and labels is not None:
        n, ignore = len(labels["classes"]), int(labels["ignore_index"])
        bad = schema.labels_outside(s.label, n, ignore)
        if bad:
            return f"{key}: label values {bad[:5]} outside 0..{n - 1} and ignore {ignore}"
    return None


def _rgb_problem(key: str, members: dict[str, bytes]) -> str | None:
    """The RGB member must be 8-bit, 3-channel (SPEC 3) as stored, not only once decoded: the
    decoders turn 16-bit, grey or RGBA images into 8-bit RGB without a word."""
    if "rgb.png" in members:
        head = png.header(members["rgb.png"])
        if head is not None and (head[2], head[3]) != (8, 2):
            kind = {0: "grey", 2: "RGB", 3: "palette", 4: "grey+alpha", 6: "RGBA"}.get(head[3], "?")
            return f"{key}.rgb.png: a {head[2]}-bit {kind} PNG, the schema wants 8-bit RGB"
    if "rgb.jpg" in members:
        jpeg = jpeg_header(members["rgb.jpg"])
        if jpeg is not None and jpeg[2] != 3:
            return f"{key}.rgb.jpg: a JPEG of {jpeg[2]} component(s), the schema wants RGB (3)"
    return None


def _depth_presence(key: str, s: schema.DecodedSample, manifest_has_depth: bool) -> str | None:
    """The depth member must be there when the sample's ``has_depth`` says so, or, for a sample
    without that flag, when the manifest has a depth section; and absent when ``has_depth`` is
    false. (A sample may say ``has_depth: false`` in a dataset with depth: a log without the
    channel.)"""
    member = schema.FIELD_BY_NAME["depth"].extensions[0]
    flag = s.meta.get("has_depth")
    if flag is not None and not isinstance(flag, bool):
        return f"{key}: metadata has_depth must be true or false, got {flag!r}"
    expected = flag if flag is not None else manifest_has_depth
    if expected and s.depth_raw is None:
        why = "its metadata says has_depth" if flag else "the manifest has depth"
        return f"{key}: missing member {key}.{member} ({why})"
    if flag is False and s.depth_raw is not None:
        return f"{key}: member {key}.{member} present but its metadata says has_depth false"
    return None


def _reason(exc: BaseException) -> str:
    return getattr(exc, "strerror", None) or str(exc)
