"""Where datasets live: a local folder or a URL (s3://, gs://, http(s)://, file://) through fsspec.

:class:`Location` is the one object readers and the writer use to touch files, so that every command
takes a URL wherever it takes a folder. Local paths use plain os calls (atomic ``os.replace``);
remote ones go through fsspec, where an object appears under its name only once uploaded whole.

Remote calls are bounded (timeouts, :func:`~datakit.remote.retry`) and fail as one
:class:`StorageError` line naming the object. S3 endpoint and credentials come from the standard
places (``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` / ``AWS_SESSION_TOKEN``, ``AWS_PROFILE``,
``AWS_ENDPOINT_URL(_S3)``, ``AWS_REGION``, ``~/.aws``), read by botocore itself; credentials written
into a URL are taken out of it on entry (:mod:`datakit.urls`).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import shutil
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit

from datakit.errors import UsageError, naming_write
from datakit.remote import (
    ON_SHARD_ERROR,
    StorageConfig,
    StorageError,
    TruncatedRead,
    _short,
    classify,
    parse_bytes,
    retry,
    storage_error,
)
from datakit.urls import (
    is_url,
    redact,
    redact_args,
    redact_text,
    register_url_credentials,
    url_credentials,
)

__all__ = [
    "ON_SHARD_ERROR",
    "Location",
    "StorageConfig",
    "StorageError",
    "TruncatedRead",
    "classify",
    "filesystem",
    "fs_path",
    "is_url",
    "parse_bytes",
    "redact",
    "redact_args",
    "redact_text",
    "register_gopen_handlers",
    "register_url_credentials",
    "retry",
    "s3_client",
    "storage_error",
]


# --- filesystems ---------------------------------------------------------------------------------

_ENV_PREFIXES = ("AWS_", "GOOGLE_", "GCS", "STORAGE_EMULATOR_HOST", "AZURE_", "FSSPEC_")
_FS_CACHE: dict[tuple[str, int, str, str], Any] = {}
_FS_LOCK = threading.Lock()


def filesystem(url: str, config: StorageConfig | None = None, **storage_options: Any) -> Any:
    """The fsspec filesystem for ``url``'s scheme, with timeouts set and its own retry loops off
    (:func:`retry` is the one retry loop, so that the time to an error is bounded and known)."""
    import fsspec

    config = config or StorageConfig.from_env()
    protocol = urlsplit(url).scheme
    opts: dict[str, Any] = {}
    creds = url_credentials(url)
    if protocol in ("s3", "s3a"):
        opts = {
            "use_listings_cache": False,
            "config_kwargs": {
                "connect_timeout": min(10.0, config.timeout_s),
                "read_timeout": config.timeout_s,
                "retries": {"total_max_attempts": 1, "mode": "standard"},
            },
        }
        if os.environ.get("AWS_NO_SIGN_REQUEST", "").lower() in ("1", "true", "yes"):
            opts["anon"] = True
        if creds:
            opts["key"], opts["secret"] = creds
    elif protocol in ("http", "https"):
        import aiohttp

        timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=min(10.0, config.timeout_s), sock_read=config.timeout_s
        )
        opts = {"client_kwargs": {"timeout": timeout}}
        if creds:  # a header per request, not session auth: that one follows redirects anywhere
            token = base64.b64encode(f"{creds[0]}:{creds[1]}".encode()).decode()
            opts["headers"] = {"Authorization": f"Basic {token}"}
    elif creds:
        raise UsageError(f"{redact(url)}: credentials in {protocol}:// URLs are not supported")
    elif protocol in ("gs", "gcs"):
        import aiohttp

        opts = {
            "requests_timeout": aiohttp.ClientTimeout(
                total=None, sock_connect=min(10.0, config.timeout_s), sock_read=config.timeout_s
            )
        }
        if _gcs_emulator(storage_options):
            opts["token"] = "anon"  # an emulator checks none: no Google credentials sent to it
    opts.update(storage_options)
    # fsspec caches instances by their arguments only: a changed AWS_* variable (other endpoint or
    # credentials) must give a new client, and a forked worker its own.
    env = sorted((k, v) for k, v in os.environ.items() if k.startswith(_ENV_PREFIXES))
    key = (
        protocol,
        os.getpid(),
        repr(sorted(opts.items(), key=lambda kv: kv[0])),
        hashlib.sha256(repr(env).encode()).hexdigest(),
    )
    with _FS_LOCK:
        fs = _FS_CACHE.get(key)
        if fs is not None:
            return fs
        try:
            if protocol in ("gs", "gcs"):  # each request once, timeouts: datakit.gcs
                from datakit.gcs import filesystem_class

                cls = filesystem_class(_gcs_emulator(storage_options))
                fs = cls(skip_instance_cache=True, **opts)
            else:
                fs = fsspec.filesystem(protocol, skip_instance_cache=True, **opts)
        except (ImportError, ValueError) as exc:
            hint = " (pip install gcsfs)" if protocol in ("gs", "gcs") else ""
            raise StorageError(
                f"{redact(url)}: no filesystem for {protocol}:// ({_short(exc)}){hint}"
            ) from None
        if hasattr(fs, "retries"):
            fs.retries = 1  # s3fs/gcsfs inner retry loops: ours is the only one
        _FS_CACHE[key] = fs
    return fs


def _gcs_emulator(storage_options: dict[str, Any]) -> bool:
    """gs:// goes to an emulator: ``STORAGE_EMULATOR_HOST`` (read by gcsfs) or an ``endpoint_url``."""
    if storage_options.get("endpoint_url"):
        return True
    return os.environ.get("STORAGE_EMULATOR_HOST", "") not in ("", "default")


