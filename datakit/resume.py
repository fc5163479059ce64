"""Resume and output-state checks for the writer: what OUT holds, what may be deleted, where to go on.

After each completed shard the writer writes its key list (``_keys/NAME.txt``), then records the shard
in ``_progress.json`` (``_progress.pNNN.json`` for a part) with the position of the converter's stream
right after it, so ``--resume`` continues there, knows the kept shards' keys without reading them, and
yields the same dataset as an uninterrupted run.
"""

from __future__ import annotations

import json
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from datakit.errors import DatakitError, UsageError
from datakit.manifest import (
    ERRORS_NAME,
    INFO_NAME,
    KEYS_DIR,
    PARTS_DIR,
    SHARD_NAME,
    errors_name,
)
from datakit.storage import Location, StorageError

if TYPE_CHECKING:
    from datakit.writer import ConvertConfig

log = logging.getLogger(__name__)
KEY_LIST_READERS = 16  # concurrent GETs of small key lists on a remote resume


@dataclass
class Progress:
    """State after the last completed shard; written as ``_progress.json`` (or per part)."""

    args: dict[str, Any]
    # ShardEntry + end + depth + errors + keys (the key list's name; absent before datakit had them)
    shards: list[dict[str, Any]] = field(default_factory=list)
    next_index: dict[str, int] = field(default_factory=dict)

    @property
    def end(self) -> tuple[int, int]:
        return tuple(self.shards[-1]["end"]) if self.shards else (0, 0)  # type: ignore[return-value]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def progress_name(part: int | None) -> str:
    return "_progress.json" if part is None else f"_progress.p{part:03d}.json"


def _ours(name: str) -> bool:
    """Files the writer may delete: shards, temporaries and manifests of a conversion."""
    return bool(
        SHARD_NAME.match(name)
        or (name.startswith(".") and name.endswith(".tmp"))
        or name in (INFO_NAME, ERRORS_NAME, PARTS_DIR, KEYS_DIR)
        or (name.startswith("_progress") and name.endswith(".json"))
        or (name.startswith("errors.p") and name.endswith(".jsonl"))
    )


def prepare_output(
    loc: Location, cfg: ConvertConfig, args: dict[str, Any], final_name: str, prog_name: str
) -> Progress | None:
    """Check what ``out`` holds against the mode; return the progress to continue from, or None
    when resuming a dataset that is already complete."""
    loc.makedirs()
    names = loc.listdir()
    part_prefix = None if cfg.part is None else f"-p{cfg.part:03d}-"

    def mine(name: str) -> bool:
        if not _ours(name):
            return False
        if part_prefix is None:
            return True
        return part_prefix in name or name == prog_name or name == errors_name(cfg.part)

    complete = loc.exists(final_name)
    # A part run rewrites shards that a joined _info.json (``datakit merge``) lists: that manifest
    # must not go on saying the dataset is whole.
    joined = cfg.part is not None and loc.exists(INFO_NAME)
    if cfg.mode == "overwrite":
        if joined:
            loc.delete(INFO_NAME)
        for name in names:
            if mine(name):
                loc.delete(name)
        if part_prefix is not None and KEYS_DIR in names:
            remove_key_lists(loc, cfg.part)
        if part_prefix is not None and complete:
            loc.delete(final_name)
        return Progress(args=args)
    if joined and not complete:
        raise UsageError(
            f"{loc.path(INFO_NAME)} exists: {loc.display} already holds a complete dataset; "
            f"pass --overwrite to convert part {cfg.part} again (then datakit merge)"
        )
    if cfg.mode == "new":
        if complete:
            raise UsageError(
                f"{loc.path(final_name)} exists: {loc.display} already holds a complete dataset; "
                "pass --overwrite to replace it or --resume to keep it"
            )
        leftovers = [n for n in names if mine(n) and n not in (PARTS_DIR, KEYS_DIR)]
        if leftovers:
            raise UsageError(
                f"{loc.display} holds an unfinished conversion ({leftovers[0]} ...); "
                "pass --resume to continue it or --overwrite to start again"
            )
        return Progress(args=args)
    # resume
    if complete:
        existing = json.loads(loc.read_bytes(final_name))
        if existing.get("args") != args:
            raise UsageError(
                f"{loc.display} was converted with other arguments; --overwrite to replace it"
            )
        if KEYS_DIR in names:  # left by a run stopped right after writing its manifest
            remove_key_lists(loc, cfg.part)
        return None
    for name in names:  # temporaries of an interrupted run (shards, progress, manifest)
        if (
            name.startswith(".")
            and name.endswith(".tmp")
            and (cfg.part is None or f"p{cfg.part:03d}" in name)
        ):
            loc.delete(name)
    if not loc.exists(prog_name):
        stray = [n for n in names if mine(n) and SHARD_NAME.match(n)]
        for n in stray:  # shards of a run that died before its first progress write
            loc.delete(n)
        if KEYS_DIR in names:
            remove_key_lists(loc, cfg.part)
        return Progress(args=args)
    raw = json.loads(loc.read_bytes(prog_name))
    if raw.get("args") != args:
        raise UsageError(
            f"{loc.display}: the unfinished conversion used other arguments; "
            "rerun with the same ones, or --overwrite"
        )
    progress = Progress(args=args, shards=raw["shards"], next_index=raw["next_index"])
    done = {s["name"]: s for s in progress.shards}
    for s in progress.shards:
        if not loc.exists(s["name"]) or loc.size(s["name"]) != s["bytes"]:
            raise DatakitError(
                f"{loc.path(s['name'])}: recorded as complete but missing or of the wrong size; "
                "rerun with --overwrite"
            )
    for n in names:  # a shard renamed after the last progress write is rewritten identically
        if mine(n) and SHARD_NAME.match(n) and n not in done:
            loc.delete(n)
    return progress


