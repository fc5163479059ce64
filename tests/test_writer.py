"""The shard writer: determinism, sizing, atomicity, resume, parts, errors."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from converters.base import Converter, LabelSet, Skipped, SourceInfo, WorkUnit, make_meta
from converters.synthetic import SyntheticConfig, SyntheticConverter
from datakit import open_dataset
from datakit.errors import DatakitError, SampleError, SourceError, UsageError
from datakit.merge import merge
from datakit.schema import Sample
from datakit.writer import ConvertConfig, convert
from tests.conftest import convert_synthetic


def shard_hashes(root: Path) -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.iterdir())
        if p.suffix == ".tar" or p.name == "_info.json"
    }


def sample_sequence(root: Path) -> list[tuple[str, str]]:
    """(key, sha of all decoded arrays) per sample, in manifest order."""
    out = []
    for s in open_dataset(str(root)):
        h = hashlib.sha256(s.rgb.tobytes() + s.depth_raw.tobytes() + s.label.tobytes())
        h.update(json.dumps(s.meta, sort_keys=True).encode())
        out.append((s.key, h.hexdigest()))
    return out


def test_same_input_gives_byte_identical_output(tmp_path):
    a = convert_synthetic(tmp_path / "a", num=10, shard_size=4)
    b = convert_synthetic(tmp_path / "b", num=10, shard_size=4)
    ha, hb = shard_hashes(a), shard_hashes(b)
    assert list(ha) == ["_info.json", "train-000000.tar", "train-000001.tar", "train-000002.tar"]
    assert ha == hb
    info = json.loads((a / "_info.json").read_text())
    assert info["splits"]["train"] == {
        "num_samples": 10,
        "filenames": ["train-000000.tar", "train-000001.tar", "train-000002.tar"],
        "shard_lengths": [4, 4, 2],
    }
    for s in info["shards"]:
        assert s["sha256"] == ha[s["name"]]
        assert s["bytes"] == (a / s["name"]).stat().st_size


def test_workers_do_not_change_the_output(tmp_path):
    one = convert_synthetic(tmp_path / "w1", num=12, val=4, shard_size=5, workers=1)
    two = convert_synthetic(tmp_path / "w2", num=12, val=4, shard_size=5, workers=2)
    assert shard_hashes(one) == shard_hashes(two)
    # docs/format.md: no timestamp, no --workers in args: the manifest bytes are the same too
    assert (one / "_info.json").read_bytes() == (two / "_info.json").read_bytes()


def test_tar_headers_are_fixed_and_members_in_schema_order(tmp_path):
    root = convert_synthetic(tmp_path / "d", num=2, shard_size=4)
    with tarfile.open(root / "train-000000.tar") as tar:
        members = tar.getmembers()
    assert [m.name for m in members] == [
        f"train_00000{i}.{ext}"
        for i in range(2)
        for ext in ("rgb.jpg", "depth.png", "label.png", "json")
    ]
    assert {(m.mtime, m.uid, m.gid, m.uname, m.gname, m.mode) for m in members} == {
        (0, 0, 0, "", "", 0o644)
    }


def test_max_shard_bytes_closes_shards_early(tmp_path):
    root = convert_synthetic(tmp_path / "d", num=9, shard_size=100, max_shard_bytes=60_000)
    info = json.loads((root / "_info.json").read_text())
    assert len(info["shards"]) > 1
    assert sum(s["num_samples"] for s in info["shards"]) == 9
    for s in info["shards"]:
        assert s["bytes"] <= 60_000 or s["num_samples"] == 1


def test_no_shard_passes_max_shard_bytes(tmp_path):
    """docs/cli.md: a shard is closed before it passes the limit, counting what closing the tar
    adds (end blocks, padding to a 10 KiB record) and GNU long-name headers of long keys."""
    for limit in (35_000, 45_000, 61_000, 70_000):
        root = convert_synthetic(
            tmp_path / f"d{limit}", num=12, size=(32, 24), shard_size=100, max_shard_bytes=limit
        )
        shards = json.loads((root / "_info.json").read_text())["shards"]
        assert [s for s in shards if s["bytes"] > limit and s["num_samples"] > 1] == [], limit

    class LongKeys(Bad):
        def convert(self, unit):
            for s in super().convert(unit):
                if isinstance(s, Sample):
                    s.key = f"{'k' * 120}_{s.key}"  # members' names over tar's 100 bytes
                yield s

    out = tmp_path / "long"
    convert(
        LongKeys(BadConfig(n=12)),
        str(out),
        ConvertConfig(progress=False, on_error="skip", max_shard_bytes=30_000),
    )
    shards = json.loads((out / "_info.json").read_text())["shards"]
    assert sum(s["num_samples"] for s in shards) == 11
    assert [s for s in shards if s["bytes"] > 30_000 and s["num_samples"] > 1] == []


def test_existing_dataset_is_not_clobbered(tmp_path):
    root = convert_synthetic(tmp_path / "d", num=4)
    before = shard_hashes(root)
    with pytest.raises(UsageError, match="already holds a complete dataset"):
        convert_synthetic(root, num=5)
    assert shard_hashes(root) == before
    convert_synthetic(root, num=5, mode="overwrite")
    assert json.loads((root / "_info.json").read_text())["splits"]["train"]["num_samples"] == 5

    # resume of a complete dataset with the same arguments is a no-op: no file is rewritten
    def stamps() -> dict[str, tuple[int, int]]:
        return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in root.iterdir()}

    untouched = stamps()
    convert_synthetic(root, num=5, mode="resume")
    assert stamps() == untouched
    with pytest.raises(UsageError, match="other arguments"):
        convert_synthetic(root, num=6, mode="resume")


class Flaky(SyntheticConverter):
    """Synthetic scenes that crash (a bug, not bad input) when reaching unit ``crash_at``."""

    crash_at = -1

    def convert(self, unit: WorkUnit) -> Iterator[Sample]:
        if unit.payload[0] // self.config.per_unit == self.crash_at:
            raise RuntimeError("simulated crash")
        yield from super().convert(unit)


def test_crash_leaves_no_partial_shard_and_resume_equals_uninterrupted(tmp_path):
    cfg = SyntheticConfig(num=20, size=(48, 36), per_unit=2)
    ref = tmp_path / "ref"
    convert(SyntheticConverter(cfg), str(ref), ConvertConfig(shard_size=3, progress=False))
    out = tmp_path / "out"
    flaky = Flaky(cfg)
    flaky.crash_at = 6  # after samples 0-11: shards 0-2 closed, shard 3 (9-11) still open
    with pytest.raises(RuntimeError):
        convert(flaky, str(out), ConvertConfig(shard_size=3, progress=False))
    names = sorted(os.listdir(out))
    assert "_info.json" not in names
    assert not [n for n in names if n.endswith(".tmp")], names
    assert [n for n in names if n.endswith(".tar")] == [f"train-{i:06d}.tar" for i in range(3)]
    with pytest.raises(UsageError, match="unfinished conversion"):
        convert(SyntheticConverter(cfg), str(out), ConvertConfig(shard_size=3, progress=False))
    result = convert(
        SyntheticConverter(cfg),
        str(out),
        ConvertConfig(shard_size=3, progress=False, mode="resume"),
    )
    assert (result.kept_shards, result.kept_samples, result.num_samples) == (3, 9, 20)
    assert not result.finished_before
    assert shard_hashes(out) == shard_hashes(ref)
    assert not [n for n in os.listdir(out) if n.startswith(("_progress", ".", "_keys"))]
    again = convert(
        SyntheticConverter(cfg),
        str(out),
        ConvertConfig(shard_size=3, mode="resume", progress=False),
    )
    assert again.finished_before and (again.kept_shards, again.kept_samples) == (7, 20)


@pytest.mark.timeout(240)
def test_sigkill_during_parallel_conversion_then_resume(tmp_path):
    args = [
        "convert",
        "synthetic",
        "--num",
        "96",  # 24 shards: killed at 3, the other 21 (~1 s here) are the margin for the poll
        "--size",
        "64x48",
        "--shard-size",
        "4",
        "--per-unit",
        "2",
        "--workers",
        "2",
        "--no-progress",
    ]
    ref = tmp_path / "ref"
    subprocess.run(
        [sys.executable, "-m", "datakit", *args, str(ref)], check=True, capture_output=True
    )
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [sys.executable, "-m", "datakit", *args, str(out)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if out.exists() and len([n for n in os.listdir(out) if n.endswith(".tar")]) >= 3:
            break
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the writer and its worker processes
    proc.wait()
    assert not (out / "_info.json").exists(), "conversion finished before it could be killed"
    res = subprocess.run(
        [sys.executable, "-m", "datakit", *args, "--resume", str(out)],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0, res.stderr
    kept = re.search(r"; (\d+) samples in (\d+) shards kept from the earlier run\)", res.stdout)
    # killed once 3 shards were on disk: the last may not have its progress entry yet (an entry
    # follows its shard), so at least the 2 before it are kept
    assert kept and int(kept[2]) >= 2 and int(kept[1]) == 4 * int(kept[2]), res.stdout
    assert shard_hashes(out) == shard_hashes(ref)
    assert sorted(os.listdir(out)) == sorted(os.listdir(ref))  # no temporaries, no progress file


def test_parts_then_merge_equal_one_run(tmp_path):
    cfg = SyntheticConfig(num=14, val=5, size=(48, 36), per_unit=2)
    whole = tmp_path / "whole"
    convert(SyntheticConverter(cfg), str(whole), ConvertConfig(shard_size=3, progress=False))
    parts = tmp_path / "parts"
    for i in (2, 0, 1):
        convert(
            SyntheticConverter(cfg),
            str(parts),
            ConvertConfig(shard_size=3, progress=False, part=i, num_parts=3),
        )
    assert not (parts / "_info.json").exists()
    assert any(n.startswith("train-p001-") for n in os.listdir(parts))
    info = merge(str(parts))
    assert (
        info["splits"]["train"]["num_samples"] == 14 and info["splits"]["val"]["num_samples"] == 5
    )
    assert sample_sequence(parts) == sample_sequence(whole)
    w = json.loads((whole / "_info.json").read_text())
    assert info["depth"] == w["depth"] and info["labels"] == w["labels"]


def test_merge_names_missing_parts(tmp_path):
    cfg = SyntheticConfig(num=6, size=(48, 36), per_unit=2)
    convert(
        SyntheticConverter(cfg), str(tmp_path), ConvertConfig(progress=False, part=0, num_parts=3)
    )
    with pytest.raises(DatakitError, match="parts 1, 2 of 3 are not finished"):
        merge(str(tmp_path))


def test_merge_refuses_bad_part_manifests_and_missing_shards(tmp_path):
    cfg = SyntheticConfig(num=6, size=(48, 36), per_unit=2)
    for i in (0, 1):
        convert(
            SyntheticConverter(cfg),
            str(tmp_path),
            ConvertConfig(progress=False, part=i, num_parts=2),
        )
    part1 = tmp_path / "_parts" / "part-001.json"
    good = part1.read_bytes()
    no_hash = json.loads(good)
    del no_hash["shards"][0]["sha256"]
    for bad, match in [
        (b"{bad", "not valid JSON"),
        (b"[]", "not a datakit part manifest"),
        (json.dumps(no_hash).encode(), r"malformed part manifest \(KeyError\('sha256'\)\)"),
    ]:
        part1.write_bytes(bad)
        with pytest.raises(DatakitError, match=match) as err:
            merge(str(tmp_path))
        assert str(part1) in str(err.value)
    part1.write_bytes(good)
    shard = next(tmp_path.glob("train-p001-*.tar"))
    shard.unlink()
    with pytest.raises(DatakitError, match="listed in a part manifest but missing") as err:
        merge(str(tmp_path))
    assert shard.name in str(err.value)
    assert not (tmp_path / "_info.json").exists()


@dataclass(frozen=True)
class BadConfig:
    n: int = 6


class Bad(Converter):
    """Units 0..n-1 of one sample each; unit 2 is a bad file, unit 4 has a bad frame."""

    name = "bad"
    Config = BadConfig

    def units(self) -> list[WorkUnit]:
        return [WorkUnit(f"u{i}", "train", i) for i in range(self.config.n)]

    def convert(self, unit: WorkUnit) -> Iterator[Sample | Skipped]:
        i = unit.payload
        if i == 2:
            raise SourceError(f"/data/file{i}.bin", "truncated at byte 12")
        if i == 4:
            yield Skipped(f"/data/file{i}.bin#frame1", "corrupt JPEG")
        yield small_sample(i)

    def info(self) -> SourceInfo:
        return SourceInfo("bad", "m", 0.001, LabelSet("none", ("a",)))


def small_sample(i: int, key: str | None = None) -> Sample:
    """A 4x4 sample whose pixels are ``i``, keyed ``s{i}`` unless ``key`` is given."""
    rgb = np.full((4, 4, 3), i, np.uint8)
    meta = make_meta(
        source="bad", id=str(i), split="train", width=4, height=4, depth_scale=0.001, depth_unit="m"
    )
    return Sample(key or f"s{i}", "train", rgb, meta, np.full((4, 4), i, np.uint16))


class Rekeyed(Bad):
    """One sample per unit (``s0``, ``s1``, ...) without Bad's faults; unit ``crash_at`` crashes (a bug,
    not bad input) and unit ``dup[0]`` yields the key ``dup[1]``."""

    crash_at = -1
    dup: tuple[int, str] = (-1, "")

    def convert(self, unit: WorkUnit) -> Iterator[Sample | Skipped]:
        i = unit.payload
        if i == self.crash_at:
            raise RuntimeError("simulated crash")
        yield small_sample(i, self.dup[1] if i == self.dup[0] else None)


def rekeyed(n: int, *, crash_at: int = -1, dup: tuple[int, str] = (-1, "")) -> Rekeyed:
    conv = Rekeyed(BadConfig(n=n))
    conv.crash_at, conv.dup = crash_at, dup
    return conv


def test_on_error_fail_names_the_file(tmp_path):
    with pytest.raises(DatakitError, match=r"/data/file2.bin: truncated at byte 12"):
        convert(Bad(BadConfig()), str(tmp_path / "o"), ConvertConfig(progress=False))
    assert not (tmp_path / "o" / "_info.json").exists()


def test_a_failed_run_removes_only_the_empty_out_it_created(tmp_path):
    new = tmp_path / "made" / "here"
    with pytest.raises(DatakitError, match="truncated"):
        convert(Bad(BadConfig()), str(new), ConvertConfig(progress=False))
    assert list(tmp_path.iterdir()) == []  # neither OUT nor the parent made for it
    mine = tmp_path / "mine"
    mine.mkdir()
    with pytest.raises(DatakitError, match="truncated"):
        convert(Bad(BadConfig()), str(mine), ConvertConfig(progress=False))
    assert mine.is_dir() and list(mine.iterdir()) == []  # the user's folder stays
    kept = tmp_path / "kept"  # a completed shard and its progress stay, for --resume
    with pytest.raises(DatakitError, match="truncated"):
        convert(Bad(BadConfig()), str(kept), ConvertConfig(progress=False, shard_size=1))
    assert sorted(os.listdir(kept)) == ["_keys", "_progress.json", "train-000000.tar"]


def test_on_error_skip_logs_and_counts(tmp_path):
    out = tmp_path / "o"
    convert(
        Bad(BadConfig()), str(out), ConvertConfig(progress=False, on_error="skip", shard_size=2)
    )
    info = json.loads((out / "_info.json").read_text())
    assert info["errors"] == {"skipped": 2, "log": "errors.jsonl"}
    log = [json.loads(line) for line in (out / "errors.jsonl").read_text().splitlines()]
    # a unit's SourceError: its file is the source (not the unit id, which would name it twice)
    assert [e["source"] for e in log] == ["/data/file2.bin", "/data/file4.bin#frame1"]
    assert "truncated at byte 12" in log[0]["reason"]
    assert [s.key for s in open_dataset(str(out))] == ["s0", "s1", "s3", "s4", "s5"]


def test_duplicate_keys_are_refused(tmp_path):
    class Dup(Bad):
        def convert(self, unit):
            for s in super().convert(unit):
                if isinstance(s, Sample):
                    s.key = "same"
                yield s

    with pytest.raises(DatakitError, match="duplicate sample key 'same'"):
        convert(Dup(BadConfig(n=2)), str(tmp_path / "o"), ConvertConfig(progress=False))


def test_a_part_run_never_leaves_a_joined_manifest_over_its_shards(tmp_path):
    """After `datakit merge`, converting a part again (here: crashing half way) must not leave
    _info.json saying the dataset is whole while that part's shards are gone or rewritten."""
    from datakit.errors import DatasetIncomplete

    cfg = SyntheticConfig(num=12, size=(32, 24), per_unit=2)
    out = tmp_path / "parts"
    for i in (0, 1):
        convert(
            SyntheticConverter(cfg),
            str(out),
            ConvertConfig(shard_size=2, progress=False, part=i, num_parts=2),
        )
    merge(str(out))
    flaky = Flaky(cfg)
    flaky.crash_at = 4  # the second unit of part 1
    with pytest.raises(RuntimeError):
        convert(
            flaky,
            str(out),
            ConvertConfig(shard_size=2, progress=False, part=1, num_parts=2, mode="overwrite"),
        )
    with pytest.raises(DatasetIncomplete):
        open_dataset(str(out))
    convert(
        SyntheticConverter(cfg),
        str(out),
        ConvertConfig(shard_size=2, progress=False, part=1, num_parts=2, mode="resume"),
    )
    assert merge(str(out))["splits"]["train"]["num_samples"] == 12
    # a part converted into a folder that holds a complete dataset is refused, as a whole run is
    whole = convert_synthetic(tmp_path / "whole", num=4)
    with pytest.raises(UsageError, match="already holds a complete dataset"):
        convert_synthetic(whole, num=4, part=0, num_parts=2)
    assert not [n for n in os.listdir(whole) if "-p000-" in n]


