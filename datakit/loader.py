"""The training loader: a dataset path, URL or :class:`~datakit.reader.Dataset` -> batches of SPEC 4.

Shards flow through :func:`datakit.reader.pipeline` (shard shuffle per epoch, node and worker
splitting, a shuffle buffer), each sample becomes two views in a loader worker, and workers collate
whole batches. With ``device="cuda"`` workers leave JPEGs encoded and the GPU decodes and resamples
them (:mod:`datakit.gpu_views`); depth and labels are resampled on the CPU either way.
"""

from __future__ import annotations

import itertools
import logging
import os
from collections.abc import Iterator
from typing import Any

import numpy as np

from datakit import schema, skips
from datakit.errors import SampleError, UsageError, naming_shard
from datakit.jpeg import jpeg_header
from datakit.reader import Dataset, open_dataset, pipeline
from datakit.skips import SKIPPED_KEY, Skipped
from datakit.views import PairedViews, ViewConfig, collate_views, make_views, sample_seed

log = logging.getLogger(__name__)

_GRAY_FIELDS = ("depth", "label")
DEFAULT_VIEWS = ViewConfig()  # frozen: safe as a default argument


def decode_for_views(
    sample: dict[str, Any], *, labels: bool = True, rgb: bool = True, depth: bool = True
) -> tuple[schema.DecodedSample, bytes | None]:
    """Decode what the views need of a WebDataset sample dict, through the schema's codecs but for
    single-channel PNGs, which take :mod:`datakit.png`'s fast path where it applies.

    Skips the label (depth) member when ``labels`` (``depth``) is False and, when ``rgb`` is False,
    leaves a JPEG RGB encoded: returns (sample with ``rgb`` None in that case, the JPEG bytes or None).
    Raises :class:`~datakit.errors.SampleError` like :func:`datakit.schema.decode`, prefixed with
    the shard's URL so that the message names the file.
    """
    with naming_shard(sample.get("__url__")):
        return _decode_for_views(sample, labels=labels, rgb=rgb, depth=depth)


def _decode_for_views(
    sample: dict[str, Any], *, labels: bool, rgb: bool, depth: bool
) -> tuple[schema.DecodedSample, bytes | None]:
    key = sample["__key__"]
    decoded: dict[str, Any] = {}
    seen: set[str] = set()
    jpeg, jpeg_hw = None, (0, 0)
    for ext, data in sample.items():
        f = schema.EXTENSION_TO_FIELD.get(ext)
        if f is None:
            continue
        if f.name in seen:  # as schema.decode: rgb.jpg and rgb.png in one sample is an error
            raise SampleError(f"{key}: two members for field {f.name}")
        seen.add(f.name)
        if (f.name == "label" and not labels) or (f.name == "depth" and not depth):
            continue
        try:
            if f.name == "rgb" and not rgb and ext.endswith(("jpg", "jpeg")):
                head = jpeg_header(data)
                if head is None:
                    raise SampleError("not a JPEG (no frame header)")
                jpeg, jpeg_hw = data, (head[1], head[0])
                continue
            decoded[f.name] = schema.CODECS[ext].decode(data)
        except (SampleError, ValueError) as exc:
            raise SampleError(f"{key}.{ext}: {exc}") from None
    if "meta" not in decoded or ("rgb" not in decoded and jpeg is None):
        raise SampleError(f"{key}: missing rgb or metadata member")
    meta = decoded["meta"]
    image = decoded.get("rgb")
    h, w = image.shape[:2] if image is not None else jpeg_hw  # a JPEG's size from its header
    schema.validate_meta(meta, key=key, width=w, height=h)
    raw = decoded.get("depth")
    for name in _GRAY_FIELDS:
        arr = decoded.get(name)
        if arr is not None and arr.shape != (h, w):
            raise SampleError(f"{key}: {name} is {arr.shape}, image is {h}x{w}")
    if raw is not None and raw.dtype != np.uint16:
        raise SampleError(f"{key}: depth must be a 16-bit PNG, got {raw.dtype}")
    physical = raw.astype(np.float32) * np.float32(meta["depth_scale"]) if raw is not None else None
    # rgb is None when a JPEG was left encoded (rgb=False): the caller holds the bytes instead.
    out = schema.DecodedSample(
        key=key,
        rgb=image,  # type: ignore[arg-type]
        meta=meta,
        depth=physical,
        depth_raw=raw,
        label=decoded.get("label"),
        url=str(sample.get("__url__", "")),
    )
    return out, jpeg


