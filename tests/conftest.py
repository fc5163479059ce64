"""Shared fixtures: synthetic datasets built in real shard format, paths to ../shared/fixtures."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

REPO = Path(__file__).resolve().parents[1]
SHARED_FIXTURES = REPO.parent / "shared" / "fixtures"


def convert_synthetic(
    out: Path,
    *,
    num: int = 16,
    val: int = 0,
    size: tuple[int, int] = (96, 72),
    shard_size: int = 4,
    workers: int = 1,
    seed: int = 0,
    **cfg: object,
) -> Path:
    """Convert synthetic scenes into ``out`` through the real writer; returns ``out``."""
    from converters.synthetic import SyntheticConfig, SyntheticConverter
    from datakit.writer import ConvertConfig, convert

    conv = SyntheticConverter(SyntheticConfig(num=num, val=val, size=size, seed=seed))
    convert(
        conv, str(out), ConvertConfig(shard_size=shard_size, workers=workers, progress=False, **cfg)
    )  # type: ignore[arg-type]
    return out


def with_bad_member(dataset: Path, out: Path, member: str, data: bytes = b"garbage") -> Path:
    """A copy of ``dataset`` at ``out`` whose tar member ``member`` holds ``data`` (manifest kept,
    so the sha256 no longer matches); returns the path of the shard that holds it."""
    import io
    import tarfile

    shutil.copytree(dataset, out)
    for shard in sorted(out.glob("*.tar")):
        with tarfile.open(shard) as tar:
            members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]  # type: ignore[union-attr]
        if not any(m.name == member for m, _ in members):
            continue
        with tarfile.open(shard, "w", format=tarfile.USTAR_FORMAT) as tar:
            for m, payload in members:
                if m.name == member:
                    payload, m.size = data, len(data)
                tar.addfile(m, io.BytesIO(payload))
        return shard
    raise FileNotFoundError(member)


def with_bad_units(dataset: Path, out: Path) -> Path:
    """A copy of ``dataset`` (4 samples a shard) at ``out`` whose shard holding ``train_000001``
    has that sample's JPEG garbled and is cut short inside ``train_000003``'s depth member: read
    with skipping, it gives its samples 0 and 2, one bad sample and one unreadable shard. Returns
    the shard's path."""
    import tarfile

    shard = with_bad_member(dataset, out, "train_000001.rgb.jpg")
    with tarfile.open(shard) as tar:
        cut = tar.getmember("train_000003.depth.png").offset_data + 100
    with shard.open("r+b") as f:
        f.truncate(cut)
    return shard


def pytest_configure(config: pytest.Config) -> None:
    """Hypothesis keeps its example database and constants cache under ./.hypothesis by default
    (written while tests are collected): inside the checkout. Give it a temporary folder instead.
    Under CI (``CI`` set, as .ci/run does) property tests draw the same examples on every run, so a
    red build is reproducible; locally they keep drawing new ones."""
    from hypothesis import settings
    from hypothesis.configuration import set_hypothesis_home_dir

    global _HYPOTHESIS_HOME
    _HYPOTHESIS_HOME = tempfile.mkdtemp(prefix="datakit-hypothesis-")
    set_hypothesis_home_dir(_HYPOTHESIS_HOME)
    settings.register_profile("ci", derandomize=True, print_blob=True)
    if os.environ.get("CI"):
        settings.load_profile("ci")


def pytest_unconfigure(config: pytest.Config) -> None:
    if _HYPOTHESIS_HOME:
        shutil.rmtree(_HYPOTHESIS_HOME, ignore_errors=True)


_HYPOTHESIS_HOME = ""


@pytest.fixture
def disk_events(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The fsyncs and renames made while the test runs, in order, as ``fsync NAME`` and ``replace
    NAME`` (base names; Linux's /proc names an fsync's file)."""
    events: list[str] = []
    fsync, replace = os.fsync, os.replace

    def record_fsync(fd: int) -> None:
        events.append("fsync " + os.path.basename(os.readlink(f"/proc/self/fd/{fd}")))
        fsync(fd)

    def record_replace(src: Any, dst: Any) -> None:
        events.append(f"replace {os.path.basename(src)}")
        replace(src, dst)

    monkeypatch.setattr(os, "fsync", record_fsync)
    monkeypatch.setattr(os, "replace", record_replace)
    return events


@pytest.fixture(scope="session")
def synthetic_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """16 train + 8 val synthetic samples at 96x72, 4 per shard (read-only: do not modify)."""
    return convert_synthetic(tmp_path_factory.mktemp("synthetic") / "ds", num=16, val=8)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """A real S3 endpoint for the whole session on 127.0.0.1 (SeaweedFS ``weed mini``; moto's server
    where weed cannot start): ``.endpoint``, ``.access_key``, ``.secret_key``, ``.env()`` (AWS_*
    variables for monkeypatch), ``.bucket`` (fresh, shared), ``.new_bucket()``. See tests/s3server.py."""
    from tests.s3server import start_s3

    server = start_s3(tmp_path_factory.mktemp("s3server"))
    server.bucket = server.new_bucket()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def gcs_server(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """A real GCS JSON-API endpoint for the whole session on 127.0.0.1 (``gcp-storage-emulator``, its
    own process, in memory): ``.endpoint``, ``.env()`` (``STORAGE_EMULATOR_HOST`` for monkeypatch),
    ``.bucket`` (fresh, shared), ``.new_bucket()``. Skips where gcsfs or the emulator is not
    installed (``pip install -e '.[dev]'``). See tests/gcsserver.py."""
    from tests.gcsserver import emulator_available, start_gcs

    if not emulator_available():
        pytest.skip("gcsfs and gcp-storage-emulator are not installed (pip install -e '.[dev]')")
    server = start_gcs(tmp_path_factory.mktemp("gcsserver"))
    server.bucket = server.new_bucket()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def http_server(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """``http.server`` on 127.0.0.1 in a thread: yields (base URL, served folder); put files in it."""
    from tests.s3server import http_server as serve

    root = tmp_path_factory.mktemp("www")
    with serve(root) as url:
        yield url, root


@pytest.fixture(scope="session")
def shared_fixtures() -> Path:
    """../shared/fixtures beside the repo; tests that need it skip cleanly without it."""
    if not SHARED_FIXTURES.is_dir():
        pytest.skip(f"real sample files not found at {SHARED_FIXTURES}")
    return SHARED_FIXTURES


@pytest.fixture
def one_torch_thread():  # type: ignore[no-untyped-def]
    """One torch intra-op thread for the test: on a shared 2-core machine, two spinning threads per
    op make small CPU models 5-10x slower."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
