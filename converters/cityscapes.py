"""Cityscapes: left 8-bit images, depth from the stereo disparity maps, gtFine labels -> 19 train ids.

Layout (SPEC 3)::

    SRC/leftImg8bit/{split}/{city}/{city}_{seq}_{frame}_leftImg8bit.png
    SRC/disparity/{split}/{city}/{city}_{seq}_{frame}_disparity.png   16-bit; p > 1: d = (p - 1) / 256 px
    SRC/camera/{split}/{city}/{city}_{seq}_{frame}_camera.json        extrinsic.baseline, intrinsic.fx ...
    SRC/gtFine/{split}/{city}/{city}_{seq}_{frame}_gtFine_labelIds.png

Depth z = baseline * fx / d (metres) is stored as 16-bit codes with ``depth_scale = max_depth / 65535``:
the finest linear step that still reaches ``--max-depth``; the worst-case quantisation error is half a
step (3.05 mm at the default 400 m). docs/converters/cityscapes.md weighs this against the disparity's
own 1/256 px step.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import click
import cv2
import numpy as np

from converters.base import SIZE, Converter, LabelSet, Skipped, SourceInfo, WorkUnit, make_meta
from converters.imaging import read_image, resize_nearest, resize_rgb, scale_intrinsics
from datakit.errors import SourceError, UsageError
from datakit.schema import Sample

SPLITS = ("train", "val", "test", "train_extra")
DEFAULT_SPLITS = ("train", "val", "test")  # train_extra (20k frames, no gtFine) only on request
# Splits whose gtFine files hold real annotation; the test split's are placeholders.
LABELLED_SPLITS = ("train", "val")
FRAMES_PER_UNIT = 32
MAX_CODE = 65535
DISPARITY_SUBPIXELS = 256.0  # d = (p - 1) / 256 px

IMAGE_SUFFIX = "_leftImg8bit.png"
DISPARITY_SUFFIX = "_disparity.png"
CAMERA_SUFFIX = "_camera.json"
LABEL_SUFFIX = "_gtFine_labelIds.png"

# cityscapesScripts helpers/labels.py: (labelId, trainId) for the 19 evaluated classes; every other
# id (void classes, parking, rail track, guard rail, bridge, tunnel, polegroup, caravan, trailer,
# license plate) is ignored.
TRAIN_CLASSES: tuple[tuple[int, str], ...] = (
    (7, "road"), (8, "sidewalk"), (11, "building"), (12, "wall"), (13, "fence"), (17, "pole"),
    (19, "traffic light"), (20, "traffic sign"), (21, "vegetation"), (22, "terrain"), (23, "sky"),
    (24, "person"), (25, "rider"), (26, "car"), (27, "truck"), (28, "bus"), (31, "train"),
    (32, "motorcycle"), (33, "bicycle"),
)  # fmt: skip
IGNORE_INDEX = 255
LABELS = LabelSet("cityscapes19", tuple(name for _, name in TRAIN_CLASSES), IGNORE_INDEX)


def _label_lut() -> np.ndarray:
    lut = np.full(256, IGNORE_INDEX, dtype=np.uint8)
    for train_id, (label_id, _) in enumerate(TRAIN_CLASSES):
        lut[label_id] = train_id
    return lut


LABEL_LUT = _label_lut()


def depth_scale_for(max_depth_m: float) -> float:
    """Metres per stored code: the finest linear step whose largest code reaches ``max_depth_m``."""
    return float(max_depth_m) / MAX_CODE


def disparity_to_depth_codes(
    disparity: np.ndarray,
    *,
    baseline_m: float,
    fx_px: float,
    depth_scale: float,
    max_depth_m: float,
) -> np.ndarray:
    """Cityscapes disparity PNG values (HxW uint16) -> depth codes (HxW uint16, 0 = invalid).

    ``p <= 1`` is invalid; otherwise ``z = baseline_m * fx_px / ((p - 1) / 256)`` metres, invalid past
    ``max_depth_m``; code ``= round(z / depth_scale)`` (error at most ``depth_scale / 2``).
    """
    # The code depends on p alone: compute all 65536 in float64 once, then index (20x faster than
    # per-pixel arithmetic on a 2048x1024 map, same result).
    p = np.arange(MAX_CODE + 1, dtype=np.float64)
    valid = p > 1
    d_px = np.where(valid, p - 1.0, 1.0) / DISPARITY_SUBPIXELS
    z = baseline_m * fx_px / d_px
    valid &= z <= max_depth_m
    codes = np.clip(np.rint(z / depth_scale), 1, MAX_CODE)
    lut = np.where(valid, codes, 0).astype(np.uint16)
    return lut[disparity]


def labels_to_train_ids(label_ids: np.ndarray) -> np.ndarray:
    """gtFine labelIds (HxW uint8) -> the 19 train ids, 255 for everything else."""
    return LABEL_LUT[label_ids]


@dataclass(frozen=True)
class CityscapesConfig:
    src: str
    split: tuple[str, ...] = ()  # empty: train, val and test where present
    size: tuple[int, int] | None = None
    max_depth: float = 400.0
    labels: bool = True

    def __post_init__(self) -> None:
        if not (math.isfinite(self.max_depth) and self.max_depth > 0):
            raise UsageError("--max-depth must be a positive number of metres")


@dataclass(frozen=True)
class Misnamed:
    """An image under leftImg8bit/ whose name is not ``{city}_{seq}_{frame}_leftImg8bit.png``."""

    path: str


@dataclass(frozen=True)
class Frame:
    """One frame's name parts; paths are derived from them."""

    city: str
    sequence: str
    frame: str

    @property
    def stem(self) -> str:
        return f"{self.city}_{self.sequence}_{self.frame}"


