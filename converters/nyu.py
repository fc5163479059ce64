"""NYU Depth v2 labeled: ``nyu_depth_v2_labeled.mat`` (MATLAB v7.3 = HDF5) read frame by frame with h5py.

MATLAB writes column-major arrays, so h5py sees the axes reversed: ``images`` (N, 3, W, H) uint8,
``depths`` / ``rawDepths`` (N, W, H) float32 metres, ``labels`` (N, W, H) uint16 (0 = unlabeled,
1..894 index ``names``). Each frame is read alone (``ds[i]``) and transposed upright, so memory stays
at a few frames whatever N is (the real file is 2.8 GB).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import click
import h5py
import numpy as np

from converters.base import Converter, LabelSet, Skipped, SourceInfo, WorkUnit, make_meta
from datakit.errors import SourceError
from datakit.schema import Sample

DEPTH_SCALE_M = 0.001  # uint16 millimetres
MAX_CODE = 65535
FRAMES_PER_UNIT = 64
DEPTH_FIELDS = ("depths", "rawDepths")  # in-painted depth, or the Kinect's raw projected depth

# RGB intrinsics of the Kinect at 640x480 (NYU toolbox camera_params.m); the labeled frames are
# undistorted RGB images in this camera.
KINECT_RGB_INTRINSICS = {
    "fx": 5.1885790117450188e02,
    "fy": 5.1946961112127485e02,
    "cx": 3.2558244941119034e02,
    "cy": 2.5373616633400465e02,
}
KINECT_SIZE = (640, 480)

# The 40 classes of Gupta et al. (CVPR 2013), in id order 1..40; stored as id - 1, 255 ignored.
NYU40_CLASSES = (
    "wall", "floor", "cabinet", "bed", "chair", "sofa", "table", "door", "window", "bookshelf",
    "picture", "counter", "blinds", "desk", "shelves", "curtain", "dresser", "pillow", "mirror",
    "floor mat", "clothes", "ceiling", "books", "refridgerator", "television", "paper", "towel",
    "shower curtain", "box", "whiteboard", "person", "night stand", "toilet", "sink", "lamp",
    "bathtub", "bag", "otherstructure", "otherfurniture", "otherprop",
)  # fmt: skip
IGNORE_40 = 255
RAW_IGNORE = 0  # raw labels: 0 = unlabeled


@dataclass(frozen=True)
class NyuConfig:
    mat: str
    label_map: str | None = None
    splits: str | None = None
    depth_field: str = "depths"
    labels: bool = True


class NyuConverter(Converter):
    name = "nyu"
    Config = NyuConfig
    help = "NYU Depth v2 labeled .mat (HDF5 v7.3): RGB, depth (mm codes), labels."
    params = (
        click.Argument(["mat"], type=click.Path(dir_okay=False)),
        click.Option(
            ["--label-map"], type=click.Path(dir_okay=False), default=None,
            help="Raw class (1..894) -> nyu40 id (0..40), in order: classMapping40.mat (mapClass), "
            ".npy or text. Labels become nyu40 id - 1 (255 ignored). Default: raw 16-bit labels.",
        ),
        click.Option(
            ["--splits"], type=click.Path(dir_okay=False), default=None,
            help="Official splits.mat (trainNdxs, testNdxs; 1-based). Default: every frame in 'train'.",
        ),
        click.Option(["--depth-field"], type=click.Choice(DEPTH_FIELDS), default="depths",
                     show_default=True, help="In-painted 'depths' or the raw 'rawDepths' (0 = no return)."),
        click.Option(["--labels/--no-labels"], default=True, show_default=True),
    )  # fmt: skip

    config: NyuConfig

    # --- whole-file facts (cheap: shapes and the small name tables only) ---

    def _open(self) -> h5py.File:
        path = self.config.mat
        if not os.path.isfile(path):
            raise SourceError(path, "missing")
        try:
            return h5py.File(path, "r")
        except OSError as exc:
            raise SourceError(path, f"not a MATLAB v7.3 / HDF5 file ({exc})") from None

    def _check(self, f: h5py.File) -> int:
        path = self.config.mat
        need = ["images", self.config.depth_field] + (["labels"] if self.config.labels else [])
        missing = [k for k in need if k not in f]
        if missing:
            raise SourceError(
                path, f"lacks dataset(s) {', '.join(missing)} of the NYU labeled layout"
            )
        for k in need:
            if not isinstance(f[k], h5py.Dataset):
                raise SourceError(path, f"{k!r} is a group, not a dataset")
        images = f["images"]
        if images.ndim != 4 or images.shape[1] != 3:
            raise SourceError(path, f"dataset 'images' must be (N, 3, W, H), got {images.shape}")
        n, _, w, h = images.shape
        for k in need[1:]:
            if f[k].shape != (n, w, h):
                raise SourceError(
                    path, f"dataset {k!r} is {f[k].shape}, expected {(n, w, h)} like 'images'"
                )
        for k, kinds, want in (
            ("images", (np.uint8,), "uint8 (0-255 colour)"),
            (self.config.depth_field, (np.floating,), "float32 metres"),
            ("labels", (np.uint8, np.uint16), "uint16 class ids"),
        ):
            if k in need and not any(np.issubdtype(f[k].dtype, t) for t in kinds):
                raise SourceError(path, f"dataset {k!r} is {f[k].dtype}, expected {want}")
        return int(n)

    def info(self) -> SourceInfo:
        labels: LabelSet | None = None
        if self.config.labels:
            if self.config.label_map is not None:
                labels = LabelSet("nyu40", NYU40_CLASSES, IGNORE_40)
            else:
                with self._open() as f:
                    names = _strings(f, "names")
                labels = LabelSet("nyu894", ("unlabeled", *names), RAW_IGNORE)
        return SourceInfo(
            source=self.name,
            depth_unit="m",
            depth_scale=DEPTH_SCALE_M,
            labels=labels,
            extra={"depth_field": self.config.depth_field},
        )

    def units(self) -> list[WorkUnit]:
        with self._open() as f:
            n = self._check(f)
            num_names = len(_strings(f, "names")) if self.config.label_map is not None else 0
        if self.config.label_map is not None:  # fail before any work on a bad file
            mapping = load_label_map(self.config.label_map)
            if len(mapping) < num_names:  # else the classes past its end become 255 silently
                raise SourceError(
                    self.config.label_map,
                    f"label map has {len(mapping)} entries, but {self.config.mat} names "
                    f"{num_names} classes (one nyu40 id per raw class, in order)",
                )
        if self.config.splits is None:
            groups = {"train": list(range(n))}
        else:
            groups = load_splits(self.config.splits, n)
        units = []
        for split, indices in groups.items():
            for start in range(0, len(indices), FRAMES_PER_UNIT):
                chunk = tuple(indices[start : start + FRAMES_PER_UNIT])
                units.append(WorkUnit(f"{split}/{chunk[0] + 1:04d}", split, chunk))
        return units

    def convert(self, unit: WorkUnit) -> Iterator[Sample | Skipped]:
        cfg = self.config
        lut = None
        if cfg.labels and cfg.label_map is not None:
            lut = label_lut(load_label_map(cfg.label_map))
        with self._open() as f:
            self._check(f)
            images, depths = f["images"], f[cfg.depth_field]
            labels = f["labels"] if cfg.labels else None
            scenes = f.get("scenes")
            for i in unit.payload:
                # One frame per read: h5py slices only this frame out of the file.
                try:
                    rgb = np.ascontiguousarray(_frame(images, i).transpose(2, 1, 0))
                    depth_m = _frame(depths, i).T
                    raw = None if labels is None else np.ascontiguousarray(_frame(labels, i).T)
                except _FrameUnreadable as exc:
                    yield Skipped(cfg.mat, str(exc))
                    continue
                label = None
                if raw is not None:
                    raw = raw.astype(np.uint16, copy=False)
                    label = raw if lut is None else lut[raw]
                h, w = rgb.shape[:2]
                extra: dict[str, Any] = {"index": i + 1}
                if scenes is not None:
                    extra["scene"] = _deref_string(f, scenes, i)
                meta = make_meta(
                    source=self.name,
                    id=f"{i + 1:04d}",
                    split=unit.split,
                    width=w,
                    height=h,
                    depth_scale=DEPTH_SCALE_M,
                    depth_unit="m",
                    intrinsics=KINECT_RGB_INTRINSICS if (w, h) == KINECT_SIZE else None,
                    **extra,
                )
                yield Sample(
                    key=f"nyu_{i + 1:04d}",
                    split=unit.split,
                    rgb=rgb,
                    meta=meta,
                    depth=metres_to_codes(depth_m),
                    label=label,
                )


class _FrameUnreadable(Exception):
    """A frame whose bytes HDF5 cannot read back (a corrupt or cut-off chunk)."""


def _frame(ds: h5py.Dataset, i: int) -> np.ndarray:
    try:
        return np.asarray(ds[i])
    except OSError as exc:
        name = ds.name.lstrip("/")
        raise _FrameUnreadable(f"dataset {name!r}, frame {i + 1}: does not read ({exc})") from None


def metres_to_codes(depth_m: np.ndarray) -> np.ndarray:
    """Depth in metres -> uint16 millimetre codes; <= 0, NaN and > 65.535 m become 0 (invalid)."""
    d = np.asarray(depth_m, dtype=np.float64)
    codes = np.rint(np.nan_to_num(d, nan=0.0, posinf=0.0, neginf=0.0) / DEPTH_SCALE_M)
    codes[(codes < 0) | (codes > MAX_CODE)] = 0
    return codes.astype(np.uint16)


def label_lut(mapping: np.ndarray) -> np.ndarray:
    """uint8 table over all 16-bit raw labels: raw k (1..len) -> nyu40 id - 1; unmapped -> 255."""
    lut = np.full(1 << 16, IGNORE_40, dtype=np.uint8)
    ids = mapping.astype(np.int64)
    lut[1 : len(ids) + 1] = np.where(ids > 0, ids - 1, IGNORE_40)
    return lut


def load_label_map(path: str) -> np.ndarray:
    """Raw class 1..K -> nyu40 id 0..40, as a 1-D int array of length K (entry k-1 for class k).

    Accepts ``classMapping40.mat`` (variable ``mapClass``; MATLAB v5 via scipy or v7.3 via h5py),
    ``.npy``, or text with integers separated by whitespace or commas.
    """
    if not os.path.isfile(path):
        raise SourceError(path, "missing")
    ext = os.path.splitext(path)[1].lower()
    try:
        if ext == ".mat":
            arr = _mat_variable(path, "mapClass")
        elif ext == ".npy":
            arr = np.load(path, allow_pickle=False)
        else:
            with open(path, encoding="utf-8") as fh:
                arr = np.array([int(t) for t in fh.read().replace(",", " ").split()])
    except (OSError, ValueError, KeyError, EOFError) as exc:  # np.load: EOFError on an empty file
        raise SourceError(path, f"not a label map: {exc}") from None
    arr = np.asarray(arr).ravel()
    if arr.size == 0 or not np.issubdtype(arr.dtype, np.number):
        raise SourceError(path, "label map holds no integers")
    if np.any(arr != np.round(arr)) or arr.min() < 0 or arr.max() > len(NYU40_CLASSES):
        raise SourceError(path, f"label map values must be integers in 0..{len(NYU40_CLASSES)}")
    return arr.astype(np.int64)


def load_splits(path: str, n: int) -> dict[str, list[int]]:
    """``splits.mat`` -> {"train": [...], "test": [...]} of 0-based frame indices (sorted).

    Frames in neither list are left out. Raises SourceError for out-of-range, repeated or shared
    indices.
    """
    if not os.path.isfile(path):
        raise SourceError(path, "missing")
    groups: dict[str, list[int]] = {}
    try:
        for split, var in (("train", "trainNdxs"), ("test", "testNdxs")):
            raw = np.asarray(_mat_variable(path, var)).ravel()
            if not np.issubdtype(raw.dtype, np.number) or np.any(raw != np.round(raw)):
                raise SourceError(path, f"{var} must hold whole frame numbers")
            idx = raw.astype(np.int64)
            if idx.size and (idx.min() < 1 or idx.max() > n):
                raise SourceError(path, f"{var} holds indices outside 1..{n}")
            if len(set(idx.tolist())) != idx.size:  # else one frame becomes two samples of one key
                raise SourceError(path, f"{var} lists a frame more than once")
            groups[split] = sorted(int(i) - 1 for i in idx)
    except (OSError, ValueError, KeyError) as exc:
        raise SourceError(path, f"not a NYU splits file (trainNdxs, testNdxs): {exc}") from None
    if set(groups["train"]) & set(groups["test"]):
        raise SourceError(path, "trainNdxs and testNdxs share frames")
    return groups


def _mat_variable(path: str, name: str) -> np.ndarray:
    """ValueError for a file that does not read or lacks the variable."""
    if h5py.is_hdf5(path):
        with h5py.File(path, "r") as f:
            if name not in f:
                raise ValueError(f"no variable {name!r}")
            return np.asarray(f[name])
    from scipy.io import loadmat  # MATLAB v5 files (the official splits.mat, classMapping40.mat)
    from scipy.io.matlab import MatReadError

    try:
        found = loadmat(path, variable_names=[name])
    except MatReadError as exc:  # an empty or cut-off file; not a ValueError, so re-raise as one
        raise ValueError(str(exc)) from None
    if name not in found:
        raise ValueError(f"no variable {name!r}")
    return np.asarray(found[name])


def _strings(f: h5py.File, name: str) -> tuple[str, ...]:
    """A MATLAB cell array of strings (object references to uint16 char arrays)."""
    if name not in f:
        return ()
    refs = np.asarray(f[name]).ravel()
    return tuple(_chars(f[r]) for r in refs)


def _deref_string(f: h5py.File, cell: h5py.Dataset, i: int) -> str:
    ref = cell[0, i] if cell.shape[0] == 1 else cell[i, 0]
    return _chars(f[ref])


def _chars(ds: h5py.Dataset) -> str:
    return "".join(map(chr, np.asarray(ds).ravel()))
