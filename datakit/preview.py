"""``datakit preview``: a contact sheet (and an HTML page) of a few samples, their two augmented views
and the positive pairs between them, to check a conversion by looking.

Only the shown samples are read: a seeded choice of (shard, offset) from the manifest, then each chosen
shard is streamed only as far as its last chosen sample, so the cost does not grow with the dataset.

Positive pairs come from a :class:`PairRule`. The rule of SPEC 5 lives in ``training.losses``, which
``datakit`` does not import; the CLI (the composition root) passes it in through
:func:`torch_pair_rule`, so the sheet shows exactly the pairs the trainer uses.
"""

from __future__ import annotations

import os
import tarfile
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO, Any, Literal, Protocol, cast

import numpy as np

from datakit import skips
from datakit.errors import DatakitError, SampleError, UsageError, naming_shard
from datakit.manifest import DatasetInfo, read_info
from datakit.outputs import OutputFiles
from datakit.schema import DecodedSample, decode
from datakit.storage import Location
from datakit.urls import check_writable
from datakit.views import PairedViews, View, ViewConfig, cell_centres, make_views, sample_seed


@dataclass(frozen=True)
class PreviewConfig:
    """What the sheet shows.

    n: samples (rows). seed: which samples, their views and which pairs are drawn. split: draw only
    from this split (None = all). panel: panel height in sheet pixels. grid: feature cells per side
    of a view (7 = ResNet C5 at 224). max_pairs: pair lines drawn per sample (about a third of them
    pairs the depth filter removes, where there are such). views: how views are drawn (SPEC 4).
    """

    n: int = 8
    seed: int = 0
    split: str | None = None
    panel: int = 160
    grid: int = 7
    max_pairs: int = 18
    views: ViewConfig = field(default_factory=ViewConfig)

    def __post_init__(self) -> None:
        if self.n < 1:
            raise UsageError(f"--n must be at least 1, got {self.n}")
        if self.panel < 64:
            raise UsageError(f"panel height must be at least 64 pixels, got {self.panel}")
        if self.grid < 1 or self.max_pairs < 0:
            raise UsageError("grid must be >= 1 and max_pairs >= 0")


# ------------------------------------------------------------------------------------ selection


@dataclass(frozen=True)
class SampleRef:
    """Where one chosen sample lives: shard name, its position in the shard, its global index."""

    shard: str
    offset: int
    index: int
    shard_bytes: int | None = None  # the shard's size in the manifest: a cut shard is named as one


def choose_samples(
    info: DatasetInfo, n: int, seed: int, split: str | None = None
) -> list[SampleRef]:
    """A seeded choice of ``n`` distinct samples (all when fewer), in manifest order.

    Uses only the manifest's shard lengths; raises :class:`DatakitError` for an empty dataset/split.
    """
    shards = info.shards_of(split)
    total = sum(s.num_samples for s in shards)
    if total == 0:
        raise DatakitError(
            f"{info.name or 'dataset'}: no samples to preview"
            + (f" in split {split!r}" if split else "")
        )
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(total, size=min(n, total), replace=False))
    starts = np.cumsum([0] + [s.num_samples for s in shards])
    refs = []
    for g in chosen.tolist():
        k = int(np.searchsorted(starts, g, side="right")) - 1
        refs.append(SampleRef(shards[k].name, g - int(starts[k]), g, shards[k].bytes))
    return refs


@dataclass
class ReadStats:
    """What reading the chosen samples cost: shards opened and bytes read from them."""

    shards_opened: list[str] = field(default_factory=list)
    bytes_read: int = 0
    shards_skipped: list[str] = field(default_factory=list)  # unreadable, --on-shard-error skip


class _CountingStream:
    """A read-only stream wrapper that adds what is read to a :class:`ReadStats` (seeks pass
    through, so skipped member data is not counted: it is not read)."""

    def __init__(self, raw: IO[bytes], stats: ReadStats) -> None:
        self._raw, self._stats = raw, stats

    def read(self, size: int = -1) -> bytes:
        data = self._raw.read(size)
        self._stats.bytes_read += len(data)
        return data

    def seekable(self) -> bool:
        return bool(getattr(self._raw, "seekable", lambda: False)())

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._raw.seek(offset, whence)

    def tell(self) -> int:
        return self._raw.tell()