class CityscapesConverter(Converter):
    name = "cityscapes"
    Config = CityscapesConfig
    help = "Cityscapes leftImg8bit + disparity (-> metric depth) + gtFine labels (19 train ids)."
    params = (
        click.Argument(["src"], type=click.Path(file_okay=False)),
        click.Option(
            ["--split"], multiple=True, type=click.Choice(SPLITS),
            help="Split(s) to convert (repeatable). Default: train, val and test where present.",
        ),
        click.Option(["--size"], type=SIZE, default=None, help="Resize to WxH (default: keep)."),
        click.Option(
            ["--max-depth"], type=float, default=400.0, show_default=True,
            help="Metres; farther depth is invalid. Sets depth_scale = max_depth / 65535.",
        ),
        click.Option(["--labels/--no-labels"], default=True, show_default=True,
                     help="Write gtFine labels as train ids where the split has them."),
    )  # fmt: skip

    config: CityscapesConfig

    @property
    def depth_scale(self) -> float:
        return depth_scale_for(self.config.max_depth)

    def _splits(self) -> tuple[str, ...]:
        if self.config.split:
            return tuple(s for s in SPLITS if s in self.config.split)  # canonical order
        root = os.path.join(self.config.src, "leftImg8bit")
        return tuple(s for s in DEFAULT_SPLITS if os.path.isdir(os.path.join(root, s)))

    def _labelled(self, split: str) -> bool:
        return (
            self.config.labels
            and split in LABELLED_SPLITS
            and os.path.isdir(os.path.join(self.config.src, "gtFine", split))
        )

    def _path(self, kind: str, split: str, f: Frame) -> str:
        suffix = {
            "leftImg8bit": IMAGE_SUFFIX,
            "disparity": DISPARITY_SUFFIX,
            "camera": CAMERA_SUFFIX,
            "gtFine": LABEL_SUFFIX,
        }[kind]
        return os.path.join(self.config.src, kind, split, f.city, f.stem + suffix)

    def info(self) -> SourceInfo:
        labelled = any(self._labelled(s) for s in self._splits())
        return SourceInfo(
            source=self.name,
            depth_unit="m",
            depth_scale=self.depth_scale,
            labels=LABELS if labelled else None,
            extra={"max_depth": float(self.config.max_depth)},
        )

    def units(self) -> list[WorkUnit]:
        src = self.config.src
        if not os.path.isdir(os.path.join(src, "leftImg8bit")):
            raise SourceError(src, "not a Cityscapes folder: no leftImg8bit/ inside")
        splits = self._splits()
        if not splits:
            raise SourceError(os.path.join(src, "leftImg8bit"), "holds none of train, val, test")
        units: list[WorkUnit] = []
        for split in splits:
            split_dir = os.path.join(src, "leftImg8bit", split)
            if not os.path.isdir(split_dir):
                raise SourceError(split_dir, f"split {split!r} not found")
            for city in sorted(e.name for e in os.scandir(split_dir) if e.is_dir()):
                frames = _frames(os.path.join(split_dir, city), city)
                for start in range(0, len(frames), FRAMES_PER_UNIT):
                    chunk = tuple(frames[start : start + FRAMES_PER_UNIT])
                    units.append(WorkUnit(f"{split}/{city}/{start:06d}", split, chunk))
        return units

    def convert(self, unit: WorkUnit) -> Iterator[Sample | Skipped]:
        labelled = self._labelled(unit.split)
        for f in unit.payload:
            if isinstance(f, Misnamed):
                yield Skipped(f.path, "name is not {city}_{seq}_{frame}" + IMAGE_SUFFIX)
                continue
            try:
                yield self._sample(unit.split, f, labelled)
            except SourceError as exc:
                yield Skipped(exc.path, exc.reason)

    def _sample(self, split: str, f: Frame, labelled: bool) -> Sample:
        image_path = self._path("leftImg8bit", split, f)
        bgr = _read(image_path, cv2.IMREAD_COLOR)
        rgb = np.ascontiguousarray(bgr[..., ::-1])
        h, w = rgb.shape[:2]

        disparity_path = self._path("disparity", split, f)
        disparity = _read(disparity_path, cv2.IMREAD_UNCHANGED)
        if disparity.dtype != np.uint16 or disparity.ndim != 2:
            raise SourceError(
                disparity_path,
                f"not a 16-bit single-channel PNG ({disparity.dtype}, shape {disparity.shape})",
            )
        _same_size(disparity, disparity_path, (h, w), image_path)

        camera_path = self._path("camera", split, f)
        camera = read_camera(camera_path)
        depth = disparity_to_depth_codes(
            disparity,
            baseline_m=camera["baseline"],
            fx_px=camera["fx"],
            depth_scale=self.depth_scale,
            max_depth_m=self.config.max_depth,
        )

        label = None
        if labelled:
            label_path = self._path("gtFine", split, f)
            label_ids = _read(label_path, cv2.IMREAD_UNCHANGED)
            if label_ids.ndim != 2:
                raise SourceError(
                    label_path, f"labelIds must be single-channel, got shape {label_ids.shape}"
                )
            if label_ids.dtype != np.uint8 and int(label_ids.max()) > 255:
                # astype(uint8) would wrap such values silently into real classes (263 -> road)
                raise SourceError(
                    label_path,
                    f"labelIds must be 8-bit, got {label_ids.dtype} values up to "
                    f"{int(label_ids.max())}",
                )
            _same_size(label_ids, label_path, (h, w), image_path)
            label = labels_to_train_ids(label_ids.astype(np.uint8))

        intrinsics = {
            "fx": camera["fx"],
            "fy": camera["fy"],
            "cx": camera["u0"],
            "cy": camera["v0"],
        }
        if self.config.size is not None and self.config.size != (w, h):
            size = self.config.size
            rgb = resize_rgb(rgb, size)
            depth = resize_nearest(depth, size)
            label = None if label is None else resize_nearest(label, size)
            intrinsics = scale_intrinsics(intrinsics, (w, h), size)
            w, h = size
        meta = make_meta(
            source=self.name,
            id=f.stem,
            split=split,
            width=w,
            height=h,
            depth_scale=self.depth_scale,
            depth_unit="m",
            intrinsics=intrinsics,
            city=f.city,
            sequence=f.sequence,
            frame=f.frame,
            baseline=camera["baseline"],
        )
        return Sample(key=f.stem, split=split, rgb=rgb, meta=meta, depth=depth, label=label)