def s3_client(url: str, config: StorageConfig | None = None) -> Any:
    """botocore's blocking S3 client for streaming reads: endpoint, region, credentials and profile
    from the standard places (or credentials taken out of ``url``), the same timeouts as
    :func:`filesystem` and no retries of its own. One per process, settings and credentials."""
    import botocore.session
    from botocore.config import Config

    config = config or StorageConfig.from_env()
    creds = url_credentials(url)
    anon = os.environ.get("AWS_NO_SIGN_REQUEST", "").lower() in ("1", "true", "yes")
    env = sorted((k, v) for k, v in os.environ.items() if k.startswith(_ENV_PREFIXES))
    key = (
        "s3-client",
        os.getpid(),
        repr((config.timeout_s, creds, anon)),
        hashlib.sha256(repr(env).encode()).hexdigest(),
    )
    with _FS_LOCK:
        client = _FS_CACHE.get(key)
        if client is None:
            options: dict[str, Any] = {
                "connect_timeout": min(10.0, config.timeout_s),
                "read_timeout": config.timeout_s,
                "retries": {"total_max_attempts": 1, "mode": "standard"},
                "max_pool_connections": 32,
            }
            if anon:
                from botocore import UNSIGNED

                options["signature_version"] = UNSIGNED
            kwargs = (
                {"aws_access_key_id": creds[0], "aws_secret_access_key": creds[1]} if creds else {}
            )
            try:
                client = botocore.session.get_session().create_client(
                    "s3", config=Config(**options), **kwargs
                )
            except Exception as exc:  # noqa: BLE001 - profile/region/config problems: one line
                raise storage_error(exc, url) from None
            _FS_CACHE[key] = client
    return client


def fs_path(fs: Any, url: str) -> str:
    """What fsspec methods take: bucket/key without the scheme (the whole URL for http)."""
    return url if url.startswith(("http://", "https://")) else str(fs._strip_protocol(url))


# --- Location ------------------------------------------------------------------------------------


