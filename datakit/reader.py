"""Reading datasets: :func:`open_dataset` and the one WebDataset pipeline builder every consumer uses.

Only the members declared in :mod:`datakit.schema` are decoded, by our own codecs (16-bit depth stays
bit-exact); anything else in a shard is dropped, never unpickled.
"""

from __future__ import annotations

import tarfile
from collections.abc import Callable, Iterable, Iterator
from typing import IO, Any

from datakit import schema
from datakit.errors import DatakitError, naming_shard
from datakit.manifest import DatasetInfo, read_info
from datakit.schema import DecodedSample
from datakit.storage import Location, StorageConfig
from datakit.streaming import ShardSamples, open_tar_stream

Handler = Callable[[Exception], bool]


class Dataset:
    """A converted dataset: its manifest (``info``) and its samples.

    Iterating yields :class:`~datakit.schema.DecodedSample` in manifest order (``rgb`` HxWx3 uint8,
    ``depth`` HxW float32 physical units with 0 = invalid, ``label``, ``meta``).
    """

    def __init__(self, location: Location, info: DatasetInfo) -> None:
        self.location = location
        self.info = info
        self.storage = location.config

    @property
    def url(self) -> str:
        return self.location.url

    def shard_urls(self, split: str | None = None) -> list[str]:
        return [self.location.path(s.name) for s in self.info.shards_of(split)]

    def __len__(self) -> int:
        return self.info.num_samples()

    def __iter__(self) -> Iterator[DecodedSample]:
        return self.samples()

    def samples(self, split: str | None = None) -> Iterator[DecodedSample]:
        """Decoded samples of ``split`` (all splits when None), in manifest order."""
        return iter(pipeline(self.shard_urls(split), storage=self.storage))

    def take(
        self, n: int, split: str | None = None, *, handler: Handler | None = None
    ) -> list[DecodedSample]:
        """The first ``n`` samples, reading only the shards needed for them (``handler``: as
        :func:`pipeline`'s, e.g. to pass over bad samples)."""
        out: list[DecodedSample] = []
        for url in self.shard_urls(split):
            for s in pipeline([url], storage=self.storage, handler=handler):
                out.append(s)
                if len(out) >= n:
                    return out
        return out


def open_dataset(
    path_or_url: str, *, storage: StorageConfig | None = None, **storage_options: Any
) -> Dataset:
    """Open a dataset folder or URL. Raises :class:`~datakit.errors.DatasetIncomplete` without
    ``_info.json``. ``storage``: timeouts, retries, cache (default: from ``DATAKIT_*`` variables)."""
    location = Location(path_or_url, config=storage, **storage_options)
    return Dataset(location, read_info(location))


def decode_wds_sample(sample: dict[str, Any]) -> DecodedSample:
    """A WebDataset sample dict (``__key__``, ``__url__``, extension -> bytes) -> DecodedSample."""
    key = sample["__key__"]
    members = {k: v for k, v in sample.items() if not k.startswith("__")}
    url = str(sample.get("__url__", ""))
    with naming_shard(url):
        return schema.decode(key, members, url=url)


def pipeline(
    urls: Iterable[str],
    *,
    shuffle_shards: bool = False,
    shuffle_buffer: int = 0,
    split_by_node: bool = False,
    split_by_worker: bool = False,
    resampled: bool = False,
    seed: int = 0,
    handler: Handler | None = None,
    decode: bool = True,
    storage: StorageConfig | None = None,
) -> Any:
    """The WebDataset pipeline every consumer uses: shard list -> (shuffle) -> node/worker split ->
    tar samples -> (shuffle buffer) -> our decoder.

    ``split_by_node`` uses torch.distributed's rank when it is initialised (DDP-safe).
    ``handler`` decides what a read/decode error does (default: raise). Shards are streamed by
    :class:`datakit.streaming.ShardSamples` under ``storage`` (retries, read-ahead, cache,
    ``on_shard_error``; default: from ``DATAKIT_*`` variables).
    """
    import webdataset as wds

    urls = list(urls)
    if resampled:
        stages: list[Any] = [wds.ResampledShards(urls, seed=seed, deterministic=True)]
    else:
        stages = [wds.SimpleShardList(urls)]
        if shuffle_shards:
            stages.append(wds.detshuffle(bufsize=len(urls) or 1, initial=len(urls) or 1, seed=seed))
    if split_by_node:
        stages.append(wds.split_by_node)
    if split_by_worker:
        stages.append(wds.split_by_worker)
    stages.append(ShardSamples(storage, handler))
    if shuffle_buffer > 0:
        stages.append(wds.shuffle(shuffle_buffer, initial=min(shuffle_buffer, 100), rng=_rng(seed)))
    if decode:
        stages.append(wds.map(decode_wds_sample, handler=handler or wds.reraise_exception))
    return wds.DataPipeline(*stages)


def _rng(seed: int) -> Any:
    import random

    return random.Random(seed)


def iter_tar_members(stream: IO[bytes], where: str) -> Iterator[tuple[str, dict[str, bytes]]]:
    """Group a shard's members by key (the name up to the first dot): (key, {extension: bytes}).

    Strict, for ``verify``: raises :class:`DatakitError` naming ``where`` on a broken or truncated
    tar, a member that is not a regular file, a key split across non-adjacent runs.
    """
    seen: set[str] = set()
    key: str | None = None
    members: dict[str, bytes] = {}
    try:
        with open_tar_stream(stream, "r|") as tar:
            for info in tar:
                if not info.isfile():
                    raise DatakitError(f"{where}: member {info.name!r} is not a regular file")
                base = info.name.rsplit("/", 1)[-1]
                if "." not in base:
                    raise DatakitError(f"{where}: member {info.name!r} has no extension")
                k, ext = base.split(".", 1)
                f = tar.extractfile(info)
                data = f.read() if f is not None else b""
                if k != key:
                    if key is not None:
                        yield key, members
                    if k in seen:
                        raise DatakitError(f"{where}: members of key {k!r} are not contiguous")
                    seen.add(k)
                    key, members = k, {}
                if ext in members:
                    raise DatakitError(f"{where}: duplicate member {info.name!r}")
                members[ext] = data
            tar.check_ended()
    except tarfile.TarError as exc:
        raise DatakitError(f"{where}: broken tar ({exc})") from None
    if key is not None:
        yield key, members
