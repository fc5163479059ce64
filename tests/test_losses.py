"""The losses of training/losses.py against slow loops written straight from SPEC 5, the depth
filter's properties, and each method's loss falling over a few optimiser steps."""

from __future__ import annotations

import math

import pytest
import torch

from training import losses
from training.losses import DepthRule

S = 64  # view side in pixels


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def random_coords(gen: torch.Generator, b: int) -> torch.Tensor:
    """Crops inside [0, 1]^2, every other one flipped (x1 > x2)."""
    lo = torch.rand(b, 2, generator=gen) * 0.5
    size = 0.2 + torch.rand(b, 2, generator=gen) * 0.5
    c = torch.cat([lo, lo + size], dim=1)
    c[1::2] = c[1::2][:, [2, 1, 0, 3]]
    return c


def random_depth(gen: torch.Generator, b: int, invalid: float = 0.3) -> torch.Tensor:
    blocks = 0.5 + 9.5 * torch.rand(b, 1, 8, 8, generator=gen)  # depth varies between cells
    d = torch.nn.functional.interpolate(blocks, size=(S, S), mode="nearest")
    d = d * (1 + 0.2 * torch.rand(b, 1, S, S, generator=gen))
    d[torch.rand(b, 1, S, S, generator=gen) < invalid] = 0
    d[:, :, :16, :16] = 0  # whole cells without depth: the fallback
    return d


def random_batch(
    gen: torch.Generator, b: int, periodic: list[bool], jitter: float | None = None
) -> dict[str, torch.Tensor]:
    """A SPEC 4 batch of noise views with depth; view 2's crop is view 1's shifted by 0.05 (or by
    ``jitter`` x normal noise per coordinate)."""
    c1 = random_coords(gen, b)
    batch = {
        "view1": torch.randn(b, 3, S, S, generator=gen),
        "view2": torch.randn(b, 3, S, S, generator=gen),
        "depth1": random_depth(gen, b),
        "depth2": random_depth(gen, b),
        "coords1": c1,
        "periodic": torch.tensor(periodic),
    }
    shift = 0.05 if jitter is None else jitter * torch.randn(b, 4, generator=gen)
    batch["coords2"] = c1 + shift
    return batch


# --------------------------------------------------------------------------- slow references


def slow_centre(coords: list[float], h: int, w: int, r: int, c: int) -> tuple[float, float]:
    x1, y1, x2, y2 = coords
    px = (c + 0.5) * S / w - 0.5  # output-pixel position of the cell centre
    py = (r + 0.5) * S / h - 0.5
    return x1 + (x2 - x1) * px / (S - 1), y1 + (y2 - y1) * py / (S - 1)


def slow_diag(coords: list[float], h: int, w: int) -> float:
    x1, y1, x2, y2 = coords
    return math.hypot((x2 - x1) * S / w / (S - 1), (y2 - y1) * S / h / (S - 1))


