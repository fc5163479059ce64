"""Streaming shards from storage: a bounded, retrying, resuming reader, a local shard cache, and the
WebDataset stage that turns shard URLs into samples.

A remote shard is read as a sequence of range requests of ``chunk_bytes`` (object stores) or as one
streaming GET resumed with ``Range: bytes=N-`` (http), with ``readahead`` chunks fetched by a
background thread while the consumer decodes: memory per open shard is ``(1 + readahead) x chunk``
whatever the shard or dataset size. Each chunk is retried with backoff on transient errors and a
short body counts as one; a shard that stays unreadable raises :class:`StorageError` naming it, or
is logged and skipped (``on_shard_error="skip"``).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import logging
import os
import re
import tarfile
import tempfile
import urllib.request
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import IO, Any, Protocol
from urllib.parse import urlsplit

from datakit.remote import StorageConfig, StorageError, TruncatedRead, _short, retry
from datakit.storage import filesystem, fs_path, s3_client
from datakit.urls import (
    credentials_snapshot,
    install_credentials,
    is_url,
    redact,
    url_credentials,
)

log = logging.getLogger("datakit.storage")

_KEY_EXT = re.compile(r"^((?:.*/|)[^./]+)[.]([^/]*)$")
_DRAIN_LIMIT = 1 << 20  # a cached shard whose reader stopped this close to its end is completed


# --- byte sources --------------------------------------------------------------------------------


class RangeSource(Protocol):
    """Random access to one remote object. ``read_range`` may raise transient errors."""

    url: str
    sequential: bool  # True: ranges must be asked in order (one streaming response)

    def size(self) -> int: ...

    def identity(self) -> str: ...

    def read_range(self, start: int, end: int) -> bytes: ...

    def close(self) -> None: ...


class FsspecSource:
    """An object in an fsspec filesystem (s3, gs, az, ...): one ranged GET per chunk."""

    sequential = False

    def __init__(self, url: str, config: StorageConfig, fs: Any = None) -> None:
        self.url = url
        self.config = config
        self.fs = fs if fs is not None else filesystem(url, config)
        self.path = fs_path(self.fs, url)
        self._info: dict[str, Any] | None = None

    def _stat(self) -> dict[str, Any]:
        if self._info is None:
            self._info = retry(lambda: self.fs.info(self.path), self.url, self.config)
        return self._info

    def size(self) -> int:
        return int(self._stat()["size"])

    def identity(self) -> str:
        info = self._stat()
        tag = (
            info.get("ETag") or info.get("etag") or info.get("md5Hash") or info.get("LastModified")
        )
        return f"{info['size']}:{tag}"

    def read_range(self, start: int, end: int) -> bytes:
        return bytes(self.fs.cat_file(self.path, start=start, end=end))

    def close(self) -> None:
        pass


class StreamSource:
    """One streaming GET per shard, read in order; after a failure the stream is reopened at the
    failed offset with ``Range: bytes=N-`` (where a server ignores ranges, the first N bytes are
    read again and skipped). Subclasses send the request."""

    sequential = True

    def __init__(self, url: str, config: StorageConfig) -> None:
        self.url = url
        self.config = config
        self._resp: Any = None
        self._pos = 0
        self._size: int | None = None
        self._etag = ""

    def _request(self, start: int) -> tuple[Any, int | None, str, bool]:
        """(readable body, object size or None, ETag, whether the body starts at ``start``)."""
        raise NotImplementedError

    def _open(self, start: int) -> None:
        self._drop()
        resp, total, etag, ranged = self._request(start)
        try:
            if self._size is None:
                if total is None:
                    raise StorageError(f"{self.url}: the server gives no object size")
                self._size, self._etag = total, etag
            if start and not ranged:  # no range support: skip what we already have
                left = start
                while left:
                    got = resp.read(min(left, 1 << 20))
                    if not got:
                        raise TruncatedRead(f"body ended at byte {start - left}")
                    left -= len(got)
        except BaseException:
            with contextlib.suppress(Exception):
                resp.close()
            raise
        self._resp, self._pos = resp, start

    def _drop(self) -> None:
        if self._resp is not None:
            with contextlib.suppress(Exception):  # a broken connection may fail to close
                self._resp.close()
            self._resp = None

    def size(self) -> int:
        if self._size is None:
            retry(lambda: self._open(0), self.url, self.config)
        assert self._size is not None
        return self._size

    def _head(self) -> tuple[int | None, str]:
        """(object size, ETag) without the body."""
        raise NotImplementedError

    def identity(self) -> str:
        """Size and ETag, by a HEAD request when no GET is open (a cache hit needs no body)."""
        if self._size is None:
            total, etag = retry(self._head, self.url, self.config)
            if total is None:
                raise StorageError(f"{self.url}: the server gives no object size")
            self._size, self._etag = total, etag
        return f"{self._size}:{self._etag}"

    def read_range(self, start: int, end: int) -> bytes:
        try:
            if self._resp is None or self._pos != start:
                self._open(start)
            data = self._resp.read(end - start)
            self._pos += len(data)
            if len(data) != end - start:
                raise TruncatedRead(f"body ended at byte {self._pos} of {self._size}")
            return bytes(data)
        except BaseException:
            self._drop()
            raise

    def close(self) -> None:
        self._drop()


class HttpSource(StreamSource):
    """An http(s) URL through urllib (Basic auth from credentials taken out of the URL)."""

    def _request(self, start: int) -> tuple[Any, int | None, str, bool]:
        headers = {"Range": f"bytes={start}-"} if start else {}
        resp = urllib.request.urlopen(self._req(headers), timeout=self.config.timeout_s)  # noqa: S310
        total: int | None = None
        content_range = resp.headers.get("Content-Range", "")
        if resp.status == 206 and content_range.rsplit("/", 1)[-1].isdigit():
            total = int(content_range.rsplit("/", 1)[1])
        elif resp.status != 206 and resp.headers.get("Content-Length"):
            total = int(resp.headers["Content-Length"])
        etag = resp.headers.get("ETag") or resp.headers.get("Last-Modified") or ""
        return resp, total, etag, resp.status == 206 or not start

    def _head(self) -> tuple[int | None, str]:
        resp = urllib.request.urlopen(self._req({}, "HEAD"), timeout=self.config.timeout_s)  # noqa: S310
        with resp:
            length = resp.headers.get("Content-Length")
            etag = resp.headers.get("ETag") or resp.headers.get("Last-Modified") or ""
            return (int(length) if length else None), etag

    def _req(self, headers: dict[str, str], method: str = "GET") -> urllib.request.Request:
        creds = url_credentials(self.url)
        if creds:
            token = base64.b64encode(f"{creds[0]}:{creds[1]}".encode()).decode()
            headers = {**headers, "Authorization": f"Basic {token}"}
        return urllib.request.Request(self.url, headers=headers, method=method)


class S3Source(StreamSource):
    """An s3:// object through botocore's own (threaded, blocking) client: one GetObject per shard,
    no HEAD (the size comes with the body), resumed with a ranged GetObject."""

    def __init__(self, url: str, config: StorageConfig) -> None:
        super().__init__(url, config)
        parts = urlsplit(url)
        self.bucket, self.key = parts.netloc, parts.path.lstrip("/")

    def _request(self, start: int) -> tuple[Any, int | None, str, bool]:
        kwargs = {"Range": f"bytes={start}-"} if start else {}
        resp = s3_client(self.url, self.config).get_object(
            Bucket=self.bucket, Key=self.key, **kwargs
        )
        content_range = resp.get("ContentRange") or ""
        if content_range.rsplit("/", 1)[-1].isdigit():
            total: int | None = int(content_range.rsplit("/", 1)[1])
        else:
            total = resp.get("ContentLength") if not start else None
        return resp["Body"], total, resp.get("ETag", ""), bool(content_range) or not start

    def _head(self) -> tuple[int | None, str]:
        resp = s3_client(self.url, self.config).head_object(Bucket=self.bucket, Key=self.key)
        return resp.get("ContentLength"), resp.get("ETag", "")


def make_source(url: str, config: StorageConfig, fs: Any = None) -> RangeSource:
    if url.startswith(("http://", "https://")):
        return HttpSource(url, config)
    if url.startswith("s3://"):
        return S3Source(url, config)
    return FsspecSource(url, config, fs)


# --- the streaming reader ------------------------------------------------------------------------


class ShardStream(io.RawIOBase):
    """A read-only, forward-only file over a :class:`RangeSource`: chunks of ``config.chunk_bytes``
    fetched ``config.readahead`` ahead by a background thread, each retried and resumed at its
    offset. ``read`` never blocks longer than ``config.deadline_s()``."""

    def __init__(self, source: RangeSource, config: StorageConfig) -> None:
        super().__init__()
        self.source = source
        self.config = config
        self.size = source.size()
        self.pos = 0
        self._next = 0  # next offset to fetch
        self._buf = memoryview(b"")
        self._pending: deque[Future[bytes]] = deque()
        workers = 1 if source.sequential else max(1, config.readahead)
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="datakit-read")
        self._fill()

    @property
    def where(self) -> str:
        return redact(self.source.url)

    def _fetch(self, start: int, end: int) -> bytes:
        def once() -> bytes:
            data = self.source.read_range(start, end)
            if len(data) != end - start:
                raise TruncatedRead(f"got {len(data)} of {end - start} bytes at offset {start}")
            return data

        return retry(once, self.source.url, self.config, cancelled=lambda: self.closed)

    def _fill(self) -> None:
        while self._next < self.size and len(self._pending) < 1 + self.config.readahead:
            end = min(self.size, self._next + self.config.chunk_bytes)
            self._pending.append(self._pool.submit(self._fetch, self._next, end))
            self._next = end

    def _take(self) -> bool:
        if not self._pending:
            return False
        fut = self._pending.popleft()
        try:
            data = fut.result(timeout=self.config.deadline_s())
        except FutureTimeout:
            raise StorageError(
                f"{self.where}: no data for {self.config.deadline_s():.0f} s", "unavailable"
            ) from None
        self._buf = memoryview(data)
        self._fill()
        return True

    def readable(self) -> bool:
        return True

    def read(self, n: int | None = -1) -> bytes:
        if self.closed:
            raise ValueError("read of a closed shard stream")
        if n is None or n < 0:
            parts = [bytes(self._buf)]
            self._buf = memoryview(b"")
            while self._take():
                parts.append(bytes(self._buf))
            self._buf = memoryview(b"")
            out = b"".join(parts)
        else:
            if not self._buf and not self._take():
                return b""
            out = bytes(self._buf[:n])
            self._buf = self._buf[n:]
        self.pos += len(out)
        return out

    def readinto(self, b: Any) -> int:
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)

    def close(self) -> None:
        if not self.closed:
            for fut in self._pending:
                fut.cancel()
            self._pending.clear()
            self._buf = memoryview(b"")
            self._pool.shutdown(wait=False, cancel_futures=True)
            self.source.close()
        super().close()


# --- local cache ---------------------------------------------------------------------------------


class CachingStream(io.RawIOBase):
    """Passes a :class:`ShardStream` through while writing it to the cache; the copy appears under
    its final name only when complete."""

    def __init__(self, stream: ShardStream, final: str, config: StorageConfig) -> None:
        super().__init__()
        self.stream = stream
        self.final = final
        self.config = config
        fd, self.tmp = tempfile.mkstemp(prefix=".part-", dir=os.path.dirname(final))
        self._out: IO[bytes] | None = os.fdopen(fd, "wb")
        self._failed = False

    def readable(self) -> bool:
        return True

    def read(self, n: int | None = -1) -> bytes:
        try:
            data = self.stream.read(n)
        except BaseException:
            self._failed = True
            raise
        if self._out is not None:
            self._out.write(data)
        return data

    def readinto(self, b: Any) -> int:
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)

    def close(self) -> None:
        if self.closed:
            return
        try:
            left = self.stream.size - self.stream.pos
            if not self._failed and 0 < left <= _DRAIN_LIMIT:
                self.read(left)  # tar padding the reader did not need
            if self._out is not None:
                self._out.close()
                self._out = None
                if not self._failed and self.stream.pos == self.stream.size:
                    os.replace(self.tmp, self.final)
                    _trim_cache(
                        os.path.dirname(self.final), self.config.cache_max_bytes, self.final
                    )
        except (OSError, StorageError) as exc:
            log.warning("shard cache: could not keep %s (%s)", self.final, _short(exc))
        finally:
            if os.path.exists(self.tmp):
                os.unlink(self.tmp)
            self.stream.close()
            super().close()


def _cache_path(url: str, identity: str, cache_dir: str) -> str:
    digest = hashlib.sha256(f"{redact(url)}|{identity}".encode()).hexdigest()[:20]
    base = re.sub(r"[^A-Za-z0-9_.-]", "_", url.rstrip("/").rsplit("/", 1)[-1])[:80]
    return os.path.join(cache_dir, f"{digest}-{base}")


def _trim_cache(cache_dir: str, max_bytes: int | None, keep: str) -> None:
    """Evict least recently used shards until the cache holds at most ``max_bytes``."""
    if max_bytes is None:
        return
    entries = []
    for entry in os.scandir(cache_dir):
        if entry.is_file() and not entry.name.startswith("."):
            st = entry.stat()
            entries.append((st.st_mtime, st.st_size, entry.path))
    total = sum(size for _, size, _ in entries)
    for _, size, path in sorted(entries):
        if total <= max_bytes:
            break
        if path != keep:
            try:
                os.unlink(path)
                total -= size
            except FileNotFoundError:  # another worker evicted it first
                pass


# --- opening shards ------------------------------------------------------------------------------


def _open_local(url: str) -> IO[bytes]:
    path = url[len("file://") :] if url.startswith("file://") else url
    try:
        return open(path, "rb")  # noqa: SIM115 - the caller closes it
    except FileNotFoundError:
        raise StorageError(f"{path}: not found", "missing") from None
    except OSError as exc:
        raise StorageError(f"{path}: {exc.strerror or exc}") from None


def open_stream(url: str, config: StorageConfig | None = None, *, fs: Any = None) -> IO[bytes]:
    """A forward-only stream of ``url`` (local path or URL), uncached. Raises StorageError."""
    config = config or StorageConfig.from_env()
    if not is_url(url):
        return _open_local(url)
    return ShardStream(make_source(url, config, fs), config)  # type: ignore[return-value]


def open_shard(url: str, config: StorageConfig | None = None, *, fs: Any = None) -> IO[bytes]:
    """Like :func:`open_stream`, through the local cache when ``config.cache_dir`` is set: a shard
    already there (same size and ETag) is read from disk, another is kept as it streams by."""
    config = config or StorageConfig.from_env()
    if not is_url(url) or not config.cache_dir:
        return open_stream(url, config, fs=fs)
    source = make_source(url, config, fs)
    try:
        final = _cache_path(url, source.identity(), config.cache_dir)
        if os.path.isfile(final) and os.path.getsize(final) == source.size():
            os.utime(final)  # recently used: evicted last
            source.close()
            return open(final, "rb")  # noqa: SIM115 - the caller closes it
        os.makedirs(config.cache_dir, exist_ok=True)
        return CachingStream(ShardStream(source, config), final, config)  # type: ignore[return-value]
    except BaseException:
        source.close()
        raise


# --- WebDataset stage ----------------------------------------------------------------------------


def iter_shard_samples(stream: IO[bytes]) -> Iterator[tuple[str, dict[str, bytes]]]:
    """(key, {extension: bytes}) of each sample of a tar stream, WebDataset's grouping rules (key =
    path up to the first dot of the file name); only complete samples are yielded."""
    key: str | None = None
    members: dict[str, bytes] = {}
    with tarfile.open(fileobj=stream, mode="r|*") as tar:
        for info in tar:
            tar.members = []  # type: ignore[attr-defined]  # else every header is kept: memory grows
            if not info.isreg():
                continue
            m = _KEY_EXT.match(info.name)
            if m is None or os.path.basename(info.name).startswith("__"):
                continue
            k, ext = m.group(1), m.group(2).lower()
            f = tar.extractfile(info)
            data = f.read() if f is not None else b""
            if k != key or ext in members:
                if key is not None:
                    yield key, members
                key, members = k, {}
            members[ext] = data
    if key is not None:
        yield key, members


class ShardSamples:
    """WebDataset stage: shard URLs (``{"url": ...}``) -> sample dicts (``__key__``, ``__url__``
    redacted, extension -> bytes). Picklable: DataLoader workers get the config and any credentials
    taken out of URLs with it.

    A shard that stays unreadable (missing, denied, retries exhausted, broken tar) raises
    :class:`StorageError` naming it, or, with ``on_shard_error="skip"`` or a ``handler`` that returns
    True, is logged and skipped (its samples already yielded stay yielded; a partial sample never is).
    """

    def __init__(
        self,
        config: StorageConfig | None = None,
        handler: Callable[[Exception], bool] | None = None,
    ) -> None:
        self.config = config
        self.handler = handler
        self.credentials = credentials_snapshot()

    def __call__(self, src: Iterable[Any]) -> Iterator[dict[str, Any]]:
        install_credentials(self.credentials)
        config = self.config or StorageConfig.from_env()
        # The next shard is opened (and its first chunks fetched) while this one is read, so that a
        # shard's first-byte latency overlaps work: at most two shards are open at a time.
        opener = ThreadPoolExecutor(1, thread_name_prefix="datakit-open")
        pending: deque[tuple[str, Future[IO[bytes]]]] = deque()
        try:
            for item in src:
                url = item["url"] if isinstance(item, dict) else str(item)
                pending.append((url, opener.submit(open_shard, url, config)))
                if len(pending) > 1:
                    yield from self._shard(*pending.popleft(), config)
            while pending:
                yield from self._shard(*pending.popleft(), config)
        finally:
            for _, fut in pending:  # the consumer stopped early: close what was opened for it
                fut.add_done_callback(_close_opened)
            opener.shutdown(wait=False, cancel_futures=True)

    def _shard(
        self, url: str, opened: Future[IO[bytes]], config: StorageConfig
    ) -> Iterator[dict[str, Any]]:
        shown = redact(url)
        count = 0
        try:
            stream = opened.result()
            try:
                for key, members in iter_shard_samples(stream):
                    count += 1
                    yield {"__key__": key, "__url__": shown, **members}
            finally:
                stream.close()
        except (StorageError, tarfile.TarError, OSError, EOFError) as exc:
            err = (
                exc
                if isinstance(exc, StorageError)
                else StorageError(f"{shown}: unreadable shard ({_short(exc)})")
            )
            if count:
                err = StorageError(f"{err} (after {count} samples)", err.kind)
            if config.on_shard_error == "skip" or (self.handler is not None and self.handler(err)):
                log.warning("skipping shard: %s", err)
                return
            raise err from None


def _close_opened(fut: Future[IO[bytes]]) -> None:
    if not fut.cancelled() and fut.exception() is None:
        fut.result().close()


def _gopen(url: str, mode: str = "rb", bufsize: int = 8192, **kw: Any) -> IO[bytes]:
    if mode != "rb":
        raise StorageError(f"{redact(url)}: datakit opens remote shards for reading only")
    return open_shard(url)


def register_gopen_handlers() -> None:
    """Route ``webdataset.gopen`` for remote schemes through :func:`open_shard`."""
    import importlib

    gopen = importlib.import_module(
        "webdataset.gopen"
    )  # the package re-exports a function by that name
    for scheme in ("s3", "s3a", "gs", "gcs", "az", "abfs", "http", "https"):
        gopen.gopen_schemes[scheme] = _gopen
