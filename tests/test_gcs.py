"""gs:// against a real GCS JSON-API server on 127.0.0.1 (``gcp-storage-emulator``, session fixture
``gcs_server``), reached through gcsfs as a user would: ``STORAGE_EMULATOR_HOST``."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

from datakit.cli import main
from datakit.reader import open_dataset
from datakit.storage import Location, StorageConfig, StorageError
from datakit.streaming import FsspecSource, ShardStream, open_stream
from tests.gcsserver import GcsServer
from tests.s3server import free_port

pytestmark = pytest.mark.timeout(120)

FAST = StorageConfig(timeout_s=3, attempts=3, backoff_s=0.05, max_backoff_s=0.2)
SYN = ["--num", "24", "--val", "8", "--size", "64x48", "--shard-size", "4", "--no-progress"]
CLEAN_ENV = {k: None for k in ("DATAKIT_CACHE_DIR", "DATAKIT_ON_SHARD_ERROR")}


def run(*args: str) -> Any:
    return CliRunner().invoke(main, list(args), env=CLEAN_ENV, catch_exceptions=False)


def _point_at(mp: pytest.MonkeyPatch, server: GcsServer) -> None:
    """The server's variable, and no storage setting or Google credentials from the host."""
    for k in list(os.environ):
        if k.startswith(("DATAKIT_", "GOOGLE_", "STORAGE_EMULATOR_")):
            mp.delenv(k)
    for k, v in server.env().items():
        mp.setenv(k, v)


@pytest.fixture
def gcs(monkeypatch: pytest.MonkeyPatch, gcs_server: GcsServer) -> GcsServer:
    _point_at(monkeypatch, gcs_server)
    return gcs_server


@pytest.fixture(scope="module")
def gs_datasets(
    gcs_server: GcsServer, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, str]:
    """The same synthetic conversion (24 train + 8 val, 8 shards) to a folder and, through the CLI,
    straight into the bucket."""
    local = tmp_path_factory.mktemp("gcs") / "syn"
    url = f"gs://{gcs_server.bucket}/syn"
    with pytest.MonkeyPatch.context() as mp:
        _point_at(mp, gcs_server)
        for out in (str(local), url):
            res = run("convert", "synthetic", out, *SYN)
            assert res.exit_code == 0, res.output
    return local, url


def test_convert_into_gcs_verify_info_and_bit_exact_samples(gcs, gs_datasets):
    local, url = gs_datasets
    res = run("verify", url)
    assert res.exit_code == 0, res.output
    assert "OK: 8 shards, 32 samples" in res.output
    info = run("info", url)
    assert info.exit_code == 0 and "32 in 8 shards" in info.output, info.output
    local_info = json.loads((local / "_info.json").read_text())
    remote_info = json.loads(Location(url).read_bytes("_info.json"))
    assert remote_info["shards"] == local_info["shards"]  # same bytes: names, sizes, sha256
    remote, here = list(open_dataset(url)), list(open_dataset(str(local)))
    assert len(remote) == len(here) == 32
    for r, h in zip(remote, here):
        assert r.key == h.key and r.url.startswith(url + "/")
        assert r.depth_raw.dtype == h.depth_raw.dtype == np.uint16  # 16-bit depth kept
        assert r.depth_raw.tobytes() == h.depth_raw.tobytes()
        assert r.rgb.tobytes() == h.rgb.tobytes()
        assert json.dumps(r.meta, sort_keys=True) == json.dumps(h.meta, sort_keys=True)


