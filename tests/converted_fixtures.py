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


def assert_one_line_error(res: Any, *names: object, out: Path | None = None) -> str:
    """``res`` (a click ``Result``) failed on bad input as SPEC 1 asks: exit 1 through the CLI's
    error guard (not an uncaught exception, which CliRunner would also report as exit 1), exactly
    one non-empty output line ``Error: ...`` naming each of ``names``; and, given ``out``, nothing
    left there (nothing was complete, so the OUT the run created is gone). Returns the line."""
    lines = [x for x in res.output.splitlines() if x.strip()]
    assert res.exit_code == 1 and isinstance(res.exception, SystemExit), (res.exception, res.output)
    assert len(lines) == 1 and lines[0].startswith("Error: "), res.output
    for name in names:
        assert str(name) in lines[0], (name, lines[0])
    if out is not None:
        assert not out.exists(), sorted(p.name for p in out.iterdir())
    return lines[0]
