"""A streaming reader of ScanNet ``.sens`` files (version 4).

The official reader loads the whole file (1-6 GB per scan) into memory. This one parses the header,
walks the frames by their byte counts with ``pread`` (so it can start at frame k and seek past the
frames it does not keep without reading them) and returns the raw colour and depth blobs of the
frames asked for. Decoding is the caller's business. Layout (little endian)::

    u32 version (4); u64 n + n bytes sensor name;
    f32[16] x 4: colour intrinsic, colour extrinsic, depth intrinsic, depth extrinsic (row major)
    i32 colour compression (0 raw, 1 png, 2 jpeg); i32 depth compression (0 raw, 1 zlib, 2 occi)
    u32 colour width, height, depth width, height; f32 depth shift; u64 frame count
    per frame: f32[16] camera-to-world; u64 colour, depth timestamp; u64 colour, depth byte counts;
               the colour bytes; the depth bytes
    then an IMU block, never read here.
"""

from __future__ import annotations

import os
import struct
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from datakit.errors import SourceError

SENS_VERSION = 4
COLOR_COMPRESSION = {0: "raw", 1: "png", 2: "jpeg"}
DEPTH_COMPRESSION = {0: "raw", 1: "zlib"}  # 2 (occi) is never used by ScanNet and not supported
FRAME_HEADER = struct.Struct("<16f4Q")  # pose, colour/depth timestamps, colour/depth byte counts
_FIXED_HEADER = struct.Struct("<64f2i4IfQ")  # after the name: 4 matrices .. frame count
# Largest image side a header may claim: ScanNet's are 1296x968 (colour) and 640x480 (depth); a
# corrupt header (100000x100000) would otherwise scale the intrinsics to nonsense.
MAX_IMAGE_SIDE = 16384
# Most bytes a frame's colour or depth blob may have: 4x its raw image + 1 MiB (JPEG, PNG and zlib
# stay far below). A corrupt byte count that still fits in the file would otherwise be read whole.
BLOB_RAW_FACTOR = 4
BLOB_SLACK = 1 << 20
# Frames whose offsets are remembered per process: one walk serves every chunk of a scan.
_INDEX_CACHE_SCANS = 8


class SensTruncated(SourceError):
    """The file ends inside frame ``frame`` (whose header starts at byte ``offset``): the frames
    before it are intact and readable, that frame and every later one are lost."""

    def __init__(self, path: object, message: str, frame: int, offset: int) -> None:
        super().__init__(path, message)
        self.frame = frame
        self.offset = offset


@dataclass(frozen=True)
class SensHeader:
    """The file header. Matrices are 4x4 float64 (exact copies of the stored float32)."""

    version: int
    sensor_name: str
    intrinsic_color: np.ndarray
    extrinsic_color: np.ndarray
    intrinsic_depth: np.ndarray
    extrinsic_depth: np.ndarray
    color_compression: str
    depth_compression: str
    color_size: tuple[int, int]  # (W, H)
    depth_size: tuple[int, int]  # (W, H)
    depth_shift: float  # stored depth code / depth_shift = metres
    num_frames: int
    frames_offset: int  # byte offset of frame 0


@dataclass(frozen=True)
class SensFrame:
    """One frame's header and blobs. ``pose`` is camera-to-world, None when not finite."""

    index: int
    offset: int  # byte offset of the frame header
    pose: np.ndarray | None
    timestamp_color: int
    timestamp_depth: int
    color: bytes
    depth: bytes

    @property
    def color_offset(self) -> int:
        return self.offset + FRAME_HEADER.size

    @property
    def depth_offset(self) -> int:
        return self.color_offset + len(self.color)


