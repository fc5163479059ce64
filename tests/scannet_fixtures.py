"""ScanNet fixtures in the real formats: ``.sens`` v4 written byte by byte from the published layout,
the exporter's folders (color/N.jpg, depth/N.png, pose/N.txt, intrinsic/*.txt), label zips and the
label map. Written independently of converters/sens.py so that the reader is checked against the
layout, not against itself. Also used by bench/scannet.py to generate big scans.
"""

from __future__ import annotations

import io
import struct
import zipfile
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

TSV_COLUMNS = (
    "id", "raw_category", "category", "count", "nyu40id", "eigen13id", "nyuClass", "nyu40class",
    "eigen13class", "ModelNet40", "ModelNet10", "ShapeNetCore55", "synsetoffset", "wnsynsetid",
    "wnsynsetkey", "mpcat40", "mpcat40index",
)  # fmt: skip


@dataclass
class Frame:
    """One .sens frame: camera-to-world pose (4x4), colour bytes, depth bytes (as stored)."""

    pose: np.ndarray
    color: bytes
    depth: bytes
    timestamp_color: int = 0
    timestamp_depth: int = 0


@dataclass
class SensSpec:
    frames: Sequence[Frame]
    name: str = "StructureSensor"
    color_size: tuple[int, int] = (1296, 968)
    depth_size: tuple[int, int] = (640, 480)
    intrinsic_color: np.ndarray = field(
        default_factory=lambda: intrinsic(1169.621094, 1167.105103, 646.295044, 489.927032)
    )
    intrinsic_depth: np.ndarray = field(
        default_factory=lambda: intrinsic(577.590698, 578.729797, 318.905426, 242.683609)
    )
    extrinsic_color: np.ndarray = field(default_factory=lambda: np.eye(4))
    extrinsic_depth: np.ndarray = field(default_factory=lambda: np.eye(4))
    color_compression: int = 2  # jpeg
    depth_compression: int = 1  # zlib
    depth_shift: float = 1000.0
    imu: bytes = struct.pack("<Q", 0)  # an IMU block the reader must tolerate


def intrinsic(fx: float, fy: float, cx: float, cy: float) -> np.ndarray:
    k = np.eye(4)
    k[0, 0], k[1, 1], k[0, 2], k[1, 2] = fx, fy, cx, cy
    return k


def _mat(m: np.ndarray) -> bytes:
    return struct.pack("<16f", *np.asarray(m, dtype=np.float64).reshape(16))


def write_sens(
    path: Path, spec: SensSpec, frames: Iterable[Frame] | None = None, count: int | None = None
) -> Path:
    """Write a version-4 .sens of ``spec.frames``, or of ``count`` frames drawn from ``frames``
    (a generator, so that multi-GB files never sit in memory)."""
    name = spec.name.encode()
    if frames is None:
        frames, count = spec.frames, len(spec.frames)
    assert count is not None
    with open(path, "wb") as f:
        f.write(struct.pack("<I", 4))
        f.write(struct.pack("<Q", len(name)) + name)
        for m in (
            spec.intrinsic_color,
            spec.extrinsic_color,
            spec.intrinsic_depth,
            spec.extrinsic_depth,
        ):
            f.write(_mat(m))
        f.write(struct.pack("<ii", spec.color_compression, spec.depth_compression))
        f.write(struct.pack("<IIII", *spec.color_size, *spec.depth_size))
        f.write(struct.pack("<f", spec.depth_shift))
        f.write(struct.pack("<Q", count))
        written = 0
        for fr in frames:
            f.write(_mat(fr.pose))
            f.write(struct.pack("<QQ", fr.timestamp_color, fr.timestamp_depth))
            f.write(struct.pack("<QQ", len(fr.color), len(fr.depth)))
            f.write(fr.color)
            f.write(fr.depth)
            written += 1
        assert written == count, (written, count)
        f.write(spec.imu)
    return path


