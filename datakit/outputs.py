"""Local output files that appear together, whole, or not at all.

``preview`` (sheet and HTML page), ``eval`` (EVAL.json) and ``export`` (the backbone file) write
their results through :class:`OutputFiles`: each output is opened under a temporary name beside its
final one *before* the work starts, so an unwritable path (a file where a folder should be, a
read-only file system, no permission) fails at once instead of after minutes of work; the results
are written to the temporaries, flushed to disk, and renamed together when the work succeeds. On any
error, a Ctrl-C or a SIGTERM the temporaries and the folders made for them are removed and no final
name is touched.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from typing import IO

from datakit.errors import DatakitError
from datakit.storage import Location


def _cannot(path: str, exc: OSError) -> DatakitError:
    return DatakitError(f"{path}: cannot be written ({exc.strerror or exc})")


class OutputFiles:
    """``with OutputFiles([a, b]) as out: ...; out.write(a, data)``: see the module docstring.

    Raises :class:`DatakitError` naming the output that cannot be created (on entry) or written."""

    def __init__(self, paths: list[str]) -> None:
        self.paths = paths
        self.tmp: dict[str, str] = {}
        self.created: list[str] = []

    def __enter__(self) -> OutputFiles:
        try:
            for path in self.paths:
                folder = os.path.dirname(os.path.abspath(path))
                if os.path.isdir(path):
                    raise DatakitError(f"{path}: is a folder; give a file name")
                tmp = os.path.join(folder, f".{os.path.basename(path)}.{secrets.token_hex(4)}.tmp")
                # recorded before it exists: a signal that lands between its creation and the
                # bookkeeping can no longer leave it behind
                self.tmp[path] = tmp
                missing = Location(folder).missing_folders()
                above = os.path.dirname(missing[-1]) if missing else folder
                if not os.path.isdir(above):  # makedirs would say only "File exists"
                    raise DatakitError(f"{path}: cannot be written ({above} is not a folder)")
                try:
                    self.created += missing
                    os.makedirs(folder, exist_ok=True)
                    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
                except OSError as exc:
                    raise _cannot(path, exc) from None
        except BaseException:
            self._discard()
            raise
        return self

    def write(self, path: str, data: bytes) -> None:
        """Write ``data`` as the whole content of output ``path``."""
        self.write_with(path, lambda f: f.write(data))

    def write_with(self, path: str, write: Callable[[IO[bytes]], object]) -> None:
        """Call ``write(f)`` on output ``path``'s temporary file, then flush it to disk (else the
        rename can reach the disk before the data does)."""
        try:
            with open(self.tmp[path], "wb") as f:
                write(f)
                f.flush()
                os.fsync(f.fileno())
        except OSError as exc:
            raise _cannot(path, exc) from None

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is not None:
            self._discard()
            return
        try:
            for path, tmp in self.tmp.items():
                os.chmod(tmp, 0o644)
                os.replace(tmp, path)
        finally:
            self._discard()

    def _discard(self) -> None:
        for tmp in self.tmp.values():
            if os.path.exists(tmp):
                os.unlink(tmp)
        self.tmp.clear()
        Location.remove_empty_folders(self.created)
