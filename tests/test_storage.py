"""Object storage against real servers on 127.0.0.1: SeaweedFS S3 (session fixture ``s3_server``), a
plain http.server, and a fault-injecting proxy (resets, 503s, truncated bodies, stalls)."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tarfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

from datakit.cli import main
from datakit.errors import DatakitError
from datakit.reader import open_dataset, pipeline
from datakit.storage import (
    Location,
    StorageConfig,
    StorageError,
    TruncatedRead,
    classify,
    redact,
    redact_text,
    register_url_credentials,
    retry,
)
from datakit.streaming import FsspecSource, ShardStream, make_source, open_shard, open_stream
from tests.s3server import FaultProxy, S3Server

pytestmark = pytest.mark.timeout(180)

FAST = StorageConfig(timeout_s=3, attempts=3, backoff_s=0.05, max_backoff_s=0.2)
SYN = ["--num", "24", "--val", "8", "--size", "64x48", "--shard-size", "4", "--no-progress"]
CLEAN_ENV = {k: None for k in ("DATAKIT_CACHE_DIR", "DATAKIT_ON_SHARD_ERROR")}


def run(*args: str, env: dict[str, str | None] | None = None) -> Any:
    return CliRunner().invoke(
        main, list(args), env={**CLEAN_ENV, **(env or {})}, catch_exceptions=False
    )


def _clear_env(mp: pytest.MonkeyPatch) -> None:
    for k in list(os.environ):
        if k.startswith(("AWS_", "DATAKIT_")):
            mp.delenv(k)


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch, s3_server: S3Server) -> S3Server:
    """The AWS_* variables of the test server, and nothing else from the host."""
    _clear_env(monkeypatch)
    for k, v in s3_server.env().items():
        monkeypatch.setenv(k, v)
    return s3_server


@pytest.fixture(scope="module")
def datasets(s3_server: S3Server, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """The same synthetic conversion (24 train + 8 val, 8 shards) to a folder and, through the CLI,
    straight into the bucket."""
    local = tmp_path_factory.mktemp("storage") / "syn"
    url = f"s3://{s3_server.bucket}/syn"
    with pytest.MonkeyPatch.context() as mp:
        _clear_env(mp)
        for k, v in s3_server.env().items():
            mp.setenv(k, v)
        for out in (str(local), url):
            res = run("convert", "synthetic", out, *SYN)
            assert res.exit_code == 0, res.output
    return local, url


def samples_of(ds_url: str, **kw: Any) -> list[tuple[str, bytes, bytes, str]]:
    return [
        (s.key, s.rgb.tobytes(), s.depth_raw.tobytes(), json.dumps(s.meta, sort_keys=True))
        for s in open_dataset(ds_url, **kw)
    ]


# --- without a server ----------------------------------------------------------------------------


def test_redact_hides_credentials_and_signatures():
    assert redact("s3://AKIA:s3cr3t@bucket/x") == "s3://***@bucket/x"
    signed = redact("https://h/x.tar?X-Amz-Signature=abc&X-Amz-Credential=k&part=1")
    assert "abc" not in signed and "part=1" in signed
    assert "pw" not in redact_text("failed: https://u:pw@host/a and gs://b/c")
    assert redact("/local/path") == "/local/path"


def test_credentials_leave_the_url(monkeypatch):
    import datakit.urls

    monkeypatch.setattr(datakit.urls, "_CREDENTIALS", {})
    clean = register_url_credentials("s3://KEY:SECRET@bucket-x/prefix")
    assert clean == "s3://bucket-x/prefix"
    loc = Location("s3://KEY:SECRET@bucket-x/prefix")
    assert "SECRET" not in loc.url + loc.path("a.tar") + repr(loc)


def test_secret_with_a_slash_leaves_the_url(monkeypatch):
    """About half of all AWS secret keys hold a "/", which ends urlsplit's host early: the secret
    must still leave the URL, and never show in a message."""
    import datakit.urls

    monkeypatch.setattr(datakit.urls, "_CREDENTIALS", {})
    url = "s3://AKIAEXAMPLE:wJalr/XUtnFEMI+K7MDENG@bucket-x/prefix"
    assert redact(url) == "s3://***@bucket-x/prefix"
    assert "XUtn" not in redact_text(f"failed: {url}/_info.json: denied")
    assert register_url_credentials(url) == "s3://bucket-x/prefix"
    assert datakit.urls.url_credentials("s3://bucket-x/y") == (
        "AKIAEXAMPLE",
        "wJalr/XUtnFEMI+K7MDENG",
    )
    assert register_url_credentials("https://u:p/w?x@host/ds") == "https://host/ds"
    # an "@" in a path after a host:port, or in a key, is not a credential
    for plain in ("http://host:8080/users/a@b.c/ds", "s3://bucket/k@x", "http://host/a:b@c"):
        assert redact(plain) == plain and register_url_credentials(plain) == plain


def test_abfs_container_at_account_is_not_a_credential(monkeypatch):
    """adlfs's fully qualified form: ``abfs://container@account.dfs.core.windows.net/path``."""
    import datakit.urls
    from datakit.storage import filesystem

    monkeypatch.setattr(datakit.urls, "_CREDENTIALS", {})
    url = "abfs://container@acct.dfs.core.windows.net/ds"
    loc = Location(url)
    assert loc.url == url and loc.display == url
    with contextlib.suppress(StorageError):  # no adlfs here; a "credentials" UsageError fails
        filesystem(loc.url)