@pytest.mark.parametrize("on_error", ["fail", "skip"])
def test_resume_refuses_a_key_already_in_a_kept_shard(tmp_path, on_error):
    """The kept shards' keys come from their key lists (``_keys/``), not from re-reading them."""
    out = tmp_path / "o"
    cfg = ConvertConfig(progress=False, shard_size=2, on_error=on_error)
    with pytest.raises(RuntimeError):  # s0 s1 | s2 s3 kept; s4 lost with the open shard
        convert(rekeyed(8, crash_at=5), str(out), cfg)
    assert sorted(n for n in os.listdir(out) if n.endswith(".tar")) == [
        "train-000000.tar",
        "train-000001.tar",
    ]
    assert (out / "_keys" / "train-000000.txt").read_text() == "s0\ns1\n"
    progress = json.loads((out / "_progress.json").read_text())
    assert [s["keys"] for s in progress["shards"]] == [
        "_keys/train-000000.txt",
        "_keys/train-000001.txt",
    ]
    resume = ConvertConfig(progress=False, shard_size=2, on_error=on_error, mode="resume")
    with pytest.raises(SampleError) as err:  # a duplicate is a bug, refused under skip too
        convert(rekeyed(8, dup=(6, "s1")), str(out), resume)
    assert str(err.value) == "duplicate sample key 's1' (also in train-000000.tar)"
    assert not (out / "_info.json").exists()
    # the same source without the duplicate resumes into what one uninterrupted run writes
    convert(rekeyed(8), str(out), resume)
    ref = tmp_path / "ref"
    convert(rekeyed(8), str(ref), ConvertConfig(progress=False, shard_size=2, on_error=on_error))
    assert shard_hashes(out) == shard_hashes(ref)
    assert sorted(os.listdir(out)) == sorted(os.listdir(ref))  # no _keys/ nor _progress.json left


