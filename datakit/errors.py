"""Exceptions that the CLI turns into one clear line on stderr and a non-zero exit."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator


class DatakitError(Exception):
    """Bad input or a failed check; the message names the file and what is wrong."""

    exit_code = 1

    def __init__(self, *args: object) -> None:
        if len(args) == 1 and isinstance(args[0], str):
            args = (unwrap_worker_message(args[0]),)
        super().__init__(*args)


def unwrap_worker_message(message: str) -> str:
    """torch's DataLoader re-raises a worker's exception as ``type("Caught ... in DataLoader worker
    process N.\nOriginal Traceback ...\nSampleError: <message>")``: keep the one line that matters."""
    if not message.startswith("Caught ") or "Original Traceback" not in message:
        return message
    last = message.rstrip().rsplit("\n", 1)[-1]
    _, sep, original = last.partition("Error: ")
    return original if sep else message


class SampleError(DatakitError):
    """A sample that does not follow the schema (shape, dtype, key, metadata, codec)."""


class SourceError(DatakitError):
    """A source file that cannot be read or is malformed; ``path`` names it."""

    def __init__(self, path: object, message: str) -> None:
        self.path = str(path)
        self.reason = message
        super().__init__(f"{self.path}: {message}")


class DatasetIncomplete(DatakitError):
    """A dataset without ``_info.json``: a conversion that never finished, or the wrong path."""


class UsageError(DatakitError):
    """Arguments that contradict each other or the state of the output."""

    exit_code = 2


@contextlib.contextmanager
def naming_shard(where: str | None) -> Iterator[None]:
    """A :class:`SampleError` raised inside is re-raised prefixed with ``where`` (the shard's URL):
    the sample key alone does not say which file is bad. Nothing is added when ``where`` is empty."""
    try:
        yield
    except SampleError as exc:
        if not where:
            raise
        raise SampleError(f"{where}: {exc}") from None


@contextlib.contextmanager
def naming_write(path: object) -> Iterator[None]:
    """An OSError raised inside without a file name (a write, flush or close that fails: a full
    disk, a quota, a file-size limit) is re-raised naming ``path``, so the CLI's line says which
    file: ``PATH: cannot be written (No space left on device)``."""
    try:
        yield
    except OSError as exc:
        if exc.filename:
            raise
        raise OSError(exc.errno, f"cannot be written ({exc.strerror or exc})", str(path)) from None
