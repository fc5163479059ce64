"""Builders of user RGB-D folders: images and depth maps in the formats people have on disk."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np


def write_rgb(path: Path, rgb: np.ndarray) -> Path:
    """RGB uint8 as .png (lossless) or .jpg (quality 100: compare loosely)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    params = [cv2.IMWRITE_JPEG_QUALITY, 100] if path.suffix == ".jpg" else []
    assert cv2.imwrite(str(path), rgb[..., ::-1], params)
    return path


def write_depth(path: Path, depth: np.ndarray) -> Path:
    """A depth map in the format the extension names: PNG (8/16-bit), TIFF/PFM (float32), .npy."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".npy":
        np.save(path, depth)
    else:
        assert cv2.imwrite(str(path), depth), path
    return path


def rgb_image(h: int, w: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def build_mixed_tree(
    root: Path, *, size: tuple[int, int] = (20, 12)
) -> dict[str, dict[str, object]]:
    """rgb/ and depth/ trees with sub-folders and mixed extensions; returns key -> what was written.

    - seq1/0001: .jpg + 16-bit PNG millimetres
    - seq1/0002: .png + 32-bit float TIFF metres
    - seq2/0001: .png + float32 .npy metres
    - 0003 (no sub-folder): .png + 8-bit PNG decimetres
    """
    w, h = size
    rng = np.random.default_rng(1)
    mm = rng.integers(0, 20000, size=(h, w), dtype=np.uint16)
    mm[0, 0] = 0
    metres = rng.uniform(0.3, 30.0, size=(h, w)).astype(np.float32)
    metres[0, :2] = [np.nan, -1.0]
    metres_npy = rng.uniform(0.3, 30.0, size=(h, w)).astype(np.float32)
    dm = rng.integers(0, 256, size=(h, w), dtype=np.uint8)
    spec = {
        "seq1/0001": ("jpg", "png", mm),
        "seq1/0002": ("png", "tiff", metres),
        "seq2/0001": ("png", "npy", metres_npy),
        "0003": ("png", "png", dm),
    }
    out: dict[str, dict[str, object]] = {}
    for i, (key, (rgb_ext, depth_ext, depth)) in enumerate(spec.items()):
        rgb = rgb_image(h, w, i)
        rgb_path = write_rgb(root / "rgb" / f"{key}.{rgb_ext}", rgb)
        depth_path = write_depth(root / "depth" / f"{key}.{depth_ext}", depth)
        out[key] = {"rgb": rgb, "depth": depth, "rgb_path": rgb_path, "depth_path": depth_path}
    return out