def test_progress_without_key_lists_still_resumes(tmp_path, caplog):
    """A _progress.json of an older datakit names no key lists: its shards' keys are unknown (a
    duplicate across the resume point is left to ``datakit verify``), and the resume goes on."""
    out, ref = tmp_path / "o", tmp_path / "ref"
    cfg = ConvertConfig(progress=False, shard_size=2)
    convert(rekeyed(8), str(ref), cfg)
    with pytest.raises(RuntimeError):
        convert(rekeyed(8, crash_at=5), str(out), cfg)
    progress = json.loads((out / "_progress.json").read_text())
    for s in progress["shards"]:
        del s["keys"]
    (out / "_progress.json").write_text(json.dumps(progress))
    for p in (out / "_keys").iterdir():
        p.unlink()
    (out / "_keys").rmdir()
    with caplog.at_level("WARNING", logger="datakit"):
        convert(rekeyed(8), str(out), ConvertConfig(progress=False, shard_size=2, mode="resume"))
    assert "2 kept shard(s) have no key list" in caplog.text
    assert shard_hashes(out) == shard_hashes(ref)
    assert sorted(os.listdir(out)) == sorted(os.listdir(ref))


def test_missing_key_list_of_a_recorded_shard_is_an_error(tmp_path):
    out = tmp_path / "o"
    with pytest.raises(RuntimeError):
        convert(rekeyed(8, crash_at=5), str(out), ConvertConfig(progress=False, shard_size=2))
    (out / "_keys" / "train-000001.txt").unlink()
    with pytest.raises(DatakitError, match=r"train-000001.txt: .*key list.*--overwrite"):
        convert(rekeyed(8), str(out), ConvertConfig(progress=False, shard_size=2, mode="resume"))


