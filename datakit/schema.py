"""The sample schema: one table names every member of a sample, its tar extension, codec and dtype.

Writer, reader, verify, preview, docs and tests derive from :data:`FIELDS`; no other module spells a
member's extension. Codecs are dispatched by extension through :data:`CODECS`, as WebDataset does.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from datakit import png
from datakit.errors import SampleError

# A file OpenCV cannot decode is reported by us as one line naming it; OpenCV's own "[ WARN..." /
# "[ERROR..." lines on stderr would come first and bury it. Every module that decodes with cv2
# imports this one. OPENCV_LOG_LEVEL, when set, still wins (for debugging OpenCV itself).
if "OPENCV_LOG_LEVEL" not in os.environ:
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)

SCHEMA_VERSION = 1
KEY_PATTERN = re.compile(r"^[A-Za-z0-9_-]+$")
RGB_FORMATS = ("jpg", "png")

# Metadata every KEY.json must hold (SPEC 2); optional ones are checked for type when present.
REQUIRED_META = ("source", "id", "split", "width", "height", "depth_scale", "depth_unit")


@dataclass(frozen=True)
class Codec:
    """How one member's bytes map to an array or object."""

    encode: Callable[..., bytes]
    decode: Callable[[bytes], Any]


def _encode_jpg(rgb: np.ndarray, *, jpeg_quality: int = 95) -> bytes:
    ok, buf = cv2.imencode(
        ".jpg",
        np.ascontiguousarray(rgb[..., ::-1]),
        [cv2.IMWRITE_JPEG_QUALITY, int(jpeg_quality)],
    )
    if not ok:
        raise SampleError("JPEG encoding failed")
    return buf.tobytes()


def _encode_png(image: np.ndarray, **_: Any) -> bytes:
    arr = np.ascontiguousarray(image[..., ::-1] if image.ndim == 3 else image)
    # Compression 1: PNG size within ~10% of level 9 at a fraction of the encode time.
    ok, buf = cv2.imencode(".png", arr, [cv2.IMWRITE_PNG_COMPRESSION, 1])
    if not ok:
        raise SampleError("PNG encoding failed")
    return buf.tobytes()


# Depth and label maps: the Up row filter with run-length matching. Measured on 640x480 sensor-like
# depth (bench in docs/benchmarks.md): encodes in half the time of libpng's adaptive filters, 3 %
# smaller, and decodes through datakit.png's fast path (None/Sub/Up rows) at half of cv2's cost.
_MAP_PNG_PARAMS = [
    cv2.IMWRITE_PNG_COMPRESSION,
    1,
    cv2.IMWRITE_PNG_FILTER,
    cv2.IMWRITE_PNG_FILTER_UP,
    cv2.IMWRITE_PNG_STRATEGY,
    cv2.IMWRITE_PNG_STRATEGY_RLE,
]


def _encode_map_png(image: np.ndarray, **_: Any) -> bytes:
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(image), _MAP_PNG_PARAMS)
    if not ok:
        raise SampleError("PNG encoding failed")
    return buf.tobytes()


# OpenCV >= 4.10 decodes straight to RGB, sparing a BGR -> RGB copy of the whole frame.
_IMREAD_RGB = getattr(cv2, "IMREAD_COLOR_RGB", None)
# Pixels as stored: an EXIF orientation tag would turn RGB away from its depth and label PNGs (and
# from nvJPEG's decode on the GPU path), which OpenCV applies by default.
_IMREAD_FLAGS = (_IMREAD_RGB if _IMREAD_RGB is not None else cv2.IMREAD_COLOR) | (
    cv2.IMREAD_IGNORE_ORIENTATION
)


def _decode_rgb(data: bytes) -> np.ndarray:
    if not data:  # cv2.imdecode raises cv2.error (not None) on an empty buffer
        raise SampleError("image bytes do not decode (empty member)")
    buf = np.frombuffer(data, np.uint8)
    img = cv2.imdecode(buf, _IMREAD_FLAGS)
    if img is None or img.ndim != 3:
        raise SampleError("image bytes do not decode")
    return img if _IMREAD_RGB is not None else np.ascontiguousarray(img[..., ::-1])


def _decode_gray(data: bytes) -> np.ndarray:
    """Single-channel PNG, bit-exact (WebDataset's PIL decoders would cut 16 bits to 8).

    datakit.png's fast path (ISA-L inflate, numpy row filters) takes the PNGs the writer makes;
    OpenCV's IMREAD_UNCHANGED takes everything else.
    """
    if not data:  # cv2.imdecode raises cv2.error (not None) on an empty buffer
        raise SampleError("image bytes do not decode (empty member)")
    try:
        img = png.decode_gray(data)
    except ValueError as exc:
        raise SampleError(f"image bytes do not decode ({exc})") from None
    if img is None:
        img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise SampleError("image bytes do not decode")
    return img


