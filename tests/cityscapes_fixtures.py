"""Builders of small Cityscapes trees in the real layout: 8-bit left images, 16-bit disparity PNGs,
camera JSON with the official fields, gtFine labelIds."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

# The camera file of a real frame (frankfurt_000000_000294), official field layout.
CAMERA = {
    "extrinsic": {
        "baseline": 0.209313,
        "pitch": 0.038,
        "roll": 0.0,
        "x": 1.7,
        "y": 0.1,
        "yaw": -0.0195,
        "z": 1.18,
    },
    "intrinsic": {"fx": 2262.52, "fy": 2265.3017905988554, "u0": 1096.98, "v0": 513.137},
}

# labels.py (cityscapesScripts), transcribed separately from the converter's table: labelId -> trainId.
TRAIN_ID = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11,
            25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}  # fmt: skip


@dataclass
class FrameData:
    split: str
    city: str
    sequence: str
    frame: str
    rgb: np.ndarray
    disparity: np.ndarray
    camera: dict
    label_ids: np.ndarray | None = None
    paths: dict[str, Path] = field(default_factory=dict)

    @property
    def stem(self) -> str:
        return f"{self.city}_{self.sequence}_{self.frame}"


def disparity_map(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """16-bit disparity codes with p = 0, 1, 2, the 400 m boundary, and large (near) values."""
    p = rng.integers(2, 65536, size=(h, w), dtype=np.int64)
    flat = p.reshape(-1)
    flat[:8] = [0, 1, 2, 3, 65535, 65534, 303, 305]  # invalid, invalid, far, far, nearest ...
    flat[8:16] = 0
    flat[16:32] = rng.integers(2, 400, size=16)  # far range, around --max-depth
    return p.astype(np.uint16)


def write_frame(
    root: Path, fd: FrameData, *, disparity: bool = True, camera: bool = True
) -> FrameData:
    def path(kind: str, suffix: str) -> Path:
        p = root / kind / fd.split / fd.city / f"{fd.stem}_{suffix}"
        p.parent.mkdir(parents=True, exist_ok=True)
        return p

    fd.paths["image"] = path("leftImg8bit", "leftImg8bit.png")
    cv2.imwrite(str(fd.paths["image"]), fd.rgb[..., ::-1])
    if disparity:
        fd.paths["disparity"] = path("disparity", "disparity.png")
        cv2.imwrite(str(fd.paths["disparity"]), fd.disparity)
    if camera:
        fd.paths["camera"] = path("camera", "camera.json")
        fd.paths["camera"].write_text(json.dumps(fd.camera, indent=4))
    if fd.label_ids is not None:
        fd.paths["label"] = path("gtFine", "gtFine_labelIds.png")
        cv2.imwrite(str(fd.paths["label"]), fd.label_ids)
    return fd


def build_cityscapes(
    root: Path,
    frames: dict[str, list[tuple[str, str, str]]] | None = None,
    *,
    size: tuple[int, int] = (48, 24),
    labels: bool = True,
    seed: int = 0,
) -> list[FrameData]:
    """Write a tree under ``root``; ``frames`` maps split -> [(city, seq, frame)]. train_extra never
    gets gtFine (as in the real release)."""
    frames = frames or {"val": [("frankfurt", "000000", "000294"), ("lindau", "000001", "000019")]}
    rng = np.random.default_rng(seed)
    w, h = size
    out = []
    for split, names in frames.items():
        for city, seq, frame in names:
            label_ids = None
            if labels and split != "train_extra":
                label_ids = rng.integers(0, 34, size=(h, w), dtype=np.uint8)
            fd = FrameData(
                split, city, seq, frame,
                rgb=rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8),
                disparity=disparity_map(h, w, rng),
                camera=json.loads(json.dumps(CAMERA)),
                label_ids=label_ids,
            )  # fmt: skip
            out.append(write_frame(root, fd))
    return out


def expected_depth_m(disparity: np.ndarray, camera: dict) -> np.ndarray:
    """baseline * fx / d straight from SPEC 3, NaN where invalid (p <= 1)."""
    p = disparity.astype(np.float64)
    d = (p - 1.0) / 256.0
    with np.errstate(divide="ignore"):
        z = camera["extrinsic"]["baseline"] * camera["intrinsic"]["fx"] / d
    return np.where(p > 1, z, np.nan)


def expected_train_ids(label_ids: np.ndarray) -> np.ndarray:
    out = np.full(label_ids.shape, 255, dtype=np.uint8)
    for label_id, train_id in TRAIN_ID.items():
        out[label_ids == label_id] = train_id
    return out