def test_parts_keep_and_remove_only_their_own_key_lists(tmp_path):
    out = tmp_path / "o"

    def part(i: int, conv: Rekeyed, mode: str = "new") -> None:
        convert(
            conv,
            str(out),
            ConvertConfig(progress=False, shard_size=1, part=i, num_parts=2, mode=mode),
        )

    def lists() -> list[str]:
        return sorted(os.listdir(out / "_keys")) if (out / "_keys").exists() else []

    with pytest.raises(RuntimeError):  # part 0 = units 0-3: keeps s0 | s1
        part(0, rekeyed(8, crash_at=3))
    with pytest.raises(RuntimeError):  # part 1 = units 4-7: keeps s4
        part(1, rekeyed(8, crash_at=6))
    p0 = ["train-p000-000000.txt", "train-p000-000001.txt"]
    assert lists() == [*p0, "train-p001-000000.txt"]
    # a key list write of part 1 cut short by a hard kill (write_bytes' temporary) goes with it
    (out / "_keys" / ".train-p001-000001.txt.x1y2.tmp").write_bytes(b"s5\n")
    part(1, rekeyed(8), "overwrite")  # starts part 1 again, completes it: part 0's lists stay
    assert lists() == p0
    with pytest.raises(
        SampleError, match=r"^duplicate sample key 's0' \(also in train-p000-000000.tar\)$"
    ):
        part(0, rekeyed(8, dup=(3, "s0")), "resume")
    part(0, rekeyed(8), "resume")
    assert not (out / "_keys").exists()
    assert merge(str(out))["splits"]["train"]["num_samples"] == 8
    assert [s.key for s in open_dataset(str(out))] == [f"s{i}" for i in range(8)]