def read_shard_samples(stream: IO[bytes], wanted: set[int], where: str) -> dict[int, DecodedSample]:
    """Decode the samples at positions ``wanted`` of one shard (key = file name up to its first dot,
    WebDataset's grouping), stopping after the last. A seekable stream (a local file) is walked
    header by header, seeking over the members of other samples, so a sample deep in a big shard
    costs a few hundred bytes per sample before it; a forward-only (remote) stream is read up to
    the last wanted sample. Raises :class:`DatakitError` for a broken tar."""
    found: dict[int, DecodedSample] = {}
    last = max(wanted)
    key: str | None = None
    parts: dict[str, bytes] = {}
    offset = -1
    seekable = bool(getattr(stream, "seekable", lambda: False)())
    mode: Literal["r:", "r|"] = "r:" if seekable else "r|"
    try:
        with naming_shard(where), tarfile.open(fileobj=stream, mode=mode) as tar:
            for info in tar:
                k, _, ext = info.name.rsplit("/", 1)[-1].partition(".")
                if k != key:
                    if key is not None and offset in wanted:
                        found[offset] = decode(key, parts, url=where)
                    key, offset, parts = k, offset + 1, {}
                    if offset > last:
                        break
                if offset in wanted and info.isreg():
                    member = tar.extractfile(info)
                    parts[ext] = member.read() if member is not None else b""
            else:
                if key is not None and offset in wanted:
                    found[offset] = decode(key, parts, url=where)
    except tarfile.TarError as exc:
        raise DatakitError(f"{where}: broken tar ({exc})") from None
    return found


def read_samples(
    location: Location, refs: list[SampleRef], stats: ReadStats | None = None
) -> list[DecodedSample]:
    """Decode the samples ``refs`` name, reading each shard only up to its last chosen offset
    (:func:`read_shard_samples`), in the order of ``refs``.

    Raises :class:`DatakitError` when a shard is unreadable (missing, retries exhausted, broken
    tar) or holds fewer samples than its manifest entry says; with ``on_shard_error="skip"`` in
    the location's storage settings such a shard is logged, listed in ``stats.shards_skipped``
    and its samples left out. A bad sample is never skipped: the preview is there to show it.
    """
    stats = stats if stats is not None else ReadStats()
    by_shard: dict[str, set[int]] = {}
    expected = {r.shard: r.shard_bytes for r in refs}
    for r in refs:
        by_shard.setdefault(r.shard, set()).add(r.offset)
    found: dict[tuple[str, int], DecodedSample] = {}
    for shard, wanted in by_shard.items():
        stats.shards_opened.append(shard)
        where = location.path(shard)
        try:
            with location.open(shard) as raw:
                size = _stream_size(raw)
                if None not in (size, expected[shard]) and size != expected[shard]:
                    raise DatakitError(
                        f"{where}: size {size} bytes, manifest says {expected[shard]} "
                        f"(cut short or replaced; datakit verify checks every shard)"
                    )
                stream = cast(IO[bytes], _CountingStream(raw, stats))
                got = read_shard_samples(stream, wanted, where)
            if missing := wanted - set(got):
                raise DatakitError(
                    f"{where}: holds fewer samples than _info.json says "
                    f"(no sample at offset {min(missing)})"
                )
        except (DatakitError, OSError, EOFError) as exc:
            if isinstance(exc, SampleError | UsageError):
                raise
            err = exc if isinstance(exc, DatakitError) else DatakitError(f"{where}: {_why(exc)}")
            if location.config.on_shard_error != "skip":
                raise err from None
            skips.skip_shard(err)
            stats.shards_skipped.append(shard)
            continue
        found.update({(shard, o): s for o, s in got.items()})
    return [found[k] for r in refs if (k := (r.shard, r.offset)) in found]


