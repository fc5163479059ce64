"""Paired views of one RGB-D sample (SPEC 4): random resized crops, flips and the asymmetric colour
recipe on RGB only; depth and labels follow the same geometry by nearest sampling.

Pixel convention (see docs/views.md). A source pixel ``i`` has its centre at position ``i`` and
normalised position ``u = i / (W - 1)`` (``v = j / (H - 1)`` vertically). A view of ``S x S``
pixels carries ``coords = (x1, y1, x2, y2)``: the normalised source positions of the CENTRES of its
first and last output column / row. Output pixel (row ``r``, column ``c``) therefore shows the source
point::

    u = x1 + (x2 - x1) * c / (S - 1)        v = y1 + (y2 - y1) * r / (S - 1)

A flipped view has ``x1 > x2``. The crop ``box`` (left, top, width, height, integer source pixels) is
the region whose outer edges map to the output's outer edges, so ``x1 = (left - 0.5 + 0.5 * width /
S) / (W - 1)`` and ``x2 = (left + width - 0.5 - 0.5 * width / S) / (W - 1)`` (swapped when flipped).
For periodic samples (``meta["periodic_x"]``, borehole azimuth) ``left`` is anywhere in ``[0, W)``,
the crop may run across the seam, and x positions are unwrapped: ``u`` and ``u + W / (W - 1)`` are the
same azimuth.

Everything random is drawn from a seeded :class:`numpy.random.Generator`; geometry and colour draw
from separate child streams, so switching colour ops off never changes the crops.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from datakit.errors import UsageError
from datakit.schema import DecodedSample

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# The batch dict of SPEC 4, in order; label1/label2 only when the dataset has labels.
BATCH_KEYS = (
    "view1",
    "view2",
    "depth1",
    "depth2",
    "coords1",
    "coords2",
    "periodic",
    "period",
    "label1",
    "label2",
)


@dataclass(frozen=True)
class ViewConfig:
    """How two views of a sample are drawn. Pairs are (view 1, view 2) where SPEC 4 is asymmetric.

    size: output side S in pixels. scale: crop area as a fraction of the image (RandomResizedCrop).
    ratio: crop aspect ratio (width / height) range, sampled log-uniformly. hflip: flip probability.
    photometric: False switches every colour op off (geometry is unchanged).
    jitter: ColorJitter (brightness, contrast, saturation, hue) strengths, applied with jitter_p in a
    random order. grayscale_p, blur_p (per view), blur_sigma (range, in output pixels), solarize_p
    (per view, threshold 128 of 255).
    periodic_roll: crops of periodic samples start anywhere along x and may wrap across the seam
    (a random azimuth roll before cropping); False crops them like ordinary images.
    min_overlap: resample view 2's crop until the two crops share at least this fraction of the
    smaller crop's area (0 = off); after overlap_tries the best candidate is kept.
    labels: include label1/label2 when the dataset has labels.
    mean, std: normalisation of RGB in [0, 1].
    """

    size: int = 224
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    hflip: float = 0.5
    photometric: bool = True
    jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.2, 0.1)
    jitter_p: float = 0.8
    grayscale_p: float = 0.2
    blur_p: tuple[float, float] = (1.0, 0.1)
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    solarize_p: tuple[float, float] = (0.0, 0.2)
    periodic_roll: bool = True
    min_overlap: float = 0.0
    overlap_tries: int = 20
    labels: bool = True
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def __post_init__(self) -> None:
        lo, hi = self.scale
        if self.size < 2:
            raise UsageError(f"view size must be at least 2, got {self.size}")
        if not (0 < lo <= hi <= 1):
            raise UsageError(f"scale must satisfy 0 < lo <= hi <= 1, got {self.scale}")
        if not (0 < self.ratio[0] <= self.ratio[1]):
            raise UsageError(f"ratio must satisfy 0 < lo <= hi, got {self.ratio}")
        if not (0.0 <= self.min_overlap <= 1.0):
            raise UsageError(f"min_overlap must be within [0, 1], got {self.min_overlap}")
        if not (min(self.jitter[:3]) >= 0 and 0 <= self.jitter[3] <= 0.5):
            raise UsageError(
                "jitter strengths: brightness, contrast, saturation >= 0 and hue within [0, 0.5], "
                f"got {self.jitter}"
            )
        if not (0 < self.blur_sigma[0] <= self.blur_sigma[1]):
            raise UsageError(f"blur_sigma must satisfy 0 < lo <= hi, got {self.blur_sigma}")
        probs = [self.hflip, self.jitter_p, self.grayscale_p, *self.blur_p, *self.solarize_p]
        if not all(0.0 <= p <= 1.0 for p in probs):
            raise UsageError("probabilities must be within [0, 1]")


@dataclass(frozen=True)
class Box:
    """A crop in source pixels: columns left .. left+width-1 (modulo W when periodic), rows top ..
    top+height-1."""

    left: int
    top: int
    width: int
    height: int


@dataclass(frozen=True)
class Photometric:
    """Colour parameters of one view. ``order`` lists the jitter ops (0 brightness, 1 contrast,
    2 saturation, 3 hue) in the order applied; factors are torchvision's (1 / 0 = identity)."""

    jitter: bool = False
    brightness: float = 1.0
    contrast: float = 1.0
    saturation: float = 1.0
    hue: float = 0.0
    order: tuple[int, ...] = (0, 1, 2, 3)
    grayscale: bool = False
    blur_sigma: float = 0.0  # 0 = no blur
    solarize: bool = False


