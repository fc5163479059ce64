"""The loop's view of the data: an endless stream of SPEC 4 batches with a resumable position.

Epochs are the loader's (:class:`datakit.loader.PairLoader`): shard order and views are a function
of (seed, epoch), and every rank reads its own disjoint shards. With ``cfg.resampled`` shards are
drawn with replacement instead, in epochs of ``cfg.epoch_samples`` (for datasets far smaller than a
run). The position ``{"epoch": e, "batch": i}`` is checkpointed; resuming sets the epoch and skips
``i`` batches, which reproduces the uninterrupted stream exactly for a fixed worker count.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Iterator
from typing import Any

import torch

from datakit.errors import UsageError
from datakit.loader import make_loader
from datakit.reader import Dataset
from datakit.skips import Skipped
from datakit.views import ViewConfig
from training.config import TrainConfig


def split_size(dataset: Dataset, split: str) -> int:
    """Samples in ``split`` (the only split when ``train`` is asked for and there is one other)."""
    splits = dataset.info.splits
    if split not in splits and split == "train" and len(splits) == 1:
        split = splits[0]
    return dataset.info.num_samples(split)


def view_config(cfg: TrainConfig) -> ViewConfig:
    return ViewConfig(
        size=cfg.image_size,
        scale=(cfg.crop_scale_min, 1.0),
        photometric=cfg.photometric,
        labels=False,
    )


class BatchStream:
    """``next(stream)`` -> the next batch dict; ``stream.position`` -> where the batch after the last
    one returned comes from (what a checkpoint stores); ``stream.skipped`` -> the shards and samples
    skipped (``cfg.on_error`` "skip", ``--on-shard-error skip``) in making the batches returned, those
    replayed to reach a resumed position not counted.

    ``device`` "cuda:N" hands JPEG decoding and view resampling to the GPU (``gpu_views``) and puts
    every batch on that device. ``prefetch`` > 0 prepares that many batches ahead in a thread (on
    its own CUDA stream), so decoding overlaps the training step; positions stay exact.
    Raises UsageError when an epoch holds no batch on this rank (too few samples for the batch size).
    """

    def __init__(
        self,
        dataset: Dataset,
        cfg: TrainConfig,
        *,
        per_rank: int,
        position: dict[str, int],
        device: str = "cpu",
        gpu_views: bool = False,
        prefetch: int = 0,
    ) -> None:
        self.loader = make_loader(
            dataset,
            per_rank,
            views=view_config(cfg),
            num_workers=cfg.workers,
            seed=cfg.seed,
            split=cfg.split,
            resampled=cfg.resampled,
            epoch_samples=cfg.epoch_samples,
            shuffle_buffer=cfg.shuffle_buffer,
            device=device if gpu_views else "cpu",
            on_error="skip" if cfg.on_error == "skip" else "raise",
        )
        self.device = torch.device(device)
        self.position = {"epoch": int(position["epoch"]), "batch": int(position["batch"])}
        self._raw = dict(self.position)  # where the producer is
        self.skipped = Skipped()
        self._raw_skipped = Skipped()  # the producer's count
        self._seen = Skipped()  # self.loader.skipped as last counted
        self._it: Iterator[dict[str, Any]] | None = None
        self.prefetch = prefetch
        self._queue: queue.Queue[Any] | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    def __iter__(self) -> BatchStream:
        return self

    def _open(self) -> Iterator[dict[str, Any]]:
        self._count_skips()  # the last epoch's trailing skips
        self.loader.set_epoch(self._raw["epoch"])
        it = iter(self.loader)
        for _ in range(self._raw["batch"]):
            if next(it, None) is None:
                break
        self._seen = self.loader.skipped  # a replayed batch's skips were counted before the resume
        return it

    def _count_skips(self) -> None:
        self._raw_skipped += self.loader.skipped - self._seen
        self._seen = self.loader.skipped

    def _produce(self) -> dict[str, Any]:
        """The next batch on ``self.device``, advancing ``self._raw``."""
        empty = 0
        while True:
            if self._it is None:
                self._it = self._open()
            batch = next(self._it, None)
            if batch is not None:
                self._raw["batch"] += 1
                self._count_skips()
                return {
                    k: v.to(self.device, non_blocking=True) if isinstance(v, torch.Tensor) else v
                    for k, v in batch.items()
                }
            self._close_iterator()
            if self._raw["batch"] == 0:
                empty += 1
                if empty > 1:
                    raise UsageError(
                        f"{self.loader.dataset.url}: an epoch of split {self.loader.split!r} gives no "
                        f"batch of {self.loader.batch_size} on this rank; use a smaller batch or more shards"
                    )
            self._raw = {"epoch": self._raw["epoch"] + 1, "batch": 0}

    def __next__(self) -> dict[str, Any]:
        if self.prefetch <= 0:
            batch = self._produce()
            self.position, self.skipped = dict(self._raw), self._raw_skipped
            return batch
        if self._thread is None:
            self._queue = queue.Queue(maxsize=self.prefetch)
            self._thread = threading.Thread(target=self._worker, name="batch-prefetch", daemon=True)
            self._thread.start()
        assert self._queue is not None
        item = self._queue.get()
        if isinstance(item, BaseException):
            raise item
        batch, position, skipped, event = item
        if event is not None:  # the batch was made on the prefetch stream
            current = torch.cuda.current_stream(self.device)
            current.wait_event(event)
            for v in batch.values():
                if isinstance(v, torch.Tensor) and v.is_cuda:
                    v.record_stream(current)
        self.position, self.skipped = position, skipped
        return batch

    def _worker(self) -> None:
        assert self._queue is not None
        cuda = self.device.type == "cuda"
        side = torch.cuda.Stream(self.device) if cuda else None
        try:
            while not self._stop.is_set():
                with torch.cuda.stream(side) if side is not None else contextlib.nullcontext():
                    batch = self._produce()
                    event = torch.cuda.Event() if side is not None else None
                    if event is not None:
                        event.record(side)
                item = (batch, dict(self._raw), self._raw_skipped, event)
                while not self._stop.is_set():
                    try:
                        self._queue.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
        except BaseException as exc:  # handed to the consumer, raised there
            self._queue.put(exc)

    def _close_iterator(self) -> None:
        it, self._it = self._it, None
        close = getattr(it, "close", None)
        if close is not None:
            close()

    def close(self) -> None:
        if self._thread is not None:
            self._stop.set()
            while self._thread.is_alive():
                with contextlib.suppress(queue.Empty):
                    assert self._queue is not None
                    self._queue.get(timeout=0.1)
            self._thread = None
        self._close_iterator()