def imu_block(n: int) -> bytes:
    """n IMU records (rotation rate, acceleration, magnetic field, attitude, gravity, timestamp)."""
    rec = struct.pack("<15dQ", *np.arange(15, dtype=np.float64), 123456)
    return struct.pack("<Q", n) + rec * n


# --- frame content -----------------------------------------------------------------------------


def colour_image(rng: np.random.Generator, size: tuple[int, int], index: int = 0) -> np.ndarray:
    """A textured RGB image (gradients, blocks, noise): JPEG-compressible like a photo, not flat."""
    w, h = size
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    base = np.stack(
        [
            128 + 100 * np.sin(x / (17 + index % 7) + index),
            128 + 100 * np.cos(y / (13 + index % 5)),
            128 + 60 * np.sin((x + y) / 29),
        ],
        axis=-1,
    )
    for _ in range(6):
        x0, y0 = rng.integers(0, w), rng.integers(0, h)
        base[y0 : y0 + h // 4, x0 : x0 + w // 5] = rng.integers(0, 255, 3)
    base += rng.normal(0, 6, base.shape)
    return np.clip(base, 0, 255).astype(np.uint8)


def sensor_depth(rng: np.random.Generator, size: tuple[int, int], index: int = 0) -> np.ndarray:
    """uint16 mm depth like a structured-light sensor: planes and boxes, noise growing with the
    square of range, millimetre quantisation, holes at edges and in blobs, nothing beyond 8 m."""
    w, h = size
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    z = 1.2 + 3.5 * (y / h) + 0.8 * (x / w) + 0.3 * np.sin(index / 10)  # floor/wall slope, metres
    for _ in range(4):
        x0, y0 = rng.integers(0, w - w // 6), rng.integers(0, h - h // 6)
        bw, bh = rng.integers(w // 10, w // 4), rng.integers(h // 10, h // 4)
        z[y0 : y0 + bh, x0 : x0 + bw] = rng.uniform(0.6, 3.0)
    z = z + rng.normal(0, 1, z.shape).astype(np.float32) * (0.0012 * z * z + 0.001)
    mm = np.rint(z * 1000)
    gy, gx = np.gradient(mm)
    holes = (np.abs(gx) + np.abs(gy)) > 150  # depth edges
    small = rng.random((h // 8 + 1, w // 8 + 1)) < 0.04  # dropout blobs
    holes |= np.kron(small, np.ones((8, 8), bool))[:h, :w]
    mm[holes | (mm > 8000)] = 0
    return mm.astype(np.uint16)


def encode_jpeg(rgb: np.ndarray, quality: int = 92) -> bytes:
    ok, buf = cv2.imencode(".jpg", rgb[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return buf.tobytes()


def encode_depth(depth_mm: np.ndarray) -> bytes:
    return zlib.compress(np.ascontiguousarray(depth_mm, dtype="<u2").tobytes())


def pose(index: int) -> np.ndarray:
    """A camera-to-world pose whose entries are exact in float32 and in the exporter's %f text."""
    p = np.eye(4)
    p[:3, :3] = [[0.0, -1.0, 0.0], [0.5, 0.0, -0.75], [0.75, 0.0, 0.5]]
    p[:3, 3] = [1.25 + index * 0.125, 2.5, -0.375]
    return p


NO_POSE = np.full((4, 4), -np.inf)


# --- exported layout, labels, label map, split lists -----------------------------------------------


def write_exported(
    folder: Path, spec: SensSpec, frame_indices: Iterable[int] | None = None
) -> Path:
    """The ScanNet exporter's folders for ``spec``'s frames (same JPEG bytes; depth as 16-bit PNG;
    matrices as ``np.savetxt(fmt='%f')`` rows, as SensorData.py writes them)."""
    for sub in ("color", "depth", "pose", "intrinsic"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    w, h = spec.depth_size
    for name, m in (
        ("intrinsic_color", spec.intrinsic_color),
        ("extrinsic_color", spec.extrinsic_color),
        ("intrinsic_depth", spec.intrinsic_depth),
        ("extrinsic_depth", spec.extrinsic_depth),
    ):
        _savetxt(folder / "intrinsic" / f"{name}.txt", m)
    indices = range(len(spec.frames)) if frame_indices is None else frame_indices
    for i in indices:
        fr = spec.frames[i]
        (folder / "color" / f"{i}.jpg").write_bytes(fr.color)
        depth = np.frombuffer(zlib.decompress(fr.depth), "<u2").reshape(h, w)
        assert cv2.imwrite(str(folder / "depth" / f"{i}.png"), depth)
        _savetxt(folder / "pose" / f"{i}.txt", fr.pose)
    return folder


def _savetxt(path: Path, m: np.ndarray) -> None:
    with open(path, "w") as f:
        for row in np.asarray(m, dtype=np.float32):
            np.savetxt(f, row[np.newaxis], fmt="%f")


def png16(ids: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(ids, dtype=np.uint16))
    assert ok
    return buf.tobytes()


def write_label_zip(path: Path, labels: dict[int, np.ndarray]) -> Path:
    """``SCENE_2d-label-filt.zip``: ``label-filt/N.png``, 16-bit ScanNet ids at colour size."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        for i, ids in sorted(labels.items()):
            z.writestr(f"label-filt/{i}.png", png16(ids))
    return path


# (ScanNet id, raw category, nyu40 id): a few real rows plus an id with no nyu40 class.
LABEL_ROWS = (
    (1, "wall", 1), (2, "chair", 5), (3, "floor", 2), (4, "table", 7), (5, "door", 8),
    (7, "cabinet", 3), (13, "bed", 4), (40, "refrigerator", 24), (21, "counter", 12),
    (6, "books", 23), (14, "lamp", 35), (22, "ceiling", 22), (77, "shower curtain", 28),
    (3000, "otherstuff", 39), (999, "mystery", None),
)  # fmt: skip


def write_label_map(path: Path, rows: Sequence[tuple[int, str, int | None]] = LABEL_ROWS) -> Path:
    buf = io.StringIO()
    buf.write("\t".join(TSV_COLUMNS) + "\n")
    for sid, cat, nyu in rows:
        cells = [str(sid), cat, cat, "1", "" if nyu is None else str(nyu)] + [""] * 12
        buf.write("\t".join(cells) + "\n")
    path.write_text(buf.getvalue())
    return path


def write_split_lists(src: Path, splits: dict[str, Sequence[str]]) -> None:
    for split, names in splits.items():
        (src / f"scannetv2_{split}.txt").write_text("".join(f"{n}\n" for n in names))


def make_spec(
    n: int,
    *,
    seed: int = 0,
    color_size: tuple[int, int] = (160, 120),
    depth_size: tuple[int, int] = (80, 60),
    name: str = "Sensor7",
    no_pose: Sequence[int] = (),
    imu: bytes | None = None,
) -> SensSpec:
    """A small scan of ``n`` frames with textured colour and sensor-like depth."""
    rng = np.random.default_rng(seed)
    frames = [
        Frame(
            pose=NO_POSE if i in no_pose else pose(i),
            color=encode_jpeg(colour_image(rng, color_size, i)),
            depth=encode_depth(sensor_depth(rng, depth_size, i)),
            timestamp_color=33333 * i,
            timestamp_depth=33333 * i + 7,
        )
        for i in range(n)
    ]
    k_c = intrinsic(148.5, 147.25, 80.25, 59.5)
    k_d = intrinsic(74.25, 73.5, 39.75, 29.625)
    return SensSpec(
        frames=frames, name=name, color_size=color_size, depth_size=depth_size,
        intrinsic_color=k_c, intrinsic_depth=k_d, imu=imu if imu is not None else imu_block(3),
    )  # fmt: skip


def depth_of(spec: SensSpec, i: int) -> np.ndarray:
    w, h = spec.depth_size
    return np.frombuffer(zlib.decompress(spec.frames[i].depth), "<u2").reshape(h, w)
