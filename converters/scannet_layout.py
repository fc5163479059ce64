"""Where things are in a ScanNet source folder, which split a scan belongs to, and what its label
ids mean (``scannetv2-labels.combined.tsv`` -> nyu40 -> the 20 benchmark classes).

Source layout (SRC)::

    SRC/scans/SCENE/SCENE.sens                 the raw scan (preferred when present)
    SRC/scans/SCENE/SCENE_2d-label-filt.zip    with --labels (label-filt/N.png)
    SRC/scans/SCENE/{color/N.jpg, depth/N.png, pose/N.txt, intrinsic/intrinsic_color.txt}
                                               exported layout, when there is no .sens
    SRC/scans_test/...                         test scans (split "test")
    SRC/scannetv2_{train,val,test}.txt         official splits (optional)
    SRC/scannetv2-labels.combined.tsv          label map (needed for --labels)

SCENE is a scan name such as scene0000_00. SRC may also hold the scene folders directly, or be
one scene folder.
"""

from __future__ import annotations

import csv
import re
import zipfile
import zlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np

from converters.base import LabelSet
from converters.imaging import CUT_OFF, cut_off, resize_nearest
from converters.sens import SensReader
from datakit.errors import SourceError
from datakit.schema import KEY_PATTERN

SPLITS = ("train", "val", "test")
SPLIT_LIST = "scannetv2_{}.txt"
LABEL_MAP = "scannetv2-labels.combined.tsv"
LABEL_ZIP = "{}_2d-label-filt.zip"
LABEL_DIR = "label-filt"
# The 20 classes of the ScanNet benchmark: nyu40 ids and the names of its evaluation script.
SCANNET20_NYU40 = (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 14, 16, 24, 28, 33, 34, 36, 39)
SCANNET20_CLASSES = (
    "wall", "floor", "cabinet", "bed", "chair", "sofa", "table", "door", "window", "bookshelf",
    "picture", "counter", "desk", "curtain", "refrigerator", "shower curtain", "toilet", "sink",
    "bathtub", "otherfurniture",
)  # fmt: skip
IGNORE_INDEX = 255
LABELS = LabelSet("scannet20", SCANNET20_CLASSES, IGNORE_INDEX)
_FRAME_FILE = re.compile(r"^(\d+)\.(jpg|jpeg|png)$", re.IGNORECASE)


@dataclass(frozen=True)
class Scan:
    name: str
    split: str
    path: str  # the .sens file, or the exported scene folder
    exported: bool
    labels: str | None  # label zip or label-filt folder, None when absent


# --- labels ---------------------------------------------------------------------------------------


@lru_cache(maxsize=4)
def label_lut(tsv_path: str) -> np.ndarray:
    """ScanNet label id (0..65535) -> scannet20 train id (0..19) or 255, via the nyu40 column."""
    train_id = {nyu: k for k, nyu in enumerate(SCANNET20_NYU40)}
    lut = np.full(1 << 16, IGNORE_INDEX, np.uint8)
    try:
        with open(tsv_path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f, delimiter="\t"))
    except OSError as exc:
        raise SourceError(tsv_path, f"cannot read label map: {exc.strerror}") from None
    if not rows or not {"id", "nyu40id"} <= set(rows[0]):
        raise SourceError(tsv_path, "label map needs the columns 'id' and 'nyu40id'")
    for row in rows:
        try:
            sid, nyu = int(row["id"]), int(row["nyu40id"])
        except (TypeError, ValueError):
            continue  # rows without an nyu40 class stay ignored
        # The table repeats some ids (e.g. 188 "shower door" 8, then "shower doors" 38): the last
        # row wins, as in ScanNet's read_label_mapping (a dict filled row by row).
        if 0 <= sid < lut.size:
            lut[sid] = train_id.get(nyu, IGNORE_INDEX)
    return lut


def label_map_path(src: Path) -> Path:
    for p in (src / LABEL_MAP, src.parent / LABEL_MAP):
        if p.is_file():
            return p
    raise SourceError(src / LABEL_MAP, "--labels needs the ScanNet label map (not found)")


class LabelSource:
    """Label images of one scan, from its ``_2d-label-filt.zip`` or an unzipped ``label-filt/``."""

    def __init__(self, scan: Scan, src: Path) -> None:
        if scan.labels is None:
            raise SourceError(
                Path(scan.path).parent if not scan.exported else scan.path,
                f"scan {scan.name}: --labels needs {LABEL_ZIP.format(scan.name)} (not found)",
            )
        self.lut = label_lut(str(label_map_path(src)))
        self.path = Path(scan.labels)
        self.zip: zipfile.ZipFile | None = None
        self.names: dict[int, str] = {}
        if self.path.is_dir():
            entries = [p.name for p in self.path.iterdir()]
        else:
            try:
                self.zip = zipfile.ZipFile(self.path)
            except (OSError, zipfile.BadZipFile) as exc:
                raise SourceError(self.path, f"label zip does not open: {exc}") from None
            entries = self.zip.namelist()
        for name in entries:
            m = _FRAME_FILE.match(name.rsplit("/", 1)[-1])
            if m and m.group(2).lower() == "png":
                self.names[int(m.group(1))] = name

    def read(self, index: int, size: tuple[int, int]) -> np.ndarray | str:
        """Train ids (uint8, 255 = ignore) of frame ``index`` at ``size``, or why there are none
        (the caller names :attr:`path` and the frame)."""
        name = self.names.get(index)
        if name is None:
            return "no label image for it"
        try:
            data = self.zip.read(name) if self.zip else (self.path / name).read_bytes()
        except (OSError, zipfile.BadZipFile, zlib.error) as exc:
            return f"label {name} does not read: {exc}"
        if cut_off(data):  # libpng would print its own error lines
            return f"label {name} is {CUT_OFF}"
        ids = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED) if data else None
        if ids is None or ids.ndim != 2 or ids.dtype not in (np.uint8, np.uint16):
            return f"label {name} is not a single-channel PNG"
        return self.lut[resize_nearest(ids, size)]

    def close(self) -> None:
        if self.zip is not None:
            self.zip.close()