def test_classify_errors():
    from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError

    def client_error(status: int, code: str) -> ClientError:
        return ClientError(
            {
                "Error": {"Code": code, "Message": code},
                "ResponseMetadata": {"HTTPStatusCode": status},
            },
            "GetObject",
        )

    assert classify(ConnectionResetError()) == "transient"
    assert classify(TruncatedRead("short")) == "transient"
    assert classify(EndpointConnectionError(endpoint_url="http://x")) == "transient"
    assert classify(client_error(503, "ServiceUnavailable")) == "transient"
    assert classify(client_error(400, "SlowDown")) == "transient"
    try:  # s3fs's translation keeps the ClientError as the cause
        raise OSError(5, "Internal") from client_error(500, "InternalError")
    except OSError as exc:
        assert classify(exc) == "transient"
    assert classify(client_error(404, "NoSuchKey")) == "missing"
    assert classify(FileNotFoundError("x")) == "missing"
    assert classify(PermissionError("Forbidden")) == "denied"
    assert classify(NoCredentialsError()) == "denied"
    assert classify(ValueError("bad")) == "error"
    # a wrong endpoint answering 501 will never do it: no retries, no "unreachable"
    assert classify(client_error(501, "NotImplemented")) == "error"


def test_retry_is_bounded_and_only_for_transient_errors(monkeypatch):
    calls = []
    slept: list[float] = []
    monkeypatch.setattr(time, "sleep", slept.append)  # record the backoffs instead of timing them

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionResetError("reset")
        return "ok"

    assert retry(flaky, "s3://b/k", FAST) == "ok" and len(calls) == 3
    calls.clear()
    slept.clear()
    five = FAST.with_(attempts=5)
    with pytest.raises(StorageError, match=r"s3://b/k: unreachable after 5 attempt"):
        retry(
            lambda: (calls.append(1), (_ for _ in ()).throw(TimeoutError("slow")))[0],
            "s3://b/k",
            five,
        )
    assert len(calls) == 5
    # exponential from backoff_s, capped at max_backoff_s, jitter in [1/2, 1]: 0.05 0.1 0.2 0.2
    full = [0.05, 0.1, 0.2, 0.2]
    assert len(slept) == 4
    assert all(f / 2 - 1e-9 <= s <= f + 1e-9 for s, f in zip(slept, full)), slept
    calls.clear()
    with pytest.raises(StorageError, match="not found"):
        retry(
            lambda: (calls.append(1), (_ for _ in ()).throw(FileNotFoundError()))[0],
            "s3://b/k",
            FAST,
        )
    assert len(calls) == 1


def test_error_from_a_loader_worker_stays_one_line(tmp_path):
    """torch re-raises a worker's exception with the worker's traceback in its message."""
    from torch._utils import ExceptionWrapper

    missing = str(tmp_path / "train-000009.tar")
    try:
        list(pipeline([missing], decode=False))
    except StorageError:
        wrapped = ExceptionWrapper(where="in DataLoader worker process 0")
    with pytest.raises(StorageError) as info:
        wrapped.reraise()
    assert str(info.value) == f"{missing}: not found"


def test_config_from_env(monkeypatch):
    monkeypatch.setenv("DATAKIT_READ_CHUNK", "4M")
    monkeypatch.setenv("DATAKIT_IO_TIMEOUT", "7.5")
    monkeypatch.setenv("DATAKIT_ON_SHARD_ERROR", "skip")
    cfg = StorageConfig.from_env(attempts=2)
    assert (cfg.chunk_bytes, cfg.timeout_s, cfg.on_shard_error, cfg.attempts) == (
        4 << 20,
        7.5,
        "skip",
        2,
    )
    monkeypatch.setenv("DATAKIT_ON_SHARD_ERROR", "ignore")  # the variable is named, not an option
    with pytest.raises(DatakitError) as err:
        StorageConfig.from_env()
    assert (
        str(err.value) == "DATAKIT_ON_SHARD_ERROR='ignore' is not a valid value (one of fail, skip)"
    )
    monkeypatch.delenv("DATAKIT_ON_SHARD_ERROR")
    with pytest.raises(DatakitError, match="--on-shard-error must be one of fail, skip"):
        StorageConfig.from_env(on_shard_error="ignore")


# --- S3: convert, verify, read -------------------------------------------------------------------


def test_convert_into_s3_verify_and_same_samples_as_local(aws, datasets):
    local, url = datasets
    res = run("verify", url)
    assert res.exit_code == 0, res.output
    assert "OK: 8 shards, 32 samples" in res.output
    info = run("info", url)
    assert info.exit_code == 0 and "32 in 8 shards" in info.output
    local_info = json.loads((local / "_info.json").read_text())
    remote_info = json.loads(Location(url).read_bytes("_info.json"))
    assert [s["sha256"] for s in remote_info["shards"]] == [
        s["sha256"] for s in local_info["shards"]
    ]
    assert samples_of(url) == samples_of(str(local))
    ds = open_dataset(url)
    assert all(s.url.startswith(url + "/train-") for s in ds.take(3))


