"""``datakit merge``: join the part manifests of ``--part I --num-parts N`` runs into one ``_info.json``."""

from __future__ import annotations

import json
from typing import Any

from datakit.errors import DatakitError
from datakit.manifest import (
    ERRORS_NAME,
    INFO_NAME,
    PARTS_DIR,
    DepthStats,
    ShardEntry,
    build_info,
    dumps,
)
from datakit.storage import Location
from datakit.urls import check_writable


def merge(out: str) -> dict[str, Any]:
    """Join the part manifests of ``--part`` runs under ``out`` into one ``_info.json``.

    Raises :class:`DatakitError` when a part is missing or parts disagree on their arguments.
    """
    check_writable(out, "OUT")
    loc = Location(out)
    parts_loc = Location(loc.path(PARTS_DIR))
    names = sorted(n for n in parts_loc.listdir() if n.startswith("part-") and n.endswith(".json"))
    if not names:
        raise DatakitError(
            f"{loc.display}: no part manifests under {PARTS_DIR}/ (run convert --part I --num-parts N first)"
        )
    parts = [_read_part(parts_loc, n) for n in names]
    num_parts = parts[0]["args"]["num_parts"]
    have = sorted(p["args"]["part"] for p in parts)
    missing = sorted(set(range(num_parts)) - set(have))
    if missing:
        which = "part" if len(missing) == 1 else "parts"
        verb = "is" if len(missing) == 1 else "are"
        raise DatakitError(
            f"{loc.display}: {which} {', '.join(map(str, missing))} of {num_parts} {verb} not "
            "finished"
        )
    base_args = {k: v for k, v in parts[0]["args"].items() if k != "part"}
    for p in parts:
        args = {k: v for k, v in p["args"].items() if k != "part"}
        if args != base_args:  # name what differs: of many array jobs, one was launched apart
            keys = sorted(
                k for k in args.keys() | base_args.keys() if args.get(k) != base_args.get(k)
            )
            what = ", ".join(f"{k} {args.get(k)!r}, not {base_args.get(k)!r}" for k in keys[:3])
            raise DatakitError(
                f"{loc.display}: part {p['args']['part']} used other arguments than part "
                f"{parts[0]['args']['part']} ({what})"
            )
    parts.sort(key=lambda p: p["args"]["part"])
    entries: list[ShardEntry] = []
    split_order: list[str] = []
    for p in parts:
        for s in p["shards"]:
            if s["split"] not in split_order:
                split_order.append(s["split"])
    for split in split_order:  # group by split, parts in order within each
        for p in parts:
            entries += [ShardEntry.from_json(s) for s in p["shards"] if s["split"] == split]
    present = set(loc.listdir())
    absent = [e.name for e in entries if e.name not in present]
    if absent:  # an _info.json over missing shards would pass an incomplete dataset off as whole
        raise DatakitError(
            f"{loc.path(absent[0])}: listed in a part manifest but missing "
            f"({len(absent)} shard(s)); rerun that part with --resume"
        )
    stats = DepthStats()
    for p in parts:
        stats = stats.merge(DepthStats.from_json(p["depth_stats"]))
    errors: list[bytes] = []
    for p in parts:
        log = p["errors"]["log"]
        if log:
            errors += [line + b"\n" for line in loc.read_bytes(log).splitlines() if line]
    if errors:
        loc.write_bytes(ERRORS_NAME, b"".join(errors))
    first = parts[0]
    base_args.pop("num_parts", None)
    depth = first.get("depth") or {}
    reserved = {
        "name",
        "splits",
        "schema_version",
        "source",
        "created_by",
        "args",
        "shards",
        "depth",
        "labels",
        "errors",
        "depth_stats",
    }
    info = build_info(
        name=first["name"],
        source=first["source"],
        created_by=first["created_by"],
        args=base_args,
        shards=entries,
        depth_unit=depth.get("unit") if first.get("depth") else None,
        depth_scale=depth.get("scale"),
        depth_stats=stats,
        labels=first.get("labels"),
        skipped=sum(int(p["errors"]["skipped"]) for p in parts),
        errors_log=ERRORS_NAME if errors else None,
        extra={k: v for k, v in first.items() if k not in reserved},
    )
    loc.write_bytes(INFO_NAME, dumps(info))
    return info


_PART_KEYS = ("name", "source", "created_by", "args", "shards", "depth_stats", "errors")


def _read_part(parts_loc: Location, name: str) -> dict[str, Any]:
    """One part manifest; :class:`DatakitError` naming the file when it is not one."""
    where = parts_loc.path(name)
    try:
        part = json.loads(parts_loc.read_bytes(name))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DatakitError(f"{where}: not valid JSON ({exc})") from None
    if not (
        isinstance(part, dict)
        and all(k in part for k in _PART_KEYS)
        and isinstance(part["args"], dict)
        and "part" in part["args"]
        and "num_parts" in part["args"]
    ):
        raise DatakitError(
            f"{where}: not a datakit part manifest (needs {', '.join(_PART_KEYS)}, "
            "args.part, args.num_parts)"
        )
    try:
        for s in part["shards"]:
            ShardEntry.from_json(s)
        DepthStats.from_json(part["depth_stats"])
        int(part["errors"]["skipped"])
        log = part["errors"]["log"]
        if not (log is None or isinstance(log, str)):
            raise TypeError(f"errors.log {log!r}")
        if not all(type(part["args"][k]) is int for k in ("part", "num_parts")):
            raise TypeError("args.part and args.num_parts must be integers")
    except (KeyError, TypeError, ValueError) as exc:
        raise DatakitError(f"{where}: malformed part manifest ({exc!r})") from None
    return part
