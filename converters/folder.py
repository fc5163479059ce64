"""A user's own RGB-D folder: images paired with depth maps (and optional labels) by file stem.

Each of ``--rgb``, ``--depth`` and ``--label`` is a glob pattern relative to SRC (``*``, ``?``, ``[...]``
within one path component, ``**`` for any number of folders). A file's pairing key is what the
wildcards matched, joined by ``/``, with the file's extension dropped: ``rgb/**/*.jpg`` keys
``rgb/seq1/0001.jpg`` as ``seq1/0001``, and so does ``depth/**/*.png`` for ``depth/seq1/0001.png``.

Depth files: 8- or 16-bit single-channel PNG, 32-bit float (or 16-bit) TIFF, PFM, ``.npy``. A file value
times ``--depth-scale`` is depth in the ``--depth-kind``'s unit (metric: m, inverse: 1/m, relative:
unitless); it is stored as 16-bit codes of ``--code-scale`` units each (see docs/converters/folder.md).
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass

import click
import cv2
import numpy as np

from converters.base import SIZE, Converter, LabelSet, Skipped, SourceInfo, WorkUnit, make_meta
from converters.imaging import read_image, resize_nearest, resize_rgb
from datakit import png
from datakit.errors import SourceError, UsageError
from datakit.schema import Sample, labels_outside

MAX_CODE = 65535
PAIRS_PER_UNIT = 64
MAX_LISTED = 20  # unpaired files named in one message before "... and N more"

# depth kind -> (depth_unit written to the manifest and samples, default physical value per code)
DEPTH_KINDS: dict[str, tuple[str, float | None]] = {
    "metric": ("m", 0.001),  # millimetre codes, as ScanNet and NYU
    "inverse": ("1/m", 0.0001),  # 1e-4 /m codes: 0.15 m .. 10 km
    "relative": ("relative", None),  # no natural unit: the file's own step (--depth-scale)
}
RGB_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
DEPTH_EXTENSIONS = (".png", ".tif", ".tiff", ".pfm", ".npy")
LABEL_EXTENSIONS = (".png", ".tif", ".tiff", ".npy")


@dataclass(frozen=True)
class FolderConfig:
    src: str
    rgb: str
    depth: str
    depth_scale: float
    depth_kind: str
    label: str | None = None
    code_scale: float | None = None
    size: tuple[int, int] | None = None
    split: str = "train"
    classes: str | None = None
    ignore_index: int = 255

    def __post_init__(self) -> None:
        if self.depth_kind not in DEPTH_KINDS:
            raise UsageError(f"--depth-kind must be one of {', '.join(DEPTH_KINDS)}")
        for name in ("depth_scale", "code_scale"):
            v = getattr(self, name)
            if v is not None and not (math.isfinite(v) and v > 0):
                raise UsageError(f"--{name.replace('_', '-')} must be a positive number")
        if not re.fullmatch(r"[A-Za-z0-9_]+", self.split):
            raise UsageError(f"--split {self.split!r}: letters, digits and _ only")
        if not 0 <= self.ignore_index <= MAX_CODE:
            raise UsageError(
                f"--ignore-index {self.ignore_index}: must be within 0..{MAX_CODE} "
                "(label PNGs hold 16-bit values)"
            )

    @property
    def store_scale(self) -> float:
        """Physical value of one stored code."""
        if self.code_scale is not None:
            return self.code_scale
        default = DEPTH_KINDS[self.depth_kind][1]
        return self.depth_scale if default is None else default


@dataclass(frozen=True)
class Pair:
    key: str  # the pairing key, e.g. "seq1/0001"
    rgb: str  # paths relative to SRC
    depth: str
    label: str | None = None


class FolderConverter(Converter):
    name = "folder"
    Config = FolderConfig
    help = "Your own RGB-D files: images paired with depth maps (and labels) by file stem."
    params = (
        click.Argument(["src"], type=click.Path(file_okay=False)),
        click.Option(["--rgb"], required=True, help="Glob of the images under SRC, e.g. 'rgb/**/*.jpg'."),
        click.Option(["--depth"], required=True, help="Glob of the depth maps, e.g. 'depth/**/*.png'."),
        click.Option(["--label"], default=None, help="Glob of single-channel label images (optional)."),
        click.Option(["--depth-scale"], type=float, required=True,
                     help="File value x S = depth in the kind's unit (e.g. 0.001 for 16-bit mm PNG)."),
        click.Option(["--depth-kind"], type=click.Choice(tuple(DEPTH_KINDS)), required=True,
                     help="metric (m), inverse (1/m, larger = nearer) or relative (unitless)."),
        click.Option(["--code-scale"], type=float, default=None,
                     help="Physical value per stored 16-bit code. Default: 0.001 m (metric), "
                     "0.0001 1/m (inverse), --depth-scale (relative)."),
        click.Option(["--size"], type=SIZE, default=None, help="Resize to WxH (default: keep)."),
        click.Option(["--split"], default="train", show_default=True, help="Split name of every sample."),
        click.Option(["--classes"], type=click.Path(dir_okay=False), default=None,
                     help="Text file, one class name per line (label value = line number - 1)."),
        click.Option(["--ignore-index"], type=int, default=255, show_default=True),
    )  # fmt: skip

    config: FolderConfig

    def __init__(self, config: FolderConfig) -> None:
        super().__init__(config)
        # Read once here (not per frame, and before any unit runs): each label file is checked
        # against it.
        self.classes = _read_classes(config.classes) if config.label is not None else ()

    def info(self) -> SourceInfo:
        cfg = self.config
        labels = None
        if cfg.label is not None:
            labels = LabelSet("folder", self.classes, cfg.ignore_index)
        return SourceInfo(
            source=self.name,
            depth_unit=DEPTH_KINDS[cfg.depth_kind][0],
            depth_scale=cfg.store_scale,
            labels=labels,
            extra={"depth_kind": cfg.depth_kind},
        )

    def units(self) -> list[WorkUnit]:
        pairs, unpaired = find_pairs(self.config)
        units = []
        for start in range(0, max(len(pairs), 1), PAIRS_PER_UNIT):
            chunk = tuple(pairs[start : start + PAIRS_PER_UNIT])
            # Unpaired files travel with the first unit: one failure under --on-error fail that
            # lists them all, or one logged entry per file under skip.
            extra = tuple(unpaired) if start == 0 else ()
            units.append(
                WorkUnit(f"{self.config.split}/{start:06d}", self.config.split, (chunk, extra))
            )
        return units

    def convert(self, unit: WorkUnit) -> Iterator[Sample | Skipped]:
        pairs, unpaired = unit.payload
        if unpaired:
            summary = _unpaired_message(unpaired, self.config.src)
            for i, (path, reason) in enumerate(unpaired):
                yield Skipped(path, summary if i == 0 else reason)
        for pair in pairs:
            try:
                yield self._sample(pair)
            except SourceError as exc:
                yield Skipped(exc.path, exc.reason)

    def _sample(self, pair: Pair) -> Sample:
        cfg = self.config
        rgb_path = os.path.join(cfg.src, pair.rgb)
        depth_path = os.path.join(cfg.src, pair.depth)
        # stored pixel order, as the depth map's: no EXIF rotation (a rotated photo would not
        # line up with its depth)
        bgr = read_image(rgb_path, cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
        rgb = np.ascontiguousarray(bgr[..., ::-1])
        h, w = rgb.shape[:2]
        values = read_array(depth_path)
        _same_size(values, depth_path, rgb_path, (h, w))
        depth = values_to_codes(values, cfg, depth_path)
        label = None
        if pair.label is not None:
            label_path = os.path.join(cfg.src, pair.label)
            label = read_array(label_path)
            _same_size(label, label_path, rgb_path, (h, w))
            if label.dtype not in (np.uint8, np.uint16):
                raise SourceError(
                    label_path, f"labels must be 8- or 16-bit integers, got {label.dtype}"
                )
            _check_label_values(label, label_path, len(self.classes), cfg.ignore_index)
        if cfg.size is not None and cfg.size != (w, h):
            rgb = resize_rgb(rgb, cfg.size)
            depth = resize_nearest(depth, cfg.size)
            label = None if label is None else resize_nearest(label, cfg.size)
            w, h = cfg.size
        meta = make_meta(
            source=self.name,
            id=pair.key,
            split=cfg.split,
            width=w,
            height=h,
            depth_scale=cfg.store_scale,
            depth_unit=DEPTH_KINDS[cfg.depth_kind][0],
            depth_kind=cfg.depth_kind,
            files={
                "rgb": pair.rgb,
                "depth": pair.depth,
                **({"label": pair.label} if pair.label else {}),
            },
        )
        return Sample(
            key=sample_key(pair.key), split=cfg.split, rgb=rgb, meta=meta, depth=depth, label=label
        )


# --- pairing -----------------------------------------------------------------------------------


def compile_pattern(pattern: str) -> re.Pattern[str]:
    """Glob -> regex over POSIX paths relative to SRC; wildcards are groups named ``c{component}_{k}``."""
    parts = pattern.strip("/").split("/")
    out = []
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if part == "**":
            out.append(f"(?P<c{i}_0>.*)" if last else f"(?:(?P<c{i}_0>.+)/)?")
            continue
        rx = ""
        j = k = 0
        while j < len(part):
            c = part[j]
            group = f"(?P<c{i}_{k}>"
            if c == "*":
                rx += group + "[^/]*)"
            elif c == "?":
                rx += group + "[^/])"
            elif c == "[" and (end := part.find("]", j + 2)) != -1:
                body = part[j + 1 : end]
                negate = body.startswith("!")
                body = (body[1:] if negate else body).replace("\\", "\\\\")
                rx += group + "[" + ("^" if negate else "") + body + "])"
                j = end
            else:
                rx += re.escape(c)
                k -= 1
            k += 1
            j += 1
        out.append(rx + ("" if last else "/"))
    return re.compile("".join(out))


def match_key(rx: re.Pattern[str], rel: str) -> str | None:
    """The pairing key of ``rel`` under ``rx``, or None when it does not match.

    What the wildcards of one path component matched is concatenated; components are joined by
    '/'. A file extension matched by a wildcard ('rgb/*' on '0001.jpg') is dropped.
    """
    m = rx.fullmatch(rel)
    if m is None:
        return None
    # Only what the wildcards matched before the extension counts ('*.*' on '0001.jpg' keys '0001').
    stem_end = len(rel) - len(os.path.splitext(rel)[1])
    components: dict[int, str] = {}
    for name in sorted(m.groupdict(), key=lambda n: tuple(int(x) for x in n[1:].split("_"))):
        comp = int(name[1:].split("_")[0])
        start, end = m.span(name)
        part = rel[start : min(end, stem_end)] if start != -1 else ""
        components[comp] = components.get(comp, "") + part
    key = "/".join(v for _, v in sorted(components.items()) if v)
    return key or os.path.splitext(os.path.basename(rel))[0]


def _walk(src: str) -> list[str]:
    rels = []
    # Linked folders are followed, as glob does (a SRC assembled from links to the data), except
    # a link back to a folder above it (a cycle): each folder knows the real paths above it.
    above = {src: frozenset({os.path.realpath(src)})}
    for root, dirs, files in os.walk(src, followlinks=True):
        mine = above.pop(root)
        kept = []
        for d in sorted(dirs):
            real = os.path.realpath(os.path.join(root, d))
            if real not in mine:
                kept.append(d)
                above[os.path.join(root, d)] = mine | {real}
        dirs[:] = [d for d in kept if not d.startswith(".")]  # hidden: skipped, as glob's * does
        rel_root = os.path.relpath(root, src)
        for name in sorted(f for f in files if not f.startswith(".")):  # e.g. macOS ._0001.jpg
            rel = name if rel_root == "." else f"{rel_root}/{name}"
            rels.append(rel.replace(os.sep, "/"))
    return rels


def _collect(
    rels: list[str], pattern: str, extensions: tuple[str, ...], role: str, src: str
) -> dict[str, str]:
    rx = compile_pattern(pattern)
    found: dict[str, str] = {}
    for rel in rels:
        if os.path.splitext(rel)[1].lower() not in extensions:
            continue
        key = match_key(rx, rel)
        if key is None:
            continue
        if key in found:
            raise SourceError(
                os.path.join(src, rel),
                f"{role} key {key!r} also matches {found[key]}; make --{role} select one of them",
            )
        found[key] = rel
    return found


def find_pairs(cfg: FolderConfig) -> tuple[list[Pair], list[tuple[str, str]]]:
    """Pairs sorted by key, and (path, reason) for every file without its partner(s)."""
    if not os.path.isdir(cfg.src):
        raise SourceError(cfg.src, "not a folder")
    rels = _walk(cfg.src)
    rgb = _collect(rels, cfg.rgb, RGB_EXTENSIONS, "rgb", cfg.src)
    depth = _collect(rels, cfg.depth, DEPTH_EXTENSIONS, "depth", cfg.src)
    label = _collect(rels, cfg.label, LABEL_EXTENSIONS, "label", cfg.src) if cfg.label else None
    roles = {"rgb": rgb, "depth": depth, **({"label": label} if label is not None else {})}
    for role, files in roles.items():
        if not files:
            pattern = getattr(cfg, role)
            raise SourceError(cfg.src, f"no files match --{role} {pattern!r}")
    overlap = set(rgb.values()) & set(depth.values())
    if overlap:
        raise SourceError(os.path.join(cfg.src, min(overlap)), "matches both --rgb and --depth")
    keys = sorted(set().union(*roles.values()))
    pairs: list[Pair] = []
    unpaired: list[tuple[str, str]] = []
    sample_keys: dict[str, str] = {}
    for key in keys:
        missing = [r for r, files in roles.items() if key not in files]
        if missing:
            reason = f"no {' or '.join(missing)} file with key {key!r}"
            for files in roles.values():
                if key in files:
                    unpaired.append((os.path.join(cfg.src, files[key]), reason))
            continue
        sk = sample_key(key)
        if sk in sample_keys:
            raise SourceError(
                os.path.join(cfg.src, rgb[key]),
                f"key {key!r} and {sample_keys[sk]!r} both become sample key {sk!r}",
            )
        sample_keys[sk] = key
        pairs.append(Pair(key, rgb[key], depth[key], label[key] if label is not None else None))
    return pairs, unpaired


def sample_key(key: str) -> str:
    """A pairing key as a WebDataset key: anything outside [A-Za-z0-9_-] becomes '_'."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", key)