def _frames(city_dir: str, city: str) -> list[Frame | Misnamed]:
    """The city's frames in name order; an image whose name does not parse is kept in its place as
    :class:`Misnamed`, a bad frame (skipped with --on-error skip, else the run stops there)."""
    frames: list[Frame | Misnamed] = []
    for name in sorted(os.listdir(city_dir)):
        if not name.endswith(IMAGE_SUFFIX):
            continue
        parts = name[: -len(IMAGE_SUFFIX)].rsplit("_", 2)
        if len(parts) != 3 or parts[0] != city:
            frames.append(Misnamed(os.path.join(city_dir, name)))
        else:
            frames.append(Frame(*parts))
    return frames


def _read(path: str, flags: int) -> np.ndarray:
    """A PNG decoded with OpenCV ``flags``; SourceError when missing, cut off (libpng would print
    its own error lines) or not a PNG."""
    if not os.path.isfile(path):
        raise SourceError(path, "missing")
    return read_image(path, flags, "PNG")


def _same_size(arr: np.ndarray, path: str, hw: tuple[int, int], image_path: str) -> None:
    if arr.shape[:2] != hw:
        raise SourceError(
            path,
            f"is {arr.shape[1]}x{arr.shape[0]} but {os.path.basename(image_path)} is {hw[1]}x{hw[0]}",
        )


def read_camera(path: str) -> dict[str, float]:
    """baseline (m), fx, fy, u0, v0 (px) of a Cityscapes ``*_camera.json``; SourceError when malformed."""
    if not os.path.isfile(path):
        raise SourceError(path, "missing")
    try:
        with open(path, encoding="utf-8") as fh:
            doc: Any = json.load(fh)
        values = {
            "baseline": doc["extrinsic"]["baseline"],
            **{k: doc["intrinsic"][k] for k in ("fx", "fy", "u0", "v0")},
        }
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SourceError(path, f"not a camera JSON: {exc}") from None
    except (KeyError, TypeError) as exc:
        raise SourceError(
            path, f"camera JSON lacks extrinsic.baseline or intrinsic.fx/fy/u0/v0 ({exc})"
        ) from None
    out: dict[str, float] = {}
    for k, v in values.items():
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
            raise SourceError(path, f"{k} is not a number: {v!r}")
        out[k] = float(v)
    if out["baseline"] <= 0 or out["fx"] <= 0 or out["fy"] <= 0:
        raise SourceError(path, "baseline, fx and fy must be positive")
    return out
