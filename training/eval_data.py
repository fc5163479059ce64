"""The evaluation's data: a split's images and labels, resized to the evaluation size, in memory.

Images are resized with area interpolation, labels with nearest; both to (H, W) with the short side
``short`` and the aspect of the dataset kept, multiples of 32.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import torch
from torch import Tensor

from datakit import skips
from datakit.errors import DatakitError
from datakit.skips import Skipped
from datakit.views import IMAGENET_MEAN, IMAGENET_STD  # as the training views


@dataclass(frozen=True)
class LabeledImages:
    """images (N, 3, H, W) uint8, labels (N, H, W) int64 with ignore_index kept, keys in order;
    ``skipped``: the shards and samples skipped in reading them."""

    images: Tensor
    labels: Tensor
    keys: list[str]
    skipped: Skipped = Skipped()

    def __len__(self) -> int:
        return len(self.keys)


def eval_size(height: int, width: int, short: int) -> tuple[int, int]:
    """(H, W) with the short side ~``short``, the aspect kept, both multiples of 32."""
    scale = short / min(height, width)
    return (max(32, round(height * scale / 32) * 32), max(32, round(width * scale / 32) * 32))


def resize_pair(
    rgb: np.ndarray, label: np.ndarray, size: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """rgb (H, W, 3) by area, label (H, W) by nearest -> size (h, w); label as int64. The labels'
    nearest pixel is taken at pixel centres, as area's averages are centred (OpenCV's plain
    ``INTER_NEAREST`` samples at corners: half an output pixel up and left when shrinking)."""
    h, w = size
    rgb = cv2.resize(rgb, (w, h), interpolation=cv2.INTER_AREA)
    label = cv2.resize(label, (w, h), interpolation=cv2.INTER_NEAREST_EXACT)
    return rgb, label.astype(np.int64)


def in_holdout(key: str, fraction: float) -> bool:
    """Stable across runs and machines: crc32 of the key."""
    return zlib.crc32(key.encode()) % 10_000 < fraction * 10_000


Row = tuple[str, np.ndarray, np.ndarray]  # key, rgb, label


@dataclass(frozen=True)
class LabelRange:
    """The values a label pixel may hold: a class ``0 .. num_classes - 1`` or ``ignore_index``."""

    num_classes: int
    ignore_index: int

    def fault(self, label: np.ndarray) -> str | None:
        """None when every pixel of ``label`` is a class or ignored, else what is wrong."""
        bad = (label != self.ignore_index) & ((label < 0) | (label >= self.num_classes))
        if not bad.any():
            return None
        return (
            f"label value {int(label[bad].flat[0])} is neither a class "
            f"(0..{self.num_classes - 1}) nor ignore_index {self.ignore_index}"
        )


class _SplitReader(torch.utils.data.IterableDataset):  # type: ignore[type-arg]
    """Rows, and the skips (:mod:`datakit.skips`) made in this worker since the last row as
    :class:`Skipped` items between them."""

    def __init__(
        self,
        urls: list[str],
        size: tuple[int, int],
        select: Callable[[str], bool],
        storage: Any,
        skip: bool = False,
        labels: LabelRange | None = None,
    ) -> None:
        self.urls, self.size, self.select, self.storage = urls, size, select, storage
        self.skip, self.labels = skip, labels

    def __iter__(self) -> Iterator[Row | Skipped]:
        from datakit.reader import pipeline

        h, w = self.size
        skips.take()  # counts a forked worker inherited belong to no row of this read
        handler = skips.skip_handler if self.skip else None
        for s in pipeline(self.urls, split_by_worker=True, storage=self.storage, handler=handler):
            if got := skips.take():
                yield got
            if not self.select(s.key):
                continue
            if s.label is None:
                if not self.skip:
                    raise DatakitError(f"{s.url}: sample {s.key} has no label member")
                skips.skip_sample(f"{s.url}: {s.key}: no label member")  # sent with the next row
                continue
            if self.labels is not None and (fault := self.labels.fault(s.label)):
                if not self.skip:
                    raise DatakitError(f"{s.url}: sample {s.key}: {fault}")
                skips.skip_sample(f"{s.url}: {s.key}: {fault}")
                continue
            rgb, label = resize_pair(s.rgb, s.label, (h, w))
            yield s.key, rgb, label
        if got := skips.take():
            yield got


def read_split(
    dataset: Any,
    split: str,
    size: tuple[int, int],
    *,
    select: Callable[[str], bool] = lambda key: True,
    limit: int | None = None,
    workers: int = 0,
    skip: bool = False,
    label_range: LabelRange | None = None,
    none_selected: str = "",
) -> LabeledImages:
    """Decode and resize the samples of ``split`` accepted by ``select`` (at most ``limit``: the first
    by key of those accepted in the first shards, in manifest order, that hold ``limit`` of them)
    into memory. ``skip``: bad samples and unreadable shards are logged, counted and skipped.
    ``label_range``: a sample whose label holds another value is bad input (DatakitError naming the
    shard and sample, or skipped). ``none_selected``: said after the error when ``select`` took
    none (and none was skipped)."""
    pending = list(zip(dataset.info.shards_of(split), dataset.shard_urls(split), strict=True))
    if not pending:
        raise DatakitError(f"{dataset.url}: no samples in split {split!r}")
    storage = getattr(dataset, "storage", None)
    rows: list[Row] = []
    skipped = Skipped()
    seen = 0
    while pending and (limit is None or len(rows) < limit):
        # shards for the samples still wanted, scaled by the share ``select`` accepted so far
        share = seen / max(len(rows), 1) if seen else 1.0
        want = None if limit is None else (limit - len(rows)) * share
        urls: list[str] = []
        counted = 0
        while pending and (want is None or not urls or counted < want):
            entry, url = pending.pop(0)
            urls.append(url)
            counted += entry.num_samples
        seen += counted
        reader = _SplitReader(urls, size, select, storage, skip, label_range)
        loader = torch.utils.data.DataLoader(
            reader, batch_size=None, num_workers=min(workers, len(urls))
        )
        for item in loader:
            if isinstance(item, Skipped):
                skipped += item
            else:
                rows.append(item)
    rows = sorted(rows, key=lambda r: r[0])[:limit]
    if not rows:
        raise DatakitError(
            f"{dataset.url}: no samples selected from split {split!r}"
            f"{'' if skipped else none_selected}"
        )
    images = torch.stack([torch.as_tensor(np.asarray(r[1])).permute(2, 0, 1) for r in rows])
    labels = torch.stack([torch.as_tensor(np.asarray(r[2])) for r in rows])
    return LabeledImages(images.contiguous(), labels, [str(r[0]) for r in rows], skipped)


def normalise(images: Tensor) -> Tensor:
    """(B, 3, H, W) uint8 -> float32 normalised with ImageNet statistics."""
    mean = torch.tensor(IMAGENET_MEAN, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=images.device).view(1, 3, 1, 1)
    return (images.float() / 255.0 - mean) / std
