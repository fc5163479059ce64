"""Read a converted local dataset back, shard by shard, without WebDataset (for converter tests)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from datakit.reader import iter_tar_members
from datakit.schema import DecodedSample, decode


def read_converted(out: Path) -> tuple[dict[str, Any], dict[str, DecodedSample]]:
    """(``_info.json``, {key: decoded sample}) of the dataset under ``out``."""
    info = json.loads((out / "_info.json").read_text())
    samples: dict[str, DecodedSample] = {}
    for shard in info["shards"]:
        with open(out / shard["name"], "rb") as fh:
            for key, members in iter_tar_members(fh, shard["name"]):
                samples[key] = decode(key, members)
    return info, samples
