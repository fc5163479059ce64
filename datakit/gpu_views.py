"""The GPU path of the paired views: JPEGs decoded by nvJPEG, crop-resize and colour ops batched.

Loader workers still read the shards, decode depth/label PNGs and draw every random parameter on the
CPU (:func:`prepare_encoded`, same generator and same nearest-neighbour depth as the CPU path), and
ship the JPEG bytes untouched. :class:`GpuViews` then decodes the batch on the GPU
(``torchvision.io.decode_jpeg(device="cuda")``) and resamples each view with separable weight
matrices that are exactly the antialiased bilinear filter of the CPU path, so both paths give the
same coords and the same geometry. Colour ops follow torchvision's tensor semantics in float.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from datakit import png, schema
from datakit.errors import SampleError
from datakit.views import (
    BATCH_KEYS,
    ViewConfig,
    ViewParams,
    coords_period,
    is_periodic,
    nearest_indices,
    sample_pair,
    sample_seed,
    view_coords,
)

_DEPTH_EXTS = schema.FIELD_BY_NAME["depth"].extensions


@dataclass
class EncodedPair:
    """A sample ready for the GPU: RGB still encoded (or decoded HWC uint8 when not JPEG), depth
    and label views already resampled on the CPU, every random parameter drawn."""

    key: str
    image: np.ndarray
    is_jpeg: bool
    height: int
    width: int
    params: tuple[ViewParams, ViewParams]
    coords: tuple[np.ndarray, np.ndarray]
    depth: tuple[np.ndarray, np.ndarray] | None
    label: tuple[np.ndarray, np.ndarray] | None
    periodic: bool


def prepare_encoded(
    sample: dict[str, Any], cfg: ViewConfig, *, seed: int, epoch: int
) -> EncodedPair:
    """Worker side of the GPU path: a WebDataset sample dict -> :class:`EncodedPair`.

    The JPEG stays encoded (any other RGB is decoded here and uploaded raw). The crops are drawn
    before the depth PNG is inflated, so that only the rows down to the lower crop's bottom are.
    """
    from datakit.loader import decode_for_views

    decoded, jpeg = decode_for_views(sample, labels=cfg.labels, rgb=False, depth=False)
    rng = sample_seed(seed, epoch, decoded.key)
    meta = decoded.meta
    if jpeg is None:
        image = decoded.rgb
        h, w = image.shape[:2]
    else:
        image = np.frombuffer(jpeg, np.uint8)
        h, w = int(meta["height"]), int(meta["width"])
    periodic = is_periodic(decoded)
    params = sample_pair(rng, h, w, cfg, periodic=periodic)
    depth = None
    data = next((v for k, v in sample.items() if k in _DEPTH_EXTS), None)
    if data is not None:
        rows = max(p.box.top + p.box.height for p in params)
        depth = _depth_rows(decoded.key, data, rows, h, w)
    scale = float(meta["depth_scale"])
    return _encode(decoded.key, image, h, w, params, cfg, periodic, depth, scale, decoded.label)


def _depth_rows(key: str, data: bytes, rows: int, h: int, w: int) -> np.ndarray:
    """The first ``rows`` rows of a depth PNG as uint16 codes (all rows when the fast path declines)."""
    head = png.header(data)
    if head is not None and (head[0], head[1]) != (w, h):
        raise SampleError(f"{key}: depth is {head[1]}x{head[0]}, image is {h}x{w}")
    try:
        codes = png.decode_gray(data, rows=rows)
        if codes is None:
            codes = schema.CODECS[_DEPTH_EXTS[0]].decode(data)
    except (SampleError, ValueError) as exc:
        raise SampleError(f"{key}: depth: {exc}") from None
    if codes.dtype != np.uint16 or codes.shape[1] != w or codes.shape[0] < min(rows, h):
        raise SampleError(f"{key}: depth must be a {h}x{w} 16-bit PNG")
    return codes


def encode_decoded(
    sample: schema.DecodedSample, cfg: ViewConfig, rng: np.random.Generator
) -> EncodedPair:
    """An already decoded sample as an :class:`EncodedPair` (RGB uploaded raw)."""
    h, w = sample.rgb.shape[:2]
    periodic = is_periodic(sample)
    params = sample_pair(rng, h, w, cfg, periodic=periodic)
    return _encode(
        sample.key, sample.rgb, h, w, params, cfg, periodic, sample.depth, 1.0, sample.label
    )


def _encode(
    key: str,
    image: np.ndarray,
    h: int,
    w: int,
    params: tuple[ViewParams, ViewParams],
    cfg: ViewConfig,
    periodic: bool,
    depth: np.ndarray | None,
    depth_scale: float,
    label: np.ndarray | None,
) -> EncodedPair:
    wrap = periodic and cfg.periodic_roll
    depths, labels, coords = [], [], []
    for p in params:
        ys, xs = nearest_indices(p.box, p.flip, cfg.size, h, w, periodic=wrap)
        coords.append(view_coords(p.box, p.flip, cfg.size, h, w))
        if depth is not None:
            values = depth.take(ys, axis=0).take(xs, axis=1).astype(np.float32)
            depths.append(values * np.float32(depth_scale) if depth_scale != 1.0 else values)
        if label is not None and cfg.labels:
            labels.append(label.take(ys, axis=0).take(xs, axis=1).astype(np.int64))
    return EncodedPair(
        key,
        image,
        image.ndim == 1,
        h,
        w,
        params,
        (coords[0], coords[1]),
        (depths[0], depths[1]) if depths else None,
        (labels[0], labels[1]) if labels else None,
        periodic,
    )


def collate_encoded(
    pairs: list[EncodedPair], cfg: ViewConfig, *, ignore_index: int = 255
) -> dict[str, Any]:
    """Stack :class:`EncodedPair` into CPU tensors. All JPEG bytes travel as ONE flat tensor
    (``jpeg_data`` cut by ``jpeg_sizes``, 0 for a raw image): a tensor per sample would cost a
    shared-memory segment, a file descriptor and a pinning call each on the way to the GPU."""
    n, s = len(pairs), cfg.size
    jpegs = [p.image for p in pairs if p.is_jpeg]
    out: dict[str, Any] = {
        "jpeg_data": torch.from_numpy(np.concatenate(jpegs))
        if jpegs
        else torch.empty(0, dtype=torch.uint8),
        "jpeg_sizes": torch.tensor(
            [p.image.size if p.is_jpeg else 0 for p in pairs], dtype=torch.int64
        ),
        "images": [torch.from_numpy(np.ascontiguousarray(p.image)) for p in pairs if not p.is_jpeg],
        "hw": torch.tensor([[p.height, p.width] for p in pairs], dtype=torch.int64),
        "boxes": torch.tensor(
            [[[q.box.left, q.box.top, q.box.width, q.box.height] for q in p.params] for p in pairs],
            dtype=torch.int64,
        ),
        "flip": torch.tensor([[q.flip for q in p.params] for p in pairs], dtype=torch.bool),
        "jitter": torch.tensor([[q.photometric.jitter for q in p.params] for p in pairs]),
        "factors": torch.tensor(
            [
                [
                    [
                        q.photometric.brightness,
                        q.photometric.contrast,
                        q.photometric.saturation,
                        q.photometric.hue,
                    ]
                    for q in p.params
                ]
                for p in pairs
            ],
            dtype=torch.float32,
        ),
        "order": torch.tensor([[list(q.photometric.order) for q in p.params] for p in pairs]),
        "grayscale": torch.tensor([[q.photometric.grayscale for q in p.params] for p in pairs]),
        "blur_sigma": torch.tensor(
            [[q.photometric.blur_sigma for q in p.params] for p in pairs], dtype=torch.float32
        ),
        "solarize": torch.tensor([[q.photometric.solarize for q in p.params] for p in pairs]),
        "periodic": torch.tensor([p.periodic for p in pairs], dtype=torch.bool),
        "period": torch.tensor([coords_period(p.width) for p in pairs], dtype=torch.float32),
    }
    with_labels = cfg.labels and any(p.label is not None for p in pairs)
    for i in (0, 1):
        depth = np.zeros((n, 1, s, s), np.float32)
        label = np.full((n, s, s), ignore_index, np.int64) if with_labels else None
        for b, p in enumerate(pairs):
            if p.depth is not None:
                depth[b, 0] = p.depth[i]
            if label is not None and p.label is not None:
                label[b] = p.label[i]
        out[f"depth{i + 1}"] = torch.from_numpy(depth)
        out[f"coords{i + 1}"] = torch.from_numpy(np.stack([p.coords[i] for p in pairs]))
        if label is not None:
            out[f"label{i + 1}"] = torch.from_numpy(label)
    return out


def resample_weights(
    start: torch.Tensor,
    length: torch.Tensor,
    flip: torch.Tensor,
    size: int,
    n_src: int,
    *,
    periodic: torch.Tensor,
) -> torch.Tensor:
    """Separable resampling matrices (V, size, n_src) of one axis, float32.

    Antialiased bilinear as torch/PIL define it: output pixel c has centre ``start + (c + 0.5) * L /
    size`` (edge coordinates); taps inside the crop only, triangle of half-width max(L / size, 1),
    normalised. Flipped views reverse c; periodic views fold columns past the seam back (mod n_src).
    """
    dev = start.device
    scale = length.float() / size  # (V,)
    inv = torch.where(scale >= 1, 1 / scale, torch.ones_like(scale))
    centre = (
        start.float()[:, None]
        + (torch.arange(size, device=dev).float()[None] + 0.5) * scale[:, None]
    )
    wrap = bool(periodic.any())
    x = torch.arange(2 * n_src if wrap else n_src, device=dev).float()
    w = (1 - (x[None, None] + 0.5 - centre[..., None]).abs() * inv[:, None, None]).clamp_(min=0)
    inside = (x[None] >= start[:, None]) & (x[None] < (start + length)[:, None])  # (V, X)
    w = w * inside[:, None, :]
    w = w / w.sum(-1, keepdim=True).clamp_(min=1e-12)
    if wrap:
        w = w[..., :n_src] + w[..., n_src:]
    return torch.where(flip[:, None, None], w.flip(1), w)


def crop_resize(
    images: torch.Tensor,
    boxes: torch.Tensor,
    flips: torch.Tensor,
    periodic: torch.Tensor,
    size: int,
    *,
    wrap: bool = True,
) -> torch.Tensor:
    """(N, 3, H, W) float images, boxes (N, 2, 4) left/top/width/height, flips (N, 2) ->
    (N, 2, 3, S, S): both views of each image by two batched matrix products."""
    n, _, h, w = images.shape
    b = boxes.reshape(-1, 4)
    per = periodic.repeat_interleave(2) & wrap
    rx = resample_weights(b[:, 0], b[:, 2], flips.reshape(-1), size, w, periodic=per)
    ry = resample_weights(
        b[:, 1], b[:, 3], torch.zeros_like(per), size, h, periodic=torch.zeros_like(per)
    )
    rx = rx.view(n, 2, 1, size, w).transpose(-1, -2)
    ry = ry.view(n, 2, 1, size, h)
    return ry @ (images[:, None] @ rx)


# ------------------------------------------------------------------------------- colour (float)

_GRAY = (0.299, 0.587, 0.114)


def _gray(x: torch.Tensor) -> torch.Tensor:
    return (x[:, 0] * _GRAY[0] + x[:, 1] * _GRAY[1] + x[:, 2] * _GRAY[2]).unsqueeze(1)


def _rgb_to_hsv(x: torch.Tensor) -> torch.Tensor:
    r, g, b = x.unbind(1)
    maxc, _ = x.max(1)
    minc, _ = x.min(1)
    eqc = maxc == minc
    cr = maxc - minc
    s = cr / torch.where(eqc, torch.ones_like(maxc), maxc)
    crd = torch.where(eqc, torch.ones_like(cr), cr)
    rc, gc, bc = (maxc - r) / crd, (maxc - g) / crd, (maxc - b) / crd
    hr = (maxc == r) * (bc - gc)
    hg = ((maxc == g) & (maxc != r)) * (2.0 + rc - bc)
    hb = ((maxc != g) & (maxc != r)) * (4.0 + gc - rc)
    h = torch.fmod((hr + hg + hb) / 6.0 + 1.0, 1.0)
    return torch.stack((h, s, maxc), 1)


def _hsv_to_rgb(x: torch.Tensor) -> torch.Tensor:
    """Channel c = v - v s clamp(min(k, 4 - k), 0, 1) with k = (n_c + 6 h) mod 6, n = (5, 3, 1): the
    six-sector formula of torchvision without its (N, 3, 6, H, W) stack (one-ulp differences)."""
    h, s, v = x.unbind(1)
    n = torch.tensor((5.0, 3.0, 1.0), dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    k = torch.remainder(n + 6.0 * h.unsqueeze(1), 6.0)
    return v.unsqueeze(1) - (v * s).unsqueeze(1) * torch.minimum(k, 4.0 - k).clamp_(0, 1)


def _jitter_op(x: torch.Tensor, op: int, f: torch.Tensor) -> torch.Tensor:
    f4 = f.view(-1, 1, 1, 1)
    if op == 0:
        return (x * f4).clamp_(0, 1)
    if op == 1:
        mean = _gray(x).mean(dim=(1, 2, 3), keepdim=True)
        return (f4 * x + (1 - f4) * mean).clamp_(0, 1)
    if op == 2:
        return (f4 * x + (1 - f4) * _gray(x)).clamp_(0, 1)
    hsv = _rgb_to_hsv(x)
    hsv[:, 0] = torch.remainder(hsv[:, 0] + f.view(-1, 1, 1), 1.0)
    return _hsv_to_rgb(hsv)


def _reflect_indices(n: int, radius: int, device: torch.device) -> torch.Tensor:
    """Source indices of ``-radius .. n - 1 + radius`` under reflect-101 (OpenCV's default border,
    torch's "reflect"), folded as often as needed: F.pad refuses a radius >= n (views under 7 px)."""
    i = torch.arange(-radius, n + radius, device=device)
    if n == 1:
        return torch.zeros_like(i)
    m = torch.remainder(i, 2 * (n - 1))
    return torch.where(m < n, m, 2 * (n - 1) - m)


def _gaussian_blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """``sigma`` (N,) on the host: the kernel radius is read from it without waiting for the GPU."""
    radius = int(np.ceil(3 * float(sigma.max())))
    t = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    sd = sigma.to(x.device, x.dtype, non_blocking=True)
    k = torch.exp(-0.5 * (t[None] / sd[:, None]) ** 2)
    k = (k / k.sum(1, keepdim=True)).repeat_interleave(3, 0)  # (N*3, K)
    n, c, h, w = x.shape
    y = x.reshape(1, n * c, h, w)
    y = y.index_select(2, _reflect_indices(h, radius, x.device))
    y = y.index_select(3, _reflect_indices(w, radius, x.device))
    y = F.conv2d(y, k[:, None, :, None], groups=n * c)
    y = F.conv2d(y, k[:, None, None, :], groups=n * c)
    return y.view(n, c, h, w)


def photometric(x: torch.Tensor, batch: dict[str, Any]) -> torch.Tensor:
    """Colour ops on (V, 3, S, S) float in [0, 1], per-view parameters from :func:`collate_encoded`
    flattened over (B, 2). Only the views an op applies to are computed.

    The parameters stay on the host (as the loader's workers drew them): which views each op
    applies to is decided there, so the ops are queued on the GPU without a single wait for it (a
    ``nonzero()`` of a CUDA tensor would wait for every kernel queued before it, about 20 times a
    batch).
    """
    dev = x.device
    jitter = batch["jitter"].reshape(-1).cpu()
    factors = batch["factors"].reshape(-1, 4).cpu()
    order = batch["order"].reshape(-1, 4).cpu()

    def views(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The views ``mask`` selects, on the host and on ``dev``; None when none is."""
        idx = mask.nonzero().squeeze(1)
        return (idx, idx.to(dev, non_blocking=True)) if idx.numel() else None

    for slot in range(4):
        for op in range(4):
            if sel := views(jitter & (order[:, slot] == op)):
                f = factors[sel[0], op].to(dev, non_blocking=True)
                x[sel[1]] = _jitter_op(x[sel[1]], op, f)
    if sel := views(batch["grayscale"].reshape(-1).cpu()):
        x[sel[1]] = _gray(x[sel[1]]).expand(-1, 3, -1, -1)
    sigma = batch["blur_sigma"].reshape(-1).cpu()
    if sel := views(sigma > 0):
        x[sel[1]] = _gaussian_blur(x[sel[1]], sigma[sel[0]])
    if sel := views(batch["solarize"].reshape(-1).cpu()):
        xs = x[sel[1]]
        x[sel[1]] = torch.where(xs >= 128 / 255, 1 - xs, xs)
    return x


def _decode_jpegs_cuda(
    decode_jpeg: Any, jpegs: list[torch.Tensor], device: torch.device, stream: torch.cuda.Stream
) -> list[torch.Tensor]:
    """nvJPEG batch decode that cannot overwrite memory the caller's stream is still using.

    torchvision allocates the outputs from the *current* stream's pool and then writes them on a
    private stream that is not ordered after the current one (pytorch/vision#9606; nvJPEG's hardware
    engine does not honour stream order either). A block the caller freed while its kernels still
    read it can thus be handed to the decoder and overwritten under them (the cause we found for
    our training runs going NaN on an H100). So the outputs are allocated on ``stream``, which carries no other
    work (nothing queued on it can be using a block it hands out); the caller's stream waits for the
    decode, and ``record_stream`` keeps each output's block from going back to ``stream``'s pool
    before the caller's kernels that read it have run.
    """
    caller = torch.cuda.current_stream(device)
    with torch.cuda.stream(stream):
        images = decode_jpeg(jpegs, device=device)
    caller.wait_stream(stream)
    for image in images:
        image.record_stream(caller)
    return list(images)


class GpuViews:
    """Turns a :func:`collate_encoded` batch into the SPEC 4 batch dict on ``device``."""

    def __init__(self, cfg: ViewConfig, device: str | torch.device = "cuda") -> None:
        self.cfg = cfg
        self.device = torch.device(device)
        self.mean = torch.tensor(cfg.mean, device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(cfg.std, device=self.device).view(1, 3, 1, 1)
        self._decode_stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None

    def decode(self, batch: dict[str, Any]) -> list[torch.Tensor]:
        """(3, H, W) uint8 images on the device; JPEGs through nvJPEG in one batched call."""
        import warnings

        with warnings.catch_warnings():  # torchvision >= 0.29 points at torchcodec; same nvJPEG
            warnings.simplefilter("ignore", DeprecationWarning)
            from torchvision.io import ImageReadMode
            from torchvision.io import decode_jpeg as _decode_jpeg

        # RGB whatever the JPEG holds (a grayscale JPEG is replicated to 3 channels, as OpenCV's
        # colour decode does on the CPU path)
        decode_jpeg = functools.partial(_decode_jpeg, mode=ImageReadMode.RGB)
        sizes = batch["jpeg_sizes"].tolist()
        jpegs = list(torch.split(batch["jpeg_data"], [n for n in sizes if n > 0]))
        if jpegs and self._decode_stream is not None:
            decoded = iter(_decode_jpegs_cuda(decode_jpeg, jpegs, self.device, self._decode_stream))
        else:
            decoded = iter([decode_jpeg(j) for j in jpegs])
        raw = iter(batch["images"])
        return [
            next(decoded)
            if n > 0
            else next(raw).to(self.device, non_blocking=True).permute(2, 0, 1)
            for n in sizes
        ]

    def __call__(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        cfg, dev = self.cfg, self.device
        images = self.decode(batch)
        n, s = len(images), cfg.size
        boxes = batch["boxes"].to(dev, non_blocking=True)
        flips = batch["flip"].to(dev, non_blocking=True)
        periodic = batch["periodic"].to(dev, non_blocking=True)
        views = torch.empty((n, 2, 3, s, s), device=dev)
        groups: dict[tuple[int, int], list[int]] = {}
        for i, im in enumerate(images):
            groups.setdefault((im.shape[1], im.shape[2]), []).append(i)
        for members in groups.values():
            idx = torch.tensor(members, device=dev)
            stack = torch.stack([images[i] for i in members]).float().div_(255)
            views[idx] = crop_resize(
                stack, boxes[idx], flips[idx], periodic[idx], s, wrap=cfg.periodic_roll
            ).clamp_(0, 1)
        flat = views.view(n * 2, 3, s, s)
        if cfg.photometric:
            flat = photometric(flat, batch)  # its parameters stay on the host
        flat = (flat - self.mean) / self.std
        views = flat.view(n, 2, 3, s, s)
        out: dict[str, torch.Tensor] = {}
        for k in BATCH_KEYS:
            if k in ("view1", "view2"):
                out[k] = views[:, int(k[-1]) - 1].contiguous()
            elif k in batch:
                out[k] = batch[k].to(dev, non_blocking=True)
        return out