def test_merge_names_the_argument_a_part_changed(tmp_path):
    for i, seed in ((0, 0), (1, 3)):
        cfg = SyntheticConfig(num=4, size=(48, 36), per_unit=2, seed=seed)
        convert(
            SyntheticConverter(cfg),
            str(tmp_path),
            ConvertConfig(progress=False, part=i, num_parts=2),
        )
    with pytest.raises(
        DatakitError, match=r"part 1 used other arguments than part 0 \(seed 3, not 0\)"
    ):
        merge(str(tmp_path))
    (tmp_path / "_parts" / "part-001.json").unlink()
    with pytest.raises(DatakitError, match="part 1 of 2 is not finished"):
        merge(str(tmp_path))
    with pytest.raises(DatakitError, match=f"not merged yet; run `datakit merge {tmp_path}`"):
        open_dataset(str(tmp_path))  # not "rerun it with --resume": a part's resume does nothing


def file_size_limit(kib: int):  # type: ignore[no-untyped-def]
    """A ``preexec_fn``: writes past ``kib`` KiB fail with EFBIG (SIGXFSZ ignored), as a full disk
    or a quota fails them."""

    def limit() -> None:
        import resource

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (kib * 1024, kib * 1024))

    return limit


def hidden_files(root: Path) -> list[str]:
    return [os.path.join(d, n) for d, _, names in os.walk(root) for n in names if n.startswith(".")]