def _encode_json(meta: Mapping[str, Any], **_: Any) -> bytes:
    return json.dumps(meta, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


def _decode_json(data: bytes) -> dict[str, Any]:
    try:
        obj = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SampleError(f"metadata is not JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise SampleError("metadata JSON is not an object")
    return obj


# Extension -> codec. The only place codecs are bound to file extensions.
CODECS: dict[str, Codec] = {
    "rgb.jpg": Codec(_encode_jpg, _decode_rgb),
    "rgb.png": Codec(_encode_png, _decode_rgb),
    "depth.png": Codec(_encode_map_png, _decode_gray),
    "label.png": Codec(_encode_map_png, _decode_gray),
    "json": Codec(_encode_json, _decode_json),
}


@dataclass(frozen=True)
class Field:
    """One member of a sample: attribute name, tar extension(s), dtypes, and whether it must exist."""

    name: str
    extensions: tuple[str, ...]
    dtypes: tuple[str, ...]
    channels: int | None
    required: bool
    doc: str


FIELDS: tuple[Field, ...] = (
    Field(
        "rgb",
        ("rgb.jpg", "rgb.png"),
        ("uint8",),
        3,
        True,
        "8-bit RGB image, H x W x 3, read in its stored pixel order (a JPEG's EXIF orientation tag "
        "is ignored)",
    ),
    Field(
        "depth",
        ("depth.png",),
        ("uint16",),
        1,
        False,
        "16-bit single-channel PNG, H x W; 0 = invalid; physical value = pixel x depth_scale",
    ),
    Field(
        "label",
        ("label.png",),
        ("uint8", "uint16"),
        1,
        False,
        "8- or 16-bit single-channel class ids, H x W; ignore_index from _info.json",
    ),
    Field(
        "meta",
        ("json",),
        (),
        None,
        True,
        "metadata object: " + ", ".join(REQUIRED_META) + ", and intrinsics/pose where known",
    ),
)
FIELD_BY_NAME = {f.name: f for f in FIELDS}
# Every extension a reader decodes; anything else in a shard is ignored (never unpickled).
DECLARED_EXTENSIONS = tuple(ext for f in FIELDS for ext in f.extensions)
EXTENSION_TO_FIELD = {ext: f for f in FIELDS for ext in f.extensions}


@dataclass
class Sample:
    """One RGB-D frame as a converter produces it.

    ``depth`` holds the stored 16-bit codes (physical = code x ``meta["depth_scale"]``, 0 invalid);
    ``None`` for sources without an exogenous channel. ``label`` is uint8/uint16 or ``None``.
    """

    key: str
    split: str
    rgb: np.ndarray
    meta: dict[str, Any]
    depth: np.ndarray | None = None
    label: np.ndarray | None = None


@dataclass
class DecodedSample:
    """A sample as readers give it: ``depth`` in physical units (float32, 0 = invalid)."""

    key: str
    rgb: np.ndarray
    meta: dict[str, Any]
    depth: np.ndarray | None = None
    depth_raw: np.ndarray | None = None
    label: np.ndarray | None = None
    url: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def __getitem__(self, name: str) -> Any:  # dict-style access: sample["rgb"]
        return getattr(self, name)


def validate_key(key: str) -> str:
    """Return ``key`` or raise :class:`SampleError` when WebDataset would mangle it (dots etc.)."""
    # fullmatch: "$" alone lets a trailing newline through.
    if not isinstance(key, str) or not KEY_PATTERN.fullmatch(key):
        raise SampleError(f"invalid sample key {key!r}: must match {KEY_PATTERN.pattern}")
    return key


def validate(sample: Sample) -> None:
    """Check shapes, dtypes and required metadata of a sample; raise :class:`SampleError`."""
    validate_key(sample.key)
    rgb = sample.rgb
    if not (
        isinstance(rgb, np.ndarray)
        and rgb.dtype == np.uint8
        and rgb.ndim == 3
        and rgb.shape[2] == 3
    ):
        raise SampleError(f"{sample.key}: rgb must be HxWx3 uint8, got {_describe(rgb)}")
    h, w = rgb.shape[:2]
    if sample.depth is not None:
        d = sample.depth
        if not (isinstance(d, np.ndarray) and d.dtype == np.uint16 and d.shape == (h, w)):
            raise SampleError(f"{sample.key}: depth must be {h}x{w} uint16, got {_describe(d)}")
    if sample.label is not None:
        lab = sample.label
        if not (
            isinstance(lab, np.ndarray)
            and lab.dtype in (np.uint8, np.uint16)
            and lab.shape == (h, w)
        ):
            raise SampleError(
                f"{sample.key}: label must be {h}x{w} uint8/uint16, got {_describe(lab)}"
            )
    validate_meta(sample.meta, key=sample.key, width=w, height=h)


def labels_outside(label: np.ndarray, num_classes: int, ignore_index: int) -> list[int]:
    """The label values that are neither a class id (0..num_classes-1) nor ``ignore_index``, sorted;
    none when the class list is empty (classes not named: no range to check against)."""
    if not num_classes:
        return []
    values = np.unique(label)
    return values[(values >= num_classes) & (values != ignore_index)].tolist()


def validate_meta(meta: Mapping[str, Any], *, key: str, width: int, height: int) -> None:
    missing = [k for k in REQUIRED_META if k not in meta]
    if missing:
        raise SampleError(f"{key}: metadata lacks {', '.join(missing)}")
    if (meta["width"], meta["height"]) != (width, height):
        raise SampleError(
            f"{key}: metadata says {meta['width']}x{meta['height']}, image is {width}x{height}"
        )
    scale = meta["depth_scale"]
    # JSON decoding accepts Infinity (0 x inf = NaN would turn invalid pixels into NaN); bool is int.
    if not (
        isinstance(scale, (int, float))
        and not isinstance(scale, bool)
        and math.isfinite(scale)
        and scale > 0
    ):
        raise SampleError(f"{key}: depth_scale must be a positive finite number")
    intr = meta.get("intrinsics")
    if intr is not None and not (
        isinstance(intr, dict) and all(k in intr for k in ("fx", "fy", "cx", "cy"))
    ):
        raise SampleError(f"{key}: intrinsics need fx, fy, cx, cy")
    pose = meta.get("pose")
    if pose is not None and _shape_of(pose) != (4, 4):
        raise SampleError(f"{key}: pose must be a 4x4 matrix")


def _shape_of(matrix: Any) -> tuple[int, ...] | None:
    """The shape of a numeric nested list, or None when it is ragged or not numeric."""
    try:
        return np.asarray(matrix, dtype=np.float64).shape
    except (TypeError, ValueError):
        return None


def encode(sample: Sample, *, rgb_format: str = "jpg", jpeg_quality: int = 95) -> dict[str, bytes]:
    """Validate and encode a sample to ``{extension: bytes}`` in schema order."""
    if rgb_format not in RGB_FORMATS:
        raise SampleError(f"rgb format must be one of {RGB_FORMATS}, got {rgb_format!r}")
    validate(sample)
    meta = dict(sample.meta)
    meta.setdefault("has_depth", sample.depth is not None)
    values = {"rgb": sample.rgb, "depth": sample.depth, "label": sample.label, "meta": meta}
    out: dict[str, bytes] = {}
    for f in FIELDS:
        value = values[f.name]
        if value is None:
            continue
        ext = f"rgb.{rgb_format}" if f.name == "rgb" else f.extensions[0]
        out[ext] = CODECS[ext].encode(value, jpeg_quality=jpeg_quality)
    return out


def decode(key: str, members: Mapping[str, bytes], *, url: str = "") -> DecodedSample:
    """Decode the declared members of one sample (extension -> bytes); others are ignored.

    Raises :class:`SampleError` for a missing required member, undecodable bytes or a shape mismatch.
    """
    decoded: dict[str, Any] = {}
    for ext, data in members.items():
        f = EXTENSION_TO_FIELD.get(ext)
        if f is None:
            continue
        if f.name in decoded:
            raise SampleError(f"{key}: two members for field {f.name}")
        try:
            decoded[f.name] = CODECS[ext].decode(data)
        except SampleError as exc:
            raise SampleError(f"{key}.{ext}: {exc}") from None
    for f in FIELDS:
        if f.required and f.name not in decoded:
            raise SampleError(f"{key}: missing member {'/'.join(f.extensions)}")
    rgb, meta = decoded["rgb"], decoded["meta"]
    raw = decoded.get("depth")
    label = decoded.get("label")
    h, w = rgb.shape[:2]
    if raw is not None and (raw.dtype != np.uint16 or raw.shape != (h, w)):
        raise SampleError(f"{key}: depth must be {h}x{w} uint16 PNG, got {_describe(raw)}")
    if label is not None and (label.ndim != 2 or label.shape != (h, w)):
        raise SampleError(f"{key}: label must be {h}x{w} single channel, got {_describe(label)}")
    validate_meta(meta, key=key, width=w, height=h)
    depth = None
    if raw is not None:
        depth = raw.astype(np.float32) * np.float32(meta["depth_scale"])
    return DecodedSample(
        key=key, rgb=rgb, meta=meta, depth=depth, depth_raw=raw, label=label, url=url
    )


def _describe(x: Any) -> str:
    if isinstance(x, np.ndarray):
        return f"{'x'.join(map(str, x.shape))} {x.dtype}"
    return type(x).__name__


def schema_table_markdown() -> str:
    """The member table of docs/format.md, generated from :data:`FIELDS`."""
    rows = ["| field | member | dtype | required | content |", "|---|---|---|---|---|"]
    for f in FIELDS:
        members = " or ".join(f"`KEY.{e}`" for e in f.extensions)
        rows.append(
            f"| {f.name} | {members} | {', '.join(f.dtypes) or 'JSON'} | "
            f"{'yes' if f.required else 'no'} | {f.doc} |"
        )
    return "\n".join(rows)
