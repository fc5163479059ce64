"""What a streaming read skipped on purpose: unreadable shards and bad samples, one log line each.

A skip is decided where the data is read, often in a DataLoader worker process, so each process
counts its own. The stage that hands data to the main process takes the count since its last
hand-over (:func:`take`) and sends it along: :class:`~datakit.loader.PairLoader`'s workers attach it
to each batch under :data:`SKIPPED_KEY`, and the loader removes it again and keeps the running
total (``loader.skipped``). The trainer sums that over ranks.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass

from datakit.remote import StorageError

log = logging.getLogger(__name__)

SKIPPED_KEY = "__skipped__"  # worker -> main process, never in a batch the loader yields


@dataclass(frozen=True)
class Skipped:
    """Counts of skipped shards and samples."""

    shards: int = 0
    samples: int = 0

    def __add__(self, other: Skipped) -> Skipped:
        return Skipped(self.shards + other.shards, self.samples + other.samples)

    def __sub__(self, other: Skipped) -> Skipped:
        return Skipped(self.shards - other.shards, self.samples - other.samples)

    def __bool__(self) -> bool:
        return bool(self.shards or self.samples)

    def as_dict(self) -> dict[str, int]:
        return {"shards": self.shards, "samples": self.samples}

    def suffix(self) -> str:
        """What a summary line ends with: ``; skipped 1 shard, 2 samples (see the log lines
        above)``, or nothing when nothing was skipped."""
        if not self:
            return ""
        return (
            f"; skipped {plural(self.shards, 'shard')}, {plural(self.samples, 'sample')} "
            f"(see the log lines above)"
        )


def plural(n: int, noun: str) -> str:
    """``1 shard``, ``2 shards``: a count with its noun in the right number."""
    return f"{n} {noun}{'' if n == 1 else 's'}"


_lock = threading.Lock()
_counts = [0, 0]  # this process's shards, samples since the last take()
_quiet = threading.local()


def skip_shard(reason: object) -> None:
    """Log (one line, naming the shard and why: ``reason``) and count a skipped shard."""
    _skip(0, "skipping shard: %s", reason)


def skip_sample(reason: object) -> None:
    """Log (one line, naming the shard, the sample and why) and count a skipped sample."""
    _skip(1, "skipping sample: %s", reason)


def _skip(index: int, message: str, reason: object) -> None:
    if getattr(_quiet, "on", False):
        return
    log.warning(message, reason)
    with _lock:
        _counts[index] += 1


@contextlib.contextmanager
def unreported() -> Iterator[None]:
    """Skips in this thread are neither logged nor counted inside: for a probe of data that is
    read (and reported) again later."""
    was = getattr(_quiet, "on", False)
    _quiet.on = True
    try:
        yield
    finally:
        _quiet.on = was


def skip_handler(exc: BaseException) -> bool:
    """WebDataset handler that skips the bad sample or shard (``on_error="skip"``), logged and
    counted once."""
    if not isinstance(exc, StorageError):  # a shard's error: ShardSamples logs and counts it
        skip_sample(exc)
    return True


def take() -> Skipped:
    """This process's skips since the last call, and reset."""
    with _lock:
        out = Skipped(*_counts)
        _counts[:] = [0, 0]
    return out