@pytest.mark.parametrize(
    "what,kib,args,failed",
    [  # a 40 KiB shard cut at 16 KiB; _progress.json past 12 KiB after ~33 one-sample shards
        ("shard", 16, ["--num", "8", "--size", "64x48", "--shard-size", "4"], "train-000000.tar"),
        ("progress", 12, ["--num", "40", "--size", "8x8", "--shard-size", "1"], "_progress.json"),
    ],
)
def test_a_failed_write_is_one_line_naming_the_file_and_leaves_no_temporary(
    tmp_path, what, kib, args, failed
):
    out = tmp_path / "out"
    res = subprocess.run(
        [sys.executable, "-m", "datakit", "convert", "synthetic", str(out), "--val", "0", *args,
         "--no-progress"],
        capture_output=True, text=True, preexec_fn=file_size_limit(kib), timeout=60,
    )  # fmt: skip
    assert res.returncode == 1, res.stderr
    assert res.stderr.strip().splitlines() == [
        f"Error: {out / failed}: cannot be written (File too large)"
    ], res.stderr
    if what == "shard":  # nothing was complete: the OUT this run made is gone
        assert not out.exists()
    else:  # the complete shards and the last progress written stay, for --resume
        assert not (out / "_info.json").exists() and not hidden_files(out)
        progress = json.loads((out / "_progress.json").read_text())
        shards = sorted(n for n in os.listdir(out) if n.endswith(".tar"))
        recorded = [s["name"] for s in progress["shards"]]
        assert shards[: len(recorded)] == recorded and len(shards) == len(recorded) + 1
        res = subprocess.run(
            [sys.executable, "-m", "datakit", "convert", "synthetic", str(out), "--val", "0",
             *args, "--no-progress", "--resume"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert res.returncode == 0, res.stderr
        assert len([n for n in os.listdir(out) if n.endswith(".tar")]) == 40


def child_pids(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(c) for c in f.read().split()]


def is_running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.timeout(120)
def test_sigterm_stops_a_parallel_conversion_with_one_line_and_no_worker_left(tmp_path):
    args = ["convert", "synthetic", "--num", "96", "--size", "64x48", "--shard-size", "4",
            "--per-unit", "2", "--workers", "2", "--no-progress"]  # fmt: skip
    out, log = tmp_path / "out", tmp_path / "stderr.txt"
    with log.open("w") as stderr:  # a file, not a pipe: a worker left behind would hold a pipe open
        proc = subprocess.Popen(
            [sys.executable, "-m", "datakit", *args, str(out)],
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (out / "_progress.json").exists():
            time.sleep(0.02)
        workers = child_pids(proc.pid)
        proc.send_signal(signal.SIGTERM)  # the writer alone, as `kill PID` or a scheduler does
        proc.wait(timeout=30)
        time.sleep(0.5)  # a worker that outlives its writer would still be running now
        left = [p for p in workers if is_running(p)]
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # whatever is left of the session
    err = log.read_text()
    assert not (out / "_info.json").exists(), "conversion finished before it could be stopped"
    assert proc.returncode == 143, err
    assert err.strip().splitlines() == ["Terminated; the same command with --resume continues"]
    assert workers and not left, left
    assert not hidden_files(out)
    res = subprocess.run(
        [sys.executable, "-m", "datakit", *args, "--resume", str(out)],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0, res.stderr
    assert sorted(os.listdir(out)) == ["_info.json"] + [f"train-{i:06d}.tar" for i in range(24)]
