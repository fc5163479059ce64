"""``datakit verify`` on shards whose bytes match the manifest yet whose samples or manifest are
wrong: each fault is found and named."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from datakit.verify import verify
from tests.conftest import convert_synthetic, with_bad_member

KEY = "train_000001"


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return convert_synthetic(
        tmp_path_factory.mktemp("v") / "ds", num=4, size=(32, 24), shard_size=2
    )


def rehashed(ds: Path, out: Path, member: str, data: bytes) -> Path:
    """A copy whose ``member`` holds ``data``, the manifest's size and sha256 updated to match."""
    shard = with_bad_member(ds, out, member, data)
    info = json.loads((out / "_info.json").read_text())
    for entry in info["shards"]:
        if entry["name"] == shard.name:
            entry["bytes"] = shard.stat().st_size
            entry["sha256"] = hashlib.sha256(shard.read_bytes()).hexdigest()
    (out / "_info.json").write_text(json.dumps(info))
    return shard


def meta_of(ds: Path) -> dict[str, Any]:
    import tarfile

    with tarfile.open(ds / "train-000000.tar") as tar:
        return json.loads(tar.extractfile(f"{KEY}.json").read())  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "edit,fault",
    [
        ({"split": "val"}, f"{KEY}: metadata split 'val' in a 'train' shard"),
        ({"depth_scale": 0.002}, f"{KEY}: depth_scale 0.002 differs from the manifest's 0.001"),
        (
            {"has_depth": False},
            f"{KEY}: member {KEY}.depth.png present but its metadata says has_depth false",
        ),
        ({"has_depth": "yes"}, f"{KEY}: metadata has_depth must be true or false, got 'yes'"),
    ],
)
def test_sample_metadata_faults_in_a_shard_that_matches_its_hash(
    small: Path, tmp_path: Path, edit: dict[str, Any], fault: str
) -> None:
    meta = {**meta_of(small), **edit}
    shard = rehashed(small, tmp_path / "bad", f"{KEY}.json", json.dumps(meta).encode())
    report = verify(str(tmp_path / "bad"))
    assert report.faults == [f"{shard}: {fault}"], report.faults


def test_label_values_outside_the_classes_are_a_fault(small: Path, tmp_path: Path) -> None:
    label = np.zeros((24, 32), np.uint8)
    label[3, 4] = 9  # synthetic6 has classes 0..5 and ignores 255
    data = cv2.imencode(".png", label)[1].tobytes()
    rehashed(small, tmp_path / "bad", f"{KEY}.label.png", data)
    report = verify(str(tmp_path / "bad"))
    assert (
        len(report.faults) == 1
        and "label values [9] outside 0..5 and ignore 255" in (report.faults[0])
    ), report.faults


def edit_info(ds: Path, out: Path, edit: Callable[[dict[str, Any]], None]) -> Path:
    import shutil

    shutil.copytree(ds, out)
    info = json.loads((out / "_info.json").read_text())
    edit(info)
    (out / "_info.json").write_text(json.dumps(info))
    return out


def test_manifest_counts_and_splits_that_disagree_with_the_shards(
    small: Path, tmp_path: Path
) -> None:
    assert verify(str(small)).ok

    def count(info: dict[str, Any]) -> None:  # shard list and splits agree, the shard does not
        info["shards"][1]["num_samples"] = 3
        info["splits"]["train"]["num_samples"] = 5
        info["splits"]["train"]["shard_lengths"] = [2, 3]

    report = verify(str(edit_info(small, tmp_path / "count", count)))
    assert report.faults == [
        f"{tmp_path / 'count' / 'train-000001.tar'}: 2 samples, manifest says 3"
    ]

    def lengths(info: dict[str, Any]) -> None:
        info["splits"]["train"]["shard_lengths"] = [3, 1]

    report = verify(str(edit_info(small, tmp_path / "lengths", lengths)))
    where = tmp_path / "lengths" / "_info.json"
    assert report.faults == [
        f"{where}: splits['train'].shard_lengths disagrees with the shard list"
    ]

    def extra(info: dict[str, Any]) -> None:
        info["splits"]["val"] = {"num_samples": 0, "filenames": [], "shard_lengths": []}

    report = verify(str(edit_info(small, tmp_path / "extra", extra)))
    where = tmp_path / "extra" / "_info.json"
    assert report.faults == [f"{where}: splits lists 'val', which has no shard"]