class Location:
    """A dataset root: local folder or URL. Names passed to methods are relative to the root."""

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        config: StorageConfig | None = None,
        **storage_options: Any,
    ) -> None:
        root = str(root)
        if root.startswith("file://"):
            root = root[len("file://") :]
        root = register_url_credentials(root)
        self.url = root.rstrip("/") or "/"
        self.is_local = not is_url(root)
        self.config = config or StorageConfig.from_env()
        self.storage_options = storage_options
        self._fs: Any = None

    def __repr__(self) -> str:
        return f"Location({redact(self.url)!r})"

    @property
    def display(self) -> str:
        return redact(self.url)

    @property
    def fs(self) -> Any:
        if self._fs is None:
            self._fs = filesystem(self.url, self.config, **self.storage_options)
        return self._fs

    def path(self, name: str = "") -> str:
        """Full local path or URL of ``name`` under the root (never holds credentials)."""
        if not name:
            return self.url
        return os.path.join(self.url, name) if self.is_local else f"{self.url}/{name}"

    def _remote(self, name: str) -> str:
        return fs_path(self.fs, self.path(name))

    def exists(self, name: str = "") -> bool:
        if self.is_local:
            return os.path.exists(self.path(name))
        return bool(self._call("exists", name))

    def size(self, name: str) -> int:
        if self.is_local:
            return os.path.getsize(self.path(name))
        return int(self._call("size", name))

    def read_bytes(self, name: str) -> bytes:
        if self.is_local:
            try:
                return Path(self.path(name)).read_bytes()
            except FileNotFoundError:
                raise StorageError(f"{self.path(name)}: not found", "missing") from None
            except OSError as exc:
                raise StorageError(f"{self.path(name)}: {exc.strerror or exc}") from None
        return bytes(self._call("cat_file", name))

    @contextmanager
    def open(self, name: str, mode: str = "rb") -> Iterator[IO[bytes]]:
        """Read (``rb``) a file; remote reads stream by range requests with retries and resume."""
        if self.is_local:
            with open(self.path(name), mode) as f:
                yield f  # type: ignore[misc]
        elif mode == "rb":
            from datakit.streaming import open_stream

            with open_stream(self.path(name), self.config, fs=self.fs) as f:
                yield f
        else:
            with self.fs.open(self._remote(name), mode) as f:
                yield f

    def listdir(self) -> list[str]:
        """Names directly under the root (empty when it does not exist)."""
        if self.is_local:
            return sorted(os.listdir(self.url)) if os.path.isdir(self.url) else []
        if not self._call("exists", ""):
            return []
        return sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in self._call("ls", "", detail=False))

    def makedirs(self) -> None:
        if self.is_local:
            os.makedirs(self.url, exist_ok=True)

    def missing_folders(self) -> list[str]:
        """The local folders :meth:`makedirs` would create, deepest first (none for a URL)."""
        missing: list[str] = []
        if not self.is_local:
            return missing
        path = os.path.abspath(self.url)
        while not os.path.exists(path):
            missing.append(path)
            parent = os.path.dirname(path)
            if parent == path:
                break
            path = parent
        return missing

    @staticmethod
    def remove_empty_folders(folders: list[str]) -> None:
        """Remove those of ``folders`` (from :meth:`missing_folders`) that are empty, deepest
        first: a failed command leaves no empty folder it made, and touches nothing else."""
        for folder in sorted(folders, key=lambda f: f.count(os.sep), reverse=True):
            try:
                os.rmdir(folder)  # refuses a folder that is not empty
            except OSError:
                continue

    def put_file(self, local_path: str, name: str) -> None:
        """Move/upload a finished local file to ``name``; it appears under that name only when whole
        (S3 objects of two parts or more go up as a multipart upload, committed at the end)."""
        if self.is_local:
            os.replace(local_path, self.path(name))
            return
        kwargs: dict[str, Any] = {}
        if type(self.fs).__name__ == "S3FileSystem":
            kwargs = {
                "chunksize": self.config.multipart_chunk_bytes,
                "max_concurrency": self.config.multipart_concurrency,
            }
        self._call("put_file", name, local_path=local_path, **kwargs)
        os.unlink(local_path)

    def write_bytes(self, name: str, data: bytes) -> None:
        """Write ``data`` atomically under ``name`` (temporary name + rename locally)."""
        if self.is_local:
            full = self.path(name)
            folder = os.path.dirname(full)
            os.makedirs(folder, exist_ok=True)
            fd, tmp = tempfile.mkstemp(
                prefix=f".{os.path.basename(full)}.", suffix=".tmp", dir=folder
            )
            try:
                os.fchmod(fd, 0o644)
                with naming_write(full), os.fdopen(fd, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, full)
            except BaseException:
                if os.path.exists(tmp):
                    os.unlink(tmp)
                raise
            return
        self._call("pipe_file", name, data)

    def delete(self, name: str) -> None:
        if self.is_local:
            p = self.path(name)
            if os.path.isdir(p):
                shutil.rmtree(p)
            elif os.path.exists(p):
                os.unlink(p)
            return
        if self._call("exists", name):
            self._call("rm", name, recursive=True)

    def delete_many(self, names: list[str]) -> None:
        """Delete the files ``names`` (those that exist): one bulk request on a bucket, not two
        requests a file."""
        if self.is_local or len(names) < 2:
            for name in names:
                self.delete(name)
            return
        targets = [self._remote(n) for n in names]
        try:
            retry(lambda: self.fs.rm(targets), self.path(names[0]), self.config)
        except StorageError as exc:
            if exc.kind != "missing":
                raise

    def remove_empty_folder(self, name: str) -> None:
        """Remove the folder ``name`` when nothing is left in it. In a bucket a folder is only a
        prefix, but filer-backed stores (SeaweedFS) go on listing an emptied one until its ``name/``
        marker is deleted too (elsewhere that delete is a no-op)."""
        if self.is_local:
            with contextlib.suppress(OSError):  # not empty, or not there
                os.rmdir(self.path(name))
            return
        target = self._remote(name)
        try:
            left = [p for p in self._call("ls", name, detail=False) if p.rstrip("/") != target]
            if not left:
                retry(lambda: self.fs.rm_file(target + "/"), self.path(name), self.config)
        except StorageError as exc:
            if exc.kind != "missing":
                raise

    def scratch_dir(self) -> str:
        """A folder for files being written: inside the dataset locally (same filesystem, so the
        final rename is atomic), a temporary folder for remote roots."""
        if self.is_local:
            self.makedirs()
            return self.url
        return tempfile.mkdtemp(prefix="datakit-upload-")

    def release_scratch(self, scratch: str) -> None:
        """Remove the temporary folder :meth:`scratch_dir` made for a remote root."""
        if not self.is_local and os.path.basename(scratch).startswith("datakit-upload-"):
            shutil.rmtree(scratch, ignore_errors=True)

    def _call(
        self, method: str, name: str, *args: Any, local_path: str | None = None, **kwargs: Any
    ) -> Any:
        """``fs.method(remote path, ...)`` with retries; errors become one StorageError line."""
        target = self._remote(name)
        fn = getattr(self.fs, method)
        if local_path is not None:  # put_file(lpath, rpath)
            return retry(
                lambda: fn(local_path, target, *args, **kwargs), self.path(name), self.config
            )
        return retry(lambda: fn(target, *args, **kwargs), self.path(name), self.config)


def register_gopen_handlers() -> None:
    """Teach WebDataset's ``gopen`` to open s3://, gs://, http(s):// ... with datakit's retrying,
    resuming, optionally caching shard reader (for code that calls ``wds.WebDataset(url)`` itself;
    :func:`datakit.reader.pipeline` does not need it)."""
    from datakit.streaming import register_gopen_handlers as register

    register()
