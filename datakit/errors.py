"""Exceptions that the CLI turns into one clear line on stderr and a non-zero exit."""

from __future__ import annotations


class DatakitError(Exception):
    """Bad input or a failed check; the message names the file and what is wrong."""

    exit_code = 1


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