class _Batches:
    """Worker stage: view pairs -> collated batches, each carrying under SKIPPED_KEY the skips
    (:mod:`datakit.skips`) made since the previous one. A full batch waits for the next sample (or
    the end of the stream), so that the skips after a worker's last full batch come with it; they
    come alone from a worker that makes no batch, or one whose last full batch was yielded before a
    partial one that ``drop_last`` drops."""

    def __init__(self, size: int, collate: _Collate, partial: bool) -> None:
        self.size, self.collate, self.partial = size, collate, partial

    def __call__(self, pairs: Iterator[Any]) -> Iterator[dict[str, Any]]:
        skips.take()  # counts a forked worker inherited belong to no batch of this stream
        full: list[Any] | None = None
        items: list[Any] = []
        for pair in pairs:
            if full is not None:
                yield self._batch(full)
                full = None
            items.append(pair)
            if len(items) == self.size:
                full, items = items, []
        if full is not None:
            yield self._batch(full)
        if items and self.partial:
            yield self._batch(items)
        elif rest := skips.take():
            yield {SKIPPED_KEY: rest}

    def _batch(self, items: list[Any]) -> dict[str, Any]:
        batch = self.collate(items)
        batch[SKIPPED_KEY] = skips.take()
        return batch


class _CpuViews:
    """Worker stage of the CPU path: WebDataset sample dict -> PairedViews."""

    def __init__(self, cfg: ViewConfig, seed: int, epoch: int) -> None:
        self.cfg, self.seed, self.epoch = cfg, seed, epoch

    def __call__(self, sample: dict[str, Any]) -> PairedViews:
        decoded, _ = decode_for_views(sample, labels=self.cfg.labels)
        return make_views(decoded, self.cfg, sample_seed(self.seed, self.epoch, decoded.key))


class _EncodedViews:
    """Worker stage of the GPU path: WebDataset sample dict -> EncodedPair."""

    def __init__(self, cfg: ViewConfig, seed: int, epoch: int) -> None:
        self.cfg, self.seed, self.epoch = cfg, seed, epoch

    def __call__(self, sample: dict[str, Any]) -> Any:
        from datakit.gpu_views import prepare_encoded

        return prepare_encoded(sample, self.cfg, seed=self.seed, epoch=self.epoch)


class _Collate:
    def __init__(self, cfg: ViewConfig, ignore_index: int, encoded: bool) -> None:
        self.cfg, self.ignore_index, self.encoded = cfg, ignore_index, encoded

    def __call__(self, items: list[Any]) -> dict[str, Any]:
        if self.encoded:
            from datakit.gpu_views import collate_encoded

            return collate_encoded(items, self.cfg, ignore_index=self.ignore_index)
        return collate_views(items, self.cfg, ignore_index=self.ignore_index)


def _world() -> tuple[int, int]:
    """(rank, world size) exactly as WebDataset's split_by_node sees them (RANK/WORLD_SIZE
    environment variables, else an initialised torch.distributed group)."""
    from webdataset.utils import pytorch_worker_info

    rank, world, _, _ = pytorch_worker_info()
    return rank, world