def test_resume_against_the_bucket(aws, datasets):
    from tests.converted_fixtures import assert_resume_reproduces

    assert_resume_reproduces(f"s3://{aws.bucket}/resumed", datasets[0])


def test_resume_against_the_bucket_refuses_a_key_of_a_kept_shard(aws):
    """The kept shards' keys come from the small ``_keys/`` objects, not from downloading shards."""
    from converters.synthetic import SyntheticConfig, SyntheticConverter
    from datakit.errors import SampleError
    from datakit.writer import ConvertConfig, convert

    class Crashing(SyntheticConverter):
        def convert(self, unit):  # type: ignore[no-untyped-def]
            if unit.payload[0] >= 8:
                raise RuntimeError("simulated crash")
            yield from super().convert(unit)

    class Repeating(SyntheticConverter):
        def convert(self, unit):  # type: ignore[no-untyped-def]
            for s in super().convert(unit):
                if s.key == "train_000009":
                    s.key = "train_000002"
                yield s

    cfg = SyntheticConfig(num=16, size=(32, 24))
    url = f"s3://{aws.bucket}/dup-resumed"
    with pytest.raises(RuntimeError):
        convert(Crashing(cfg), url, ConvertConfig(shard_size=4, progress=False))
    loc = Location(url)
    assert loc.read_bytes("_keys/train-000000.txt").split() == [
        f"train_{i:06d}".encode() for i in range(4)
    ]
    resume = ConvertConfig(shard_size=4, progress=False, mode="resume")
    with pytest.raises(SampleError) as err:
        convert(Repeating(cfg), url, resume)
    assert str(err.value) == "duplicate sample key 'train_000002' (also in train-000000.tar)"
    convert(SyntheticConverter(cfg), url, resume)
    assert loc.exists("_info.json")
    assert not [n for n in loc.listdir() if n.startswith(("_keys", "_progress"))]


def test_delete_many_removes_the_named_objects_in_one_go(aws):
    loc = Location(f"s3://{aws.bucket}/many")
    for n in ("a.txt", "b.txt", "c.txt"):
        loc.write_bytes(n, n.encode())
    loc.delete_many(["a.txt", "c.txt", "gone.txt"])  # a name already gone is no error
    assert loc.listdir() == ["b.txt"]
    loc.delete_many(["b.txt"])
    assert not loc.exists("b.txt")


def test_wrong_credentials_are_one_clear_line(aws, datasets, monkeypatch):
    if aws.kind == "moto":
        pytest.skip("moto's server accepts any credentials")
    _, url = datasets
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret-value")
    for args in (
        ["info", url],
        ["verify", url],
        ["convert", "synthetic", url + "-new", "--num", "4"],
    ):
        res = run(*args)
        assert res.exit_code != 0
        lines = res.output.strip().splitlines()
        assert len(lines) == 1, res.output
        assert "access denied" in lines[0] and "AWS_ACCESS_KEY_ID" in lines[0], lines[0]
        assert "Traceback" not in res.output and "wrong-secret-value" not in res.output


def test_a_url_with_nothing_under_it_is_no_such_dataset(aws, datasets):
    """A typo in the bucket or prefix is not an interrupted conversion: no advice to --resume."""
    _, url = datasets
    for bad in (url.replace("/syn", "/sny"), "s3://no-such-bucket-dk/syn"):
        res = run("info", bad)
        assert res.exit_code == 1
        lines = res.output.strip().splitlines()
        assert lines == [f"Error: {bad}: no such dataset (nothing stored under this URL)"], lines
    # a prefix that holds something but no _info.json is still an unfinished conversion
    res = run("info", url.rsplit("/", 1)[0])
    assert res.exit_code == 1 and "dataset is incomplete" in res.output and "--resume" in res.output


def test_credentials_in_the_url_never_reach_output_or_manifest(aws, monkeypatch):
    import datakit.urls

    monkeypatch.setattr(datakit.urls, "_CREDENTIALS", {})  # what this test registers stays here
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    url = f"s3://{aws.access_key}:{aws.secret_key}@{aws.bucket}/inurl"
    res = run(
        "convert",
        "synthetic",
        url,
        "--num",
        "4",
        "--size",
        "32x24",
        "--shard-size",
        "2",
        "--no-progress",
    )
    assert res.exit_code == 0, res.output
    assert aws.secret_key not in res.output
    client = aws.client()
    for key in ("inurl/_info.json",):
        body = client.get_object(Bucket=aws.bucket, Key=key)["Body"].read().decode()
        assert aws.secret_key not in body and aws.access_key not in body
    if aws.kind == "moto":
        return  # moto's server accepts any credentials
    bad = f"s3://{aws.access_key}:not-the-secret@{aws.bucket}/inurl"
    res = run("info", bad)
    assert (
        res.exit_code != 0 and "not-the-secret" not in res.output and "access denied" in res.output
    )


