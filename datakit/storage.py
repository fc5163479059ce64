"""Where datasets live: a local folder or a URL (s3://, gs://, http(s)://, file://) through fsspec.

:class:`Location` is the one object readers and the writer use to touch files, so that every command
takes a URL wherever it takes a folder. Local paths use plain os calls (atomic ``os.replace``);
remote ones go through fsspec, where an object appears under its name only once uploaded whole.

Remote calls are bounded: every request has a connect and a read timeout, transient failures
(connection refused or reset, timeouts, 5xx/429, truncated bodies) are retried with exponential backoff
a bounded number of times (:func:`retry`), and what still fails becomes one :class:`StorageError` line
naming the object. S3 endpoint and credentials come from the standard places (``AWS_ACCESS_KEY_ID`` /
``AWS_SECRET_ACCESS_KEY`` / ``AWS_SESSION_TOKEN``, ``AWS_PROFILE``, ``AWS_ENDPOINT_URL(_S3)``,
``AWS_REGION``, ``~/.aws``), read by botocore itself. Credentials written into a URL
(``s3://KEY:SECRET@bucket/x``, ``https://user:pw@host/x``) are taken out of it on entry
(:func:`register_url_credentials`), so the URLs that travel through the code, logs, errors and
``_info.json`` never hold them; :func:`redact` masks anything that slips through.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import random
import re
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import IO, Any, TypeVar
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

from datakit.errors import DatakitError, UsageError

log = logging.getLogger("datakit.storage")

_URL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")
_URL_IN_TEXT = re.compile(r"[a-zA-Z][a-zA-Z0-9+.-]*://[^\s'\"<>]+")
_SECRET_PARAM = re.compile(r"sig|signature|token|secret|password|passwd|credential|key", re.I)
ON_SHARD_ERROR = ("fail", "skip")
T = TypeVar("T")


# --- configuration -------------------------------------------------------------------------------


@dataclass(frozen=True)
class StorageConfig:
    """How remote reads and writes behave. Every field has an environment variable (``ENV``) so that
    DataLoader worker processes and subcommands see the same settings."""

    timeout_s: float = 30.0  # read timeout of one request; connect timeout is min(10, this)
    attempts: int = 5  # tries of one request before it is an error
    backoff_s: float = 0.5  # first wait between tries; doubles up to max_backoff_s, with jitter
    max_backoff_s: float = 10.0
    chunk_bytes: int = 8 << 20  # one range request while streaming a shard
    readahead: int = (
        2  # chunks fetched ahead of the reader: memory (1 + readahead) x chunk per shard
    )
    multipart_chunk_bytes: int = 16 << 20  # part size of uploads; objects >= 2 parts go multipart
    multipart_concurrency: int = 4
    cache_dir: str | None = None  # local copy of every shard read (None: no cache)
    cache_max_bytes: int | None = None  # least recently used shards are evicted above this
    on_shard_error: str = "fail"  # a shard that stays unreadable: fail the run, or skip it

    ENV = {
        "timeout_s": "DATAKIT_IO_TIMEOUT",
        "attempts": "DATAKIT_IO_ATTEMPTS",
        "backoff_s": "DATAKIT_IO_BACKOFF",
        "max_backoff_s": "DATAKIT_IO_MAX_BACKOFF",
        "chunk_bytes": "DATAKIT_READ_CHUNK",
        "readahead": "DATAKIT_READAHEAD",
        "multipart_chunk_bytes": "DATAKIT_MULTIPART_CHUNK",
        "multipart_concurrency": "DATAKIT_MULTIPART_CONCURRENCY",
        "cache_dir": "DATAKIT_CACHE_DIR",
        "cache_max_bytes": "DATAKIT_CACHE_MAX_BYTES",
        "on_shard_error": "DATAKIT_ON_SHARD_ERROR",
    }

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise UsageError("storage attempts must be at least 1")
        if self.timeout_s <= 0 or self.backoff_s < 0 or self.max_backoff_s < 0:
            raise UsageError("storage timeouts and backoff must be positive")
        if self.chunk_bytes < 4096 or self.readahead < 0:
            raise UsageError("read chunk must be at least 4 KiB and readahead at least 0")
        if self.multipart_chunk_bytes < 5 << 20 or self.multipart_concurrency < 1:
            raise UsageError("multipart chunk must be at least 5 MiB (the S3 minimum)")
        if self.on_shard_error not in ON_SHARD_ERROR:
            raise UsageError(f"--on-shard-error must be one of {', '.join(ON_SHARD_ERROR)}")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> StorageConfig:
        """Defaults < ``DATAKIT_*`` environment variables < ``overrides``."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        types = {f.name: f.type for f in fields(cls)}
        for name, var in cls.ENV.items():
            raw = environ.get(var)
            if raw is None or raw == "":
                continue
            try:
                if "float" in str(types[name]):
                    values[name] = float(raw)
                elif "int" in str(types[name]):
                    values[name] = parse_bytes(raw)
                else:
                    values[name] = raw
            except ValueError:
                raise UsageError(f"{var}={raw!r} is not a valid value") from None
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def with_(self, **changes: Any) -> StorageConfig:
        return replace(self, **{k: v for k, v in changes.items() if v is not None})

    def deadline_s(self) -> float:
        """An upper bound on one request with all its retries (a safety net against hangs)."""
        return self.attempts * (min(10.0, self.timeout_s) + 2 * self.timeout_s + self.max_backoff_s)