def slow_dist(cq, ck, hq, wq, hk, wk, i, j, periodic, period=1.0) -> float:
    xi, yi = slow_centre(cq, hq, wq, i // wq, i % wq)
    xj, yj = slow_centre(ck, hk, wk, j // wk, j % wk)
    dx = xi - xj
    if periodic:
        dx = dx - period * round(dx / period)
    return math.hypot(dx, yi - yj) / max(slow_diag(cq, hq, wq), slow_diag(ck, hk, wk))


def slow_cell_depth(depth: torch.Tensor, h: int, w: int, min_valid: float) -> list[float]:
    """depth (S, S) of one sample -> per-cell lower median of valid values, 0 if too little."""
    out = []
    kh, kw = S // h, S // w
    for r in range(h):
        for c in range(w):
            vals = sorted(
                float(v)
                for v in depth[r * kh : (r + 1) * kh, c * kw : (c + 1) * kw].flatten()
                if v > 0
            )
            enough = vals and len(vals) / (kh * kw) >= min_valid
            out.append(vals[(len(vals) - 1) // 2] if enough else 0.0)
    return out


def slow_depth_ok(zq: list[float], zk: list[float], i: int, j: int, rule: DepthRule) -> bool:
    a, b = zq[i], zk[j]
    if a <= 0 or b <= 0:
        return rule.fallback == "spatial"
    if rule.mode == "norm":
        valid = [z for z in zq + zk if z > 0]
        lo, hi = min(valid), max(valid)
        a, b = (a - lo) / (hi - lo) if hi > lo else 0.0, (b - lo) / (hi - lo) if hi > lo else 0.0
    elif rule.mode == "log":
        a, b = math.log(a), math.log(b)
    return abs(a - b) < rule.threshold


def cos(u: torch.Tensor, v: torch.Tensor) -> float:
    return float((u @ v) / (u.norm() * v.norm()))


def slow_pixpro_direction(
    y, k, cq, ck, periodic, depth_q=None, depth_k=None, rule=None, radius=0.7
):
    """-2 mean_b [sum_ij A_ij <y_i, k_j> / (sum_ij A_ij + 1e-6)], A = spatial AND depth."""
    y, k = y.double(), k.double()
    b, _, hq, wq = y.shape
    hk, wk = k.shape[2:]
    total = 0.0
    for s in range(b):
        zq = slow_cell_depth(depth_q[s, 0], hq, wq, rule.min_valid) if rule else None
        zk = slow_cell_depth(depth_k[s, 0], hk, wk, rule.min_valid) if rule else None
        num = den = 0.0
        for i in range(hq * wq):
            for j in range(hk * wk):
                a = (
                    slow_dist(
                        cq[s].tolist(), ck[s].tolist(), hq, wq, hk, wk, i, j, bool(periodic[s])
                    )
                    < radius
                )
                if a and rule:
                    a = slow_depth_ok(zq, zk, i, j, rule)
                if a:
                    num += cos(y[s, :, i // wq, i % wq], k[s, :, j // wk, j % wk])
                    den += 1
        total += num / (den + 1e-6)
    return -2 * total / b


# ---------------------------------------------------------------------------------- PixPro


@pytest.mark.parametrize("grid", [(2, 2), (4, 4)])
def test_pixpro_loss_matches_slow_loop(grid: tuple[int, int]) -> None:
    gen = torch.Generator().manual_seed(1)
    b, c = 3, 8
    y1, y2, k1, k2 = (torch.randn(b, c, *grid, generator=gen) for _ in range(4))
    c1, c2 = random_coords(gen, b), random_coords(gen, b)
    periodic = torch.tensor([True, False, True])
    terms = losses.multiscale_pixpro_loss(
        {"c5": (y1, y2)}, {"c5": (k1, k2)}, (c1, c2), S, weights={"c5": 1.0}, periodic=periodic
    )
    slow = slow_pixpro_direction(y1, k2, c1, c2, periodic) + slow_pixpro_direction(
        y2, k1, c2, c1, periodic
    )
    assert float(terms.loss) == pytest.approx(slow, abs=1e-5)
    assert 0 < float(terms.pos_frac_spatial) < 1  # the test exercises both sides of the rule


@pytest.mark.parametrize(
    "rule",
    [
        DepthRule("norm", 0.2, 0.25, "spatial"),
        DepthRule("log", 0.3, 0.5, "drop"),
        DepthRule("abs", 2.0, 0.25, "drop"),
        DepthRule("abs", 2.0, 0.25, "spatial"),
    ],
)
def test_depth_pixpro_matches_slow_loop(rule: DepthRule) -> None:
    gen = torch.Generator().manual_seed(2)
    b, c, grid = 2, 6, (4, 4)
    y1, y2, k1, k2 = (torch.randn(b, c, *grid, generator=gen) for _ in range(4))
    c1, c2 = random_coords(gen, b), random_coords(gen, b)
    # overlapping crops so that the depth filter has spatial positives to act on
    c2 = c1 + 0.05 * torch.randn(b, 4, generator=gen)
    d1, d2 = random_depth(gen, b), random_depth(gen, b)
    periodic = torch.tensor([False, True])
    terms = losses.multiscale_pixpro_loss(
        {"c5": (y1, y2)},
        {"c5": (k1, k2)},
        (c1, c2),
        S,
        weights={"c5": 1.0},
        periodic=periodic,
        depth=(d1, d2),
        depth_rule=rule,
    )
    slow = slow_pixpro_direction(y1, k2, c1, c2, periodic, d1, d2, rule) + slow_pixpro_direction(
        y2, k1, c2, c1, periodic, d2, d1, rule
    )
    assert float(terms.loss) == pytest.approx(slow, abs=1e-5)
    assert float(terms.pos_frac) < float(terms.pos_frac_spatial)


def test_multiscale_is_the_weighted_sum_of_levels() -> None:
    gen = torch.Generator().manual_seed(3)
    b, c = 2, 4
    grids = {"c3": (8, 8), "c4": (4, 4), "c5": (2, 2)}
    weights = {"c3": 0.25, "c4": 0.5, "c5": 1.0}
    y = {
        lv: (torch.randn(b, c, *g, generator=gen), torch.randn(b, c, *g, generator=gen))
        for lv, g in grids.items()
    }
    k = {
        lv: (torch.randn(b, c, *g, generator=gen), torch.randn(b, c, *g, generator=gen))
        for lv, g in grids.items()
    }
    c1, c2 = random_coords(gen, b), random_coords(gen, b)
    c2 = c1 + 0.05 * torch.randn(b, 4, generator=gen)
    periodic = torch.tensor([False, False])
    terms = losses.multiscale_pixpro_loss(y, k, (c1, c2), S, weights=weights, periodic=periodic)
    slow = sum(
        weights[lv]
        * (
            slow_pixpro_direction(y[lv][0], k[lv][1], c1, c2, periodic)
            + slow_pixpro_direction(y[lv][1], k[lv][0], c2, c1, periodic)
        )
        for lv in grids
    )
    assert float(terms.loss) == pytest.approx(slow, abs=1e-5)


def test_pixpro_depth_method_composes_levels_with_their_own_heads() -> None:
    # y = PPM_l(projector_l(C_l)) online, x' = momentum projector_l(C_l) (no PPM), one projector and
    # one PPM per level, L = sum_l w_l [L_l(y1, x'2) + L_l(y2, x'1)] / sum_l w_l with depth-aware
    # positives
    from training.config import TrainConfig, resolve
    from training.methods import build_method

    gen = torch.Generator().manual_seed(13)
    b, rule = 2, DepthRule("norm", 0.2, 0.25, "spatial")
    batch = random_batch(gen, b, [True, False], jitter=0.05)
    weights = {"c3": 0.3, "c4": 0.5, "c5": 1.0}
    cfg = TrainConfig(
        data="-", out="-", method="pixpro-depth", arch="resnet18", multiscale=True, batch_size=b,
        steps=5, proj_hidden=16, proj_dim=8, level_weights=tuple(weights.values()),
    )  # fmt: skip
    torch.manual_seed(0)
    net = build_method(resolve(cfg, num_samples=b))
    assert len({id(net.projector[lv]) for lv in weights} | {id(net.ppm[lv]) for lv in weights}) == 6
    with torch.no_grad():  # a momentum projector different from the online one
        for p in net.projector_m.parameters():
            p.add_(0.05 * torch.randn_like(p))
    out = net(batch)
    with torch.no_grad():
        f = [net.backbone(batch[v]) for v in ("view1", "view2")]
        fm = [net.backbone_m(batch[v]) for v in ("view1", "view2")]
        coords, depth, periodic = (batch["coords1"], batch["coords2"]), (batch["depth1"], batch["depth2"]), batch["periodic"]  # fmt: skip
        slow = 0.0
        for lv, wt in weights.items():
            y = [net.ppm[lv](net.projector[lv](f[v][lv])) for v in (0, 1)]
            k = [net.projector_m[lv](fm[v][lv]) for v in (0, 1)]
            for q, o in ((0, 1), (1, 0)):
                slow += wt * slow_pixpro_direction(
                    y[q], k[o], coords[q], coords[o], periodic, depth[q], depth[o], rule
                )
    assert float(out.loss.detach()) == pytest.approx(slow / sum(weights.values()), abs=1e-5)


def test_pixel_propagation_matches_slow_loop() -> None:
    # y_i = sum_j max(cos(x_i, x_j), 0)^2 g(x_j), g = one conv1x1 whose output is L2-normalised
    from training.heads import PixelPropagation

    torch.manual_seed(10)
    ppm = PixelPropagation(5, 2.0).double()
    x = torch.randn(2, 5, 3, 4, dtype=torch.double)
    with torch.no_grad():
        y = ppm(x)
        weight, bias = ppm.value.weight[:, :, 0, 0], ppm.value.bias
        for s in range(2):
            cells = [x[s, :, i // 4, i % 4] for i in range(12)]
            for i, xi in enumerate(cells):
                expected = torch.zeros(5, dtype=torch.double)
                for xj in cells:
                    g = weight @ xj + bias
                    expected += max(cos(xi, xj), 0.0) ** 2 * g / g.norm()
                assert y[s, :, i // 4, i % 4].tolist() == pytest.approx(expected.tolist(), abs=1e-9)


def test_cell_depth_is_the_lower_median_of_valid_depth() -> None:
    gen = torch.Generator().manual_seed(4)
    d = random_depth(gen, 2)
    z = losses.cell_depth(d, 4, 4, min_valid=0.5)
    for s in range(2):
        assert z[s].tolist() == pytest.approx(slow_cell_depth(d[s, 0], 4, 4, 0.5), abs=0)
    assert (z[:, 0] == 0).all()  # the cell with no valid depth


@pytest.mark.parametrize("size,grid", [(10, 3), (20, 6), (64, 7)])
def test_cell_depth_at_sizes_not_divisible_by_the_grid(size: int, grid: int) -> None:
    # cell c of n holds exactly the pixels i with c S / n <= i < (c + 1) S / n (views.md geometry):
    # no pixel duplicated or moved to a neighbour, and min_valid counts the cell's own pixels
    gen = torch.Generator().manual_seed(9)
    d = 1 + 9 * torch.rand(2, 1, size, size + 3, generator=gen)
    d[torch.rand(d.shape, generator=gen) < 0.45] = 0
    z = losses.cell_depth(d, grid, grid + 1, min_valid=0.5)
    for s in range(2):
        expected = []
        for r in range(grid):
            rows = [i for i in range(size) if r * size <= i * grid < (r + 1) * size]
            for c in range(grid + 1):
                cols = [j for j in range(size + 3) if c * (size + 3) <= j * (grid + 1) < (c + 1) * (size + 3)]  # fmt: skip
                vals = sorted(float(d[s, 0, i, j]) for i in rows for j in cols if d[s, 0, i, j] > 0)
                enough = vals and len(vals) >= 0.5 * len(rows) * len(cols)
                expected.append(vals[(len(vals) - 1) // 2] if enough else 0.0)
        assert z[s].tolist() == pytest.approx(expected, abs=0)


def test_periodic_pairs_wrap_across_the_seam() -> None:
    # two thin crops at opposite edges of a periodic image: neighbours across the seam
    cq = torch.tensor([[0.0, 0.0, 0.05, 1.0]])
    ck = torch.tensor([[0.95, 0.0, 1.0, 1.0]])
    period = 1.0 + 1 / 63  # W / (W - 1) for a 64-pixel-wide source
    near = losses.pair_distance(
        cq, ck, (2, 2), (2, 2), S, periodic=torch.tensor([True]), period=period
    )
    far = losses.pair_distance(
        cq, ck, (2, 2), (2, 2), S, periodic=torch.tensor([False]), period=period
    )
    assert float(near.min()) < float(far.min()) / 5
    # every pair against the slow loop, at this period (a period of 1 puts the seam 1/63 off)
    for i in range(4):
        for j in range(4):
            for got, wraps in ((near, True), (far, False)):
                want = slow_dist(cq[0].tolist(), ck[0].tolist(), 2, 2, 2, 2, i, j, wraps, period)
                assert float(got[0, i, j]) == pytest.approx(want, rel=1e-5), (i, j, wraps)


# ------------------------------------------------------------------------- depth filter properties


def piecewise_depth(levels: torch.Tensor, grid: int = 4) -> torch.Tensor:
    """(B, grid*grid) per-cell depths -> (B, 1, S, S) constant inside each cell."""
    b = levels.shape[0]
    return (
        levels.view(b, 1, grid, 1, grid, 1)
        .expand(-1, -1, -1, S // grid, -1, S // grid)
        .reshape(b, 1, S, S)
    )


@pytest.mark.parametrize("mode,threshold", [("norm", 0.2), ("log", 0.1), ("abs", 0.5)])
def test_depth_filter_removes_exactly_the_pairs_with_different_depth(
    mode: str, threshold: float
) -> None:
    gen = torch.Generator().manual_seed(5)
    b = 4
    choices = torch.tensor([1.0, 4.0, 16.0])
    z1 = choices[torch.randint(0, 3, (b, 16), generator=gen)]
    z2 = choices[torch.randint(0, 3, (b, 16), generator=gen)]
    z1[:, 0], z2[:, 0] = 1.0, 16.0  # every sample spans the full range (norm mode)
    c1 = random_coords(gen, b)
    c2 = c1 + 0.03 * torch.randn(b, 4, generator=gen)
    spatial, pos = losses.positive_pairs(
        c1,
        c2,
        (4, 4),
        (4, 4),
        S,
        depth_q=piecewise_depth(z1),
        depth_k=piecewise_depth(z2),
        depth_rule=DepthRule(mode, threshold),
    )
    same = z1[:, :, None] == z2[:, None, :]
    assert torch.equal(pos, spatial & same)
    assert (spatial & ~same).any() and (spatial & same).any()


def test_depth_filter_with_equal_depth_is_pixpro_exactly() -> None:
    gen = torch.Generator().manual_seed(6)
    b, c = 3, 8
    y = {"c5": (torch.randn(b, c, 4, 4, generator=gen), torch.randn(b, c, 4, 4, generator=gen))}
    k = {"c5": (torch.randn(b, c, 4, 4, generator=gen), torch.randn(b, c, 4, 4, generator=gen))}
    c1, c2 = random_coords(gen, b), random_coords(gen, b)
    flat = torch.full((b, 1, S, S), 2.5)
    plain = losses.multiscale_pixpro_loss(y, k, (c1, c2), S, weights={"c5": 1.0})
    for mode in losses.DEPTH_MODES:
        with_depth = losses.multiscale_pixpro_loss(
            y, k, (c1, c2), S, weights={"c5": 1.0}, depth=(flat, flat), depth_rule=DepthRule(mode)
        )
        assert torch.equal(with_depth.loss, plain.loss)
        assert torch.equal(with_depth.pos_frac, plain.pos_frac_spatial)


def test_depth_fallback_keeps_or_drops_cells_without_depth() -> None:
    z_q = torch.tensor([[0.0, 2.0]])
    z_k = torch.tensor([[2.0, 0.0]])
    keep = losses.depth_agreement(z_q, z_k, fallback="spatial")
    drop = losses.depth_agreement(z_q, z_k, fallback="drop")
    assert keep.tolist() == [[[True, True], [True, True]]]
    assert drop.tolist() == [[[False, False], [True, False]]]
    with pytest.raises(ValueError):
        losses.depth_agreement(z_q, z_k, mode="nope")


# ---------------------------------------------------------------------------------- PixCon


def slow_info_nce(q, k, queue, tau):
    logits = [cos(q, k) / tau] + [cos(q, n) / tau for n in queue]
    m = max(logits)
    return -(logits[0] - m - math.log(sum(math.exp(v - m) for v in logits)))


def test_info_nce_matches_slow_loop() -> None:
    gen = torch.Generator().manual_seed(7)
    q, k, queue = (
        torch.randn(5, 8, generator=gen),
        torch.randn(5, 8, generator=gen),
        torch.randn(16, 8, generator=gen),
    )
    fast = losses.info_nce(q, k, queue, tau=0.2)
    slow = [slow_info_nce(q[i].double(), k[i].double(), queue.double(), 0.2) for i in range(5)]
    assert fast.tolist() == pytest.approx(slow, abs=1e-5)


def slow_inside(coords_q, coords_k, h, w, i, periodic, period=1.0) -> bool:
    x, y = slow_centre(coords_q, h, w, i // w, i % w)
    x1, y1, x2, y2 = coords_k
    hx, hy = 0.5 * (x2 - x1) / (S - 1), 0.5 * (y2 - y1) / (S - 1)
    lo_x, hi_x = sorted((x1 - hx, x2 + hx))
    lo_y, hi_y = sorted((y1 - hy, y2 + hy))
    in_x = (x - lo_x) % period <= hi_x - lo_x if periodic else lo_x <= x <= hi_x
    return in_x and lo_y <= y <= hi_y


@pytest.mark.parametrize("matching", ["feature", "coord"])
@pytest.mark.parametrize("reweight", [True, False])
def test_dense_pixcon_loss_matches_slow_loop(matching: str, reweight: bool) -> None:
    gen = torch.Generator().manual_seed(8)
    b, cb, d, grid, tau = 2, 6, 5, (4, 4), 0.2
    bq, bk = torch.randn(b, cb, *grid, generator=gen), torch.randn(b, cb, *grid, generator=gen)
    q, k = torch.randn(b, d, *grid, generator=gen), torch.randn(b, d, *grid, generator=gen)
    queue = torch.randn(12, d, generator=gen)
    cq = random_coords(gen, b)
    ck = cq + torch.tensor([0.15, 0.1, 0.15, 0.1])  # partial overlap: cells inside and outside
    periodic = torch.tensor([True, False])
    shape = grid
    # the fast path, as methods.PixCon composes it
    sim = losses.backbone_similarity(bq, bk)
    if matching == "feature":
        idx, valid = losses.match_feature(sim)
    else:
        idx, valid = losses.match_coord(
            losses.pair_distance(cq, ck, shape, shape, S, periodic=periodic)
        )
    w = valid.float()
    if reweight:
        w = w * losses.semantic_weights(
            sim.amax(2), losses.inside_crop(cq, ck, shape, S, periodic=periodic)
        )
    fast = losses.dense_info_nce(q, k, queue, idx, w, tau=tau)
    # the slow loop from SPEC 5
    n = grid[0] * grid[1]
    num = den = 0.0
    for s in range(b):

        def bvec(t: torch.Tensor, i: int, s: int = s) -> torch.Tensor:
            return t[s, :, i // grid[1], i % grid[1]].double()

        sims = [[cos(bvec(bq, i), bvec(bk, j)) for j in range(n)] for i in range(n)]
        svals = [max(row) for row in sims]
        inside = [
            slow_inside(cq[s].tolist(), ck[s].tolist(), *grid, i, bool(periodic[s]))
            for i in range(n)
        ]
        outside_s = [svals[i] for i in range(n) if not inside[i]]
        assert outside_s and any(inside)
        for i in range(n):
            if matching == "feature":
                j, ok = max(range(n), key=lambda j: sims[i][j]), True
            else:
                dists = [
                    slow_dist(cq[s].tolist(), ck[s].tolist(), *grid, *grid, i, j, bool(periodic[s]))
                    for j in range(n)
                ]
                j = min(range(n), key=lambda j: dists[j])
                ok = dists[j] < 0.7
            wi = 1.0
            if reweight and not inside[i]:
                wi = (svals[i] - min(svals)) / (max(outside_s) - min(svals))
            wi = wi * wi if reweight else wi
            wi = wi if ok else 0.0
            ce = slow_info_nce(bvec(q, i), bvec(k, j), queue.double(), tau)
            num += wi * ce
            den += wi
    assert float(fast) == pytest.approx(num / (den + 1e-6), abs=1e-5)


def test_semantic_weights_are_one_inside_and_scaled_outside() -> None:
    s = torch.tensor([[0.9, 0.1, 0.5, 0.3]])
    inside = torch.tensor([[True, False, False, False]])
    w = losses.semantic_weights(s, inside)
    assert w[0].tolist() == pytest.approx([1.0, 0.0, 1.0, (0.2 / 0.4) ** 2])


def test_pixcon_method_loss_keys_and_gradients_match_slow_loop() -> None:
    # L = (1 - lambda) L_global + lambda L_dense, each the mean of the two directions; predictors on
    # the online side only; queues read, not written, by forward; no gradient into momentum modules
    from training.config import TrainConfig, resolve
    from training.methods import build_method

    gen = torch.Generator().manual_seed(11)
    b, tau, lam = 2, 0.2, 0.3
    c1 = random_coords(gen, b)
    batch = {
        "view1": torch.randn(b, 3, S, S, generator=gen),
        "view2": torch.randn(b, 3, S, S, generator=gen),
        "coords1": c1,
        "coords2": c1 + 0.1,
        "periodic": torch.tensor([False, True]),
    }
    cfg = TrainConfig(
        data="-", out="-", method="pixcon", arch="resnet18", batch_size=b, steps=5, head_hidden=32,
        pred_hidden=16, queue_size=16, dense_weight=lam, reweight=False,
    )  # fmt: skip
    torch.manual_seed(0)
    net = build_method(resolve(cfg, num_samples=b))
    with torch.no_grad():  # a momentum network different from the online one
        for p in net.backbone_m.parameters():
            p.add_(0.01 * torch.randn_like(p))
    queues = net.queue_global.queue.clone(), net.queue_dense.queue.clone()
    out = net(batch)
    with torch.no_grad():
        feats = [net.backbone(batch[v])["c5"] for v in ("view1", "view2")]
        feats_m = [net.backbone_m(batch[v])["c5"] for v in ("view1", "view2")]
        q_g = [net.global_pred(net.global_head(f)) for f in feats]
        k_g = [net.global_head_m(f) for f in feats_m]
        q_d = [net.dense_pred(net.dense_head(f)) for f in feats]
        k_d = [net.dense_head_m(f) for f in feats_m]
    loss_g = loss_d = 0.0
    for a, o in ((0, 1), (1, 0)):
        loss_g += sum(slow_info_nce(q_g[a][s], k_g[o][s], queues[0], tau) for s in range(b)) / b / 2
        h, w = feats[a].shape[2:]
        ces = []
        for s in range(b):
            for i in range(h * w):
                bi = feats[a][s, :, i // w, i % w]
                sims = [cos(bi, feats_m[o][s, :, j // w, j % w]) for j in range(h * w)]
                j = max(range(h * w), key=lambda j: sims[j])
                qi, kj = q_d[a][s, :, i // w, i % w], k_d[o][s, :, j // w, j % w]
                ces.append(slow_info_nce(qi, kj, queues[1], tau))
        loss_d += sum(ces) / (len(ces) + 1e-6) / 2
    assert float(out.metrics["loss_global"]) == pytest.approx(loss_g, abs=1e-4)
    assert float(out.metrics["loss_dense"]) == pytest.approx(loss_d, abs=1e-4)
    assert float(out.loss.detach()) == pytest.approx((1 - lam) * loss_g + lam * loss_d, abs=1e-4)
    # keys for the queues: both views' normalised global keys and mean-pooled dense keys
    unit = torch.nn.functional.normalize
    assert torch.allclose(out.keys["global"], unit(torch.cat(k_g), dim=1), atol=1e-6)
    assert torch.allclose(out.keys["dense"], unit(torch.cat([k.mean((2, 3)) for k in k_d]), dim=1), atol=1e-6)  # fmt: skip
    out.loss.backward()
    for m in (net.backbone_m, net.global_head_m, net.dense_head_m):
        assert all(p.grad is None and not p.requires_grad for p in m.parameters())
    assert net.global_pred[0].weight.grad is not None and net.dense_pred[0].weight.grad is not None
    assert torch.equal(net.queue_global.queue, queues[0])
    assert not out.keys["global"].requires_grad and not out.keys["dense"].requires_grad


@pytest.mark.parametrize("head_bn", [True, False])
def test_pixcon_heads_batch_normalise_their_hidden_layer(head_bn: bool) -> None:
    from training.config import TrainConfig, resolve
    from training.methods import build_method

    cfg = TrainConfig(
        data="-", out="-", method="pixcon", arch="resnet18", batch_size=2, steps=5, head_hidden=32,
        pred_hidden=16, queue_size=16, head_bn=head_bn,
    )  # fmt: skip
    net = build_method(resolve(cfg, num_samples=2))
    heads = (net.global_head, net.dense_head, net.global_pred, net.dense_pred, net.global_head_m)
    for head in heads:
        norms = [m for m in head.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
        # Linear/conv -> BN -> ReLU -> Linear/conv: one BN, on the hidden layer only
        assert len(norms) == (1 if head_bn else 0)
        assert all(m.num_features in (32, 16) for m in norms)


def test_queue_is_a_fifo_of_the_last_keys() -> None:
    from training.heads import Queue

    q = Queue(5, 2)
    q.push(torch.arange(6.0).view(3, 2))
    q.push(torch.arange(6.0, 14.0).view(4, 2))  # wraps around
    assert q.queue.tolist() == [[10, 11], [12, 13], [4, 5], [6, 7], [8, 9]] and int(q.ptr) == 2
    q.push(torch.arange(14.0, 28.0).view(7, 2))  # more than the queue holds: the last 5 stay
    assert sorted(q.queue[:, 0].tolist()) == [18, 20, 22, 24, 26]


# ------------------------------------------------------------------------------- optimisation


@pytest.mark.parametrize("method", ["pixpro-depth", "pixcon"])
def test_momentum_encoder_starts_as_a_copy_and_follows_the_ema(method: str) -> None:
    # SPEC 5: theta_m <- m theta_m + (1 - m) theta, for every momentum module (the children named
    # ``X_m`` beside their online ``X``: backbone, projectors or heads), read here from the names
    # rather than from the method's own list of pairs
    from training.config import TrainConfig, resolve
    from training.methods import build_method

    cfg = TrainConfig(
        data="-", out="-", method=method, arch="resnet18", multiscale=method == "pixpro-depth",
        batch_size=2, steps=5, proj_hidden=16, proj_dim=8, head_hidden=32, pred_hidden=16,
        queue_size=16,
    )  # fmt: skip
    torch.manual_seed(0)
    net = build_method(resolve(cfg, num_samples=2))
    pairs = [
        (getattr(net, name[:-2]), module)
        for name, module in net.named_children()
        if name.endswith("_m")
    ]
    assert len(pairs) == (2 if method == "pixpro-depth" else 3)
    for online, target in pairs:
        for (name, p), q in zip(online.named_parameters(), target.parameters(), strict=True):
            assert torch.equal(p, q) and not q.requires_grad, name
    with torch.no_grad():  # online and momentum weights apart, as after some training
        for online, _ in pairs:
            for p in online.parameters():
                p.add_(torch.randn_like(p))
    before = [[q.detach().clone() for q in target.parameters()] for _, target in pairs]
    m = 0.9
    net.momentum_update(m)
    for (online, target), old in zip(pairs, before, strict=True):
        for (name, p), q, q0 in zip(online.named_parameters(), target.parameters(), old):
            torch.testing.assert_close(q, m * q0 + (1 - m) * p.detach(), msg=name)


def test_momentum_and_lr_schedules_follow_the_formulas() -> None:
    from training.config import TrainConfig, resolve
    from training.methods import momentum_at
    from training.optim import lr_at

    for k in (0, 13, 50, 99, 100):
        assert momentum_at(k, 100, 0.99) == pytest.approx(
            1 - (1 - 0.99) * (math.cos(math.pi * k / 100) + 1) / 2
        )
    assert momentum_at(0, 100) == pytest.approx(0.99) and momentum_at(100, 100) == pytest.approx(1)
    # linear warmup to lr, then cosine to 0 at `total`
    lrs = [lr_at(s, lr=2.0, total=10, warmup=4) for s in range(11)]
    assert lrs[:4] == pytest.approx([0.5, 1.0, 1.5, 2.0])
    assert lrs[4:] == pytest.approx([1 + math.cos(math.pi * (s - 4) / 6) for s in range(4, 11)])
    # lr = base_lr x batch / 256; warmup 5 epochs, at most half the run
    cfg = resolve(TrainConfig(data="-", out="-", batch_size=128, steps=1000), num_samples=1280)
    assert cfg.lr == pytest.approx(1.0 * 128 / 256) and cfg.warmup_steps == 50
    assert resolve(TrainConfig(data="-", out="-", steps=20), num_samples=6400).warmup_steps == 10


def test_lars_adapts_weights_only_and_matches_hand_update() -> None:
    # d = g + wd p; d *= trust ||p|| / ||d||; buf = 0.9 buf + d; p -= lr buf (weights only);
    # 1-D parameters: plain momentum SGD, no weight decay, no adaptation
    from training.optim import LARS, param_groups

    torch.manual_seed(12)
    lin = torch.nn.Linear(4, 3).double()
    opt = LARS(param_groups(lin, 1e-2), lr=0.5, momentum=0.9, trust=0.001)
    w, bias = lin.weight.detach().clone(), lin.bias.detach().clone()
    buf_w, buf_b = torch.zeros_like(w), torch.zeros_like(bias)
    for _ in range(3):
        lin.zero_grad()
        lin(torch.randn(6, 4, dtype=torch.double)).pow(2).sum().backward()
        assert lin.weight.grad is not None and lin.bias.grad is not None
        d = lin.weight.grad + 1e-2 * w
        buf_w = 0.9 * buf_w + d * (0.001 * w.norm() / d.norm())
        buf_b = 0.9 * buf_b + lin.bias.grad
        w, bias = w - 0.5 * buf_w, bias - 0.5 * buf_b
        opt.step()
        assert torch.allclose(lin.weight, w, atol=1e-12)
        assert torch.allclose(lin.bias, bias, atol=1e-12)


# ------------------------------------------------------------------ losses fall when optimised


@pytest.mark.parametrize(
    "method,optimizer,lr",
    [("pixpro", "lars", 2.0), ("pixpro-depth", "lars", 2.0), ("pixcon", "sgd", 0.1)],
)
def test_each_method_loss_falls_over_20_steps(method: str, optimizer: str, lr: float) -> None:
    from training.config import TrainConfig, resolve
    from training.methods import build_method, momentum_at
    from training.optim import build_optimizer

    gen = torch.Generator().manual_seed(0)
    b = 4
    batch = random_batch(gen, b, [True, False, False, False])
    cfg = TrainConfig(
        data="-", out="-", method=method, arch="resnet18", multiscale=method == "pixpro-depth",
        optimizer=optimizer, lr=lr, batch_size=b, steps=20, proj_hidden=256, head_hidden=256, queue_size=64,
    )  # fmt: skip
    cfg = resolve(cfg, num_samples=b)
    torch.manual_seed(0)
    net = build_method(cfg)
    opt = build_optimizer(net, cfg)
    seen = []
    for step in range(20):
        net.momentum_update(momentum_at(step, 20, cfg.ema))
        out = net(batch)
        out.loss.backward()
        opt.step()
        opt.zero_grad()
        net.push(out.keys)
        seen.append(float(out.loss.detach()))
    assert sum(seen[-3:]) / 3 < seen[0] - 0.1, seen


# ------------------------------------------------------------------- edges found by mutation testing


def centred(x: float, y: float) -> list[float]:
    """Coords of a view whose 1 x 1 feature map has its single cell centre at (x, y)."""
    return [x - 0.05, y - 0.05, x + 0.05, y + 0.05]


def test_inside_crop_reaches_half_a_pixel_beyond_the_crop_and_wraps_with_the_period() -> None:
    # k's crop reaches half an output pixel beyond its first/last pixel centres, on all four sides
    # (flipped or not), and a periodic x wraps with the sample's period W / (W - 1), not 1
    k, hx, hy = [0.2, 0.3, 0.6, 0.7], 0.5 * 0.4 / (S - 1), 0.5 * 0.4 / (S - 1)
    cases = [  # (cell centre of q, k's coords, periodic, inside)
        ((0.6 + 0.5 * hx, 0.5), k, False, True),
        ((0.6 + 1.5 * hx, 0.5), k, False, False),
        ((0.2 - 0.5 * hx, 0.5), k, False, True),
        ((0.2 - 1.5 * hx, 0.5), k, False, False),
        ((0.4, 0.7 + 0.5 * hy), k, False, True),
        ((0.4, 0.7 + 1.5 * hy), k, False, False),
        ((0.4, 0.3 - 0.5 * hy), k, False, True),
        ((0.4, 0.3 - 1.5 * hy), k, False, False),
        ((0.6 + 0.5 * hx, 0.5), [0.6, 0.3, 0.2, 0.7], False, True),  # k flipped
        ((0.6 + 1.5 * hx, 0.5), [0.6, 0.3, 0.2, 0.7], False, False),
        ((0.02, 0.5), [0.9, 0.3, 1.05, 0.7], True, True),  # 0.02 + 64/63 = 1.0359 <= 1.05
        ((0.05, 0.5), [0.9, 0.3, 1.05, 0.7], True, False),  # 1.0659: past k's end (1 would not be)
        ((0.05, 0.5), [0.9, 0.3, 1.05, 0.7], False, False),
    ]
    cq = torch.tensor([centred(*c) for c, _, _, _ in cases])
    ck = torch.tensor([kk for _, kk, _, _ in cases])
    periodic = torch.tensor([p for _, _, p, _ in cases])
    period = torch.full((len(cases),), S / (S - 1))
    got = losses.inside_crop(cq, ck, (1, 1), S, periodic=periodic, period=period)
    assert got[:, 0].tolist() == [want for _, _, _, want in cases]
    for s, (_, kk, p, want) in enumerate(cases):
        assert slow_inside(cq[s].tolist(), kk, 1, 1, 0, p, S / (S - 1)) == want, s


def test_depth_rule_min_valid_applies_to_both_views() -> None:
    # 37-44% of every cell of one view has depth: a cell without depth under min_valid 0.5, so
    # fallback "drop" removes every pair, although the depths agree; min_valid 0.25 keeps them
    gen = torch.Generator().manual_seed(12)
    c = random_coords(gen, 2)
    sparse = torch.full((2, 1, S, S), 2.0)
    sparse[..., torch.arange(S) % 5 >= 2] = 0
    full = torch.full((2, 1, S, S), 2.0)
    for dq, dk in ((sparse, full), (full, sparse)):
        strict = DepthRule("abs", 0.5, 0.5, "drop")
        spatial, pos = losses.positive_pairs(
            c, c, (4, 4), (4, 4), S, depth_q=dq, depth_k=dk, depth_rule=strict
        )
        assert spatial.any() and not pos.any()
        loose = DepthRule("abs", 0.5, 0.25, "drop")
        spatial, pos = losses.positive_pairs(
            c, c, (4, 4), (4, 4), S, depth_q=dq, depth_k=dk, depth_rule=loose
        )
        assert torch.equal(pos, spatial)


def test_semantic_weights_take_the_minimum_over_all_cells() -> None:
    # min s over ALL cells of the sample (here an inside one), max over the outside cells
    s = torch.tensor([[0.1, 0.9, 0.5, 0.3]])
    inside = torch.tensor([[True, False, False, False]])
    w = losses.semantic_weights(s, inside)
    assert w[0].tolist() == pytest.approx([1.0, 1.0, (0.4 / 0.8) ** 2, (0.2 / 0.8) ** 2])


def test_norm_depth_mode_stretches_a_range_under_one_unit() -> None:
    # depths 1.0 .. 1.4 (metres) span 0.4: normalised, 1.3 and 1.4 are 0.25 apart (> t_d = 0.2)
    z_q, z_k = torch.tensor([[1.0, 1.3]]), torch.tensor([[1.05, 1.4]])
    d = losses.depth_agreement(z_q, z_k, mode="norm", threshold=0.2)
    assert d.tolist() == [[[True, False], [False, False]]]


def test_pair_distance_wraps_each_sample_with_its_own_period() -> None:
    cq = torch.tensor([[0.0, 0.0, 0.05, 1.0]] * 2)
    ck = torch.tensor([[0.95, 0.0, 1.0, 1.0]] * 2)
    periods = [S / (S - 1), 8 / 7]
    both = losses.pair_distance(
        cq, ck, (2, 2), (2, 2), S, periodic=torch.tensor([True, True]), period=torch.tensor(periods)
    )
    for s, p in enumerate(periods):
        one = losses.pair_distance(
            cq[s : s + 1], ck[s : s + 1], (2, 2), (2, 2), S, periodic=torch.tensor([True]), period=p
        )
        assert torch.allclose(both[s], one[0]), s
    assert not torch.allclose(both[0], both[1])
