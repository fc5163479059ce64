"""The loop's view of the data: an endless stream of SPEC 4 batches with a resumable position.

Epochs are the loader's (:class:`datakit.loader.PairLoader`): shard order and views are a function
of (seed, epoch), and every rank reads its own disjoint shards. With ``cfg.resampled`` shards are
drawn with replacement instead, in epochs of ``cfg.epoch_samples`` (for datasets far smaller than a
run). The position ``{"epoch": e, "batch": i}`` is checkpointed; resuming sets the epoch and skips
``i`` batches, which reproduces the uninterrupted stream exactly for a fixed worker count.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from datakit.errors import UsageError
from datakit.loader import make_loader
from datakit.reader import Dataset
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
    """``next(stream)`` -> the next batch dict; ``stream.position`` -> where the next one comes from.

    ``gpu_views`` hands JPEG decoding and view resampling to the GPU (batches arrive on ``device``).
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
            device=device,
        )
        self.position = {"epoch": int(position["epoch"]), "batch": int(position["batch"])}
        self._it: Iterator[dict[str, Any]] | None = None

    def __iter__(self) -> BatchStream:
        return self

    def _open(self) -> Iterator[dict[str, Any]]:
        self.loader.set_epoch(self.position["epoch"])
        it = iter(self.loader)
        for _ in range(self.position["batch"]):
            if next(it, None) is None:
                break
        return it

    def __next__(self) -> dict[str, Any]:
        empty = 0
        while True:
            if self._it is None:
                self._it = self._open()
            batch = next(self._it, None)
            if batch is not None:
                self.position["batch"] += 1
                return batch
            self.close()
            if self.position["batch"] == 0:
                empty += 1
                if empty > 1:
                    raise UsageError(
                        f"{self.loader.dataset.url}: an epoch of split {self.loader.split!r} gives no "
                        f"batch of {self.loader.batch_size} on this rank; use a smaller batch or more shards"
                    )
            self.position = {"epoch": self.position["epoch"] + 1, "batch": 0}

    def close(self) -> None:
        it, self._it = self._it, None
        close = getattr(it, "close", None)
        if close is not None:
            close()