# --- finding scans ------------------------------------------------------------------------------


def parse_scenes(value: str | tuple[str, ...] | None) -> tuple[str, ...] | None:
    """``"a,b"`` or ``"@file"`` (one id per line, # comments) -> ids; None stays None."""
    if value is None or isinstance(value, tuple):
        return value
    if value.startswith("@"):
        path = Path(value[1:])
        try:
            text = path.read_text()
        except OSError as exc:
            raise SourceError(path, f"cannot read scene list: {exc.strerror}") from None
        items = [line.split("#", 1)[0] for line in text.splitlines()]
    else:
        items = value.split(",")
    return tuple(s.strip() for s in items if s.strip())


def _scan_in(folder: Path, split: str) -> Scan | None:
    name = folder.name
    sens = folder / f"{name}.sens"
    labels: Path | None = folder / LABEL_ZIP.format(name)
    if not labels.is_file():  # type: ignore[union-attr]
        labels = folder / LABEL_DIR if (folder / LABEL_DIR).is_dir() else None
    label_str = str(labels) if labels is not None else None
    if sens.is_file():
        return Scan(name, split, str(sens), False, label_str)
    if (folder / "color").is_dir() and (folder / "depth").is_dir():
        return Scan(name, split, str(folder), True, label_str)
    return None


def find_scans(src: Path) -> list[Scan]:
    """Every scan under ``src`` with its split, sorted by split then name."""
    lists = {}
    for split in SPLITS:
        for p in (
            src / SPLIT_LIST.format(split),
            src / "Tasks" / "Benchmark" / SPLIT_LIST.format(split),
        ):
            if p.is_file():
                lists[split] = set(p.read_text().split())
                break

    def split_of(name: str, default: str) -> str:
        return next((s for s in SPLITS if name in lists.get(s, ())), default)

    single = _scan_in(src, split_of(src.name, "train"))
    if single is not None:
        return [single]
    roots = [(src / d, d) for d in ("scans", "scans_test") if (src / d).is_dir()] or [
        (src, "scans")
    ]
    scans = []
    for root, kind in roots:
        for folder in sorted(p for p in root.iterdir() if p.is_dir()):
            scan = _scan_in(
                folder, split_of(folder.name, "test" if kind == "scans_test" else "train")
            )
            if scan is None:
                continue
            if not KEY_PATTERN.fullmatch(scan.name):
                raise SourceError(
                    folder, "scan folder names must match [A-Za-z0-9_-]+ (sample keys)"
                )
            scans.append(scan)
    return scans


def select_scans(
    src: Path, scenes: tuple[str, ...] | None = None, split: str | None = None
) -> list[Scan]:
    """The scans to convert: all, those of ``--split``, or those of ``--scenes`` (all must exist)."""
    scans = find_scans(src)
    if not scans:
        raise SourceError(src, "no ScanNet scans found (expected scans/SCENE/SCENE.sens or exported "
                               "SCENE/color, depth folders; see docs/converters/scannet.md)")  # fmt: skip
    if scenes is not None:
        by_name = {s.name: s for s in scans}
        missing = [n for n in scenes if n not in by_name]
        if missing:
            raise SourceError(src, f"scenes not found: {', '.join(missing[:10])}")
        scans = [by_name[n] for n in dict.fromkeys(scenes)]
    if split is not None:
        scans = [s for s in scans if s.split == split]
        if not scans:
            raise SourceError(
                src,
                f"no scans of split {split!r} (is {SPLIT_LIST.format(split)} in SRC?)",
            )
    order = {s: k for k, s in enumerate(SPLITS)}
    return sorted(scans, key=lambda s: (order.get(s.split, len(order)), s.name))


def frame_indices(scan: Scan, frame_skip: int) -> list[int]:
    if scan.exported:
        return sorted(i for i in exported_frames(Path(scan.path)) if i % frame_skip == 0)
    with SensReader(scan.path, scan.name) as reader:
        # A count the file has no room for (truncated, or corrupt) is cut to one kept frame past
        # the room, so that reading finds where the file ends without listing billions of frames.
        return list(range(0, min(reader.num_frames, reader.room + frame_skip), frame_skip))


def exported_frames(root: Path) -> dict[int, str]:
    out = {}
    for p in (root / "color").iterdir():
        m = _FRAME_FILE.match(p.name)
        if m:
            out[int(m.group(1))] = p.name
    return out


def read_matrix(path: Path) -> np.ndarray | None:
    """A 4x4 matrix written by the ScanNet exporter (np.savetxt rows), None when absent."""
    if not path.is_file():
        return None
    try:
        m = np.loadtxt(path, dtype=np.float64)
    except ValueError as exc:
        raise SourceError(path, f"not a 4x4 matrix: {exc}") from None
    if m.shape != (4, 4):
        raise SourceError(path, f"not a 4x4 matrix (shape {m.shape})")
    return m