def test_train_streams_from_gcs(gcs, gs_datasets, tmp_path, one_torch_thread):
    """Two steps of ``datakit train`` reading gs:// in a forked loader worker."""
    _, url = gs_datasets
    out = tmp_path / "run"
    res = run(
        "train", "--data", url, "--out", str(out), "--steps", "2", "--workers", "1",
        "--arch", "resnet18", "--image-size", "64", "--batch-size", "4",
        "--set", "proj_hidden=64", "--set", "head_hidden=64", "--set", "queue_size=16",
        "--set", "progress=false", "--set", "log_every=1",
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    steps = [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2]


def test_resume_against_the_gcs_bucket(gcs, gs_datasets):
    from tests.converted_fixtures import assert_resume_reproduces

    url = f"gs://{gcs.bucket}/resumed"
    assert_resume_reproduces(url, gs_datasets[0])
    assert run("verify", "-q", url).exit_code == 0


def test_object_overwritten_between_chunk_reads_is_refused(gcs):
    """gs:// reads one range request per chunk: an object rewritten between two of them would
    splice two objects into one silently corrupt shard."""
    loc = Location(f"gs://{gcs.bucket}/changed")
    url = loc.path("blob.tar")
    rng = np.random.default_rng(3)
    first = rng.bytes(64 << 10)
    loc.write_bytes("blob.tar", first)
    source = FsspecSource(url, FAST)
    assert source.read_range(0, 16 << 10) == first[: 16 << 10]
    assert source.read_range(16 << 10, 32 << 10) == first[16 << 10 : 32 << 10]
    loc.write_bytes("blob.tar", rng.bytes(64 << 10))  # same size, other bytes
    with pytest.raises(StorageError, match=r"^gs://.*/blob\.tar: changed while being read \("):
        source.read_range(32 << 10, 48 << 10)

    # the same through the streaming reader: one line, and no byte of the new object handed out
    loc.write_bytes("blob.tar", first)
    cfg = FAST.with_(chunk_bytes=16 << 10, readahead=0)
    got = b""
    with (
        pytest.raises(StorageError, match=r"blob\.tar: changed while being read") as err,
        ShardStream(FsspecSource(url, cfg), cfg) as f,
    ):
        got += f.read(16 << 10)
        loc.write_bytes("blob.tar", rng.bytes(64 << 10))
        while chunk := f.read(16 << 10):
            got += chunk
    assert "\n" not in str(err.value)
    assert first.startswith(got) and len(got) < len(first)
    with open_stream(url, cfg) as f:  # read again from the start: the new object, whole
        assert len(f.read()) == 64 << 10


def test_unreachable_gcs_endpoint_is_a_bounded_error(monkeypatch):
    """gcsfs retries each request up to 6 times with up to 32 s waits on its own; datakit sends each
    once, so a refused connection is an error after its own attempts, in about a second."""
    pytest.importorskip("gcsfs")
    for k in list(os.environ):
        if k.startswith(("DATAKIT_", "GOOGLE_")):
            monkeypatch.delenv(k)
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", f"http://127.0.0.1:{free_port()}")
    t0 = time.monotonic()
    with pytest.raises(StorageError) as err:
        Location("gs://nobucket/ds", config=FAST).read_bytes("_info.json")
    assert time.monotonic() - t0 < 10
    assert str(err.value).startswith("gs://nobucket/ds/_info.json: unreachable after 3 attempt(s)")


def test_generation_header_is_checked_without_a_lookup(gcs, monkeypatch):
    """Google's answer to a ranged read names the generation that served it (``x-goog-generation``;
    the emulator sends none): compared with the first-seen one, no lookup after each chunk."""
    loc = Location(f"gs://{gcs.bucket}/header")
    loc.write_bytes("blob.tar", b"x" * (32 << 10))
    source = FsspecSource(loc.path("blob.tar"), FAST)
    pinned = str(source._stat()["generation"])
    fs, answered, lookups = source.fs, [pinned], []
    real_call, real_info = fs.call, fs.info

    def call(method: str, url: str, **kw: Any) -> Any:
        assert f"generation={pinned}" in url  # every read asks for the first-seen generation
        headers, data = real_call(method, url, **kw)
        return {**headers, "x-goog-generation": answered[0]}, data

    monkeypatch.setattr(fs, "call", call)
    monkeypatch.setattr(fs, "info", lambda *a, **kw: lookups.append(a) or real_info(*a, **kw))
    assert source.read_range(0, 16 << 10) == b"x" * (16 << 10)
    assert lookups == []
    answered[0] = str(int(pinned) + 1)
    with pytest.raises(
        StorageError, match=rf"changed while being read \(generation {answered[0]}\)"
    ):
        source.read_range(16 << 10, 32 << 10)