def test_deleted_shard_is_named(aws, datasets, caplog, tmp_path):
    local = datasets[0]
    url = f"s3://{aws.bucket}/deleted"
    Location(url).write_bytes("_info.json", (local / "_info.json").read_bytes())
    for name in sorted(os.listdir(local)):
        if name.endswith(".tar") and name != "train-000001.tar":
            Location(url).put_file(_copy(local / name, tmp_path), name)
    with pytest.raises(StorageError, match=r"deleted/train-000001\.tar: not found"):
        samples_of(url)
    res = run("verify", url)
    assert res.exit_code == 1 and "train-000001.tar" in res.output
    # a shard file in the bucket that _info.json does not list (verify lists the prefix)
    Location(url).put_file(_copy(local / "train-000000.tar", tmp_path), "train-000099.tar")
    res = run("verify", url)
    assert f"{url}/train-000099.tar: shard not listed in _info.json" in res.output, res.output
    with caplog.at_level(logging.WARNING, logger="datakit.storage"):
        kept = samples_of(url, storage=StorageConfig(on_shard_error="skip"))
    assert len(kept) == 28 and "train-000001.tar" in caplog.text


def _copy(path: Path, folder: Path) -> str:
    """A copy of ``path`` inside ``folder`` (tmp_path), for put_file to move away."""
    import shutil
    import tempfile

    fd, tmp = tempfile.mkstemp(dir=folder)
    os.close(fd)
    shutil.copyfile(path, tmp)
    return tmp


def test_multipart_upload_for_big_shards(aws, tmp_path):
    data = np.random.default_rng(0).bytes(11 << 20)
    (tmp_path / "big.tar").write_bytes(data)
    cfg = StorageConfig(multipart_chunk_bytes=5 << 20)
    loc = Location(f"s3://{aws.bucket}/big", config=cfg)
    loc.put_file(str(tmp_path / "big.tar"), "big.tar")
    etag = aws.client().head_object(Bucket=aws.bucket, Key="big/big.tar")["ETag"].strip('"')
    assert etag.endswith("-3"), etag  # three parts: 5 + 5 + 1 MiB
    with loc.open("big.tar") as f:
        assert f.read() == data
    small = Location(f"s3://{aws.bucket}/big", config=StorageConfig())
    (tmp_path / "small.tar").write_bytes(data[: 1 << 20])
    small.put_file(str(tmp_path / "small.tar"), "small.tar")
    assert "-" not in aws.client().head_object(Bucket=aws.bucket, Key="big/small.tar")["ETag"]


def test_stream_memory_is_bounded_by_chunks(aws):
    """A 24 MiB object read through 1 MiB chunks, 2 ahead: at most 3 chunks are held."""
    data = np.random.default_rng(1).bytes(24 << 20)
    Location(f"s3://{aws.bucket}/mem").write_bytes("blob.bin", data)
    cfg = StorageConfig(chunk_bytes=1 << 20, readahead=2)
    stream = ShardStream(make_source(f"s3://{aws.bucket}/mem/blob.bin", cfg), cfg)
    peak = 0
    digest = []
    while True:
        block = stream.read(256 << 10)
        if not block:
            break
        digest.append(block[:8])
        held = sum(len(f.result()) for f in list(stream._pending) if f.done()) + len(stream._buf)
        peak = max(peak, held)
    stream.close()
    assert peak <= 3 << 20 and stream.pos == len(data)


# --- faults --------------------------------------------------------------------------------------


@pytest.fixture
def proxied(aws, monkeypatch) -> FaultProxy:
    """GET requests to the S3 server through a fault-injecting proxy."""
    proxy = FaultProxy(int(aws.endpoint.rsplit(":", 1)[1]), only="GET ")
    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
    yield proxy
    proxy.close()


def test_transient_faults_are_retried_and_resumed(aws, datasets, proxied):
    """s3:// streams one GetObject per shard; a failure mid-body resumes at the failed offset."""
    local, _ = datasets
    name = "train-000000.tar"
    want = (local / name).read_bytes()
    cfg = FAST.with_(chunk_bytes=16 << 10, readahead=0, attempts=4)
    # reset and 503 before any byte; then two bodies cut ~1 KiB after the first chunk they carry
    proxied.faults.extend(["reset", "503", ("truncate", 18000), ("truncate", 18000)])
    with open_stream(f"s3://{aws.bucket}/syn/{name}", cfg) as f:
        assert f.read() == want
    ranges = [r[1] for r in proxied.requests if r[0].startswith("GET ")]
    assert ranges == ["", "", "", "bytes=16384-", "bytes=32768-"], ranges
    assert not proxied.faults


def test_ranged_reader_retries_each_chunk(aws, datasets, proxied):
    """The fsspec path (gs://, az://, ...) asks one range per chunk; a failed chunk is asked again."""
    local, _ = datasets
    name = "train-000001.tar"
    cfg = FAST.with_(chunk_bytes=16 << 10, readahead=0, attempts=4)
    proxied.faults.extend(["reset", "503", ("truncate", 9000), "pass", ("truncate", 900)])
    url = f"s3://{aws.bucket}/syn/{name}"
    with ShardStream(FsspecSource(url, cfg), cfg) as f:
        assert f.read() == (local / name).read_bytes()
    ranges = [r[1] for r in proxied.requests if r[0].startswith("GET ")]
    assert ranges[:6] == ["bytes=0-16383"] * 4 + ["bytes=16384-32767"] * 2, ranges


