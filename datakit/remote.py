"""How remote calls behave: :class:`StorageConfig` (timeouts, retries, read-ahead, cache, what an
unreadable shard does), the classification of failures from any storage layer (botocore, aiohttp,
urllib, fsspec) into missing / denied / transient, and the one bounded retry loop (:func:`retry`):
transient failures are retried with exponential backoff and jitter a bounded number of times, and what
still fails becomes one :class:`StorageError` line naming the object, credentials redacted.
"""

from __future__ import annotations

import errno
import logging
import os
import random
import socket
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, fields, replace
from typing import Any, TypeVar
from urllib.parse import urlsplit

from datakit.errors import DatakitError, UsageError
from datakit.urls import is_url, redact, redact_text

log = logging.getLogger("datakit.storage")

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
                elif name == "on_shard_error" and raw not in ON_SHARD_ERROR:
                    raise ValueError(raw)
                else:
                    values[name] = raw
            except ValueError:
                choices = (
                    f" (one of {', '.join(ON_SHARD_ERROR)})" if name == "on_shard_error" else ""
                )
                raise UsageError(f"{var}={raw!r} is not a valid value{choices}") from None
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


# --- errors --------------------------------------------------------------------------------------


class StorageError(DatakitError):
    """A read or write against storage failed; the message names the object (credentials redacted).

    ``kind``: ``missing`` (no such object), ``denied`` (credentials/permissions), ``unavailable``
    (transient failures that outlasted the retries) or ``error``.
    """

    def __init__(self, message: str, kind: str = "error") -> None:
        super().__init__(redact_text(message))  # DatakitError unwraps a worker's message
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
            # 501 Not Implemented / 505: the server (a wrong endpoint) will never do it
            if status in (408, 425, 429) or (status >= 500 and status not in (501, 505)):
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


def retry(
    fn: Callable[[], T],
    where: str,
    config: StorageConfig,
    cancelled: Callable[[], bool] | None = None,
) -> T:
    """Call ``fn`` until it succeeds, retrying transient failures ``config.attempts`` times in all
    with exponential backoff and jitter; ``cancelled()`` True after a failure ends them (a reader
    closed meanwhile). Raises :class:`StorageError` naming ``where``."""
    t0 = time.monotonic()
    for attempt in range(1, config.attempts + 1):
        try:
            return fn()
        except StorageError:
            raise
        except Exception as exc:
            if (
                classify(exc) != "transient"
                or attempt == config.attempts
                or (cancelled is not None and cancelled())
            ):
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