@dataclass(frozen=True)
class ViewParams:
    """Everything random about one view; applying it is deterministic."""

    box: Box
    flip: bool
    photometric: Photometric


@dataclass
class View:
    """One augmented view, as arrays (HWC uint8 RGB before normalisation).

    rgb (S, S, 3) uint8; depth (S, S) float32 physical units, 0 = invalid, or None; label (S, S)
    int64 or None; coords (4,) float32 x1, y1, x2, y2 (module docstring); box and flip as drawn.
    """

    rgb: np.ndarray
    depth: np.ndarray | None
    label: np.ndarray | None
    coords: np.ndarray
    box: Box
    flip: bool
    params: ViewParams


@dataclass
class PairedViews:
    """The two views of one sample; ``periodic`` says x is circular."""

    view1: View
    view2: View
    periodic: bool
    key: str = ""
    width: int = 0  # source width W: a periodic x wraps with period W / (W - 1) in coords units
    extra: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------------------- sampling


def sample_box(
    rng: np.random.Generator, height: int, width: int, cfg: ViewConfig, *, periodic: bool = False
) -> Box:
    """torchvision's RandomResizedCrop.get_params on our generator; periodic crops start anywhere."""
    area = height * width
    log_ratio = (math.log(cfg.ratio[0]), math.log(cfg.ratio[1]))
    wrap = periodic and cfg.periodic_roll
    for _ in range(10):
        target = area * rng.uniform(cfg.scale[0], cfg.scale[1])
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width if wrap else width - w + 1))
            return Box(left, top, w, h)
    # Fallback: the whole image clipped to the ratio range, centred.
    in_ratio = width / height
    if in_ratio < cfg.ratio[0]:
        w, h = width, int(round(width / cfg.ratio[0]))
    elif in_ratio > cfg.ratio[1]:
        h, w = height, int(round(height * cfg.ratio[1]))
    else:
        w, h = width, height
    return Box((width - w) // 2, (height - h) // 2, w, h)


def _factor(strength: float, u: float) -> float:
    """torchvision's ColorJitter factor: uniform in [max(0, 1 - strength), 1 + strength]."""
    lo = max(0.0, 1.0 - strength)
    return float(lo + (1.0 + strength - lo) * u)


def sample_photometric(rng: np.random.Generator, cfg: ViewConfig, index: int) -> Photometric:
    """Colour parameters of view ``index`` (0 or 1). Always draws the same count of numbers."""
    u = rng.random(5)
    b, c, s, h = cfg.jitter
    factors = rng.random(4)
    order = tuple(int(i) for i in rng.permutation(4))
    sigma = float(cfg.blur_sigma[0] + (cfg.blur_sigma[1] - cfg.blur_sigma[0]) * rng.random())
    if not cfg.photometric:
        return Photometric()
    return Photometric(
        jitter=bool(u[0] < cfg.jitter_p),
        brightness=_factor(b, factors[0]),
        contrast=_factor(c, factors[1]),
        saturation=_factor(s, factors[2]),
        hue=float(-h + 2 * h * factors[3]),
        order=order,
        grayscale=bool(u[1] < cfg.grayscale_p),
        blur_sigma=sigma if u[2] < cfg.blur_p[index] else 0.0,
        solarize=bool(u[3] < cfg.solarize_p[index]),
    )


def overlap(a: Box, b: Box, width: int, *, periodic: bool = False) -> float:
    """Intersection area of two crops over the smaller crop's area (x wraps when periodic)."""
    iy = max(0, min(a.top + a.height, b.top + b.height) - max(a.top, b.top))
    shifts = (-width, 0, width) if periodic else (0,)
    # b's shifted copies are disjoint (widths <= W), so the pieces add up.
    ix = sum(
        max(0, min(a.left + a.width, b.left + k + b.width) - max(a.left, b.left + k))
        for k in shifts
    )
    return ix * iy / max(1, min(a.width * a.height, b.width * b.height))


def sample_pair(
    rng: np.random.Generator, height: int, width: int, cfg: ViewConfig, *, periodic: bool = False
) -> tuple[ViewParams, ViewParams]:
    """Draw the parameters of both views from ``rng`` (geometry and colour on separate streams)."""
    geo, photo = rng.spawn(2)
    wrap = periodic and cfg.periodic_roll
    box1 = sample_box(geo, height, width, cfg, periodic=periodic)
    box2 = sample_box(geo, height, width, cfg, periodic=periodic)
    if cfg.min_overlap > 0:
        best, best_ov = box2, overlap(box1, box2, width, periodic=wrap)
        for _ in range(cfg.overlap_tries):
            if best_ov >= cfg.min_overlap:
                break
            cand = sample_box(geo, height, width, cfg, periodic=periodic)
            ov = overlap(box1, cand, width, periodic=wrap)
            if ov > best_ov:
                best, best_ov = cand, ov
        box2 = best
    flips = geo.random(2) < cfg.hflip
    return (
        ViewParams(box1, bool(flips[0]), sample_photometric(photo, cfg, 0)),
        ViewParams(box2, bool(flips[1]), sample_photometric(photo, cfg, 1)),
    )


# --------------------------------------------------------------------------------------- geometry


def view_coords(box: Box, flip: bool, size: int, height: int, width: int) -> np.ndarray:
    """Normalised (x1, y1, x2, y2) of the first/last output pixel centres (module docstring)."""
    xa = box.left - 0.5 + 0.5 * box.width / size
    xb = box.left + box.width - 0.5 - 0.5 * box.width / size
    ya = box.top - 0.5 + 0.5 * box.height / size
    yb = box.top + box.height - 0.5 - 0.5 * box.height / size
    if flip:
        xa, xb = xb, xa
    return np.array(
        [
            xa / max(width - 1, 1),
            ya / max(height - 1, 1),
            xb / max(width - 1, 1),
            yb / max(height - 1, 1),
        ],
        dtype=np.float32,
    )


def nearest_indices(
    box: Box, flip: bool, size: int, height: int, width: int, *, periodic: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Source (rows, cols) nearest to each output pixel centre: floor(left + (c + 0.5) * w / S)."""
    c = np.arange(size, dtype=np.float64) + 0.5
    xs = np.floor(box.left + c * box.width / size).astype(np.int64)
    ys = np.floor(box.top + c * box.height / size).astype(np.int64)
    # Float rounding must never step outside the box (no depth from beyond the crop).
    xs = np.clip(xs, box.left, box.left + box.width - 1)
    ys = np.clip(ys, box.top, box.top + box.height - 1)
    xs = xs % width if periodic else np.clip(xs, 0, width - 1)
    if flip:
        xs = xs[::-1]
    return ys, xs


def crop_rgb(
    rgb: np.ndarray, box: Box, flip: bool, size: int, *, periodic: bool = False
) -> np.ndarray:
    """Crop ``box`` (wrapping along x when periodic) and resize to (size, size) with pixel-centre
    sampling, as the coords say: antialiased bilinear (PIL's filter, torch's uint8 kernel) where the
    crop shrinks, plain bilinear where it only grows."""
    width = rgb.shape[1]
    rows = slice(box.top, box.top + box.height)
    right = box.left + box.width
    if right <= width:
        crop = rgb[rows, box.left : right]
    elif periodic:
        crop = np.concatenate([rgb[rows, box.left :], rgb[rows, : right - width]], axis=1)
    else:
        raise ValueError(f"crop {box} leaves a {width}-wide image")
    if box.width > size or box.height > size:
        out = _resize_antialiased(crop, size)
    else:
        out = cv2.resize(crop, (size, size), interpolation=cv2.INTER_LINEAR)
    if flip:
        out = cv2.flip(out, 1)
    return out


def _resize_antialiased(crop: np.ndarray, size: int) -> np.ndarray:
    import torch
    import torch.nn.functional as F

    # HWC memory seen as NCHW channels-last: torch's fast uint8 path; its output is planar, and
    # cv2.merge interleaves it back far faster than a transposing numpy copy.
    t = torch.from_numpy(np.ascontiguousarray(crop)).permute(2, 0, 1)[None]
    out = F.interpolate(t, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    planes = out[0].numpy()
    return cv2.merge([planes[0], planes[1], planes[2]])


def apply_geometry(
    sample: DecodedSample,
    params: ViewParams,
    cfg: ViewConfig,
    *,
    periodic: bool = False,
    labels: bool = True,
) -> View:
    """Crop/resize/flip RGB, depth and label of ``sample`` as ``params`` say (no colour ops)."""
    h, w = sample.rgb.shape[:2]
    wrap = periodic and cfg.periodic_roll
    rgb = crop_rgb(sample.rgb, params.box, params.flip, cfg.size, periodic=wrap)
    depth = label = None
    if sample.depth is not None or (labels and sample.label is not None):
        ys, xs = nearest_indices(params.box, params.flip, cfg.size, h, w, periodic=wrap)
        if sample.depth is not None:
            depth = sample.depth.take(ys, axis=0).take(xs, axis=1).astype(np.float32, copy=False)
        if labels and sample.label is not None:
            label = sample.label.take(ys, axis=0).take(xs, axis=1).astype(np.int64)
    coords = view_coords(params.box, params.flip, cfg.size, h, w)
    return View(rgb, depth, label, coords, params.box, params.flip, params)


def is_periodic(sample: DecodedSample) -> bool:
    return bool(sample.meta.get("periodic_x", False))


def make_views(
    sample: DecodedSample, cfg: ViewConfig, rng: np.random.Generator | int
) -> PairedViews:
    """The two augmented views of ``sample`` (SPEC 4). Same ``rng`` seed, same views.

    Returns :class:`PairedViews` whose views hold uint8 RGB (colour ops applied), float32 depth in
    physical units (0 = invalid, never colour-transformed), int64 labels and coords.
    """
    from datakit.photometric import apply_photometric

    if not isinstance(rng, np.random.Generator):
        rng = np.random.default_rng(rng)
    h, w = sample.rgb.shape[:2]
    periodic = is_periodic(sample)
    views = []
    for params in sample_pair(rng, h, w, cfg, periodic=periodic):
        view = apply_geometry(sample, params, cfg, periodic=periodic, labels=cfg.labels)
        view.rgb = apply_photometric(view.rgb, params.photometric)
        views.append(view)
    return PairedViews(views[0], views[1], periodic, key=sample.key, width=w)


def sample_seed(seed: int, epoch: int, key: str) -> np.random.Generator:
    """The generator of one sample's views: a function of (seed, epoch, key), not of worker order."""
    import zlib

    return np.random.default_rng([seed, epoch, zlib.crc32(key.encode())])


def cell_centres(coords: Any, grid_h: int, grid_w: int, size: int) -> Any:
    """Normalised source positions of the centres of a (grid_h, grid_w) feature map over S x S views.

    coords: (B, 4) tensor or array. Returns (B, grid_h, grid_w, 2) with (u, v) in the last axis.
    Cell ``i`` of ``n`` covers output pixels [i S / n, (i + 1) S / n), centre (i + 0.5) S / n - 0.5.
    """
    import torch

    t = torch.as_tensor(coords, dtype=torch.float32)
    cx = ((torch.arange(grid_w, dtype=torch.float32) + 0.5) * size / grid_w - 0.5) / (size - 1)
    cy = ((torch.arange(grid_h, dtype=torch.float32) + 0.5) * size / grid_h - 0.5) / (size - 1)
    cx, cy = cx.to(t.device), cy.to(t.device)
    u = t[:, 0, None] + (t[:, 2] - t[:, 0])[:, None] * cx[None, :]  # (B, grid_w)
    v = t[:, 1, None] + (t[:, 3] - t[:, 1])[:, None] * cy[None, :]  # (B, grid_h)
    return torch.stack(torch.broadcast_tensors(u[:, None, :], v[:, :, None]), dim=-1)


def collate_views(
    pairs: list[PairedViews], cfg: ViewConfig, *, ignore_index: int = 255
) -> dict[str, Any]:
    """Stack paired views into the SPEC 4 batch dict of torch tensors.

    view1/view2 float32 (B, 3, S, S) normalised by ``cfg.mean``/``cfg.std``; depth1/depth2 float32
    (B, 1, S, S) physical units, 0 = invalid (all 0 for samples without depth); coords1/coords2
    float32 (B, 4); periodic bool (B,); period float32 (B,) = W / (W - 1), the wrap of a periodic x
    in coords units; label1/label2 int64 (B, S, S) when any sample has labels
    (``ignore_index`` where one lacks them).
    """
    import torch

    if not pairs:
        raise ValueError("cannot collate an empty batch")
    size = cfg.size
    mean = torch.tensor(cfg.mean, dtype=torch.float32).view(1, 3, 1, 1) * 255
    std = torch.tensor(cfg.std, dtype=torch.float32).view(1, 3, 1, 1) * 255
    batch: dict[str, Any] = {}
    with_labels = cfg.labels and any(p.view1.label is not None for p in pairs)
    for i in (1, 2):
        views = [p.view1 if i == 1 else p.view2 for p in pairs]
        rgb = torch.from_numpy(np.stack([v.rgb for v in views])).permute(0, 3, 1, 2).contiguous()
        batch[f"view{i}"] = rgb.float().sub_(mean).div_(std)
        depth = np.zeros((len(views), 1, size, size), np.float32)
        for b, v in enumerate(views):
            if v.depth is not None:
                depth[b, 0] = v.depth
        batch[f"depth{i}"] = torch.from_numpy(depth)
        batch[f"coords{i}"] = torch.from_numpy(np.stack([v.coords for v in views]))
        if with_labels:
            label = np.full((len(views), size, size), ignore_index, np.int64)
            for b, v in enumerate(views):
                if v.label is not None:
                    label[b] = v.label
            batch[f"label{i}"] = torch.from_numpy(label)
    batch["periodic"] = torch.tensor([p.periodic for p in pairs], dtype=torch.bool)
    batch["period"] = torch.tensor([coords_period(p.width) for p in pairs], dtype=torch.float32)
    return {k: batch[k] for k in BATCH_KEYS if k in batch}


def coords_period(width: int) -> float:
    """The period of a circular x in coords units (normalised by W - 1): W / (W - 1)."""
    return width / (width - 1) if width > 1 else 1.0