def test_http_resume_after_truncation_without_range_support(datasets, http_server):
    local, _ = datasets
    base, root = http_server
    name = "train-000003.tar"
    (root / name).write_bytes((local / name).read_bytes())
    proxy = FaultProxy(int(base.rsplit(":", 1)[1]))
    try:
        # the one GET is cut inside the second chunk; the resume is first answered 503, then with
        # the whole body again (http.server ignores Range): the first 16 KiB must be skipped
        proxy.faults.extend([("truncate", 30000), "503"])
        cfg = FAST.with_(chunk_bytes=16 << 10, readahead=1)
        with open_stream(f"{proxy.url}/{name}", cfg) as f:
            assert f.read() == (local / name).read_bytes()
        ranges = [r[1] for r in proxy.requests if r[0].startswith("GET ")]
        assert ranges == ["", "bytes=16384-", "bytes=16384-"], proxy.requests
        assert not proxy.faults  # every fault was met
    finally:
        proxy.close()


def test_resume_refuses_an_object_changed_meanwhile(aws, tmp_path):
    """A broken stream resumes with ``Range: bytes=N-``: on an object rewritten meanwhile that would
    splice two objects into one silently corrupt shard."""
    from datakit.streaming import S3Source

    url = f"s3://{aws.bucket}/changed/blob.tar"
    loc = Location(f"s3://{aws.bucket}/changed")
    rng = np.random.default_rng(3)
    loc.write_bytes("blob.tar", rng.bytes(64 << 10))
    source = S3Source(url, FAST)
    try:
        assert len(source.read_range(0, 16 << 10)) == 16 << 10
        loc.write_bytes("blob.tar", rng.bytes(64 << 10))  # same size, other bytes
        with pytest.raises(StorageError, match=r"blob\.tar: changed while being read"):
            source.read_range(32 << 10, 48 << 10)  # not where the stream is: reopened
    finally:
        source.close()


def test_persistent_failure_is_a_bounded_error(aws, datasets, proxied):
    proxied.faults.extend(["503"] * 100)
    with pytest.raises(StorageError, match=r"train-000002\.tar: unreachable after 3 attempt"):
        list(pipeline([f"s3://{aws.bucket}/syn/train-000002.tar"], storage=FAST))
    gets = [r for r in proxied.requests if r[0].startswith("GET ")]
    assert len(gets) == 3 and len(proxied.faults) == 97  # three tries, then it stops asking


def test_stalled_server_times_out_then_recovers(aws, datasets, proxied):
    local, _ = datasets
    name = "val-000000.tar"
    proxied.faults.append(("stall", 20))
    cfg = FAST.with_(timeout_s=1.0)
    with open_stream(f"s3://{aws.bucket}/syn/{name}", cfg) as f:
        assert f.read() == (local / name).read_bytes()
    # The stalled GET was given up (read timeout) and asked again: without the timeout the client
    # would wait out the stall and get the whole body from that one request.
    gets = [r for r in proxied.requests if r[0].startswith("GET ")]
    assert len(gets) == 2 and not proxied.faults, proxied.requests


def test_killed_server_is_a_clear_error_and_a_restart_recovers(tmp_path, monkeypatch, datasets):
    from tests.s3server import start_seaweedfs

    try:
        server = start_seaweedfs(tmp_path / "s3")
    except (RuntimeError, OSError) as exc:
        pytest.skip(f"weed mini cannot start here: {exc}")
    try:
        _clear_env(monkeypatch)
        for k, v in server.env().items():
            monkeypatch.setenv(k, v)
        bucket = server.new_bucket()
        url = f"s3://{bucket}/ds"
        for name in sorted(os.listdir(datasets[0])):
            if name.endswith(".tar") or name == "_info.json":
                Location(url).put_file(_copy(datasets[0] / name, tmp_path), name)
        cfg = FAST.with_(readahead=0)
        it = iter(open_dataset(url, storage=cfg))
        first = next(it)
        server.kill()
        with pytest.raises(StorageError, match=rf"{url}/\S+\.tar: unreachable after 3 attempt"):
            for _ in it:  # a hang instead of the bounded error fails on the module's timeout
                pass
        res = run("verify", url, env={"DATAKIT_IO_ATTEMPTS": "2", "DATAKIT_IO_BACKOFF": "0.1"})
        assert res.exit_code != 0 and len(res.output.strip().splitlines()) == 1, res.output
        assert "_info.json: unreachable after 2 attempt" in res.output
        server.restart()
        again = samples_of(url, storage=StorageConfig(backoff_s=0.2))
        assert len(again) == 32 and again[0][0] == first.key
        assert again == samples_of(str(datasets[0]))
    finally:
        server.stop()


# --- http(s), cache, gopen -----------------------------------------------------------------------


def test_http_dataset_reads_like_local(datasets, http_server):
    local, _ = datasets
    base, root = http_server
    import shutil

    shutil.copytree(local, root / "syn", dirs_exist_ok=True)
    url = f"{base}/syn"
    assert samples_of(url) == samples_of(str(local))
    res = run("verify", url)
    assert res.exit_code == 0, res.output
    res = run("info", f"{base}/nothing-here")
    assert res.exit_code != 0 and "_info.json" in res.output


