"""Frames/s per core of the cityscapes, nyu and folder converters, against a decode-only baseline.

    .venv/bin/python bench/converters.py [--frames 8] [--repeats 3]

Inputs are built in a temporary folder in each source's real format at the real resolution
(Cityscapes 2048x1024 PNG + 16-bit disparity + camera JSON + labelIds; NYU 640x480 in the .mat v7.3
layout; folder 640x480 JPEG + 16-bit PNG), with smooth, photo-like content so that PNG/JPEG costs are
realistic (random noise would be far slower to code). One process, one thread (as a writer worker):

- ``convert``: ``datakit.writer.encode_unit`` over every unit = converter + schema encoding (JPEG q95
  RGB, PNG depth/label), i.e. what one ``--workers`` process does per frame;
- ``decode``: the baseline, reading the same input files and nothing else (cv2.imread / h5py);
- ratio = convert time / decode time, measured in the same run (best of ``--repeats``).

Times are CPU seconds of this process (``time.process_time``), so "frames/s per core" stays meaningful
on a machine shared with other jobs; the wall-clock rate of the convert step is shown too.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import cv2  # noqa: E402
import h5py  # noqa: E402
import numpy as np  # noqa: E402

from converters.base import Converter  # noqa: E402
from datakit.writer import ConvertConfig, encode_unit  # noqa: E402
from tests.cityscapes_fixtures import CAMERA, FrameData, write_frame  # noqa: E402
from tests.nyu_fixtures import NyuFixture, write_nyu  # noqa: E402


def smooth_image(h: int, w: int, rng: np.random.Generator, channels: int = 3) -> np.ndarray:
    """Low-frequency colour field + mild noise: compresses like a photo, not like noise."""
    coarse = rng.uniform(0, 255, size=(max(h // 64, 2), max(w // 64, 2), channels)).astype(
        np.float32
    )
    img = cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC).reshape(h, w, channels)
    img += rng.normal(0, 4, size=img.shape).astype(np.float32)
    return np.clip(img, 0, 255).astype(np.uint8)


def smooth_field(h: int, w: int, rng: np.random.Generator, lo: float, hi: float) -> np.ndarray:
    coarse = rng.uniform(lo, hi, size=(max(h // 32, 2), max(w // 32, 2))).astype(np.float32)
    return cv2.resize(coarse, (w, h), interpolation=cv2.INTER_LINEAR)


def segments(h: int, w: int, rng: np.random.Generator, values: np.ndarray) -> np.ndarray:
    coarse = rng.choice(values, size=(max(h // 64, 2), max(w // 64, 2))).astype(np.uint8)
    return cv2.resize(coarse, (w, h), interpolation=cv2.INTER_NEAREST)


def build_cityscapes(root: Path, n: int, rng: np.random.Generator) -> list[Path]:
    h, w = 1024, 2048
    files = []
    for i in range(n):
        disparity = (smooth_field(h, w, rng, 2, 120) * 256 + 1).astype(np.uint16)
        disparity[:, :64] = 0  # the invalid left band of real Cityscapes disparity
        fd = FrameData(
            "val", "frankfurt", "000000", f"{i:06d}",
            rgb=smooth_image(h, w, rng), disparity=disparity, camera=json.loads(json.dumps(CAMERA)),
            label_ids=segments(h, w, rng, np.arange(34)),
        )  # fmt: skip
        write_frame(root, fd)
        files += [fd.paths["image"], fd.paths["disparity"], fd.paths["label"]]
    return files


def build_nyu(path: Path, n: int, rng: np.random.Generator) -> None:
    h, w = 480, 640
    rgb = np.stack([smooth_image(h, w, rng) for _ in range(n)])
    depth = np.stack([smooth_field(h, w, rng, 0.7, 9.5) for _ in range(n)])
    labels = np.stack([segments(h, w, rng, np.arange(895)).astype(np.uint16) for _ in range(n)])
    write_nyu(NyuFixture(path, rgb, depth, depth.copy(), labels, [f"c{k}" for k in range(1, 895)],
                         [f"scene_{i}" for i in range(n)]))  # fmt: skip


def build_folder(root: Path, n: int, rng: np.random.Generator) -> list[Path]:
    h, w = 480, 640
    files = []
    for i in range(n):
        rgb_path = root / "rgb" / "seq" / f"{i:05d}.jpg"
        depth_path = root / "depth" / "seq" / f"{i:05d}.png"
        rgb_path.parent.mkdir(parents=True, exist_ok=True)
        depth_path.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(rgb_path), smooth_image(h, w, rng), [cv2.IMWRITE_JPEG_QUALITY, 95])
        cv2.imwrite(str(depth_path), (smooth_field(h, w, rng, 0.5, 8.0) * 1000).astype(np.uint16))
        files += [rgb_path, depth_path]
    return files


def time_convert(conv: Converter) -> tuple[float, float, int]:
    """(CPU seconds, wall seconds, frames) of encode_unit over every unit."""
    cfg = ConvertConfig(progress=False)
    units = conv.units()
    t0, w0 = time.process_time(), time.perf_counter()
    n = 0
    for u in units:
        items = encode_unit(conv, u, cfg)
        n += len(items)
        assert all(hasattr(it, "members") for it in items), items
    return time.process_time() - t0, time.perf_counter() - w0, n


def time_decode_files(files: list[Path]) -> Callable[[], float]:
    def run() -> float:
        t0 = time.process_time()
        for f in files:
            flag = (
                cv2.IMREAD_COLOR
                if "leftImg8bit" in f.name or f.suffix == ".jpg"
                else cv2.IMREAD_UNCHANGED
            )
            assert cv2.imread(str(f), flag) is not None
        return time.process_time() - t0

    return run


def time_decode_nyu(path: Path) -> Callable[[], float]:
    def run() -> float:
        t0 = time.process_time()
        with h5py.File(path, "r") as f:
            for i in range(f["images"].shape[0]):
                for k in ("images", "depths", "labels"):
                    np.asarray(f[k][i])
        return time.process_time() - t0

    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    cv2.setNumThreads(1)
    rng = np.random.default_rng(0)
    from converters.cityscapes import CityscapesConfig, CityscapesConverter
    from converters.folder import FolderConfig, FolderConverter
    from converters.nyu import NyuConfig, NyuConverter

    with tempfile.TemporaryDirectory(prefix="bench-converters-") as tmp:
        root = Path(tmp)
        cs_files = build_cityscapes(root / "cs", args.frames, rng)
        build_nyu(root / "nyu.mat", args.frames * 4, rng)
        folder_files = build_folder(root / "folder", args.frames * 4, rng)
        cases: list[tuple[str, Converter, Callable[[], float]]] = [
            ("cityscapes 2048x1024", CityscapesConverter(CityscapesConfig(src=str(root / "cs"))),
             time_decode_files(cs_files)),
            ("cityscapes --size 1024x512",
             CityscapesConverter(CityscapesConfig(src=str(root / "cs"), size=(1024, 512))),
             time_decode_files(cs_files)),
            ("nyu 640x480", NyuConverter(NyuConfig(mat=str(root / "nyu.mat"))),
             time_decode_nyu(root / "nyu.mat")),
            ("folder 640x480 jpg+png16",
             FolderConverter(FolderConfig(src=str(root / "folder"), rgb="rgb/**/*.jpg",
                                          depth="depth/**/*.png", depth_scale=0.001,
                                          depth_kind="metric")),
             time_decode_files(folder_files)),
        ]  # fmt: skip
        print(
            "| converter | frames | convert frames/s per core (CPU time) | decode-only frames/s per core "
            "| convert / decode | convert frames/s (wall) |"
        )
        print("|---|---|---|---|---|---|")
        for name, conv, decode in cases:
            conv_t, wall_t, dec_t, n = float("inf"), float("inf"), float("inf"), 0
            for _ in range(args.repeats):  # interleaved, best of each
                t, w, n = time_convert(conv)
                conv_t, wall_t = min(conv_t, t), min(wall_t, w)
                dec_t = min(dec_t, decode())
            print(
                f"| {name} | {n} | {n / conv_t:.1f} | {n / dec_t:.1f} | {conv_t / dec_t:.2f}x "
                f"| {n / wall_t:.1f} |"
            )
    print(f"load average after: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
