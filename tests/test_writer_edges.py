"""Writer details that the end-to-end writer tests pass over: each shard flushed to disk before its
rename, the size estimate of a sample at tar's name-length boundaries, grouped splits."""

from __future__ import annotations

from pathlib import Path

import pytest

from converters.synthetic import SyntheticConfig, SyntheticConverter
from datakit.errors import DatakitError
from datakit.manifest import DepthStats
from datakit.writer import ConvertConfig, Encoded, ShardFile, convert
from tests.conftest import convert_synthetic


def test_each_shard_reaches_the_disk_before_its_rename(
    tmp_path: Path, disk_events: list[str]
) -> None:
    # else a crash after the rename can leave a complete-looking shard name over missing data
    events = disk_events
    out = convert_synthetic(tmp_path / "o", num=6, size=(32, 24), shard_size=2)
    shards = sorted(p.name for p in out.glob("*.tar"))
    assert shards == ["train-000000.tar", "train-000001.tar", "train-000002.tar"]
    for name in shards:
        tmp = f".{name}.tmp"
        assert f"fsync {tmp}" in events and f"replace {tmp}" in events, events
        assert events.index(f"fsync {tmp}") < events.index(f"replace {tmp}"), events


@pytest.mark.parametrize("name_len", [99, 100, 101, 102, 510, 511, 512, 513, 1024, 1025])
@pytest.mark.parametrize("data_len", [0, 1, 512, 513])
def test_sample_size_estimate_is_what_the_tar_grows_by(
    tmp_path: Path, name_len: int, data_len: int
) -> None:
    # max_shard_bytes relies on it: GNU long-name headers start past 100 bytes of name, and hold
    # the name plus its NUL, padded to 512
    key = "k" * (name_len - len(".json"))
    item = Encoded(key, "train", {"json": b"x" * data_len}, DepthStats())
    shard = ShardFile(str(tmp_path), "train-000000.tar")
    try:
        before = shard.bytes_written
        shard.add(item)
        assert shard.bytes_written - before == item.nbytes
    finally:
        shard.abort()


def test_units_of_a_split_must_be_contiguous(tmp_path: Path) -> None:
    class Interleaved(SyntheticConverter):
        def units(self):  # type: ignore[no-untyped-def]
            units = super().units()
            train = [u for u in units if u.split == "train"]
            val = [u for u in units if u.split != "train"]
            return train[:1] + val + train[1:]

    conv = Interleaved(SyntheticConfig(num=4, val=2, size=(32, 24), per_unit=1))
    with pytest.raises(DatakitError, match="units of split 'train' are not contiguous"):
        convert(conv, str(tmp_path / "o"), ConvertConfig(progress=False))
