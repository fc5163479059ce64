"""ScanNet v2: ``.sens`` scans (streamed, see :mod:`converters.sens`) or exported folders -> samples.

The source layout (SRC) is described in :mod:`converters.scannet_layout` and docs/converters/scannet.md.
One work unit = one chunk of at most ``chunk_frames`` kept frames of one scan, so a worker's memory
stays bounded at any frame skip.
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import cv2
import numpy as np

from converters.base import SIZE, Converter, Skipped, SourceInfo, WorkUnit, make_meta
from converters.imaging import CUT_OFF, cut_off, resize_nearest, resize_rgb, scale_intrinsics
from converters.scannet_layout import (
    LABEL_ZIP,
    LABELS,
    SPLITS,
    LabelSource,
    Scan,
    exported_frames,
    frame_indices,
    label_lut,
    label_map_path,
    parse_scenes,
    read_matrix,
    select_scans,
)
from converters.sens import SensHeader, SensReader, SensTruncated
from datakit import png
from datakit.errors import SourceError
from datakit.jpeg import jpeg_header
from datakit.schema import Sample

DEPTH_SCALE_M = 0.001  # stored depth codes are millimetres
DEPTH_SHIFT_MM = 1000.0  # .sens depth_shift for millimetre codes
_REDUCED = {
    2: cv2.IMREAD_REDUCED_COLOR_2,
    4: cv2.IMREAD_REDUCED_COLOR_4,
    8: cv2.IMREAD_REDUCED_COLOR_8,
}


@dataclass(frozen=True)
class ScanNetConfig:
    src: str
    frame_skip: int = 25
    size: tuple[int, int] = (640, 480)
    labels: bool = False
    scenes: tuple[str, ...] | None = None
    split: str | None = None
    # Kept frames per work unit: a unit's encoded samples (~0.4 MB a frame at 640x480) stay in memory
    # until written, in its worker and, with --workers N, up to 2N units in the writer.
    chunk_frames: int = 50


@dataclass(frozen=True)
class Chunk:
    """Frames ``start <= i < stop`` with ``i % frame_skip == 0`` of one scan."""

    scan: Scan
    start: int
    stop: int
    # A scan that cannot be read at all (unusable header, no label zip with --labels): one unit
    # for the whole scan, whose convert() raises this.
    error: str | None = None


class ScanNetConverter(Converter):
    name = "scannet"
    Config = ScanNetConfig
    help = "ScanNet v2 scans (.sens streamed, or exported color/depth/pose folders). See docs/converters/scannet.md."
    params = [
        click.Argument(["src"], type=click.Path()),
        click.Option(["--frame-skip"], type=click.IntRange(min=1), default=25, show_default=True,
                     help="Keep every N-th frame (pretraining works use 25)."),
        click.Option(["--size"], type=SIZE, default="640x480", show_default=True,
                     help="Stored size WxH (colour by area, depth and labels by nearest)."),
        click.Option(["--labels/--no-labels"], default=False, show_default=True,
                     help="Add 20-class labels from SCENE_2d-label-filt.zip."),
        click.Option(["--scenes"], default=None,
                     help="Comma-separated scene ids, or @FILE with one id per line."),
        click.Option(["--split"], type=click.Choice(SPLITS), default=None,
                     help="Only the scans of this official split."),
    ]  # fmt: skip

    config: ScanNetConfig

    @classmethod
    def from_cli(cls, **kwargs: Any) -> ScanNetConverter:
        scenes = kwargs.pop("scenes", None)
        return cls(ScanNetConfig(scenes=parse_scenes(scenes), **kwargs))

    def info(self) -> SourceInfo:
        c = self.config
        return SourceInfo(
            source="scannet",
            depth_unit="m",
            depth_scale=DEPTH_SCALE_M,
            labels=LABELS if c.labels else None,
            extra={"frame_skip": c.frame_skip, "size": list(c.size)},
        )

    def units(self) -> list[WorkUnit]:
        c = self.config
        if not os.path.isdir(c.src):
            raise SourceError(c.src, "not a folder" if os.path.exists(c.src) else "no such folder")
        if c.labels:
            label_lut(str(label_map_path(Path(c.src))))  # fail early, before any work
        units = []
        for scan in select_scans(Path(c.src), c.scenes, c.split):
            if c.labels and scan.labels is None:  # one failure for the scan, not one per chunk
                reason = (
                    f"scan {scan.name}: --labels needs {LABEL_ZIP.format(scan.name)} (not found)"
                )
                units.append(WorkUnit(scan.name, scan.split, Chunk(scan, 0, 0, reason)))
                continue
            try:
                frames = frame_indices(scan, c.frame_skip)
            except SourceError as exc:
                units.append(WorkUnit(scan.name, scan.split, Chunk(scan, 0, 0, exc.reason)))
                continue
            for i in range(0, len(frames), c.chunk_frames):
                first, last = frames[i], frames[min(i + c.chunk_frames, len(frames)) - 1]
                chunk = Chunk(scan, first, last + 1)
                units.append(WorkUnit(f"{scan.name}-{first:06d}", scan.split, chunk))
        return units  # select_scans() orders scans by split, then name

    def convert(self, unit: WorkUnit) -> Iterator[Sample | Skipped]:
        chunk: Chunk = unit.payload
        scan = chunk.scan
        if chunk.error is not None:
            raise SourceError(scan.path, chunk.error)
        labels = LabelSource(scan, Path(self.config.src)) if self.config.labels else None
        try:
            if scan.exported:
                yield from self._convert_exported(chunk, labels)
            else:
                yield from self._convert_sens(chunk, labels)
        finally:
            if labels is not None:
                labels.close()

    def _convert_sens(self, chunk: Chunk, labels: LabelSource | None) -> Iterator[Sample | Skipped]:
        c, scan = self.config, chunk.scan
        kept = range(chunk.start, chunk.stop, c.frame_skip)
        with SensReader(scan.path, scan.name) as reader:
            h = reader.header
            geometry = _Geometry(
                h.intrinsic_color, h.intrinsic_depth, h.color_size, h.depth_size, c.size
            )
            for n, index in enumerate(kept):
                try:
                    frame = reader.read_frame(index)
                except SensTruncated as exc:
                    yield from _lost_to_truncation(exc, kept[n:], c.frame_skip, h.num_frames)
                    return
                where = f"scan {scan.name}: frame {index} at byte {frame.offset}"
                problem = _color_problem(frame.color, h)
                if problem is not None:
                    yield Skipped(scan.path, f"{where}: {problem}")
                    continue
                rgb = decode_color(frame.color, h.color_compression, h.color_size, c.size)
                if rgb is None:
                    yield Skipped(
                        scan.path,
                        f"{where}: colour {h.color_compression} does not decode "
                        f"({len(frame.color)} bytes at byte {frame.color_offset})",
                    )
                    continue
                depth = decode_depth(frame.depth, h)
                if isinstance(depth, str):
                    yield Skipped(scan.path, f"{where}: {depth} (byte {frame.depth_offset})")
                    continue
                yield from self._sample(scan, frame.index, rgb, depth, frame.pose, geometry, labels)

    def _convert_exported(
        self, chunk: Chunk, labels: LabelSource | None
    ) -> Iterator[Sample | Skipped]:
        c, scan = self.config, chunk.scan
        root = Path(scan.path)
        files = exported_frames(root)
        intr = {
            name: read_matrix(root / "intrinsic" / f"intrinsic_{name}.txt")
            for name in ("color", "depth")
        }
        for index in range(chunk.start, chunk.stop, c.frame_skip):
            if index not in files:
                continue
            where = f"scan {scan.name}: frame {index}"
            color_path = root / "color" / files[index]
            data = color_path.read_bytes()
            if cut_off(data):
                yield Skipped(str(color_path), f"{where}: {CUT_OFF}")
                continue
            color_size = jpeg_size(data) if files[index].lower().endswith(("jpg", "jpeg")) else None
            kind = "jpeg" if color_size else "png"
            rgb = decode_color(data, kind, color_size, c.size)
            if rgb is None:
                yield Skipped(str(color_path), f"{where}: colour image does not decode")
                continue
            color_size = color_size or (rgb.shape[1], rgb.shape[0])
            depth_path = root / "depth" / f"{index}.png"
            depth_data = depth_path.read_bytes() if depth_path.is_file() else b""
            if cut_off(depth_data):
                yield Skipped(str(depth_path), f"{where}: {CUT_OFF}")
                continue
            buf = np.frombuffer(depth_data, np.uint8)
            depth = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED) if depth_data else None
            if depth is None or depth.dtype != np.uint16 or depth.ndim != 2:
                yield Skipped(
                    str(depth_path), f"{where}: missing or not a 16-bit single-channel PNG"
                )
                continue
            try:
                pose = read_matrix(root / "pose" / f"{index}.txt")
            except SourceError as exc:  # this frame's file: skip the frame, not the chunk
                yield Skipped(exc.path, f"{where}: {exc.reason}")
                continue
            if pose is not None:  # the .sens stores float32: keep both routes identical
                pose = pose.astype(np.float32).astype(np.float64)
            if pose is not None and not np.isfinite(pose).all():
                pose = None
            depth_size = (depth.shape[1], depth.shape[0])
            geometry = _Geometry(intr["color"], intr["depth"], color_size, depth_size, c.size)
            yield from self._sample(scan, index, rgb, depth, pose, geometry, labels)

    def _sample(
        self,
        scan: Scan,
        index: int,
        rgb: np.ndarray,
        depth_mm: np.ndarray,
        pose: np.ndarray | None,
        geometry: _Geometry,
        labels: LabelSource | None,
    ) -> Iterator[Sample | Skipped]:
        size = self.config.size
        label = None
        if labels is not None:
            read = labels.read(index, size)
            if isinstance(read, str):
                yield Skipped(str(labels.path), f"scan {scan.name}: frame {index}: {read}")
                return
            label = read
        meta = make_meta(
            source="scannet",
            id=f"{scan.name}/{index:06d}",
            split=scan.split,
            width=size[0],
            height=size[1],
            depth_scale=DEPTH_SCALE_M,
            depth_unit="m",
            intrinsics=geometry.color,
            pose=pose,
            scene=scan.name,
            frame=index,
            **({"depth_intrinsics": geometry.depth} if geometry.depth is not None else {}),
        )
        yield Sample(
            key=f"{scan.name}_{index:06d}",
            split=scan.split,
            rgb=rgb,
            meta=meta,
            depth=resize_nearest(depth_mm, size),
            label=label,
        )


# --- decoding ------------------------------------------------------------------------------------


def decode_color(
    data: bytes, compression: str, src_size: tuple[int, int] | None, size: tuple[int, int]
) -> np.ndarray | None:
    """Colour blob -> RGB uint8 at ``size``; None when it does not decode.

    JPEGs are decoded at 1/2, 1/4 or 1/8 scale by the decoder itself (DCT scaling) when that is
    still at least ``size``, then resized: 1296x968 -> 648x484 -> 640x480.
    """
    if not data:  # cv2.imdecode raises cv2.error (not None) on an empty buffer
        return None
    if compression == "raw":
        if src_size is None or len(data) != src_size[0] * src_size[1] * 3:
            return None
        return resize_rgb(np.frombuffer(data, np.uint8).reshape(src_size[1], src_size[0], 3), size)
    flag = cv2.IMREAD_COLOR
    if compression == "jpeg":
        # A cut-off JPEG decodes to grey without an error: demand both markers.
        end_ok = data.endswith(b"\xff\xd9") or data.rstrip(b"\x00").endswith(b"\xff\xd9")
        if not (data.startswith(b"\xff\xd8") and end_ok):
            return None
        if src_size is not None:
            flag = _REDUCED.get(_reduction(src_size, size), cv2.IMREAD_COLOR)
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), flag)
    if bgr is None or bgr.ndim != 3:
        return None
    return _resize(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), size)


def _lost_to_truncation(
    exc: SensTruncated, lost: range, frame_skip: int, num_frames: int
) -> Iterator[Skipped]:
    """One skip per kept frame at or after the frame where a .sens ends. The first kept frame lost
    (in whichever chunk holds it) carries the truncation itself: file, frame and byte offset."""
    first_lost = -(-exc.frame // frame_skip) * frame_skip
    for index in lost:
        if index == first_lost:
            yield Skipped(
                exc.path,
                f"{exc.reason}; kept frames from {index} on are lost (the header says "
                f"{num_frames} frames)",
            )
        else:
            yield Skipped(
                exc.path,
                f"frame {index} is lost to the truncation at frame {exc.frame} (byte {exc.offset})",
            )


def _color_problem(data: bytes, header: SensHeader) -> str | None:
    """Why a colour blob cannot be the header's image, or None. The size is read from the JPEG's
    SOF marker or the PNG's IHDR before decoding, so a header whose size is wrong (and whose
    intrinsics would be scaled by it) is caught at the first frame. A JPEG or PNG cut off before its
    end marker (:func:`converters.imaging.cut_off`) is refused before it reaches the decoder."""
    if header.color_compression in ("jpeg", "png") and cut_off(data):
        kind = header.color_compression
        return f"colour {kind} {CUT_OFF}"
    size = None
    if header.color_compression == "jpeg":
        size = jpeg_size(data)
    elif header.color_compression == "png" and (ihdr := png.header(data)) is not None:
        size = ihdr[:2]
    if size is not None and size != header.color_size:
        w, h = header.color_size
        return (
            f"colour {header.color_compression} is {size[0]}x{size[1]}, the header says {w}x{h} "
            "(corrupt header?)"
        )
    return None


def _resize(rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Area resize, except for a shrink of under 10% (what remains after DCT scaling, e.g.
    648x484 -> 640x480): there an area filter equals a bilinear one and costs 4x as much."""
    h, w = rgb.shape[:2]
    if (w, h) != size and 0.9 <= size[0] / w <= 1 and 0.9 <= size[1] / h <= 1:
        return cv2.resize(rgb, size, interpolation=cv2.INTER_LINEAR)
    return resize_rgb(rgb, size)


