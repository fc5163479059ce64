"""Helpers of the converter and storage tests: read a converted local dataset back shard by shard
without WebDataset; check one-line errors; check a remote resume."""

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


def assert_resume_reproduces(url: str, local: Path) -> None:
    """Convert 24 + 8 synthetic scenes (64x48, 4 a shard) into ``url``, crash after 12, resume:
    the remote manifest lists the shards of ``local`` (the same conversion done locally)."""
    import pytest

    from converters.synthetic import SyntheticConfig, SyntheticConverter
    from datakit.storage import Location
    from datakit.writer import ConvertConfig, convert

    class Crashing(SyntheticConverter):
        def convert(self, unit):  # type: ignore[no-untyped-def]
            if unit.payload[0] >= 12:
                raise RuntimeError("simulated crash")
            yield from super().convert(unit)

    cfg = SyntheticConfig(num=24, val=8, size=(64, 48))
    with pytest.raises(RuntimeError):
        convert(Crashing(cfg), url, ConvertConfig(shard_size=4, progress=False))
    loc = Location(url)
    assert loc.exists("_progress.json") and not loc.exists("_info.json")
    assert loc.exists("train-000001.tar") and not loc.exists("train-000002.tar")
    convert(
        SyntheticConverter(cfg), url, ConvertConfig(shard_size=4, progress=False, mode="resume")
    )
    assert not loc.exists("_progress.json")
    local_info = json.loads((local / "_info.json").read_text())
    assert json.loads(loc.read_bytes("_info.json"))["shards"] == local_info["shards"]
