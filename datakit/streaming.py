"""Streaming shards from storage: a bounded, retrying, resuming reader, a local shard cache, and the
WebDataset stage that turns shard URLs into samples.

A remote shard is read from a :mod:`datakit.sources` byte source (one streaming GET per shard for
s3/http, resumed with ``Range: bytes=N-``; one range request per chunk for other schemes) in chunks
of ``chunk_bytes``, ``readahead`` of them fetched by a background thread while the consumer decodes: memory per open shard is ``(1 + readahead) x chunk``
whatever the shard or dataset size. Each chunk is retried with backoff on transient errors and a
short body counts as one; a shard that stays unreadable raises :class:`StorageError` naming it, or
is logged and skipped (``on_shard_error="skip"``).
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import re
import tarfile
import tempfile
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import IO, Any, Literal

from datakit import skips
from datakit.remote import StorageConfig, StorageError, TruncatedRead, _short, retry
from datakit.sources import FsspecSource, HttpSource, RangeSource, S3Source, make_source
from datakit.urls import credentials_snapshot, install_credentials, is_url, redact

__all__ = [
    "FsspecSource",
    "HttpSource",
    "S3Source",
    "ShardSamples",
    "ShardStream",
    "iter_shard_samples",
    "make_source",
    "open_shard",
    "open_stream",
    "open_tar_stream",
    "register_gopen_handlers",
]

log = logging.getLogger("datakit.storage")

_KEY_EXT = re.compile(r"^((?:.*/|)[^./]+)[.]([^/]*)$")
_DRAIN_LIMIT = 1 << 20  # a cached shard whose reader stopped this close to its end is completed


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
        self._closing = False  # set first by close(): a fetch retrying then gives up
        workers = 1 if source.sequential else max(1, config.readahead)
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="datakit-read")
        self._fill()

    @property
    def where(self) -> str:
        return redact(self.source.url)

    def _fetch(self, start: int, end: int) -> bytes:
        def once() -> bytes:
            # Closed while this fetch waited (queued, or between retries): a request now would
            # reopen the source after close() dropped its body, and nothing would close it again.
            if self._closing:
                raise StorageError(f"{self.where}: closed while reading")
            try:
                data = self.source.read_range(start, end)
            finally:
                # closed while this request was in flight: close() may have run before the source
                # held the new body, so close the source again
                if self._closing:
                    self.source.close()
            if len(data) != end - start:
                raise TruncatedRead(f"got {len(data)} of {end - start} bytes at offset {start}")
            return data

        return retry(once, self.source.url, self.config, cancelled=lambda: self._closing)

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
            self._closing = True  # before the source closes: no retry opens a request on it
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
                # tar padding the reader did not need; a read returns at most one chunk's rest
                while self.stream.pos < self.stream.size and self.read(left):
                    left = self.stream.size - self.stream.pos
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


class _TarStream(tarfile.TarFile):
    """A TarFile that knows whether its members ended at the end-of-archive block: tarfile ends the
    member list silently where a file is cut at or inside a header (or a header is garbage), so a
    truncated shard would lose its last samples without a word."""

    ended = False

    def check_ended(self) -> None:
        """Raises :class:`tarfile.ReadError` unless the archive ended with its end block."""
        if not self.ended:
            raise tarfile.ReadError(
                f"cut short or corrupt after byte {self.offset} (no end-of-archive block)"
            )


_EOF_HEADER: type[Exception] = tarfile.EOFHeaderError  # type: ignore[attr-defined]


class _EndMarkingInfo(tarfile.TarInfo):
    @classmethod
    def fromtarfile(cls, tar: tarfile.TarFile) -> _EndMarkingInfo:
        try:
            return super().fromtarfile(tar)
        except _EOF_HEADER:  # a block of zeros where a header would be: the end of the archive
            if isinstance(tar, _TarStream):
                tar.ended = True
            raise


def open_tar_stream(stream: IO[bytes], mode: Literal["r|*", "r|"] = "r|*") -> _TarStream:
    """``tarfile.open(fileobj=stream, mode=mode)`` whose :meth:`_TarStream.check_ended`, called after
    the last member, tells a complete archive from a truncated one."""
    return _TarStream.open(fileobj=stream, mode=mode, tarinfo=_EndMarkingInfo)  # type: ignore[return-value]


def iter_shard_samples(stream: IO[bytes]) -> Iterator[tuple[str, dict[str, bytes]]]:
    """(key, {extension: bytes}) of each sample of a tar stream, WebDataset's grouping rules (key =
    path up to the first dot of the file name); only complete samples are yielded. Raises
    :class:`tarfile.TarError` on a broken or truncated tar."""
    key: str | None = None
    members: dict[str, bytes] = {}
    with open_tar_stream(stream) as tar:
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
        tar.check_ended()
    if key is not None:
        yield key, members


class ShardSamples:
    """WebDataset stage: shard URLs (``{"url": ...}``) -> sample dicts (``__key__``, ``__url__``
    redacted, extension -> bytes). Picklable: DataLoader workers get the config and any credentials
    taken out of URLs with it.

    A shard that stays unreadable (missing, denied, retries exhausted, broken tar) raises
    :class:`StorageError` naming it, or, with ``on_shard_error="skip"`` or a ``handler`` that returns
    True, is logged, counted (:mod:`datakit.skips`) and skipped (its samples already yielded stay
    yielded; a partial sample never is).
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
                skips.skip_shard(err)  # the one line naming it; counted for the run's summary
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