def _why(exc: OSError | EOFError) -> str:
    """What went wrong reading a shard, without the path the caller names already."""
    if isinstance(exc, OSError) and exc.strerror:
        return f"unreadable shard ({exc.strerror.lower()})"
    return f"unreadable shard ({exc or type(exc).__name__})"


def _stream_size(raw: Any) -> int | None:
    """The size of an opened shard: a local file's from the file system, a remote stream's from
    its first response; None where neither is known."""
    size = getattr(raw, "size", None)
    if isinstance(size, int):
        return size
    try:
        return os.fstat(raw.fileno()).st_size
    except (AttributeError, OSError, ValueError):
        return None


# ---------------------------------------------------------------------------------------- pairs


class PairRule(Protocol):
    """Positive pairs between the ``grid x grid`` cells of two views.

    Returns ``(spatial, kept)``, two (N, N) bool arrays with N = grid * grid (row-major cells, view 1
    along the first axis): the spatial positives and those that also pass the depth filter.
    """

    def __call__(
        self, view1: View, view2: View, *, grid: int, periodic: bool, period: float
    ) -> tuple[np.ndarray, np.ndarray]: ...


def torch_pair_rule(
    positive_pairs: Callable[..., Any], depth_rule: Any = None, *, radius: float | None = None
) -> PairRule:
    """Wrap ``training.losses.positive_pairs`` (torch, batched) as a :class:`PairRule` for one sample.

    ``depth_rule`` (``training.losses.DepthRule``) switches the depth filter on when both views have
    depth; None shows spatial pairs only. ``radius`` None keeps the loss's own default (0.7).
    """

    def rule(
        view1: View, view2: View, *, grid: int, periodic: bool, period: float
    ) -> tuple[np.ndarray, np.ndarray]:
        import torch

        size = view1.rgb.shape[0]
        with_depth = depth_rule is not None and view1.depth is not None and view2.depth is not None
        spatial, kept = positive_pairs(
            torch.as_tensor(view1.coords, dtype=torch.float32)[None],
            torch.as_tensor(view2.coords, dtype=torch.float32)[None],
            (grid, grid),
            (grid, grid),
            size,
            **({} if radius is None else {"radius": radius}),
            periodic=torch.tensor([periodic]),
            period=period,
            depth_q=torch.as_tensor(view1.depth)[None, None] if with_depth else None,
            depth_k=torch.as_tensor(view2.depth)[None, None] if with_depth else None,
            depth_rule=depth_rule if with_depth else None,
        )
        return spatial[0].cpu().numpy().astype(bool), kept[0].cpu().numpy().astype(bool)

    return rule


@dataclass(frozen=True)
class Pairs:
    """The positive pairs of one sample and the few drawn.

    cells1, cells2: (N, 2) normalised source (u, v) of the cell centres of each view (u unwrapped for
    periodic samples). spatial, kept: (N, N) bool. shown: (k, 2) int (i, j) cell pairs drawn;
    shown_kept: (k,) bool, False where the depth filter removed the pair.
    """

    grid: int
    cells1: np.ndarray
    cells2: np.ndarray
    spatial: np.ndarray
    kept: np.ndarray
    shown: np.ndarray
    shown_kept: np.ndarray

    @property
    def removed(self) -> np.ndarray:
        return self.spatial & ~self.kept


