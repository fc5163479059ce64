"""Where datasets live: a local folder or a URL (s3://, gs://, http(s)://, file://) through fsspec.

:class:`Location` is the one object readers and the writer use to touch files, so that every command
takes a URL wherever it takes a folder. Local paths use plain os calls (atomic ``os.replace``);
remote ones go through fsspec, where an object appears under its name only once uploaded whole.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit, urlunsplit

from datakit.errors import DatakitError

_URL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")


def is_url(path: str | os.PathLike[str]) -> bool:
    return bool(_URL.match(str(path))) and not str(path).startswith("file://")


def redact(url: str) -> str:
    """``s3://key:secret@bucket/x`` -> ``s3://***@bucket/x``: credentials never reach logs."""
    if not _URL.match(url):
        return url
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit((parts.scheme, "***@" + host, parts.path, parts.query, parts.fragment))


class StorageError(DatakitError):
    """A read or write against storage failed; the message names the object (credentials redacted)."""


class Location:
    """A dataset root: local folder or URL. Names passed to methods are relative to the root."""

    def __init__(self, root: str | os.PathLike[str], **storage_options: Any) -> None:
        root = str(root)
        if root.startswith("file://"):
            root = root[len("file://") :]
        self.url = root.rstrip("/") or "/"
        self.is_local = not is_url(root)
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
            import fsspec

            protocol = urlsplit(self.url).scheme
            try:
                self._fs = fsspec.filesystem(protocol, **self.storage_options)
            except (ImportError, ValueError) as exc:
                raise StorageError(f"{self.display}: no filesystem for {protocol}:// ({exc})") from None
        return self._fs

    def path(self, name: str = "") -> str:
        """Full local path or URL of ``name`` under the root."""
        if not name:
            return self.url
        return os.path.join(self.url, name) if self.is_local else f"{self.url}/{name}"

    def _remote(self, name: str) -> str:
        # fsspec filesystems take bucket/key without the scheme for most protocols.
        full = self.path(name)
        return full if full.startswith(("http://", "https://")) else self.fs._strip_protocol(full)

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
            except OSError as exc:
                raise StorageError(f"{self.path(name)}: {exc.strerror or exc}") from None
        return bytes(self._call("cat_file", name))

    @contextmanager
    def open(self, name: str, mode: str = "rb") -> Iterator[IO[bytes]]:
        if self.is_local:
            with open(self.path(name), mode) as f:
                yield f  # type: ignore[misc]
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

    def put_file(self, local_path: str, name: str) -> None:
        """Move/upload a finished local file to ``name``; it appears under that name only when whole."""
        if self.is_local:
            os.replace(local_path, self.path(name))
            return
        try:
            self.fs.put_file(local_path, self._remote(name))
        except OSError as exc:
            raise StorageError(f"{redact(self.path(name))}: upload failed ({exc})") from None
        os.unlink(local_path)

    def write_bytes(self, name: str, data: bytes) -> None:
        """Write ``data`` atomically under ``name`` (temporary name + rename locally)."""
        if self.is_local:
            full = self.path(name)
            folder = os.path.dirname(full)
            os.makedirs(folder, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(full)}.", suffix=".tmp", dir=folder)
            try:
                os.fchmod(fd, 0o644)
                with os.fdopen(fd, "wb") as f:
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
            self._call("rm", name)

    def scratch_dir(self) -> str:
        """A folder for files being written: inside the dataset locally (same filesystem, so the
        final rename is atomic), a temporary folder for remote roots."""
        if self.is_local:
            self.makedirs()
            return self.url
        return tempfile.mkdtemp(prefix="datakit-upload-")

    def _call(self, method: str, name: str, *args: Any, **kwargs: Any) -> Any:
        target = self._remote(name)
        try:
            return getattr(self.fs, method)(target, *args, **kwargs)
        except FileNotFoundError:
            raise StorageError(f"{redact(self.path(name))}: not found") from None
        except PermissionError as exc:
            raise StorageError(f"{redact(self.path(name))}: access denied ({exc})") from None
        except OSError as exc:
            raise StorageError(f"{redact(self.path(name))}: {exc}") from None


_REGISTERED = False


def _fsspec_gopen(url: str, mode: str = "rb", bufsize: int = 8192, **kwargs: Any) -> IO[bytes]:
    import fsspec

    try:
        return fsspec.open(url, mode).open()  # type: ignore[no-any-return]
    except FileNotFoundError:
        raise StorageError(f"{redact(url)}: not found") from None
    except OSError as exc:
        raise StorageError(f"{redact(url)}: {exc}") from None


def register_gopen_handlers() -> None:
    """Teach WebDataset's ``gopen`` to open fsspec URLs (it has no ``s3://`` handler of its own)."""
    global _REGISTERED
    if _REGISTERED:
        return
    import importlib

    gopen = importlib.import_module("webdataset.gopen")  # the module; `webdataset.gopen` is a function
    for scheme in ("s3", "gs", "gcs", "az", "abfs", "http", "https"):
        gopen.gopen_schemes[scheme] = _fsspec_gopen
    _REGISTERED = True
