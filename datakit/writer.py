"""The shard writer: a converter's stream of samples -> ``{split}-{index:06d}.tar`` + ``_info.json``.

It alone deals with tar files, shard sizes, worker processes, resume, parts, errors and progress
(converters only list units and turn one unit into samples). Guarantees:

- deterministic bytes: fixed tar headers and member order, units consumed in order whatever
  ``--workers``; the same input and arguments give byte-identical shards and manifest;
- atomic outputs: a shard is written under a temporary name and renamed (or uploaded) when complete;
  ``_info.json`` is written last;
- resumable: after each shard, its key list goes to ``_keys/`` and ``_progress.json`` records the
  shards done and where the stream stood, so ``--resume`` continues from there, refuses a key already
  in a kept shard, and yields the same dataset as an uninterrupted run.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import multiprocessing
import os
import tarfile
import time
from collections import Counter, deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from typing import IO, Any

from datakit import __version__, schema
from datakit.errors import DatakitError, SampleError, SourceError, UsageError, naming_write
from datakit.manifest import (
    INFO_NAME,
    DepthStats,
    ShardEntry,
    build_info,
    dumps,
    errors_name,
    keys_name,
    part_manifest_name,
    shard_name,
)
from datakit.resume import (
    Progress,
    prepare_output,
    progress_name,
    read_kept_keys,
    remove_key_lists,
)
from datakit.storage import Location, redact_args
from datakit.urls import check_writable

ON_ERROR = ("fail", "skip")
MODES = ("new", "resume", "overwrite")
SKIP_LINES_PER_SOURCE = 3  # console lines per source and unit; the error log keeps every one


@dataclass(frozen=True)
class ConvertConfig:
    """Options common to every ``datakit convert`` (SPEC 1)."""

    shard_size: int = 1000
    max_shard_bytes: int = 1 << 30
    workers: int = 1
    rgb_format: str = "jpg"
    jpeg_quality: int = 95
    on_error: str = "fail"
    mode: str = "new"  # new | resume | overwrite
    part: int | None = None
    num_parts: int | None = None
    progress: bool = True
    name: str | None = None

    def __post_init__(self) -> None:
        if self.shard_size < 1:
            raise UsageError("--shard-size must be at least 1")
        if self.max_shard_bytes < 1:
            raise UsageError("--max-shard-bytes must be positive")
        if self.workers < 0:
            raise UsageError("--workers must be 0 or more")
        if self.rgb_format not in schema.RGB_FORMATS:
            raise UsageError(f"--rgb-format must be one of {', '.join(schema.RGB_FORMATS)}")
        if not 1 <= self.jpeg_quality <= 100:
            raise UsageError("--jpeg-quality must be within 1..100")
        if self.on_error not in ON_ERROR:
            raise UsageError(f"--on-error must be one of {', '.join(ON_ERROR)}")
        if self.mode not in MODES:
            raise UsageError(f"mode must be one of {MODES}")
        if (self.part is None) != (self.num_parts is None):
            raise UsageError("--part and --num-parts go together")
        if self.num_parts is not None and not (0 <= (self.part or 0) < self.num_parts):
            raise UsageError(f"--part must be within 0..{self.num_parts - 1}")

    def output_args(self) -> dict[str, Any]:
        """The options that change the output bytes (recorded in ``_info.json``)."""
        return {
            "shard_size": self.shard_size,
            "max_shard_bytes": self.max_shard_bytes,
            "rgb_format": self.rgb_format,
            "jpeg_quality": self.jpeg_quality,
            "on_error": self.on_error,
        }


@dataclass
class ConvertResult:
    location: str
    num_samples: int
    shards: list[ShardEntry]
    skipped: int
    seconds: float
    manifest: str
    kept_shards: int = 0  # a --resume: complete shards of the earlier run, kept as they were
    kept_samples: int = 0
    finished_before: bool = False  # a --resume of a dataset already complete: nothing written


# --- what travels from workers to the writer --------------------------------------------------


@dataclass(frozen=True)
class Encoded:
    key: str
    split: str
    members: dict[str, bytes]
    depth: DepthStats

    @property
    def nbytes(self) -> int:
        """What adding this sample writes to a GNU tar: a header per member (and a long-name
        header with the name, for a name over 100 bytes), data padded to 512."""
        total = 0
        for ext, data in self.members.items():
            name = len(f"{self.key}.{ext}".encode())
            if name > tarfile.LENGTH_NAME:
                total += tarfile.BLOCKSIZE + _blocks(name + 1)
            total += tarfile.BLOCKSIZE + _blocks(len(data))
        return total


def _blocks(n: int) -> int:
    """``n`` bytes rounded up to whole tar blocks."""
    return -(-n // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE


def closed_tar_bytes(n: int) -> int:
    """The size of a tar of ``n`` bytes of headers and data once closed: two zero blocks, then
    padding to a whole record (tarfile's 10 KiB)."""
    return -(-(n + 2 * tarfile.BLOCKSIZE) // tarfile.RECORDSIZE) * tarfile.RECORDSIZE


@dataclass(frozen=True)
class Failure:
    """A unit or sub-unit that could not be converted."""

    source: str
    reason: str
    expected: bool = False  # a normal gap in the data: counted, never fatal

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"source": self.source, "reason": self.reason}
        if self.expected:
            out["expected"] = True
        return out


Item = Encoded | Failure


def _depth_stats(sample: schema.Sample) -> DepthStats:
    if sample.depth is None:
        return DepthStats()
    d = sample.depth
    valid = d[d > 0]
    if valid.size == 0:
        return DepthStats(0, int(d.size), None, None)
    scale = float(sample.meta["depth_scale"])
    return DepthStats(
        int(valid.size), int(d.size), float(valid.min()) * scale, float(valid.max()) * scale
    )


def encode_unit(converter: Any, unit: Any, cfg: ConvertConfig) -> list[Item]:
    """Run one unit through the converter and encode its samples (runs inside a worker)."""
    from converters.base import Skipped

    items: list[Item] = []
    try:
        for s in converter.convert(unit):
            if isinstance(s, Skipped):
                items.append(Failure(s.source, s.reason, s.expected))
                continue
            members = schema.encode(s, rgb_format=cfg.rgb_format, jpeg_quality=cfg.jpeg_quality)
            items.append(Encoded(s.key, s.split, members, _depth_stats(s)))
    except SourceError as exc:
        # A unit that fails as a whole: nothing of it is written (with --on-error skip) or the
        # run stops (fail). Samples already produced from it are dropped so the unit stays atomic.
        # The file it names is the source (the unit id beside it would name the file twice).
        return [Failure(exc.path, exc.reason)]
    except DatakitError as exc:
        return [Failure(unit.id, str(exc))]
    return items


_WORKER: dict[str, Any] = {}


def _init_worker(converter: Any, cfg: ConvertConfig) -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    try:
        import cv2

        cv2.setNumThreads(1)
    except ImportError:  # pragma: no cover
        pass
    _WORKER["converter"] = converter
    _WORKER["cfg"] = cfg


def _work(unit: Any) -> list[Item]:
    return encode_unit(_WORKER["converter"], unit, _WORKER["cfg"])


def iter_unit_results(
    converter: Any, units: Sequence[Any], cfg: ConvertConfig
) -> Iterator[list[Item]]:
    """Encoded items of each unit, in unit order, computed by ``cfg.workers`` processes.

    At most ``2 x workers`` units are in flight, so memory stays bounded by a few units.
    """
    if cfg.workers <= 1:
        for unit in units:
            yield encode_unit(converter, unit, cfg)
        return
    ctx = multiprocessing.get_context("spawn")
    # One thread per worker process: N workers on N cores, not N x (BLAS/OpenMP threads). Spawned
    # children read these before importing numpy; the parent's environment is restored after.
    saved = {k: os.environ.get(k) for k in _THREAD_VARS}
    os.environ.update(dict.fromkeys(_THREAD_VARS, "1"))
    try:
        yield from _pool_results(converter, units, cfg, ctx)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


_THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def _pool_results(
    converter: Any, units: Sequence[Any], cfg: ConvertConfig, ctx: Any
) -> Iterator[list[Item]]:
    with ProcessPoolExecutor(
        cfg.workers, mp_context=ctx, initializer=_init_worker, initargs=(converter, cfg)
    ) as pool:
        pending: deque[Future[list[Item]]] = deque()
        it = iter(units)
        for unit in it:
            pending.append(pool.submit(_work, unit))
            if len(pending) >= 2 * cfg.workers:
                break
        while pending:
            result = pending.popleft().result()
            nxt = next(it, None)
            if nxt is not None:
                pending.append(pool.submit(_work, nxt))
            yield result


# --- tar ---------------------------------------------------------------------------------------


class _HashingFile(io.RawIOBase):
    def __init__(self, f: IO[bytes]) -> None:
        self.f = f
        self.sha = hashlib.sha256()
        self.size = 0

    def writable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.size

    def write(self, b: Any) -> int:
        mv = memoryview(b)
        self.sha.update(mv)
        self.size += mv.nbytes
        return self.f.write(mv)


class ShardFile:
    """One tar being written under a temporary name with fixed headers (mtime 0, uid 0, 0644)."""

    def __init__(self, scratch: str, name: str) -> None:
        self.name = name
        self.shown = os.path.join(scratch, name)  # the name a failed write gives
        self.tmp_path = os.path.join(scratch, f".{name}.tmp")
        self._f = open(self.tmp_path, "wb")  # noqa: SIM115 - closed in finish()/abort()
        self._h = _HashingFile(self._f)
        try:
            self._tar = tarfile.open(  # noqa: SIM115 - closed in finish()
                fileobj=self._h,
                mode="w",
                format=tarfile.GNU_FORMAT,  # type: ignore[call-overload]
            )
        except BaseException:
            self.abort()
            raise
        self.keys: list[str] = []

    @property
    def num_samples(self) -> int:
        return len(self.keys)

    def add(self, item: Encoded) -> None:
        for ext, data in item.members.items():
            ti = tarfile.TarInfo(f"{item.key}.{ext}")
            ti.size = len(data)
            ti.mtime = 0
            ti.mode = 0o644
            ti.uid = ti.gid = 0
            ti.uname = ti.gname = ""
            with naming_write(self.shown):
                self._tar.addfile(ti, io.BytesIO(data))
        self.keys.append(item.key)

    @property
    def bytes_written(self) -> int:
        return self._h.size

    def finish(self) -> tuple[int, str]:
        """Close the tar; return (bytes, sha256). The file stays at ``tmp_path``."""
        with naming_write(self.shown):
            self._tar.close()
            self._f.flush()
            os.fsync(self._f.fileno())
            self._f.close()
        return self._h.size, self._h.sha.hexdigest()

    def abort(self) -> None:
        try:
            with contextlib.suppress(OSError):  # the flush of a file that failed: deleted anyway
                self._f.close()
        finally:
            if os.path.exists(self.tmp_path):
                os.unlink(self.tmp_path)


# --- the conversion driver ---------------------------------------------------------------------


def convert(converter: Any, out: str, cfg: ConvertConfig) -> ConvertResult:
    """Convert every unit of ``converter`` into shards under ``out`` (folder or URL).

    Raises :class:`UsageError` when ``out`` already holds a dataset and neither resume nor
    overwrite was asked, or is a read-only URL, and :class:`DatakitError` for bad input under
    ``--on-error fail``. A local ``out`` this call created is removed again when the run fails
    before writing anything into it.
    """
    check_writable(out, "OUT")
    t0 = time.perf_counter()
    loc = Location(out)
    created = loc.missing_folders()
    try:
        return _convert(converter, loc, cfg, t0)
    except BaseException:
        Location.remove_empty_folders(created)
        raise


def _convert(converter: Any, loc: Location, cfg: ConvertConfig, t0: float) -> ConvertResult:
    source = converter.info()
    args = redact_args({"source": source.source, **converter.config_dict(), **cfg.output_args()})
    if cfg.part is not None:
        args["part"], args["num_parts"] = cfg.part, cfg.num_parts
    final_name = INFO_NAME if cfg.part is None else part_manifest_name(cfg.part)
    prog_name = progress_name(cfg.part)

    progress = prepare_output(loc, cfg, args, final_name, prog_name)
    if progress is None:  # resume of a finished dataset
        return _result_from_manifest(loc, final_name, t0)

    units = converter.units()
    if cfg.part is not None:
        assert cfg.num_parts is not None
        n = len(units)
        units = units[cfg.part * n // cfg.num_parts : (cfg.part + 1) * n // cfg.num_parts]
    _check_grouped(units)

    scratch = loc.scratch_dir()
    start_unit, start_offset = progress.end
    stats = DepthStats()
    for s in progress.shards:
        stats = stats.merge(DepthStats.from_json(s["depth"]))
    pending_errors: list[dict[str, str]] = []
    shard: ShardFile | None = None
    opening = ""  # the shard whose ShardFile is being made
    shard_split = ""
    shard_depth = DepthStats()
    seen_keys = read_kept_keys(loc, progress)  # key -> the shard that holds it

    def close_shard(end: tuple[int, int]) -> None:
        nonlocal shard, shard_depth, stats
        if shard is None:
            return
        nbytes, sha = shard.finish()
        loc.put_file(shard.tmp_path, shard.name)
        # before the progress write that records the shard: progress never names a shard whose
        # key list is missing
        keys = keys_name(shard.name)
        loc.write_bytes(keys, "".join(k + "\n" for k in shard.keys).encode())
        entry = ShardEntry(shard.name, shard_split, shard.num_samples, nbytes, sha)
        progress.shards.append(
            {
                **entry.to_json(),
                "end": list(end),
                "depth": shard_depth.to_json(),
                "errors": list(pending_errors),
                "keys": keys,
            }
        )
        progress.next_index[shard_split] = progress.next_index.get(shard_split, 0) + 1
        pending_errors.clear()
        stats = stats.merge(shard_depth)
        loc.write_bytes(prog_name, dumps(progress.to_json()))
        shard, shard_depth = None, DepthStats()

    bar = _progress_bar(cfg, len(units) - start_unit, converter)
    n_samples = n_resumed = sum(s["num_samples"] for s in progress.shards)
    n_kept_shards = len(progress.shards)
    try:
        results = iter_unit_results(converter, units[start_unit:], cfg)
        for u, items in enumerate(results, start=start_unit):
            shown: Counter[str] = Counter()  # skip lines printed per source in this unit
            for i, item in enumerate(items):
                if u == start_unit and i < start_offset:
                    continue
                if isinstance(item, Failure):
                    if cfg.on_error == "fail" and not item.expected:
                        raise DatakitError(f"{item.source}: {item.reason}")
                    pending_errors.append(item.to_json())
                    shown[item.source] += 1
                    if shown[item.source] <= SKIP_LINES_PER_SOURCE:
                        bar.write(f"skipped {item.source}: {item.reason}")
                    continue
                if item.key in seen_keys:
                    raise SampleError(
                        f"duplicate sample key {item.key!r} (also in {seen_keys[item.key]})"
                    )
                if shard is not None and (
                    item.split != shard_split
                    or shard.num_samples >= cfg.shard_size
                    or closed_tar_bytes(shard.bytes_written + item.nbytes) > cfg.max_shard_bytes
                ):
                    close_shard((u, i))
                if shard is None:
                    shard_split = item.split
                    index = progress.next_index.get(shard_split, 0)
                    opening = shard_name(shard_split, index, cfg.part)
                    shard = ShardFile(scratch, opening)
                shard.add(item)
                seen_keys[item.key] = shard.name
                shard_depth = shard_depth.merge(item.depth)
                n_samples += 1
            for src, n in shown.items():
                if n > SKIP_LINES_PER_SOURCE:
                    bar.write(
                        f"skipped {n - SKIP_LINES_PER_SOURCE} more from {src} "
                        f"(each is listed in {errors_name(cfg.part)})"
                    )
            elapsed = max(time.perf_counter() - t0, 1e-9)
            bar.set_postfix(
                samples=n_samples,
                rate=f"{(n_samples - n_resumed) / elapsed:.1f} samples/s",
                skipped=_count_errors(progress) + len(pending_errors),
                refresh=False,
            )
            bar.update(1)
        close_shard((len(units), 0))
    except BaseException:
        if shard is not None:
            shard.abort()
        elif opening:  # stopped (Ctrl-C, SIGTERM) while its temporary was being made
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(scratch, f".{opening}.tmp"))
        raise
    finally:
        bar.close()
        loc.release_scratch(scratch)

    errors = [e for s in progress.shards for e in s["errors"]] + pending_errors
    entries = [ShardEntry.from_json(s) for s in progress.shards]
    if cfg.part is None and not entries:  # (a part may hold no unit: merge joins it all the same)
        why = (
            f"all {len(errors)} skipped, the first: {errors[0]['source']}: {errors[0]['reason']}"
            if errors
            else "the source yielded none"
        )
        raise DatakitError(f"{loc.display}: no samples converted ({why})")
    errors_log = None
    if errors:
        errors_log = errors_name(cfg.part)
        loc.write_bytes(
            errors_log, b"".join(json.dumps(e, sort_keys=True).encode() + b"\n" for e in errors)
        )
    info = build_info(
        name=cfg.name or source.source,
        source=source.source,
        created_by=f"datakit {__version__}",
        args=args,
        shards=entries,
        depth_unit=source.depth_unit,
        depth_scale=source.depth_scale,
        depth_stats=stats,
        labels=source.labels.to_json() if source.labels is not None else None,
        skipped=len(errors),
        errors_log=errors_log,
        extra={
            **source.extra,
            **({"depth_stats": stats.to_json()} if cfg.part is not None else {}),
        },
    )
    loc.write_bytes(final_name, dumps(info))
    loc.delete(prog_name)
    remove_key_lists(loc, cfg.part)
    return ConvertResult(
        loc.display,
        n_samples,
        entries,
        len(errors),
        time.perf_counter() - t0,
        loc.path(final_name),
        kept_shards=n_kept_shards,
        kept_samples=n_resumed,
    )


def _count_errors(progress: Progress) -> int:
    return sum(len(s["errors"]) for s in progress.shards)


def _check_grouped(units: Sequence[Any]) -> None:
    seen: list[str] = []
    for u in units:
        if not seen or seen[-1] != u.split:
            if u.split in seen:
                raise DatakitError(f"converter bug: units of split {u.split!r} are not contiguous")
            seen.append(u.split)


def _progress_bar(cfg: ConvertConfig, total: int, converter: Any) -> Any:
    from tqdm import tqdm

    return tqdm(
        total=total,
        unit="unit",
        desc=f"convert {converter.name}",
        disable=not cfg.progress,
        dynamic_ncols=True,
        smoothing=0.1,
    )


def _result_from_manifest(loc: Location, final_name: str, t0: float) -> ConvertResult:
    info = json.loads(loc.read_bytes(final_name))
    entries = [ShardEntry.from_json(s) for s in info["shards"]]
    return ConvertResult(
        loc.display,
        sum(e.num_samples for e in entries),
        entries,
        int(info.get("errors", {}).get("skipped", 0)),
        time.perf_counter() - t0,
        loc.path(final_name),
        kept_shards=len(entries),
        kept_samples=sum(e.num_samples for e in entries),
        finished_before=True,
    )