def read_kept_keys(loc: Location, progress: Progress) -> dict[str, str]:
    """The keys of the shards ``progress`` records, each mapped to its shard's name, read from their
    key lists (never from the shards: on a bucket that would download them all).

    Shards recorded by a datakit without key lists have unknown keys (one warning): a duplicate of
    one of those is left to ``datakit verify``. Raises :class:`DatakitError` when a recorded key list
    is missing or does not list its shard's samples.
    """
    listed = [s for s in progress.shards if "keys" in s]
    if len(listed) < len(progress.shards):
        log.warning(
            "%s: %d kept shard(s) have no key list (recorded by an older datakit): a duplicate of "
            "their keys is not caught before datakit verify",
            loc.display,
            len(progress.shards) - len(listed),
        )

    def read(s: dict[str, Any]) -> list[str]:
        try:
            keys = loc.read_bytes(s["keys"]).decode().split()
        except (StorageError, UnicodeDecodeError) as exc:
            reason = exc.kind if isinstance(exc, StorageError) else "not text"
            raise DatakitError(
                f"{loc.path(s['keys'])}: the key list of {s['name']}, recorded as complete, is "
                f"missing or unreadable ({reason}); rerun with --overwrite"
            ) from None
        if len(keys) != s["num_samples"]:
            raise DatakitError(
                f"{loc.path(s['keys'])}: lists {len(keys)} keys, {s['name']} holds "
                f"{s['num_samples']} samples; rerun with --overwrite"
            )
        return keys

    if loc.is_local or len(listed) < 2:
        lists = [read(s) for s in listed]
    else:
        with ThreadPoolExecutor(min(KEY_LIST_READERS, len(listed))) as pool:
            lists = list(pool.map(read, listed))
    return {k: s["name"] for s, keys in zip(listed, lists, strict=True) for k in keys}


def remove_key_lists(loc: Location, part: int | None) -> None:
    """Delete a run's key lists: all of ``_keys/`` for a whole run; for part ``part`` only its own
    (other parts may still be running), then ``_keys/`` itself once empty."""
    if part is None:
        loc.delete(KEYS_DIR)
    else:
        keys_loc = Location(loc.path(KEYS_DIR), config=loc.config, **loc.storage_options)

        def ours(n: str) -> bool:
            if n.startswith(".") and n.endswith(".tmp"):  # a local write cut short
                return f"-p{part:03d}-" in n
            m = SHARD_NAME.match(n.removesuffix(".txt") + ".tar")
            return n.endswith(".txt") and m is not None and m.group("part") == f"{part:03d}"

        keys_loc.delete_many([n for n in keys_loc.listdir() if ours(n)])
    loc.remove_empty_folder(KEYS_DIR)
