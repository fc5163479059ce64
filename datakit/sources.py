"""Byte sources of one remote object, read by :class:`datakit.streaming.ShardStream`.

``s3://`` and ``http(s)://`` objects are one streaming GET each (botocore's blocking client; urllib),
reopened at the failed offset with ``Range: bytes=N-`` after a failure; other fsspec schemes (gs, az,
...) answer one range request per chunk. A source may raise transient errors: the reader retries.
"""

from __future__ import annotations

import base64
import contextlib
import urllib.request
from abc import ABC, abstractmethod
from http.client import HTTPMessage
from typing import IO, Any, Protocol
from urllib.parse import urlsplit

from datakit.remote import StorageConfig, StorageError, TruncatedRead, retry
from datakit.storage import filesystem, fs_path, s3_client
from datakit.urls import origin, url_credentials


class RangeSource(Protocol):
    """Random access to one remote object. ``read_range`` may raise transient errors."""

    url: str
    sequential: bool  # True: ranges must be asked in order (one streaming response)

    def size(self) -> int: ...

    def identity(self) -> str: ...

    def read_range(self, start: int, end: int) -> bytes: ...

    def close(self) -> None: ...


class FsspecSource:
    """An object in an fsspec filesystem (gs, az, ...): one ranged GET per chunk.

    Chunks are separate requests, so each checks that it read the object first seen (``fs.info``),
    not one written over it meanwhile, which would splice two objects into one silently corrupt
    shard. GCS: every read asks for the first-seen generation (``?generation=``; Google answers
    404 once it is overwritten) and the generation that answered (``x-goog-generation``) is
    compared; where no such header comes back (emulators) the object is looked up again after the
    read. Other schemes compare the ETag looked up after each read. A change is a
    :class:`StorageError` ``URL: changed while being read (...)``, never retried."""

    sequential = False

    def __init__(self, url: str, config: StorageConfig, fs: Any = None) -> None:
        self.url = url
        self.config = config
        self.fs = fs if fs is not None else filesystem(url, config)
        self.path = fs_path(self.fs, url)
        self._info: dict[str, Any] | None = None
        self._gcs = any(c.__module__.startswith("gcsfs") for c in type(self.fs).__mro__)

    def _stat(self) -> dict[str, Any]:
        if self._info is None:
            self._info = retry(lambda: self.fs.info(self.path), self.url, self.config)
        return self._info

    def size(self) -> int:
        return int(self._stat()["size"])

    @staticmethod
    def _tag(info: dict[str, Any]) -> str:
        return str(
            info.get("generation")
            or info.get("ETag")
            or info.get("etag")
            or info.get("md5Hash")
            or info.get("LastModified")
            or ""
        )

    def identity(self) -> str:
        info = self._stat()
        return f"{info['size']}:{self._tag(info)}"

    def _changed(self, tag: str) -> StorageError:
        what = "generation" if self._gcs else "ETag"
        return StorageError(f"{self.url}: changed while being read ({what} {tag})")

    def _check_unchanged(self) -> None:
        """Look the object up again (not from a listing cache): its tag must be the first one."""
        first = self._tag(self._stat())
        if not first:
            return
        with contextlib.suppress(Exception):
            self.fs.invalidate_cache(self.path)
        try:
            now = self._tag(self.fs.info(self.path))
        except FileNotFoundError:
            raise StorageError(f"{self.url}: deleted while being read", "missing") from None
        if now != first:
            raise self._changed(now)

    def read_range(self, start: int, end: int) -> bytes:
        if self._gcs and self._stat().get("generation"):
            return self._read_gcs(start, end)
        data = bytes(self.fs.cat_file(self.path, start=start, end=end))
        self._check_unchanged()
        return data

    def _read_gcs(self, start: int, end: int) -> bytes:
        generation = str(self._stat()["generation"])
        url = self.fs.url(self.path, generation=generation)
        try:
            headers, data = self.fs.call("GET", url, headers={"Range": f"bytes={start}-{end - 1}"})
        except FileNotFoundError:  # that generation is gone: overwritten, or deleted
            self._check_unchanged()
            raise
        answered = headers.get("x-goog-generation")
        if answered is None:  # the server does not say which generation answered
            self._check_unchanged()
        elif answered != generation:
            raise self._changed(answered)
        return bytes(data)

    def close(self) -> None:
        pass


class StreamSource(ABC):
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

    @abstractmethod
    def _request(self, start: int) -> tuple[Any, int | None, str, bool]:
        """(readable body, object size or None, ETag, whether the body starts at ``start``)."""

    def _open(self, start: int) -> None:
        self._drop()
        resp, total, etag, ranged = self._request(start)
        try:
            if self._size is None:
                if total is None:
                    raise StorageError(f"{self.url}: the server gives no object size")
                self._size, self._etag = total, etag
            elif self._etag and etag and etag != self._etag:  # resumed on another object
                raise StorageError(f"{self.url}: changed while being read (ETag {etag})")
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

    @abstractmethod
    def _head(self) -> tuple[int | None, str]:
        """(object size, ETag) without the body."""

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


class _SameOriginAuth(urllib.request.HTTPRedirectHandler):
    """Follows redirects without the Authorization header where they leave the origin (urllib
    forwards every header, so a redirect to another host would receive the password)."""

    def redirect_request(
        self,
        req: urllib.request.Request,
        fp: IO[bytes],
        code: int,
        msg: str,
        headers: HTTPMessage,
        newurl: str,
    ) -> urllib.request.Request | None:
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        if new is not None and origin(req.full_url) != origin(new.full_url):
            new.remove_header("Authorization")
        return new


_OPENER = urllib.request.build_opener(_SameOriginAuth)


class HttpSource(StreamSource):
    """An http(s) URL through urllib (Basic auth from credentials taken out of the URL)."""

    def _request(self, start: int) -> tuple[Any, int | None, str, bool]:
        headers = {"Range": f"bytes={start}-"} if start else {}
        resp = _OPENER.open(self._req(headers), timeout=self.config.timeout_s)
        total: int | None = None
        content_range = resp.headers.get("Content-Range", "")
        if resp.status == 206 and content_range.rsplit("/", 1)[-1].isdigit():
            total = int(content_range.rsplit("/", 1)[1])
        elif resp.status != 206 and resp.headers.get("Content-Length"):
            total = int(resp.headers["Content-Length"])
        etag = resp.headers.get("ETag") or resp.headers.get("Last-Modified") or ""
        return resp, total, etag, resp.status == 206 or not start

    def _head(self) -> tuple[int | None, str]:
        resp = _OPENER.open(self._req({}, "HEAD"), timeout=self.config.timeout_s)
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