class PairLoader:
    """An iterable of SPEC 4 batch dicts; ``len()`` is the batches per epoch on this rank. A
    resampled stream, or one with ``epoch_samples`` given, is cut there; otherwise an epoch reads
    this rank's shards once (each worker collates its own batches, so with ``drop_last=False``
    their partial batches can make a few more).

    Call :meth:`set_epoch` before each epoch (as with DistributedSampler) for a fresh shard order
    and fresh views; the same (seed, epoch) gives the same batches for a fixed worker count.
    """

    def __init__(
        self,
        dataset: str | os.PathLike[str] | Dataset,
        batch_size: int,
        *,
        views: ViewConfig = DEFAULT_VIEWS,
        num_workers: int = 0,
        seed: int = 0,
        split: str | None = "train",
        shuffle: bool = True,
        shuffle_buffer: int = 1000,
        resampled: bool | None = None,
        drop_last: bool = True,
        pin_memory: bool | None = None,
        device: str = "cpu",
        epoch_samples: int | None = None,
        on_error: str = "raise",
        prefetch_factor: int | None = None,
        storage_options: dict[str, Any] | None = None,
    ) -> None:
        if batch_size < 1:
            raise UsageError(f"batch size must be positive, got {batch_size}")
        if on_error not in ("raise", "skip"):
            raise UsageError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        self.dataset = (
            dataset
            if isinstance(dataset, Dataset)
            else open_dataset(str(dataset), **(storage_options or {}))
        )
        info = self.dataset.info
        if split is not None and split not in info.splits:
            if split == "train" and len(info.splits) == 1:
                split = info.splits[0]
            else:
                raise UsageError(f"no split {split!r} in {self.dataset.url}; have {info.splits}")
        self.split = split
        self.urls = self.dataset.shard_urls(split)
        if not self.urls:
            raise UsageError(f"{self.dataset.url}: no shards for split {split!r}")
        self.batch_size = batch_size
        self.views = views
        self.num_workers = num_workers
        self.seed = seed
        self.shuffle = shuffle
        self.shuffle_buffer = shuffle_buffer if shuffle else 0
        self.rank, self.world = _world()
        # Several ranks with uneven shard shares must still agree on the step count: resample.
        self.resampled = self.world > 1 if resampled is None else resampled
        self.drop_last = drop_last
        self.device = device
        self.gpu = device.startswith("cuda")
        self.pin_memory = pin_memory
        self.on_error = on_error
        self.prefetch_factor = prefetch_factor
        labels = info.labels or {}
        self.ignore_index = int(labels.get("ignore_index", 255))
        self.epoch_samples = epoch_samples or info.num_samples(split)
        # An endless (resampled) stream, or an epoch length asked for, is cut at len(); otherwise
        # each rank reads its shards once: workers' partial batches or an uneven rank share can
        # make more batches than len() says, and cutting there would drop their samples.
        self._cut = self.resampled or bool(epoch_samples)
        self.epoch = 0
        # bad samples (on_error="skip") and unreadable shards (that, or on_shard_error="skip")
        # skipped in the making of the batches yielded so far, summed over workers and epochs
        self.skipped = Skipped()

    def __len__(self) -> int:
        per_rank = self.epoch_samples // self.world
        if self.drop_last:
            return per_rank // self.batch_size
        return -(-per_rank // self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _pipeline(self) -> Any:
        import webdataset as wds

        # Not wds.warn_and_continue: it sleeps 0.5 s per error.
        handler = skips.skip_handler if self.on_error == "skip" else wds.reraise_exception
        stage = (_EncodedViews if self.gpu else _CpuViews)(self.views, self.seed, self.epoch)
        # A per-epoch seed for shard order and buffer; views are seeded per sample key.
        pipe = pipeline(
            self.urls,
            storage=self.dataset.storage,
            shuffle_shards=self.shuffle,
            shuffle_buffer=self.shuffle_buffer,
            split_by_node=self.world > 1,
            split_by_worker=True,
            resampled=self.resampled,
            seed=int(np.random.SeedSequence([self.seed, self.epoch]).generate_state(1)[0]),
            handler=handler,
            decode=False,
        )
        pipe.append(wds.map(stage, handler=handler))
        collate = _Collate(self.views, self.ignore_index, self.gpu)
        pipe.append(_Batches(self.batch_size, collate, partial=not self.drop_last))
        return pipe

    def __iter__(self) -> Iterator[dict[str, Any]]:
        import torch

        pin = torch.cuda.is_available() if self.pin_memory is None else self.pin_memory
        kwargs: dict[str, Any] = {}
        if self.num_workers > 0 and self.prefetch_factor is not None:
            kwargs["prefetch_factor"] = self.prefetch_factor
        loader = torch.utils.data.DataLoader(
            self._pipeline(),
            batch_size=None,
            num_workers=self.num_workers,
            pin_memory=pin,
            **kwargs,
        )
        batches = self._counted(self._start(loader))
        gpu_views = None
        if self.gpu:
            from datakit.gpu_views import GpuViews

            gpu_views = GpuViews(self.views, self.device)
        if self._cut:  # islice: no batch is made past the cut
            batches = itertools.islice(batches, len(self))
        for batch in batches:
            yield gpu_views(batch) if gpu_views is not None else batch

    def _counted(self, items: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        """The workers' batches without their skip counts, which go to ``self.skipped``."""
        for item in items:
            self.skipped += item.pop(SKIPPED_KEY, Skipped())
            if item:  # else a worker's last skips, after its last batch
                yield item

    def _start(self, loader: Any) -> Iterator[dict[str, Any]]:
        """Start the workers. They fork with OpenCV's thread pool off: one thread per worker (the
        workers are the parallelism), and a child that touches a pool inherited mid-flight hangs."""
        if self.num_workers == 0:
            return iter(loader)
        import cv2

        threads = cv2.getNumThreads()
        cv2.setNumThreads(1)
        try:
            return iter(loader)
        finally:
            cv2.setNumThreads(threads)


def make_loader(
    dataset: str | os.PathLike[str] | Dataset,
    batch_size: int,
    *,
    views: ViewConfig = DEFAULT_VIEWS,
    num_workers: int = 0,
    seed: int = 0,
    **options: Any,
) -> PairLoader:
    """Batches of paired views (SPEC 4) from a dataset folder, URL or :class:`Dataset`.

    Each batch is a dict: view1/view2 float32 (B, 3, S, S) normalised; depth1/depth2 float32
    (B, 1, S, S) physical units, 0 = invalid; coords1/coords2 float32 (B, 4) as docs/views.md
    defines them; periodic bool (B,); label1/label2 int64 (B, S, S) when the dataset has labels.

    Options (keywords of :class:`PairLoader`): split ("train"), shuffle (True), shuffle_buffer
    (1000 samples), resampled (endless shard resampling; default on under DDP), drop_last (True),
    pin_memory (auto), device ("cpu", or "cuda" for the GPU path), epoch_samples (default: the
    split's count in _info.json), on_error ("raise" or "skip": bad samples and unreadable shards are
    logged and skipped; ``loader.skipped`` counts them), prefetch_factor, storage_options.
    Raises :class:`~datakit.errors.UsageError` for bad arguments and
    :class:`~datakit.errors.DatasetIncomplete` for a dataset without _info.json.
    """
    return PairLoader(
        dataset, batch_size, views=views, num_workers=num_workers, seed=seed, **options
    )
