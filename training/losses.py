"""The losses of SPEC section 5 as pure functions of tensors.

Conventions used throughout:

- ``coords`` (B, 4): x1, y1, x2, y2 = the normalised source positions of the centres of a view's
  first and last output column / row (:mod:`datakit.views`); a flipped view has x1 > x2. A feature
  map of h x w cells tiles the S x S view evenly; :func:`cell_centres` maps cell centres back.
- Cells are flattened row-major: index ``r * w + c``; N = h * w.
- ``periodic`` (B,) bool: x is circular (borehole azimuth) with ``period`` W / (W - 1) in normalised
  units (a float or a (B,) tensor), so x-distances wrap.
- Depth is in physical units with 0 = invalid; a cell depth of 0 means "too little valid depth".
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from datakit import views

EPS = 1e-6


# ---------------------------------------------------------------------------------------- geometry


def cell_centres(coords: Tensor, h: int, w: int, size: int) -> Tensor:
    """Centres of the h x w feature cells of S x S views, in normalised source coordinates.

    coords (B, 4) -> (B, h * w, 2) as (x, y). Follows :func:`datakit.views.cell_centres`: cell c of
    w covers output pixels [c S / w, (c + 1) S / w), centre at output position (c + 0.5) S / w - 0.5,
    i.e. at ``x1 + (x2 - x1) ((c + 0.5) S / w - 0.5) / (S - 1)``.
    """
    return views.cell_centres(coords.float(), h, w, size).reshape(coords.shape[0], h * w, 2)


def bin_diagonal(coords: Tensor, h: int, w: int, size: int) -> Tensor:
    """Diagonal of one feature cell in normalised source units. coords (B, 4) -> (B,)."""
    x1, y1, x2, y2 = coords.float().unbind(1)
    cw = (x2 - x1) * size / (w * (size - 1))
    ch = (y2 - y1) * size / (h * (size - 1))
    return torch.sqrt(cw**2 + ch**2)


def wrap(dx: Tensor, periodic: Tensor | None, period: Tensor | float = 1.0) -> Tensor:
    """Circular difference for the samples whose ``periodic`` flag is set.

    dx (B, ...); periodic (B,) bool or None; period a float or (B,) in normalised x units
    (W / (W - 1) for an image W pixels wide, see :mod:`datakit.views`). Returns dx's shape.
    """
    if periodic is None:
        return dx
    shape = (-1, *([1] * (dx.dim() - 1)))
    p = torch.as_tensor(period, dtype=dx.dtype, device=dx.device)
    p = p.view(shape) if p.dim() else p
    wrapped = dx - p * torch.round(dx / p)
    return torch.where(periodic.view(shape), wrapped, dx)


def pair_distance(
    coords_q: Tensor,
    coords_k: Tensor,
    shape_q: tuple[int, int],
    shape_k: tuple[int, int],
    size: int,
    *,
    periodic: Tensor | None = None,
    period: Tensor | float = 1.0,
) -> Tensor:
    """||c_i - c'_j|| / max(bin diagonal of the two views) for every cell pair.

    coords_q, coords_k: (B, 4); shape_q = (h, w) of the query feature map, shape_k likewise; size: S
    of the views in pixels. Returns (B, Nq, Nk) float32.
    """
    cq = cell_centres(coords_q, *shape_q, size)
    ck = cell_centres(coords_k, *shape_k, size)
    dx = wrap(cq[:, :, None, 0] - ck[:, None, :, 0], periodic, period)
    dy = cq[:, :, None, 1] - ck[:, None, :, 1]
    diag = torch.maximum(
        bin_diagonal(coords_q, *shape_q, size), bin_diagonal(coords_k, *shape_k, size)
    )
    return torch.sqrt(dx**2 + dy**2) / diag[:, None, None]


def inside_crop(
    coords_q: Tensor,
    coords_k: Tensor,
    shape_q: tuple[int, int],
    size: int,
    *,
    periodic: Tensor | None = None,
    period: Tensor | float = 1.0,
) -> Tensor:
    """Whether each cell centre of view q lies inside the crop of view k (the crops' overlap).

    The crop of k reaches half an output pixel beyond its first and last pixel centres.
    coords_q, coords_k: (B, 4); shape_q = (h, w); size: S. Returns (B, Nq) bool.
    """
    c = cell_centres(coords_q, *shape_q, size)
    kx1, ky1, kx2, ky2 = coords_k.float().unbind(1)
    hx, hy = 0.5 * (kx2 - kx1) / (size - 1), 0.5 * (ky2 - ky1) / (size - 1)
    ex1, ex2, ey1, ey2 = kx1 - hx, kx2 + hx, ky1 - hy, ky2 + hy
    lo_x, hi_x = torch.minimum(ex1, ex2)[:, None], torch.maximum(ex1, ex2)[:, None]
    lo_y, hi_y = torch.minimum(ey1, ey2)[:, None], torch.maximum(ey1, ey2)[:, None]
    x, y = c[..., 0], c[..., 1]
    in_x = (x >= lo_x) & (x <= hi_x)
    if periodic is not None:
        p = torch.as_tensor(period, dtype=x.dtype, device=x.device)
        p = p.view(-1, 1) if p.dim() else p
        in_x_wrapped = torch.remainder(x - lo_x, p) <= (hi_x - lo_x)
        in_x = torch.where(periodic[:, None], in_x_wrapped, in_x)
    return in_x & (y >= lo_y) & (y <= hi_y)


# ------------------------------------------------------------------------------------------- depth


def cell_depth(depth: Tensor, h: int, w: int, *, min_valid: float = 0.25) -> Tensor:
    """Median of the valid depth in each of h x w cells; 0 where less than ``min_valid`` of the cell
    is valid.

    depth: (B, 1, S, S') physical units, 0 = invalid. Returns (B, h * w) float32. For an even count
    the lower of the two middle values is taken (torch.median's rule). Cell c of n holds exactly the
    pixels i with c S / n <= i < (c + 1) S / n (the cell geometry of :func:`cell_centres`), also when
    S is not a multiple of n: no pixel is duplicated or moved to a neighbouring cell.
    """
    b, _, hh, ww = depth.shape
    d = depth.float()[:, 0]
    if hh % h == 0 and ww % w == 0:  # equal cells: a view
        kh, kw = hh // h, ww // w
        cells = d.view(b, h, kh, w, kw)
        member = torch.ones((1, h, kh, w, kw), dtype=torch.bool, device=d.device)
    else:  # cells of floor or ceil(S / n) pixels, padded to the largest
        rows, row_ok = _cell_pixels(hh, h, d.device)  # (h, kh)
        cols, col_ok = _cell_pixels(ww, w, d.device)  # (w, kw)
        kh, kw = rows.shape[1], cols.shape[1]
        cells = d[:, rows.reshape(-1)][:, :, cols.reshape(-1)].view(b, h, kh, w, kw)
        member = row_ok.view(1, h, kh, 1, 1) & col_ok.view(1, 1, 1, w, kw)
    cells = cells.permute(0, 1, 3, 2, 4).reshape(b, h * w, kh * kw)
    member = member.permute(0, 1, 3, 2, 4).reshape(1, h * w, kh * kw)
    valid = (cells > 0) & member
    z = torch.nanmedian(torch.where(valid, cells, torch.full_like(cells, float("nan"))), dim=-1)
    frac = valid.sum(-1) / member.sum(-1).clamp_min(1)
    enough = frac >= max(min_valid, EPS)
    return torch.where(enough, z.values, torch.zeros_like(z.values))


def _cell_pixels(size: int, n: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """Pixel indices of each of n cells tiling ``size`` pixels, padded to the largest cell.

    Cell c holds the pixels i with c size / n <= i < (c + 1) size / n. Returns (n, k) long indices
    (padding repeats a valid index) and (n, k) bool, true for the cell's own pixels.
    """
    start = [-(-c * size // n) for c in range(n + 1)]  # ceil(c size / n)
    k = max(max(start[c + 1] - start[c] for c in range(n)), 1)
    offset = torch.arange(k, device=device)
    first = torch.tensor(start[:-1], device=device)[:, None]
    count = torch.tensor([start[c + 1] - start[c] for c in range(n)], device=device)[:, None]
    idx = (first + offset).clamp_max(size - 1)
    return idx, offset < count


def _norm_minmax(z_q: Tensor, z_k: Tensor) -> tuple[Tensor, Tensor]:
    # One range per sample over the valid cells of BOTH views, so equal depths map to equal values.
    z = torch.cat((z_q, z_k), dim=1)
    valid = z > 0
    lo = torch.where(valid, z, torch.full_like(z, float("inf"))).amin(1, keepdim=True)
    hi = torch.where(valid, z, torch.full_like(z, float("-inf"))).amax(1, keepdim=True)
    span = (hi - lo).clamp_min(1e-12)
    lo = torch.where(torch.isfinite(lo), lo, torch.zeros_like(lo))
    span = torch.where(torch.isfinite(span), span, torch.ones_like(span))
    return (z_q - lo) / span, (z_k - lo) / span


def _norm_log(z_q: Tensor, z_k: Tensor) -> tuple[Tensor, Tensor]:
    return torch.log(z_q.clamp_min(1e-12)), torch.log(z_k.clamp_min(1e-12))


def _norm_abs(z_q: Tensor, z_k: Tensor) -> tuple[Tensor, Tensor]:
    return z_q, z_k


DEPTH_MODES: dict[str, Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]] = {
    "norm": _norm_minmax,
    "log": _norm_log,
    "abs": _norm_abs,
}
FALLBACKS = ("spatial", "drop")


def depth_agreement(
    z_q: Tensor,
    z_k: Tensor,
    *,
    mode: str = "norm",
    threshold: float = 0.2,
    fallback: str = "spatial",
) -> Tensor:
    """D_ij = 1[|n(z_i) - n(z'_j)| < t_d] for every cell pair.

    z_q: (B, Nq), z_k: (B, Nk) cell depths (0 = too little valid depth). ``mode``: ``norm`` (per-sample
    min-max over the valid cells of both views), ``log`` or ``abs`` (physical units). A pair with an
    invalid cell gets D = 1 under ``fallback="spatial"`` (the spatial rule alone decides) and D = 0
    under ``"drop"``. Returns (B, Nq, Nk) bool. Raises ValueError for an unknown mode or fallback.
    """
    if mode not in DEPTH_MODES:
        raise ValueError(f"unknown depth mode {mode!r}; choose from {sorted(DEPTH_MODES)}")
    if fallback not in FALLBACKS:
        raise ValueError(f"unknown depth fallback {fallback!r}; choose from {FALLBACKS}")
    n_q, n_k = DEPTH_MODES[mode](z_q.float(), z_k.float())
    agree = (n_q[:, :, None] - n_k[:, None, :]).abs() < threshold
    both = (z_q > 0)[:, :, None] & (z_k > 0)[:, None, :]
    return agree & both if fallback == "drop" else agree | ~both


@dataclass(frozen=True)
class DepthRule:
    """How exogenous depth filters positives (SPEC 5, Ben Saad et al. 2023)."""

    mode: str = "norm"
    threshold: float = 0.2
    min_valid: float = 0.25
    fallback: str = "spatial"


def positive_pairs(
    coords_q: Tensor,
    coords_k: Tensor,
    shape_q: tuple[int, int],
    shape_k: tuple[int, int],
    size: int,
    *,
    radius: float = 0.7,
    periodic: Tensor | None = None,
    period: Tensor | float = 1.0,
    depth_q: Tensor | None = None,
    depth_k: Tensor | None = None,
    depth_rule: DepthRule | None = None,
) -> tuple[Tensor, Tensor]:
    """The spatial positives A_spatial and the depth-filtered positives A = A_spatial AND D.

    coords (B, 4); size: S of the views; depth_q, depth_k (B, 1, S, S) physical units (needed when
    ``depth_rule`` is given). Returns two (B, Nq, Nk) bool tensors; without a depth rule both are
    A_spatial. Raises ValueError when the rule is given without depth.
    """
    dist = pair_distance(
        coords_q, coords_k, shape_q, shape_k, size, periodic=periodic, period=period
    )
    spatial = dist < radius
    if depth_rule is None:
        return spatial, spatial
    if depth_q is None or depth_k is None:
        raise ValueError("the depth filter needs depth_q and depth_k")
    z_q = cell_depth(depth_q, *shape_q, min_valid=depth_rule.min_valid)
    z_k = cell_depth(depth_k, *shape_k, min_valid=depth_rule.min_valid)
    d = depth_agreement(
        z_q, z_k, mode=depth_rule.mode, threshold=depth_rule.threshold, fallback=depth_rule.fallback
    )
    return spatial, spatial & d


# ------------------------------------------------------------------------------------------ PixPro


def pixpro_loss(y: Tensor, k: Tensor, pos: Tensor) -> Tensor:
    """PixPro's pixel-to-propagation consistency, one direction.

    y: (B, C, Hq, Wq) propagated online features; k: (B, C, Hk, Wk) momentum features (no gradient);
    both are L2-normalised over C here. pos: (B, Hq*Wq, Hk*Wk) bool positives A_ij.
    Returns the scalar -2 mean_b [sum_ij A_ij <y_i, k_j> / (sum_ij A_ij + 1e-6)].
    """
    yn = F.normalize(y.float().flatten(2), dim=1)
    kn = F.normalize(k.float().flatten(2), dim=1)
    cos = torch.bmm(yn.transpose(1, 2), kn)  # (B, Nq, Nk)
    a = pos.to(cos.dtype)
    per_sample = (cos * a).sum((1, 2)) / (a.sum((1, 2)) + EPS)
    return -2.0 * per_sample.mean()


@dataclass(frozen=True)
class PixProTerms:
    """The symmetrised, multi-level PixPro loss and the positive-pair fractions (means over levels
    and directions) before and after the depth filter."""

    loss: Tensor
    pos_frac_spatial: Tensor
    pos_frac: Tensor


def multiscale_pixpro_loss(
    y: Mapping[str, tuple[Tensor, Tensor]],
    k: Mapping[str, tuple[Tensor, Tensor]],
    coords: tuple[Tensor, Tensor],
    size: int,
    *,
    weights: Mapping[str, float],
    radius: float = 0.7,
    periodic: Tensor | None = None,
    period: Tensor | float = 1.0,
    depth: tuple[Tensor, Tensor] | None = None,
    depth_rule: DepthRule | None = None,
) -> PixProTerms:
    """sum_level weight_level * [L(y1, k2) + L(y2, k1)] with L = :func:`pixpro_loss`.

    y[level] = (y1, y2): propagated online features of the two views, (B, C, h, w) each;
    k[level] = (k1, k2): momentum features; coords = (coords1, coords2), (B, 4) each; size: S of
    the views; depth = (depth1, depth2), (B, 1, S, S) each, or None. Each level's positives come from
    its own cell grid (our reading of the multi-scale loss; the paper's exact form is not public).
    """
    device = coords[0].device
    d1, d2 = depth if depth is not None else (None, None)
    total = torch.zeros((), device=device)
    frac_spatial, frac = [], []
    for level, (y1, y2) in y.items():
        k1, k2 = k[level]
        level_loss = torch.zeros((), device=device)
        for yq, cq, dq, kk, ck, dk in (
            (y1, coords[0], d1, k2, coords[1], d2),
            (y2, coords[1], d2, k1, coords[0], d1),
        ):
            spatial, pos = positive_pairs(
                cq,
                ck,
                (yq.shape[2], yq.shape[3]),
                (kk.shape[2], kk.shape[3]),
                size,
                radius=radius,
                periodic=periodic,
                period=period,
                depth_q=dq,
                depth_k=dk,
                depth_rule=depth_rule,
            )
            level_loss = level_loss + pixpro_loss(yq, kk, pos)
            frac_spatial.append(spatial.float().mean())
            frac.append(pos.float().mean())
        total = total + weights[level] * level_loss
    return PixProTerms(total, torch.stack(frac_spatial).mean(), torch.stack(frac).mean())


# ------------------------------------------------------------------------------------------ PixCon


def info_nce(q: Tensor, k: Tensor, queue: Tensor, *, tau: float = 0.2) -> Tensor:
    """Per-row InfoNCE with the key as positive and the queue as negatives.

    q: (N, D) online (predicted) embeddings; k: (N, D) positive keys (no gradient); queue: (K, D).
    All are L2-normalised here. Returns (N,) cross-entropies of [q.k, q.queue] / tau with target 0.
    """
    qn = F.normalize(q.float(), dim=1)
    kn = F.normalize(k.float(), dim=1)
    pos = (qn * kn).sum(1, keepdim=True)
    neg = qn @ F.normalize(queue.float(), dim=1).t()
    logits = torch.cat((pos, neg), dim=1) / tau
    return F.cross_entropy(
        logits, torch.zeros(q.shape[0], dtype=torch.long, device=q.device), reduction="none"
    )


def backbone_similarity(b_q: Tensor, b_k: Tensor) -> Tensor:
    """cos(b_i, b'_j) of backbone features. b_q (B, C, Hq, Wq), b_k (B, C, Hk, Wk) -> (B, Nq, Nk)."""
    bq = F.normalize(b_q.float().flatten(2), dim=1)
    bk = F.normalize(b_k.float().flatten(2), dim=1)
    return torch.bmm(bq.transpose(1, 2), bk)


def match_feature(sim: Tensor) -> tuple[Tensor, Tensor]:
    """DenseCL matching: j(i) = argmax_j cos(b_i, b'_j). sim (B, Nq, Nk) -> index (B, Nq) long and
    valid (B, Nq) bool (always true)."""
    idx = sim.argmax(dim=2)
    return idx, torch.ones_like(idx, dtype=torch.bool)


def match_coord(dist: Tensor, *, radius: float = 0.7) -> tuple[Tensor, Tensor]:
    """Coordinate matching: j(i) = the nearest cell of the other view, valid only when it is a
    spatial positive (normalised distance < radius). dist (B, Nq, Nk) from :func:`pair_distance`."""
    d, idx = dist.min(dim=2)
    return idx, d < radius


MATCHERS = ("feature", "coord")


def semantic_weights(s: Tensor, inside: Tensor) -> Tensor:
    """PixCon's reweighting. s (B, Nq): s_i = max_j cos(b_i, b'_j); inside (B, Nq) bool: cell inside
    the crops' overlap. w_i = 1 inside, (s_i - min s) / (max_outside s - min s) outside (min over all
    cells of the sample), then squared. Returns (B, Nq) in [0, 1]."""
    s = s.float()
    s_min = s.amin(1, keepdim=True)
    s_max_out = torch.where(inside, torch.full_like(s, float("-inf")), s).amax(1, keepdim=True)
    span = torch.where(torch.isfinite(s_max_out), s_max_out - s_min, torch.ones_like(s_min))
    w_out = ((s - s_min) / span.clamp_min(1e-12)).clamp(0, 1)
    w = torch.where(inside, torch.ones_like(s), w_out)
    return w * w


def dense_info_nce(
    q: Tensor, k: Tensor, queue: Tensor, idx: Tensor, weights: Tensor, *, tau: float = 0.2
) -> Tensor:
    """PixCon's dense loss, one direction: sum_i w_i CE_i / sum_i w_i over all cells of the batch.

    q: (B, D, Hq, Wq) online predicted dense embeddings; k: (B, D, Hk, Wk) momentum dense keys;
    queue: (K, D); idx: (B, Nq) long, the positive key cell of each query cell; weights: (B, Nq)
    (0 removes a cell). Returns a scalar.
    """
    b, d = q.shape[:2]
    qf = q.flatten(2).transpose(1, 2).reshape(-1, d)  # (B*Nq, D)
    kf = k.flatten(2).transpose(1, 2)  # (B, Nk, D)
    kpos = torch.gather(kf, 1, idx[..., None].expand(-1, -1, d)).reshape(-1, d)
    ce = info_nce(qf, kpos, queue, tau=tau).view(b, -1)
    w = weights.float()
    return (w * ce).sum() / (w.sum() + EPS)
