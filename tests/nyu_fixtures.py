"""Builder of small files in the layout of ``nyu_depth_v2_labeled.mat`` (MATLAB v7.3 = HDF5).

MATLAB stores arrays column-major, so h5py sees every axis reversed: an H x W x 3 x N image stack
is the dataset ``images`` of shape (N, 3, W, H). The builder writes upright arrays that way, with
MATLAB's 512-byte user block, per-frame gzip chunks and cell arrays of strings as object references.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

MATLAB_HEADER = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Mon Jan  1 00:00:00 2024 HDF5 schema 1.00 ."


@dataclass
class NyuFixture:
    path: Path
    rgb: np.ndarray  # (N, H, W, 3) uint8, upright
    depth: np.ndarray  # (N, H, W) float32 metres
    raw_depth: np.ndarray  # (N, H, W) float32 metres, zeros where the Kinect had no return
    labels: np.ndarray  # (N, H, W) uint16, 0 = unlabeled
    names: list[str]
    scenes: list[str]


def _write_strings(f: h5py.File, name: str, strings: list[str]) -> None:
    refs_group = f.require_group("#refs#")
    refs = []
    for i, s in enumerate(strings):
        chars = np.array([ord(c) for c in s], dtype=np.uint16).reshape(
            -1, 1
        )  # MATLAB char: (len, 1)
        ds = refs_group.create_dataset(f"{name}_{i}", data=chars)
        ds.attrs["MATLAB_class"] = np.bytes_("char")
        refs.append(ds.ref)
    cell = f.create_dataset(name, data=np.array([refs], dtype=h5py.ref_dtype))  # (1, K)
    cell.attrs["MATLAB_class"] = np.bytes_("cell")


def build_nyu(
    path: Path,
    *,
    n: int = 3,
    size: tuple[int, int] = (32, 24),
    num_classes: int = 12,
    seed: int = 0,
    coords: bool = False,
) -> NyuFixture:
    """Write ``n`` frames of ``size`` (W, H) to ``path``; returns the upright arrays written.

    ``coords``: pixels encode their own position (red = x, green = y, label = y * W + x).
    """
    w, h = size
    rng = np.random.default_rng(seed)
    rgb = rng.integers(0, 256, size=(n, h, w, 3), dtype=np.uint8)
    depth = rng.uniform(0.5, 9.9, size=(n, h, w)).astype(np.float32)
    raw_depth = depth.copy()
    raw_depth[:, :2, :3] = 0.0
    labels = rng.integers(0, num_classes + 1, size=(n, h, w), dtype=np.uint16)
    if coords:
        ys, xs = np.mgrid[0:h, 0:w]
        rgb[..., 0], rgb[..., 1] = xs, ys
        labels[:] = ys * w + xs
        num_classes = h * w
    names = [f"class{k}" for k in range(1, num_classes + 1)]
    scenes = [f"kitchen_{i:04d}a" for i in range(n)]
    fixture = NyuFixture(path, rgb, depth, raw_depth, labels, names, scenes)
    write_nyu(fixture)
    return fixture


def write_nyu(fx: NyuFixture) -> None:
    """Write the upright arrays of ``fx`` to ``fx.path`` in the .mat v7.3 layout."""
    with h5py.File(fx.path, "w", userblock_size=512) as f:

        def put(name: str, data: np.ndarray, cls: str) -> None:
            chunks = (1, *data.shape[1:])
            ds = f.create_dataset(name, data=data, chunks=chunks, compression="gzip")
            ds.attrs["MATLAB_class"] = np.bytes_(cls)

        put("images", fx.rgb.transpose(0, 3, 2, 1), "uint8")  # (N, 3, W, H)
        put("depths", fx.depth.transpose(0, 2, 1), "single")  # (N, W, H)
        put("rawDepths", fx.raw_depth.transpose(0, 2, 1), "single")
        put("labels", fx.labels.transpose(0, 2, 1), "uint16")
        _write_strings(f, "names", fx.names)
        _write_strings(f, "scenes", fx.scenes)
    with open(fx.path, "r+b") as fh:
        fh.write(MATLAB_HEADER.ljust(116) + b"\x00" * 8 + b"\x00\x02IM")


def write_splits(path: Path, train: list[int], test: list[int]) -> Path:
    """``splits.mat`` (MATLAB v5, as released): 1-based ``trainNdxs`` and ``testNdxs`` columns."""
    from scipy.io import savemat

    savemat(
        str(path),
        {
            "trainNdxs": np.array(train, dtype=np.float64).reshape(-1, 1),
            "testNdxs": np.array(test, dtype=np.float64).reshape(-1, 1),
        },
    )
    return path


def write_class_mapping(path: Path, mapping: list[int]) -> Path:
    """``classMapping40.mat`` (MATLAB v5): ``mapClass`` 1 x K, raw class k -> nyu40 id."""
    from scipy.io import savemat

    savemat(str(path), {"mapClass": np.array([mapping], dtype=np.float64)})
    return path