def _unpaired_message(unpaired: tuple[tuple[str, str], ...], src: str) -> str:
    listed = "; ".join(f"{os.path.relpath(p, src)} ({r})" for p, r in unpaired[:MAX_LISTED])
    more = f"; ... and {len(unpaired) - MAX_LISTED} more" if len(unpaired) > MAX_LISTED else ""
    return f"{len(unpaired)} unpaired file(s) under {src}: {listed}{more}"


# --- reading and storing depth -----------------------------------------------------------------


def _is_palette_png(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            head = png.header(f.read(33))
    except OSError:
        return False  # the reader below names the file
    return head is not None and head[3] == 3


def read_array(path: str) -> np.ndarray:
    """A single-channel depth/label file as a 2-D array of its own dtype; SourceError otherwise."""
    ext = os.path.splitext(path)[1].lower()
    if ext == ".npy":
        try:
            arr = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise SourceError(path, f"not a readable .npy: {exc}") from None
    elif _is_palette_png(path):  # indexed colour (Pascal VOC labels): the indices are the values
        from PIL import Image

        try:
            with Image.open(path) as img:
                arr = np.asarray(img)
        except OSError as exc:
            raise SourceError(path, f"not a readable PNG: {exc}") from None
    else:
        arr = read_image(path, cv2.IMREAD_UNCHANGED)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    if arr.ndim != 2:
        raise SourceError(path, f"must be single-channel, got shape {arr.shape}")
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise SourceError(path, f"unsupported dtype {arr.dtype}")
    return arr


def values_to_codes(values: np.ndarray, cfg: FolderConfig, path: str) -> np.ndarray:
    """File values -> uint16 codes of ``cfg.store_scale`` each (0 = invalid).

    Integer files whose step equals the code step are stored unchanged (lossless). Otherwise
    code = round(value * depth_scale / store_scale); non-finite and non-positive values are invalid,
    positive values under half a code are kept as code 1, and values past code 65535 are invalid.
    """
    integer = np.issubdtype(values.dtype, np.integer)
    if integer and cfg.store_scale == cfg.depth_scale:
        if values.min(initial=0) < 0 or values.max(initial=0) > MAX_CODE:
            wide = values.astype(np.int64)
            return np.where((wide > 0) & (wide <= MAX_CODE), wide, 0).astype(np.uint16)
        return values.astype(np.uint16)
    if not integer and cfg.code_scale is None and DEPTH_KINDS[cfg.depth_kind][1] is None:
        raise SourceError(
            path,
            f"holds {values.dtype} {cfg.depth_kind} depth: pass --code-scale (value per stored code)",
        )
    v = values.astype(np.float64) * (cfg.depth_scale / cfg.store_scale)
    valid = np.isfinite(v) & (v > 0)
    codes = np.rint(np.where(valid, v, 0.0))
    valid &= codes <= MAX_CODE
    return np.where(valid, np.maximum(codes, 1), 0).astype(np.uint16)


def _same_size(arr: np.ndarray, path: str, rgb_path: str, hw: tuple[int, int]) -> None:
    if arr.shape[:2] != hw:
        raise SourceError(
            path, f"is {arr.shape[1]}x{arr.shape[0]} but its image {rgb_path} is {hw[1]}x{hw[0]}"
        )


def _check_label_values(label: np.ndarray, path: str, num_classes: int, ignore: int) -> None:
    """Every value a class id (0..num_classes-1) or ``ignore``; no range without --classes."""
    bad = labels_outside(label, num_classes, ignore)
    if bad:
        listed = ", ".join(str(v) for v in bad[:5]) + (", ..." if len(bad) > 5 else "")
        raise SourceError(
            path,
            f"label value(s) {listed} outside the {num_classes} classes of --classes "
            f"(0..{num_classes - 1}) and not --ignore-index {ignore}",
        )


def _read_classes(path: str | None) -> tuple[str, ...]:
    if path is None:
        return ()
    try:
        with open(path, encoding="utf-8") as fh:
            return tuple(line.strip() for line in fh if line.strip())
    except OSError as exc:
        raise SourceError(path, f"cannot read class names ({exc.strerror or exc})") from None
