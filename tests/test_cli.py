"""The CLI through click's CliRunner: convert, info, verify, merge, errors as one line."""

from __future__ import annotations

import json
import shutil
import tarfile
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from converters.synthetic import SyntheticConfig, render_sample
from datakit import open_dataset
from datakit.cli import main
from datakit.errors import DatasetIncomplete


def run(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def convert64(out: Path) -> list[str]:
    """`datakit convert` of 64 synthetic 64x48 samples in shards of 16 into ``out``."""
    return ["convert", "synthetic", str(out), "--num", "64", "--size", "64x48", "--shard-size", "16",
            "--no-progress"]  # fmt: skip


def rewrite_members(shard: Path, edit) -> None:
    """Rewrite ``shard`` with ``edit(name, data)`` applied to each member: new bytes, or None to
    drop the member (the manifest is left as it was)."""
    import io

    with tarfile.open(shard) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    with tarfile.open(shard, "w", format=tarfile.GNU_FORMAT) as tar:
        for m, data in members:
            new = edit(m.name, data)
            if new is None:
                continue
            m.size = len(new)
            tar.addfile(m, io.BytesIO(new))


@pytest.fixture(scope="module")
def ds64(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cli") / "syn"
    res = run(*convert64(out))
    assert res.exit_code == 0, res.output
    assert "64 samples in 4 shards" in res.output
    return out


def test_info_shows_counts(ds64):
    res = run("info", str(ds64))
    assert res.exit_code == 0
    assert "64 in 4 shards" in res.output
    assert "synthetic6: 6 classes" in res.output
    assert " m, scale 0.001" in res.output


def test_tar_members_and_bit_exact_depth(ds64, tmp_path):
    with tarfile.open(ds64 / "train-000000.tar") as tar:
        names = tar.getnames()
        tar.extractall(tmp_path, filter="data")
    assert names[:4] == [
        "train_000000.rgb.jpg",
        "train_000000.depth.png",
        "train_000000.label.png",
        "train_000000.json",
    ]
    assert len(names) == 16 * 4
    depth = cv2.imread(str(tmp_path / "train_000000.depth.png"), cv2.IMREAD_UNCHANGED)
    assert depth.dtype == np.uint16
    written = render_sample(SyntheticConfig(num=64, size=(64, 48)), "train", 0)
    np.testing.assert_array_equal(depth, written.depth)
    label = cv2.imread(str(tmp_path / "train_000000.label.png"), cv2.IMREAD_UNCHANGED)
    np.testing.assert_array_equal(label, written.label)
    meta = json.loads((tmp_path / "train_000000.json").read_text())
    assert (
        meta["id"] == "train/000000" and meta["depth_scale"] == 0.001 and meta["depth_unit"] == "m"
    )
    assert set(meta["intrinsics"]) == {"fx", "fy", "cx", "cy"} and np.asarray(
        meta["pose"]
    ).shape == (4, 4)
    first = next(iter(open_dataset(str(ds64))))
    np.testing.assert_array_equal(first.depth_raw, written.depth)


def test_verify_ok_then_flipped_byte_is_named(ds64, tmp_path):
    res = run("verify", str(ds64))
    assert res.exit_code == 0 and "OK: 4 shards, 64 samples" in res.output
    bad = tmp_path / "bad"
    shutil.copytree(ds64, bad)
    target = bad / "train-000002.tar"
    data = bytearray(target.read_bytes())
    data[len(data) // 3] ^= 0x01
    target.write_bytes(bytes(data))
    res = run("verify", "-q", str(bad))
    assert res.exit_code == 1
    assert f"FAULT {target}: sha256 mismatch" in res.output
    assert "train-000000.tar" not in res.output.replace("checked", "")


def test_verify_names_a_cut_shard_by_its_size_first(ds64, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(ds64, bad)
    target = bad / "train-000002.tar"
    data = target.read_bytes()
    target.write_bytes(data[: len(data) // 2])
    res = run("verify", "-q", str(bad))
    faults = [x for x in res.output.splitlines() if x.startswith(f"FAULT {target}")]
    assert res.exit_code == 1 and len(faults) >= 2, res.output
    assert faults[0].startswith(f"FAULT {target}: size {len(data) // 2} bytes, manifest says")
    assert faults[1] == f"FAULT {target}: sha256 mismatch (corrupt or modified shard)"


def test_verify_reports_missing_shard_and_undecodable_sample(ds64, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(ds64, bad)
    (bad / "train-000001.tar").unlink()
    # Rewrite shard 3 with a corrupt PNG for one sample, keeping the manifest: hash and decode fail.
    src = bad / "train-000003.tar"
    rewrite_members(
        src, lambda name, data: b"\x89PNG broken" if name.endswith("000050.depth.png") else data
    )
    res = run("verify", "-q", str(bad))
    assert res.exit_code == 1
    assert "train-000001.tar: missing or unreadable" in res.output
    assert "train_000050.depth.png: image bytes do not decode" in res.output


def test_verify_reports_a_missing_depth_member(ds64, tmp_path):
    """A sample whose metadata says has_depth (or, without the flag, whose manifest has depth) but
    that lacks depth.png is a fault, even in a shard whose hash and size match the manifest."""
    import hashlib

    bad = tmp_path / "nodepth"
    shutil.copytree(ds64, bad)
    src = bad / "train-000001.tar"

    def edit(name: str, data: bytes) -> bytes | None:
        if name in ("train_000017.depth.png", "train_000018.depth.png"):
            return None
        if name == "train_000018.json":  # a sample written before has_depth existed
            meta = json.loads(data)
            assert meta.pop("has_depth") is True
            return json.dumps(meta).encode()
        return data

    rewrite_members(src, edit)
    info = json.loads((bad / "_info.json").read_text())
    for entry in info["shards"]:
        if entry["name"] == src.name:
            entry["bytes"] = src.stat().st_size
            entry["sha256"] = hashlib.sha256(src.read_bytes()).hexdigest()
    (bad / "_info.json").write_text(json.dumps(info))
    res = run("verify", "-q", str(bad))
    assert res.exit_code == 1, res.output
    faults = [line for line in res.output.splitlines() if line.startswith("FAULT")]
    assert faults == [
        f"FAULT {src}: train_000017: missing member train_000017.depth.png "
        "(its metadata says has_depth)",
        f"FAULT {src}: train_000018: missing member train_000018.depth.png "
        "(the manifest has depth)",
    ]


def test_missing_manifest_means_incomplete_everywhere(ds64, tmp_path):
    bad = tmp_path / "noinfo"
    shutil.copytree(ds64, bad)
    (bad / "_info.json").unlink()
    for cmd in ("info", "verify"):
        res = CliRunner().invoke(main, [cmd, str(bad)])
        assert res.exit_code == 1
        assert "dataset is incomplete" in res.output
        assert "Traceback" not in res.output
        assert len(res.output.strip().splitlines()) == 1
    with pytest.raises(DatasetIncomplete, match="dataset is incomplete"):
        open_dataset(str(bad))


def test_a_file_given_as_dataset_names_the_folder_to_pass(ds64):
    for path in (ds64 / "_info.json", ds64 / "train-000000.tar"):
        res = CliRunner().invoke(main, ["info", str(path)])
        assert res.exit_code == 1 and "Traceback" not in res.output
        assert res.output.strip().splitlines() == [
            f"Error: {path}: a file, not a dataset folder (pass the folder that holds _info.json)"
        ]


def test_eval_refuses_a_non_positive_lr(ds64, tmp_path):
    res = CliRunner().invoke(
        main,
        ["eval", "--data", str(ds64), "--random-init", "--arch", "resnet18", "--lr", "-1",
         "--out", str(tmp_path / "e.json")],
    )  # fmt: skip
    assert res.exit_code == 2 and "lr must be positive" in res.output
    assert not (tmp_path / "e.json").exists()


def test_convert_refuses_existing_and_conflicting_flags(ds64):
    res = CliRunner().invoke(main, convert64(ds64))
    assert res.exit_code == 2 and "already holds a complete dataset" in res.output
    res = CliRunner().invoke(main, ["convert", "synthetic", str(ds64), "--resume", "--overwrite"])
    assert res.exit_code == 2 and "exclude each other" in res.output
    res = CliRunner().invoke(main, ["convert", "synthetic", str(ds64), "--size", "64by48"])
    assert res.exit_code == 2 and "is not a size like 640x480" in res.output
    res = CliRunner().invoke(main, ["convert", "synthetic", str(ds64), "--max-shard-bytes", "abc"])
    assert res.exit_code == 2, res.output
    assert "Error: Invalid value for '--max-shard-bytes': 'abc' is not a size like 500M" in (
        res.output
    )
    res = CliRunner().invoke(main, ["convert", "nosuchsource", str(ds64)])
    assert res.exit_code == 2 and "No such command" in res.output


@pytest.mark.parametrize(
    "args",
    [
        ["scannet"],
        ["borehole"],
        ["cityscapes"],
        ["nyu"],
        [
            "folder",
            *("--rgb", "rgb/*.jpg", "--depth", "d/*.png"),
            *("--depth-scale", "0.001", "--depth-kind", "metric"),
        ],
    ],
    ids=lambda a: a[0],
)
def test_a_missing_source_is_one_line_naming_it_for_every_converter(args, tmp_path):
    """Every converter answers a SRC that is not there alike: one line with the path, exit 1,
    no OUT (scannet and borehole used click's exists check: a usage block and exit 2)."""
    src, out = tmp_path / "no-such-source", tmp_path / "out"
    res = CliRunner().invoke(main, ["convert", args[0], str(src), str(out), *args[1:]])
    lines = [x for x in res.output.splitlines() if x.strip()]
    assert res.exit_code == 1, res.output
    assert len(lines) == 1 and lines[0].startswith(f"Error: {src}: "), res.output
    assert not out.exists()


def test_a_negative_seed_is_a_usage_error_not_a_traceback(ds64, tmp_path):
    """Seeds feed numpy's SeedSequence, which takes no negative number: refused at parsing."""
    for args in (
        ["preview", str(ds64), "-o", str(tmp_path / "s.png"), "--seed", "-1"],
        ["convert", "synthetic", str(tmp_path / "syn"), "--num", "1", "--seed", "-1"],
        ["train", "--data", str(ds64), "--out", str(tmp_path / "run"), "--seed", "-1"],
    ):
        res = CliRunner().invoke(main, args)
        assert res.exit_code == 2 and "Invalid value for '--seed'" in res.output, (args, res)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_parts_and_merge_via_cli(tmp_path):
    out = tmp_path / "p"
    for i in range(2):
        res = run(
            "convert",
            "synthetic",
            str(out),
            "--num",
            "6",
            "--size",
            "32x24",
            "--shard-size",
            "2",
            "--per-unit",
            "1",
            "--part",
            str(i),
            "--num-parts",
            "2",
            "--no-progress",
        )
        assert res.exit_code == 0, res.output
    res = run("merge", str(out))
    assert res.exit_code == 0 and "merged 4 shards, 6 samples" in res.output
    assert run("verify", "-q", str(out)).exit_code == 0
    assert [s.key for s in open_dataset(str(out))] == [f"train_{i:06d}" for i in range(6)]


def test_rgb_png_option(tmp_path):
    res = run(
        "convert",
        "synthetic",
        str(tmp_path / "png"),
        "--num",
        "2",
        "--size",
        "32x24",
        "--rgb-format",
        "png",
        "--no-progress",
    )
    assert res.exit_code == 0
    s = next(iter(open_dataset(str(tmp_path / "png"))))
    np.testing.assert_array_equal(
        s.rgb, render_sample(SyntheticConfig(size=(32, 24)), "train", 0).rgb
    )


def test_info_aligns_split_names_of_any_length(tmp_path):
    """`info` reads only the manifest: one written by build_info with a short and a long split
    name prints their counts in one column."""
    from datakit.manifest import DepthStats, ShardEntry, build_info, dumps

    shards = [
        ShardEntry("train-000000.tar", "train", 12, 4096, "0" * 64),
        ShardEntry("validation_long-000000.tar", "validation_long", 3, 2048, "1" * 64),
    ]
    info = build_info(
        name="x", source="folder", created_by="test", args={}, shards=shards, depth_unit="m",
        depth_scale=0.001, depth_stats=DepthStats(), labels=None, skipped=0, errors_log=None,
    )  # fmt: skip
    (tmp_path / "_info.json").write_bytes(dumps(info))
    res = run("info", str(tmp_path))
    assert res.exit_code == 0, res.output
    rows = [
        ln for ln in res.output.splitlines() if ln.startswith(("  train ", "  validation_long "))
    ]
    assert len(rows) == 2, res.output
    assert rows[0].index(" samples") == rows[1].index(" samples"), res.output


def test_verify_reports_duplicate_keys_unlisted_shards_and_split_counts(ds64, tmp_path):
    """Every shard intact and its hash in the manifest, yet the dataset is broken: a shard copied
    under a second name (every key twice), a shard file _info.json does not list, splits (what
    timm's reader reads) disagreeing with the shard list, a shard listed twice."""
    import hashlib

    bad = tmp_path / "dup"
    shutil.copytree(ds64, bad)
    shutil.copy(bad / "train-000000.tar", bad / "train-000004.tar")
    shutil.copy(bad / "train-000001.tar", bad / "train-000005.tar")  # not in the manifest
    info = json.loads((bad / "_info.json").read_text())
    copy = dict(info["shards"][0], name="train-000004.tar")
    assert copy["sha256"] == hashlib.sha256((bad / "train-000004.tar").read_bytes()).hexdigest()
    info["shards"] += [copy, info["shards"][3]]
    split = info["splits"]["train"]
    split["filenames"] += ["train-000004.tar", "train-000003.tar"]
    split["shard_lengths"] += [16, 16]
    split["num_samples"] = 64  # the shard list now holds 96
    (bad / "_info.json").write_text(json.dumps(info))
    res = run("verify", "-q", str(bad))
    assert res.exit_code == 1, res.output
    faults = [line for line in res.output.splitlines() if line.startswith("FAULT")]
    splits = f"FAULT {bad / '_info.json'}: splits['train'] says 64 samples, the shard list 96"
    unlisted = (
        f"FAULT {bad / 'train-000005.tar'}: shard not listed in _info.json (stale or foreign)"
    )
    assert splits in faults and unlisted in faults, faults
    assert f"FAULT {bad / 'train-000003.tar'}: listed twice in _info.json" in faults
    dups = [f for f in faults if "duplicate key" in f]
    assert len(dups) == 16 and dups[0] == (
        f"FAULT {bad / 'train-000004.tar'}: train_000000: duplicate key, also in train-000000.tar"
    )
    assert len(faults) == 19, faults


def test_verify_reports_a_malformed_pose_as_a_fault(ds64, tmp_path):
    """A KEY.json whose pose is ragged or not numeric is one fault line, not a traceback."""
    bad = tmp_path / "pose"
    shutil.copytree(ds64, bad)
    src = bad / "train-000002.tar"

    def edit(name: str, data: bytes) -> bytes:
        if name not in ("train_000040.json", "train_000041.json"):
            return data
        meta = json.loads(data)
        meta["pose"] = [[1, 2], [3]] if name.endswith("40.json") else "identity"
        return json.dumps(meta).encode()

    rewrite_members(src, edit)
    res = CliRunner().invoke(main, ["verify", "-q", str(bad)])
    assert res.exit_code == 1 and isinstance(res.exception, SystemExit), res.exception
    assert f"FAULT {src}: train_000040: pose must be a 4x4 matrix" in res.output, res.output
    assert f"FAULT {src}: train_000041: pose must be a 4x4 matrix" in res.output


@pytest.mark.parametrize("kind", ["grey_jpeg", "rgba_png", "png16"])
def test_verify_reports_an_rgb_member_that_is_not_8_bit_rgb(tmp_path, kind):
    """The decoders would turn these into 8-bit RGB silently; verify reads the stored format."""
    from tests.conftest import convert_synthetic, with_bad_member

    fmt = "jpg" if kind == "grey_jpeg" else "png"
    ds = convert_synthetic(tmp_path / "ds", num=4, size=(32, 24), rgb_format=fmt)
    rng = np.random.default_rng(0)
    image = {
        "grey_jpeg": rng.integers(0, 256, (24, 32), np.uint8),
        "rgba_png": rng.integers(0, 256, (24, 32, 4), np.uint8),
        "png16": rng.integers(0, 65536, (24, 32, 3), np.uint16),
    }[kind]
    data = cv2.imencode(f".{fmt}", image)[1].tobytes()
    shard = with_bad_member(ds, tmp_path / "bad", f"train_000001.rgb.{fmt}", data)
    res = CliRunner().invoke(main, ["verify", "-q", str(tmp_path / "bad")])
    assert res.exit_code == 1, res.output
    want = {
        "grey_jpeg": "train_000001.rgb.jpg: a JPEG of 1 component(s), the schema wants RGB (3)",
        "rgba_png": "train_000001.rgb.png: a 8-bit RGBA PNG, the schema wants 8-bit RGB",
        "png16": "train_000001.rgb.png: a 16-bit RGB PNG, the schema wants 8-bit RGB",
    }[kind]
    assert f"FAULT {shard}: {want}" in res.output, res.output
    res = CliRunner().invoke(main, ["verify", "-q", str(ds)])
    assert res.exit_code == 0, res.output


def test_ctrl_c_is_one_line_exit_130_with_a_resume_hint_where_there_is_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import datakit.verify
    import datakit.writer

    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(datakit.writer, "convert", interrupted)
    monkeypatch.setattr(datakit.verify, "verify", interrupted)
    res = CliRunner().invoke(main, ["convert", "synthetic", str(tmp_path / "out"), "--num", "4"])
    assert res.exit_code == 130, res.output
    assert res.output.strip().splitlines() == [
        "Interrupted; the same command with --resume continues"
    ]
    res = CliRunner().invoke(main, ["verify", str(tmp_path / "out")])
    assert res.exit_code == 130 and res.output.strip().splitlines() == ["Interrupted"]


def test_info_prints_the_depth_scale_to_six_digits() -> None:
    from datakit.cli.data import _scale

    assert _scale(0.006103608758678569) == "0.00610361"
    assert _scale(0.001) == "0.001" and _scale(None) == "None"


def test_sigterm_is_one_line_exit_143_and_leaves_no_temporary(
    synthetic_dataset: Path, tmp_path: Path
) -> None:
    """`kill PID` (a scheduler, `timeout`, `docker stop`) stops a command as Ctrl-C does: one line,
    the shell's status for SIGTERM, and the temporaries of its outputs removed."""
    import os
    import signal
    import subprocess
    import sys
    import time

    for attempt in range(3):
        out = tmp_path / f"sheet{attempt}"
        proc = subprocess.Popen(
            [sys.executable, "-m", "datakit", "preview", str(synthetic_dataset), "-o",
             str(out / "s.png"), "--html", str(out / "p.html"), "--n", "16"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and proc.poll() is None:
                if out.is_dir() and len(os.listdir(out)) == 2:  # both temporaries made
                    break
                time.sleep(0.005)
            time.sleep(0.05)  # while it draws (not inside the few lines that make a temporary)
            proc.send_signal(signal.SIGTERM)
            _, err = proc.communicate(timeout=60)
        finally:
            proc.kill()
        if proc.returncode == 0:
            # the exception landed in code that swallows it (numpy.random's module init, imported
            # lazily just then): the command finished, its outputs whole; try again
            assert sorted(os.listdir(out)) == ["p.html", "s.png"], err
            continue
        assert proc.returncode == 143, err
        assert err.strip().splitlines() == ["Terminated"]
        assert not out.exists()  # neither a sheet nor a temporary, nor the folder made for them
        return
    pytest.fail("SIGTERM was swallowed 3 times")