def test_writing_to_http_is_refused_before_any_work(
    http_server, synthetic_dataset, tmp_path, monkeypatch
):
    """SPEC 1: http(s):// is read only. Every command that writes refuses it up front, as a usage
    error (exit 2) on one line, without a request to the server or a file written locally."""
    base, root = http_server
    url = f"{base}/refused"
    monkeypatch.chdir(tmp_path)
    data = str(synthetic_dataset)
    commands = [
        ["convert", "synthetic", url, "--num", "2", "--no-progress"],
        ["merge", url],
        ["preview", data, "-o", f"{url}/sheet.png"],
        ["preview", data, "-o", "sheet.png", "--html", f"{url}/page.html"],
        ["eval", "--data", data, "--random-init", "--arch", "resnet18", "--out", f"{url}/e.json"],
        ["train", "--data", data, "--out", url, "--arch", "resnet18", "--steps", "1"],
        ["export", "last.pt", f"{url}/backbone.pth"],
        ["demo", "--out", url],
    ]
    for args in commands:
        res = CliRunner().invoke(main, args, env=CLEAN_ENV)
        lines = res.output.strip().splitlines()
        assert res.exit_code == 2 and len(lines) == 1, (args, res.output)
        assert lines[0].startswith("Error: ") and url in lines[0], (args, res.output)
    assert list(tmp_path.iterdir()) == []  # no "http:" folder, no sheet.png
    assert not (root / "refused").exists()


def test_cache_dir_serves_the_second_pass(aws, datasets, proxied, tmp_path):
    local, _ = datasets
    cfg = FAST.with_(cache_dir=str(tmp_path / "cache"))
    url = f"s3://{aws.bucket}/syn"
    first = samples_of(url, storage=cfg)
    cached = sorted(os.listdir(tmp_path / "cache"))
    assert len(cached) == 8 and not [n for n in cached if n.startswith(".")]
    again = open_dataset(url, storage=cfg)  # reads _info.json
    n_gets = len([r for r in proxied.requests if r[0].startswith("GET ")])
    proxied.faults.extend(["503"] * 1000)  # every further GET would fail
    assert [(s.key, s.rgb.tobytes()) for s in again] == [(k, rgb) for k, rgb, _, _ in first]
    assert len([r for r in proxied.requests if r[0].startswith("GET ")]) == n_gets
    assert first == samples_of(str(local))
    proxied.faults.clear()
    small = cfg.with_(
        cache_dir=str(tmp_path / "small"),
        cache_max_bytes=3 * (local / "train-000000.tar").stat().st_size,
    )
    samples_of(url, storage=small)
    kept = os.listdir(tmp_path / "small")
    # LRU eviction keeps the cache within its bound: some shards, not all 8.
    assert 1 <= len(kept) < 8
    assert sum((tmp_path / "small" / n).stat().st_size for n in kept) <= small.cache_max_bytes


def test_cache_keeps_no_partial_copy(aws, tmp_path):
    data = np.random.default_rng(2).bytes(3 << 20)
    Location(f"s3://{aws.bucket}/partial").write_bytes("blob.tar", data)
    cfg = FAST.with_(cache_dir=str(tmp_path / "cache"), chunk_bytes=256 << 10)
    url = f"s3://{aws.bucket}/partial/blob.tar"
    with open_shard(url, cfg) as f:
        f.read(1000)  # a reader that stops early (take(n))
    assert os.listdir(tmp_path / "cache") == []
    with open_shard(url, cfg) as f:
        got = 0
        while got < len(data) - 10000:  # stops in the tar padding: the rest is fetched and kept
            got += len(f.read(min(1 << 16, len(data) - 10000 - got)))
    (kept,) = os.listdir(tmp_path / "cache")
    assert (tmp_path / "cache" / kept).read_bytes() == data


def test_webdataset_gopen_handles_s3_urls(aws, datasets):
    import webdataset as wds

    from datakit.storage import register_gopen_handlers

    register_gopen_handlers()
    url = f"s3://{aws.bucket}/syn/train-000000.tar"
    keys = [s["__key__"] for s in wds.WebDataset(url, shardshuffle=False)]
    with tarfile.open(datasets[0] / "train-000000.tar") as tar:
        assert keys == sorted({n.split(".")[0] for n in tar.getnames()})


# --- DDP ------------------------------------------------------------------------------------------


class _Tagged:
    """An IterableDataset over the pipeline that tags each sample with (rank, worker, shard)."""

    def __init__(self, urls: list[str]) -> None:
        self.urls = urls

    def __iter__(self):  # type: ignore[no-untyped-def]
        import torch.utils.data

        info = torch.utils.data.get_worker_info()
        for s in pipeline(self.urls, split_by_node=True, split_by_worker=True, decode=False):
            yield (int(os.environ["RANK"]), info.id if info else 0, s["__url__"])