def parse_bytes(value: str) -> int:
    """``"8M"`` -> 8388608; plain integers pass through."""
    units = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
    v = str(value).strip().lower().removesuffix("b").removesuffix("i")
    num, unit = (v[:-1], v[-1]) if v and v[-1] in units else (v, "")
    return int(float(num) * units[unit])


# --- URLs and credentials ------------------------------------------------------------------------


def is_url(path: str | os.PathLike[str]) -> bool:
    return bool(_URL.match(str(path))) and not str(path).startswith("file://")


def redact(url: str) -> str:
    """Mask credentials in a URL: ``s3://key:secret@bucket/x`` -> ``s3://***@bucket/x``, and the values
    of signature/token/key query parameters (pre-signed URLs, SAS tokens)."""
    if not _URL.match(url):
        return url
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable URL>"
    netloc = parts.netloc
    if "@" in netloc:
        netloc = "***@" + netloc.rsplit("@", 1)[1]
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        query = urlencode(
            [(k, "***" if _SECRET_PARAM.search(k) else v) for k, v in pairs], safe="*"
        )
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def redact_text(text: str) -> str:
    """:func:`redact` every URL inside free text (exception messages from lower layers)."""
    return _URL_IN_TEXT.sub(lambda m: redact(m.group(0)), text)