class SensReader:
    """Random access to the frames of one ``.sens`` file without loading it.

    Use as a context manager. ``scan`` names the scan in every error message. Raises
    :class:`SourceError` for a header that is unreadable or implausible, and
    :class:`SensTruncated` (with the scan, frame index and byte offset) for a frame whose bytes run
    past the end of the file or whose byte counts are implausible for the header's image sizes
    (never read, so memory stays bounded); the frames before that one stay readable.
    """

    def __init__(self, path: str | os.PathLike[str], scan: str | None = None) -> None:
        self.path = Path(path)
        self.scan = scan or self.path.stem
        try:
            self._fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
        except OSError as exc:
            raise SourceError(self.path, f"cannot open: {exc.strerror}") from None
        try:
            self.file_size = os.fstat(self._fd).st_size
            self.header = self._read_header()
            self._offsets = _offsets_for(self.path, self.file_size, self._fd, self.header)
        except BaseException:
            os.close(self._fd)
            raise

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> SensReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _fail(self, message: str) -> SourceError:
        return SourceError(self.path, f"scan {self.scan}: {message}")

    def _pread(self, n: int, offset: int, what: str) -> bytes:
        data = os.pread(self._fd, n, offset)
        if len(data) != n:
            raise self._fail(
                f"{what} at byte {offset}: needs {n} bytes, the file ends after {len(data)} "
                f"(truncated; file size {self.file_size})"
            )
        return data

    def _read_header(self) -> SensHeader:
        version, name_len = struct.unpack("<IQ", self._pread(12, 0, "header"))
        if version != SENS_VERSION:
            raise self._fail(f"header at byte 0: version {version}, expected {SENS_VERSION}")
        if name_len > 4096:
            raise self._fail(f"header at byte 4: sensor name length {name_len} is implausible")
        name = self._pread(name_len, 12, "sensor name").decode("utf-8", "replace")
        pos = 12 + name_len
        vals = _FIXED_HEADER.unpack(self._pread(_FIXED_HEADER.size, pos, "header"))
        mats = np.asarray(vals[:64], dtype=np.float64).reshape(4, 4, 4)
        ccomp, dcomp, cw, ch, dw, dh, shift, count = vals[64:]
        if ccomp not in COLOR_COMPRESSION:
            raise self._fail(f"header: unsupported colour compression {ccomp}")
        if dcomp not in DEPTH_COMPRESSION:
            raise self._fail(f"header: unsupported depth compression {dcomp}")
        sizes_at = pos + 64 * 4 + 2 * 4  # byte offset of the colour width
        for what, (w, h), at in (("colour", (cw, ch), sizes_at), ("depth", (dw, dh), sizes_at + 8)):
            if not (1 <= w <= MAX_IMAGE_SIDE and 1 <= h <= MAX_IMAGE_SIDE):
                raise self._fail(
                    f"header at byte {at}: {what} size {w}x{h} is "
                    f"implausible (each side must be 1..{MAX_IMAGE_SIDE}; corrupt header?)"
                )
        if not (np.isfinite(shift) and shift > 0):
            raise self._fail(f"header: depth shift {shift} is not a positive number")
        frames_offset = pos + _FIXED_HEADER.size
        return SensHeader(
            version=version,
            sensor_name=name,
            intrinsic_color=mats[0],
            extrinsic_color=mats[1],
            intrinsic_depth=mats[2],
            extrinsic_depth=mats[3],
            color_compression=COLOR_COMPRESSION[ccomp],
            depth_compression=DEPTH_COMPRESSION[dcomp],
            color_size=(cw, ch),
            depth_size=(dw, dh),
            depth_shift=float(shift),
            num_frames=count,
            frames_offset=frames_offset,
        )

    @property
    def num_frames(self) -> int:
        return self.header.num_frames

    @property
    def room(self) -> int:
        """How many frames the file has room for (each needs at least its header). A header
        count above this means a truncated file or a corrupt count: reading frame ``room`` or
        earlier then raises :class:`SensTruncated` where the file ends."""
        return max(self.file_size - self.header.frames_offset, 0) // FRAME_HEADER.size

    def _offset(self, index: int) -> int:
        """Byte offset of frame ``index``, walking frame headers (seeks only) as far as needed."""
        offsets = self._offsets
        while len(offsets) <= index:
            i = len(offsets) - 1
            head = self._frame_header(i, offsets[i])
            offsets.append(offsets[i] + FRAME_HEADER.size + head[-2] + head[-1])
        return offsets[index]

    def _frame_header(self, index: int, off: int) -> tuple[Any, ...]:
        """Frame ``index``'s header at byte ``off``, checked to end (with its bytes) in the file."""
        if off + FRAME_HEADER.size > self.file_size:
            raise self._truncated(
                index, off, f"its {FRAME_HEADER.size}-byte header runs past the end of the file"
            )
        head = FRAME_HEADER.unpack(self._pread(FRAME_HEADER.size, off, f"frame {index} header"))
        csize, dsize = head[-2], head[-1]
        if off + FRAME_HEADER.size + csize + dsize > self.file_size:
            raise self._truncated(
                index, off, f"{csize} colour + {dsize} depth bytes run past the end of the file"
            )
        (cw, ch), (dw, dh) = self.header.color_size, self.header.depth_size
        for what, n, (w, h), raw in (
            ("colour", csize, (cw, ch), cw * ch * 3),
            ("depth", dsize, (dw, dh), dw * dh * 2),
        ):
            if n > BLOB_RAW_FACTOR * raw + BLOB_SLACK:
                raise self._truncated(
                    index, off, f"{what} byte count {n} is implausible for a {w}x{h} image"
                )
        return head

    def _truncated(self, index: int, off: int, what: str) -> SensTruncated:
        return SensTruncated(
            self.path,
            f"scan {self.scan}: frame {index} at byte {off}: {what} "
            f"(size {self.file_size}; truncated or corrupt)",
            frame=index,
            offset=off,
        )

    def read_frame(self, index: int) -> SensFrame:
        """Header and blobs of frame ``index`` (0-based)."""
        if not 0 <= index < self.num_frames:
            raise IndexError(f"frame {index} out of range 0..{self.num_frames - 1}")
        off = self._offset(index)
        head = self._frame_header(index, off)
        tc, td, csize, dsize = (int(v) for v in head[16:])
        if len(self._offsets) == index + 1:  # the next frame's offset: no second header read
            self._offsets.append(off + FRAME_HEADER.size + csize + dsize)
        blob = self._pread(csize + dsize, off + FRAME_HEADER.size, f"frame {index} data")
        pose = np.asarray(head[:16], dtype=np.float64).reshape(4, 4)
        return SensFrame(
            index=index,
            offset=off,
            pose=pose if np.isfinite(pose).all() else None,
            timestamp_color=tc,
            timestamp_depth=td,
            color=blob[:csize],
            depth=blob[csize:],
        )

    def frames(self, start: int = 0, stop: int | None = None, step: int = 1) -> Iterator[SensFrame]:
        """Frames ``start, start+step, ... < stop``; the frames between are never read."""
        stop = self.num_frames if stop is None else min(stop, self.num_frames)
        for i in range(start, stop, step):
            yield self.read_frame(i)


# (path, size, mtime) -> offsets of frames 0..k walked so far, for the last few scans.
_OFFSET_CACHE: OrderedDict[tuple[str, int, int], list[int]] = OrderedDict()


def _offsets_for(path: Path, size: int, fd: int, header: SensHeader) -> list[int]:
    key = (str(path.resolve()), size, os.fstat(fd).st_mtime_ns)
    offsets = _OFFSET_CACHE.pop(key, None)
    if offsets is None or offsets[0] != header.frames_offset:
        offsets = [header.frames_offset]
    _OFFSET_CACHE[key] = offsets
    while len(_OFFSET_CACHE) > _INDEX_CACHE_SCANS:
        _OFFSET_CACHE.popitem(last=False)
    return offsets


def read_header(path: str | os.PathLike[str], scan: str | None = None) -> SensHeader:
    """Only the header (a few hundred bytes): what :meth:`Converter.units` may afford."""
    with SensReader(path, scan) as reader:
        return reader.header