def test_two_ranks_two_workers_see_disjoint_shards_covering_all(aws, datasets, monkeypatch):
    import torch.utils.data

    class DS(_Tagged, torch.utils.data.IterableDataset):
        pass

    urls = open_dataset(datasets[1]).shard_urls()
    assert len(urls) == 8
    seen: dict[tuple[int, int], set[str]] = {}
    monkeypatch.setenv("WORLD_SIZE", "2")
    for rank in (0, 1):
        monkeypatch.setenv("RANK", str(rank))
        loader = torch.utils.data.DataLoader(DS(urls), batch_size=None, num_workers=2)
        for r, w, url in loader:
            seen.setdefault((r, w), set()).add(url)
    assert sorted(seen) == [(0, 0), (0, 1), (1, 0), (1, 1)]
    groups = list(seen.values())
    assert all(len(g) == 2 for g in groups)
    assert set().union(*groups) == set(urls)
    assert sum(len(g) for g in groups) == 8  # disjoint


def test_reader_memory_does_not_grow_with_the_stream(aws, datasets):
    """RSS while streaming 120 shards from S3: flat after the first few."""
    url = f"s3://{aws.bucket}/syn/train-000000.tar"
    rss: list[int] = []
    for i, _ in enumerate(pipeline([url] * 120, storage=FAST)):
        if i % 4 == 3:
            rss.append(_rss())
    early, late = max(rss[5:15]), max(rss[-10:])
    assert late - early < 16 << 20, (early, late)


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_truncated_shard_is_an_error_not_fewer_samples(tmp_path):
    """tarfile ends its member list silently where a file is cut at or inside a header: a shard cut
    there (an interrupted copy) must fail naming it, not lose its last samples without a word."""
    import io

    from datakit.reader import iter_tar_members

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for key in ("a", "b", "c"):
            for ext in ("rgb.png", "json"):
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = 600
                tar.addfile(info, io.BytesIO(b"x" * 600))
    whole = buf.getvalue()
    (tmp_path / "whole.tar").write_bytes(whole)
    assert [s["__key__"] for s in pipeline([str(tmp_path / "whole.tar")], decode=False)] == [
        "a",
        "b",
        "c",
    ]
    member = 512 + 1024  # header + data padded to blocks
    for cut in (4 * member, 4 * member + 100):  # at a header, inside one
        (tmp_path / "cut.tar").write_bytes(whole[:cut])
        with pytest.raises(StorageError, match=r"cut\.tar: unreadable shard \(.*cut short"):
            list(pipeline([str(tmp_path / "cut.tar")], decode=False))
        with open(tmp_path / "cut.tar", "rb") as f, pytest.raises(DatakitError, match="cut short"):
            list(iter_tar_members(f, "cut.tar"))


def test_http_redirect_to_another_host_gets_no_password(tmp_path, monkeypatch):
    """urllib and aiohttp's session auth forward Authorization on every redirect; a redirect to
    another host (a CDN, a pre-signed bucket URL) must not receive the password."""
    import http.server
    import threading

    import datakit.urls

    monkeypatch.setattr(datakit.urls, "_CREDENTIALS", {})
    seen: list[str | None] = []

    class Target(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append(self.headers.get("Authorization"))
            self.send_response(200)
            self.send_header("Content-Length", "4")
            self.end_headers()
            self.wfile.write(b"data")

        def log_message(self, *args: Any) -> None:
            pass

    target = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Target)
    other = f"http://localhost:{target.server_address[1]}/blob"  # another origin

    class Redirect(Target):
        def do_GET(self) -> None:
            self.send_response(302)
            self.send_header("Location", other)
            self.send_header("Content-Length", "0")
            self.end_headers()

    redirect = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Redirect)
    servers = (target, redirect)
    for server in servers:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        base = f"http://user:hunter2@127.0.0.1:{redirect.server_address[1]}"
        with open_stream(register_url_credentials(f"{base}/blob"), FAST) as f:
            assert f.read() == b"data"
        assert Location(base, config=FAST).read_bytes("blob") == b"data"
        assert seen == [None, None], seen
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()


def test_local_errors_name_the_file(tmp_path):
    with pytest.raises(StorageError, match="nope.tar: not found"):
        list(pipeline([str(tmp_path / "nope.tar")]))
    (tmp_path / "bad.tar").write_bytes(b"not a tar" * 100)
    with pytest.raises(StorageError, match="bad.tar: unreadable shard"):
        list(pipeline([str(tmp_path / "bad.tar")]))