def compute_pairs(
    views: PairedViews,
    rule: PairRule,
    *,
    grid: int,
    max_pairs: int,
    width: int,
    rng: np.random.Generator,
) -> Pairs:
    """Apply ``rule`` to both views and pick up to ``max_pairs`` pairs to draw (a third removed ones)."""
    size = views.view1.rgb.shape[0]
    period = width / max(width - 1, 1)
    spatial, kept = rule(
        views.view1, views.view2, grid=grid, periodic=views.periodic, period=period
    )
    cells = cell_centres(np.stack([views.view1.coords, views.view2.coords]), grid, grid, size)
    cells = cells.reshape(2, grid * grid, 2).numpy()
    kept_idx = np.argwhere(kept)
    removed_idx = np.argwhere(spatial & ~kept)
    n_removed = min(len(removed_idx), max_pairs // 3)
    n_kept = min(len(kept_idx), max_pairs - n_removed)
    pick_k = kept_idx[rng.choice(len(kept_idx), n_kept, replace=False)] if n_kept else kept_idx[:0]
    pick_r = (
        removed_idx[rng.choice(len(removed_idx), n_removed, replace=False)]
        if n_removed
        else removed_idx[:0]
    )
    shown = np.concatenate([pick_k, pick_r]).reshape(-1, 2).astype(np.int64)
    shown_kept = np.concatenate([np.ones(len(pick_k), bool), np.zeros(len(pick_r), bool)])
    return Pairs(grid, cells[0], cells[1], spatial, kept, shown, shown_kept)


# ----------------------------------------------------------------------------------------- rows


@dataclass
class PreviewRow:
    """One sample of the sheet: where it came from, the sample, its two views and their pairs."""

    ref: SampleRef
    sample: DecodedSample
    views: PairedViews
    pairs: Pairs | None


def build_rows(
    samples: list[DecodedSample],
    refs: list[SampleRef],
    config: PreviewConfig,
    pair_rule: PairRule | None,
) -> list[PreviewRow]:
    """Draw the views of each sample (seeded by config.seed and the key, as the loader does at
    epoch 0) and their pairs."""
    rows = []
    for ref, sample in zip(refs, samples):
        rng = sample_seed(config.seed, 0, sample.key)
        views = make_views(sample, config.views, rng)
        pairs = None
        if pair_rule is not None:
            pairs = compute_pairs(
                views,
                pair_rule,
                grid=config.grid,
                max_pairs=config.max_pairs,
                width=sample.rgb.shape[1],
                rng=rng,
            )
        rows.append(PreviewRow(ref, sample, views, pairs))
    return rows


# ---------------------------------------------------------------------------------------- entry


@dataclass
class PreviewResult:
    """A rendered preview: the sheet (image + layout), its rows, the manifest and the read cost."""

    sheet: Any  # datakit.preview_sheet.Sheet
    rows: list[PreviewRow]
    info: DatasetInfo
    location: Location
    stats: ReadStats


def preview(
    dataset: str | Location,
    out: str | None = None,
    *,
    html: str | None = None,
    config: PreviewConfig | None = None,
    pair_rule: PairRule | None = None,
) -> PreviewResult:
    """Render the contact sheet of ``dataset`` (folder or URL) to ``out`` (PNG) and optionally the
    self-contained HTML page to ``html``. Reads only the chosen samples (see module docstring).

    Both outputs appear together or not at all: each is opened under a temporary name beside it
    before any sample is read, and renamed only when both are written.

    Raises :class:`DatakitError` for an incomplete/empty dataset, a short shard or an output that
    cannot be written; :class:`UsageError` for an output given as a URL.
    """
    from datakit.preview_sheet import render_sheet

    config = config or PreviewConfig()
    if out is not None:
        check_writable(out, "-o/--out", local_only=True)
    if html is not None:
        check_writable(html, "--html", local_only=True)
    location = dataset if isinstance(dataset, Location) else Location(dataset)
    with OutputFiles([p for p in (out, html) if p is not None]) as outputs:
        info = read_info(location)
        refs = choose_samples(info, config.n, config.seed, config.split)
        stats = ReadStats()
        samples = read_samples(location, refs, stats)
        refs = [r for r in refs if r.shard not in stats.shards_skipped]
        if not refs:
            raise DatakitError(
                f"{location.display}: no chosen sample could be read "
                f"({len(stats.shards_skipped)} shards skipped)"
            )
        rows = build_rows(samples, refs, config, pair_rule)
        title = (
            f"datakit preview  {info.name or location.display}  source {info.source or '?'}  "
            f"{len(rows)} of {info.num_samples(config.split)} samples  seed {config.seed}"
        )
        sheet = render_sheet(rows, info, config, title=title)
        if out is not None:
            outputs.write(out, sheet.png_bytes())
        if html is not None:
            from datakit.preview_html import page_html

            outputs.write(
                html, page_html(sheet, rows, title=title, source=location.display).encode()
            )
    return PreviewResult(sheet, rows, info, location, stats)
