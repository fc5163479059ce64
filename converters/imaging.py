"""Shared by converters: resampling (image by area, depth and labels by nearest, intrinsics scaled)
and a check that an image file is whole."""

from __future__ import annotations

import cv2
import numpy as np

from datakit.errors import SourceError


def resize_rgb(rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """HxWx3 uint8 -> (H', W', 3) with area averaging when shrinking, bilinear when enlarging."""
    w, h = size
    if rgb.shape[1] == w and rgb.shape[0] == h:
        return rgb
    shrinking = w <= rgb.shape[1] and h <= rgb.shape[0]
    interp = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    return cv2.resize(rgb, (w, h), interpolation=interp)


def resize_nearest(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize for depth codes and class ids: no value is invented.

    Sample positions are pixel centres, (x + 0.5) * W / W' - 0.5, rounded; OpenCV's INTER_NEAREST
    floors instead, which shifts the result by up to half a pixel.
    """
    w, h = size
    src_h, src_w = image.shape[:2]
    if (src_w, src_h) == (w, h):
        return image
    xs = np.clip(np.floor((np.arange(w) + 0.5) * src_w / w).astype(np.int64), 0, src_w - 1)
    ys = np.clip(np.floor((np.arange(h) + 0.5) * src_h / h).astype(np.int64), 0, src_h - 1)
    return np.ascontiguousarray(image[ys[:, None], xs[None, :]])


def scale_intrinsics(
    intrinsics: dict[str, float], src_size: tuple[int, int], dst_size: tuple[int, int]
) -> dict[str, float]:
    """Scale fx, fy, cx, cy from ``src_size`` (W, H) to ``dst_size`` (pixel-centre convention)."""
    sx = dst_size[0] / src_size[0]
    sy = dst_size[1] / src_size[1]
    return {
        "fx": intrinsics["fx"] * sx,
        "fy": intrinsics["fy"] * sy,
        "cx": (intrinsics["cx"] + 0.5) * sx - 0.5,
        "cy": (intrinsics["cy"] + 0.5) * sy - 0.5,
    }


CUT_OFF = (
    "truncated: the file ends before its end-of-image marker"  # the reason :func:`cut_off` gives
)


def cut_off(data: bytes) -> bool:
    """A JPEG or PNG that ends before its end-of-image marker (an interrupted copy or download).

    libjpeg decodes a cut-off JPEG, greying out what is missing, with only a warning on stderr, and
    libpng prints its own error line; so this is checked before decoding. A JPEG is whole when an
    end marker follows its last scan (scan data cannot hold one; data after the end, as some cameras
    append, is allowed), a PNG when it holds its IEND chunk. Other formats: False.
    """
    if data.startswith(b"\xff\xd8"):
        # Without any scan, only a missing end marker says "cut off"; with one, it is garbage
        # (an end marker in an EXIF thumbnail can hide a cut there: then the decoder refuses it).
        last_scan = data.rfind(b"\xff\xda")
        return data.find(b"\xff\xd9", max(last_scan, 0)) < 0
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return data.rfind(b"IEND") < 0
    return False


def read_image(path: str, flags: int, kind: str = "image") -> np.ndarray:
    """``path`` decoded by OpenCV with ``flags``; :class:`SourceError` naming it when it does not
    read, is cut off (:func:`cut_off`, before the decoder greys it or prints its own lines) or is
    not a readable ``kind``."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise SourceError(path, f"does not read ({exc.strerror})") from None
    if cut_off(data):
        raise SourceError(path, CUT_OFF)
    img = cv2.imdecode(np.frombuffer(data, np.uint8), flags) if data else None
    if img is None:
        raise SourceError(path, f"not a readable {kind}")
    return img