def _ddp_rank(
    rank: int, world: int, init_file: str, url: str, log_dir: str, env: dict[str, str]
) -> None:
    """One DDP rank (gloo, CPU): a make_loader epoch with 2 workers; every shard each worker opens
    is logged to ``log_dir``."""
    os.environ.update(env)
    import torch.distributed as dist
    import torch.utils.data

    import datakit.streaming as streaming
    from datakit import ViewConfig, make_loader

    opened = streaming.open_shard

    def logging_open(shard_url: str, *args: Any, **kwargs: Any) -> Any:
        info = torch.utils.data.get_worker_info()
        with open(
            os.path.join(log_dir, f"{rank}-{info.id if info else -1}-{os.getpid()}"), "a"
        ) as f:
            f.write(shard_url + "\n")
        return opened(shard_url, *args, **kwargs)

    streaming.open_shard = logging_open  # type: ignore[assignment]
    # a spawned process defaults its children to spawn: fork the loader workers so they keep the patch
    import multiprocessing

    multiprocessing.set_start_method("fork", force=True)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        loader = make_loader(
            url, 2, views=ViewConfig(size=32), num_workers=2, resampled=False, shuffle=False
        )
        assert sum(1 for _ in loader) == len(loader) == 8
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_ddp_gloo_make_loader_two_ranks_two_workers(aws, tmp_path):
    """The same property through torch.distributed (gloo, 2 processes) and make_loader."""
    import torch.multiprocessing as tmp

    url = f"s3://{aws.bucket}/ddp8"
    res = run(
        "convert",
        "synthetic",
        url,
        "--num",
        "32",
        "--size",
        "48x32",
        "--shard-size",
        "4",
        "--no-progress",
    )
    assert res.exit_code == 0, res.output
    urls = set(open_dataset(url).shard_urls())
    logs = tmp_path / "opened"
    logs.mkdir()
    tmp.spawn(_ddp_rank, args=(2, str(tmp_path / "init"), url, str(logs), aws.env()), nprocs=2)
    seen = {}
    for f in logs.iterdir():
        rank, worker, _ = f.name.split("-")
        seen.setdefault((int(rank), int(worker)), set()).update(f.read_text().split())
    assert sorted(seen) == [(0, 0), (0, 1), (1, 0), (1, 1)]
    groups = list(seen.values())
    assert all(len(g) == 2 for g in groups) and set().union(*groups) == urls and len(urls) == 8


def test_cache_completes_a_tail_that_spans_several_chunks(http_server, tmp_path):
    """A reader that stops in the last stretch of a shard (tar padding it did not need) still leaves
    a whole cached copy when that stretch runs over more than one read chunk."""
    base, root = http_server
    data = np.random.default_rng(3).bytes(40960)
    (root / "tail.tar").write_bytes(data)
    cfg = FAST.with_(cache_dir=str(tmp_path / "cache"), chunk_bytes=4096)
    with open_shard(f"{base}/tail.tar", cfg) as f:
        got = 0
        while got < len(data) - 5000:  # 5000 bytes left: more than one 4 KiB chunk
            got += len(f.read(min(1000, len(data) - 5000 - got)))
    (kept,) = os.listdir(tmp_path / "cache")
    assert (tmp_path / "cache" / kept).read_bytes() == data


def test_a_closed_stream_sends_no_more_requests(monkeypatch: pytest.MonkeyPatch) -> None:
    """A chunk fetch waiting out a retry's backoff when its reader closes must not send the retry:
    close() has already dropped the source's body, so a body opened then would stay open."""
    import threading
    import types

    from datakit import remote

    class Flaky:
        url, sequential = "http://127.0.0.1:9/flaky.tar", True

        def __init__(self) -> None:
            self.calls, self.after_close = 0, 0
            self.closed = threading.Event()

        def size(self) -> int:
            return 8192

        def identity(self) -> str:
            return "8192:x"

        def read_range(self, start: int, end: int) -> bytes:
            self.calls += 1
            self.after_close += self.closed.is_set()
            if self.calls == 1:
                raise ConnectionResetError("reset")  # transient: retried after the backoff
            return b"\0" * (end - start)

        def close(self) -> None:
            self.closed.set()

    src = Flaky()
    backoff = threading.Event()

    def sleep_until_closed(_: float) -> None:  # the backoff lasts until the reader has closed
        backoff.set()
        src.closed.wait(5)

    monkeypatch.setattr(
        remote, "time", types.SimpleNamespace(sleep=sleep_until_closed, monotonic=time.monotonic)
    )
    cfg = StorageConfig(backoff_s=0.2, max_backoff_s=0.2, attempts=3, chunk_bytes=4096)
    stream = ShardStream(src, cfg)  # type: ignore[arg-type]
    assert backoff.wait(5)
    stream.close()  # during the first fetch's backoff
    time.sleep(0.5)  # a retry, if one were sent, comes at once
    assert src.after_close == 0 and src.calls == 1


def test_a_request_in_flight_when_the_stream_closes_leaves_no_body_open() -> None:
    """close() while a chunk's request is still waiting for its answer: the body that answer opens
    in the source (kept there for the next range) must be closed too, not left open."""
    import threading

    class Slow:
        url, sequential = "http://127.0.0.1:9/slow.tar", True

        def __init__(self) -> None:
            self.body_open = False
            self.asked, self.answer = threading.Event(), threading.Event()

        def size(self) -> int:
            return 4096

        def identity(self) -> str:
            return "4096:x"

        def read_range(self, start: int, end: int) -> bytes:
            self.asked.set()
            self.answer.wait(5)  # the request is in flight
            self.body_open = True  # as StreamSource: the streaming body stays open for more
            return b"\0" * (end - start)

        def close(self) -> None:
            self.body_open = False

    src = Slow()
    stream = ShardStream(src, StorageConfig(chunk_bytes=4096))  # type: ignore[arg-type]
    assert src.asked.wait(5)
    stream.close()  # the request has not been answered yet
    src.answer.set()
    stream._pool.shutdown(wait=True)  # the fetch has returned
    assert not src.body_open
