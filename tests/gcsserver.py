"""A real Google Cloud Storage endpoint for tests, on 127.0.0.1 only: ``gcp-storage-emulator`` (PyPI,
pure Python, the JSON API that gcsfs speaks) started as its own process, in memory.

gcsfs is pointed at it by ``STORAGE_EMULATOR_HOST`` (``env()``), as a user would point it at any
emulator; it then sends no credentials. Used by the ``gcs_server`` fixture in conftest.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path

from tests.s3server import free_port, stop_group

PROJECT = "datakit-test"


def emulator_available() -> bool:
    try:
        import gcp_storage_emulator  # noqa: F401
        import gcsfs  # noqa: F401
    except ImportError:
        return False
    return True


@dataclass
class GcsServer:
    """A running GCS emulator. ``env()`` gives the variable that points gcsfs at it."""

    endpoint: str
    data_dir: Path
    bucket: str = ""
    _proc: subprocess.Popen[bytes] | None = None

    def env(self) -> dict[str, str]:
        return {"STORAGE_EMULATOR_HOST": self.endpoint}

    def _api(self, method: str, path: str, body: dict[str, object] | None = None) -> object:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(
            f"{self.endpoint}/storage/v1/{path}",
            data=data,
            method=method,
            headers={"Content-Type": "application/json"} if data else {},
        )
        with urllib.request.urlopen(req, timeout=5) as resp:
            return json.loads(resp.read() or b"null")

    def new_bucket(self, prefix: str = "dk") -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:10]}"
        self._api("POST", f"b?project={PROJECT}", {"name": name})
        return name

    def stop(self) -> None:
        stop_group(self._proc)


def start_gcs(data_dir: Path, timeout: float = 30.0) -> GcsServer:
    """``gcp-storage-emulator start --in-memory`` on a free 127.0.0.1 port; ready when it lists
    buckets. Its log goes to ``data_dir/gcs.out``."""
    data_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    args = [
        sys.executable,
        "-m",
        "gcp_storage_emulator",
        "start",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--in-memory",
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GOOGLE_", "STORAGE_"))}
    log = open(data_dir / "gcs.out", "ab")  # noqa: SIM115 - the child owns it
    try:
        proc = subprocess.Popen(
            args,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=data_dir,
            start_new_session=True,
        )
    finally:
        log.close()
    server = GcsServer(f"http://127.0.0.1:{port}", data_dir, _proc=proc)
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    try:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                out = (data_dir / "gcs.out").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"gcp-storage-emulator exited with {proc.returncode}:\n{out}")
            try:
                server._api("GET", f"b?project={PROJECT}")
                return server
            except (OSError, urllib.error.URLError, ValueError) as exc:
                last = exc
                time.sleep(0.1)
        raise RuntimeError(
            f"GCS emulator at {server.endpoint} not ready after {timeout} s ({last})"
        )
    except BaseException:
        server.stop()
        raise