def _reduction(src: tuple[int, int], dst: tuple[int, int]) -> int:
    for f in (8, 4, 2):
        if -(-src[0] // f) >= dst[0] and -(-src[1] // f) >= dst[1]:
            return f
    return 1


def decode_depth(blob: bytes, header: SensHeader) -> np.ndarray | str:
    """Depth blob of a .sens frame -> HxW uint16 millimetres, or the reason it is unusable."""
    w, h = header.depth_size
    if header.depth_compression == "zlib":
        try:
            blob = zlib.decompress(blob)
        except zlib.error as exc:
            return f"depth does not inflate: {exc}"
    if len(blob) != w * h * 2:
        return f"depth inflates to {len(blob)} bytes, expected {w}x{h}x2 = {w * h * 2}"
    depth = np.frombuffer(blob, "<u2").reshape(h, w)
    if header.depth_shift != DEPTH_SHIFT_MM:
        mm = np.rint(depth * (DEPTH_SHIFT_MM / header.depth_shift))
        depth = np.clip(mm, 0, 65535).astype(np.uint16)
    return depth


def jpeg_size(data: bytes) -> tuple[int, int] | None:
    """(W, H) from a JPEG's SOF marker without decoding; None when there is none."""
    head = jpeg_header(data)
    return None if head is None else head[:2]


@dataclass(frozen=True)
class _Geometry:
    """Colour and depth intrinsics at the stored size."""

    color: dict[str, float] | None
    depth: dict[str, float] | None

    def __init__(
        self,
        k_color: np.ndarray | None,
        k_depth: np.ndarray | None,
        color_size: tuple[int, int],
        depth_size: tuple[int, int],
        size: tuple[int, int],
    ) -> None:
        object.__setattr__(self, "color", _scaled(k_color, color_size, size))
        object.__setattr__(self, "depth", _scaled(k_depth, depth_size, size))


def _scaled(
    k: np.ndarray | None, src: tuple[int, int], dst: tuple[int, int]
) -> dict[str, float] | None:
    if k is None:
        return None
    # float32 -> float: the stored value, not its shortest decimal.
    k32 = np.asarray(k, dtype=np.float32).astype(np.float64)
    return scale_intrinsics(
        {"fx": k32[0, 0], "fy": k32[1, 1], "cx": k32[0, 2], "cy": k32[1, 2]}, src, dst
    )