def redact_args(value: Any) -> Any:
    """:func:`redact_text` every string inside nested dicts/lists (arguments bound for a manifest)."""
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, dict):
        return {k: redact_args(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(redact_args(v) for v in value)
    return value


# Credentials taken out of URLs, by "scheme://host" (the bucket for s3/gs). Snapshot and install
# them in another process with credentials_snapshot() / install_credentials().
_CREDENTIALS: dict[str, tuple[str, str]] = {}


def _origin(url: str) -> str:
    p = urlsplit(url)
    return f"{p.scheme}://{p.netloc.rsplit('@', 1)[-1]}"


def register_url_credentials(url: str) -> str:
    """Take ``user:password@`` out of ``url``, remember it for that origin, return the clean URL."""
    if not is_url(url):
        return url
    p = urlsplit(url)
    if "@" not in p.netloc:
        return url
    userinfo, host = p.netloc.rsplit("@", 1)
    user, _, password = userinfo.partition(":")
    clean = urlunsplit((p.scheme, host, p.path, p.query, p.fragment))
    _CREDENTIALS[_origin(clean)] = (unquote(user), unquote(password))
    return clean


def url_credentials(url: str) -> tuple[str, str] | None:
    return _CREDENTIALS.get(_origin(url)) if is_url(url) else None


def credentials_snapshot() -> dict[str, tuple[str, str]]:
    return dict(_CREDENTIALS)


def install_credentials(snapshot: Mapping[str, tuple[str, str]]) -> None:
    _CREDENTIALS.update(snapshot)


# --- errors --------------------------------------------------------------------------------------


class StorageError(DatakitError):
    """A read or write against storage failed; the message names the object (credentials redacted).

    ``kind``: ``missing`` (no such object), ``denied`` (credentials/permissions), ``unavailable``
    (transient failures that outlasted the retries) or ``error``.
    """

    def __init__(self, message: str, kind: str = "error") -> None:
        super().__init__(redact_text(message))
        self.kind = kind


class TruncatedRead(OSError):
    """A response body shorter than asked for (the connection closed early): transient."""


_TRANSIENT_ERRNOS = {
    errno.ECONNRESET,
    errno.ECONNREFUSED,
    errno.ECONNABORTED,
    errno.ETIMEDOUT,
    errno.EPIPE,
    errno.EHOSTUNREACH,
    errno.ENETUNREACH,
    errno.ENETDOWN,
    errno.EAGAIN,
}
# Transient exception types of botocore / aiohttp / fsspec, matched by name along the MRO so that
# this module imports none of them.
_TRANSIENT_NAMES = {
    "HTTPClientError",
    "EndpointConnectionError",
    "ConnectionClosedError",
    "ReadTimeoutError",
    "ConnectTimeoutError",
    "ResponseStreamingError",
    "IncompleteReadError",
    "ClientPayloadError",
    "ServerDisconnectedError",
    "ClientConnectionError",
    "ClientOSError",
    "ServerTimeoutError",
    "FSTimeoutError",
    "IncompleteRead",
    "RemoteDisconnected",
}
_DENIED_NAMES = {
    "NoCredentialsError",
    "PartialCredentialsError",
    "CredentialRetrievalError",
    "ProfileNotFound",
    "NoAuthTokenError",
    "TokenRetrievalError",
    "RefreshError",
    "DefaultCredentialsError",
}
_TRANSIENT_CODES = {
    "SlowDown",
    "Throttling",
    "ThrottlingException",
    "RequestTimeout",
    "InternalError",
    "ServiceUnavailable",
    "RequestTimeTooSkewed",
}


def _chain(exc: BaseException | None) -> Iterator[BaseException]:
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        reason = getattr(exc, "reason", None)  # urllib.error.URLError wraps the socket error
        if isinstance(reason, BaseException) and id(reason) not in seen:
            yield reason
            seen.add(id(reason))
        exc = exc.__cause__ or exc.__context__


def _status(exc: BaseException) -> int | None:
    resp = getattr(exc, "response", None)  # botocore ClientError
    if isinstance(resp, dict):
        code = resp.get("Error", {}).get("Code")
        if code in _TRANSIENT_CODES:
            return 503
        status = resp.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return int(status) if status else None
    for attr in ("code", "status"):  # urllib HTTPError.code, aiohttp ClientResponseError.status
        value = getattr(exc, attr, None)
        if isinstance(value, int) and 100 <= value < 600:
            return value
    return None


def classify(exc: BaseException) -> str:
    """``missing`` | ``denied`` | ``transient`` | ``error`` for an exception from any storage layer."""
    for e in _chain(exc):
        if isinstance(e, StorageError):
            return "transient" if e.kind == "unavailable" else e.kind
        if isinstance(e, FileNotFoundError):
            return "missing"
        if isinstance(e, PermissionError):
            return "denied"
        names = {c.__name__ for c in type(e).__mro__}
        if names & _DENIED_NAMES:
            return "denied"
        status = _status(e)
        if status is not None:
            if status in (404, 410):
                return "missing"
            if status in (401, 403):
                return "denied"
            if status in (408, 425, 429) or status >= 500:
                return "transient"
            return "error"
        if isinstance(e, (ConnectionError, TimeoutError, socket.timeout, TruncatedRead)):
            return "transient"
        if names & _TRANSIENT_NAMES or "TimeoutError" in names:
            return "transient"
        if isinstance(e, OSError) and e.errno in _TRANSIENT_ERRNOS:
            return "transient"
    return "error"


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if isinstance(exc, OSError) and exc.strerror and exc.errno not in (None, errno.EIO):
        text = exc.strerror
    return redact_text(text)[:300]


def _credentials_hint(where: str) -> str:
    scheme = urlsplit(where).scheme if is_url(where) else ""
    if scheme == "s3":
        return (
            "check the credentials (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, AWS_PROFILE) "
            "and the endpoint (AWS_ENDPOINT_URL)"
        )
    if scheme in ("gs", "gcs"):
        return "check GOOGLE_APPLICATION_CREDENTIALS or `gcloud auth application-default login`"
    if scheme in ("http", "https"):
        return "check the user and password (https://user:password@host/...) or the token"
    return "check the credentials"


def storage_error(
    exc: BaseException, where: str, *, attempts: int = 1, seconds: float = 0.0
) -> StorageError:
    """One line for ``exc`` raised while touching ``where`` (redacted)."""
    where = redact(where)
    kind = classify(exc)
    if kind == "missing":
        return StorageError(f"{where}: not found", "missing")
    if kind == "denied":
        names = {c.__name__ for c in type(exc).__mro__}
        if "NoCredentialsError" in names:
            return StorageError(
                f"{where}: no credentials found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY or "
                "AWS_PROFILE (AWS_NO_SIGN_REQUEST=1 for a public bucket)",
                "denied",
            )
        return StorageError(
            f"{where}: access denied ({_short(exc)}); {_credentials_hint(where)}", "denied"
        )
    if kind == "transient":
        return StorageError(
            f"{where}: unreachable after {attempts} attempt(s) over {seconds:.1f} s ({_short(exc)})",
            "unavailable",
        )
    return StorageError(f"{where}: {_short(exc)}", "error")


def retry(fn: Callable[[], T], where: str, config: StorageConfig) -> T:
    """Call ``fn`` until it succeeds, retrying transient failures ``config.attempts`` times in all
    with exponential backoff and jitter. Raises :class:`StorageError` naming ``where``."""
    t0 = time.monotonic()
    for attempt in range(1, config.attempts + 1):
        try:
            return fn()
        except StorageError:
            raise
        except Exception as exc:
            if classify(exc) != "transient" or attempt == config.attempts:
                raise storage_error(
                    exc, where, attempts=attempt, seconds=time.monotonic() - t0
                ) from None
            delay = min(config.max_backoff_s, config.backoff_s * 2 ** (attempt - 1))
            delay *= 0.5 + random.random() / 2
            log.warning(
                "%s: %s; retry %d of %d in %.1f s",
                redact(where),
                _short(exc),
                attempt,
                config.attempts - 1,
                delay,
            )
            time.sleep(delay)
    raise AssertionError("unreachable")  # pragma: no cover


# --- filesystems ---------------------------------------------------------------------------------

_ENV_PREFIXES = ("AWS_", "GOOGLE_", "GCS", "AZURE_", "FSSPEC_")
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
        if creds:
            opts["client_kwargs"]["auth"] = aiohttp.BasicAuth(*creds)
    elif creds:
        raise UsageError(f"{redact(url)}: credentials in {protocol}:// URLs are not supported")
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
            self._call("rm", name, recursive=True)

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
