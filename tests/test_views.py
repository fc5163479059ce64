"""Paired views: geometry by property (images that encode their own x, y), depth exactness, colour
ops never touching depth, determinism, periodic wrap, overlap, and CPU/GPU-path agreement."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from datakit.errors import UsageError
from datakit.gpu_views import GpuViews, collate_encoded, encode_decoded
from datakit.schema import DecodedSample
from datakit.views import (
    BATCH_KEYS,
    Box,
    Photometric,
    ViewConfig,
    cell_centres,
    collate_views,
    make_views,
    overlap,
    sample_box,
    sample_pair,
    view_coords,
)

PROPERTY = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def coded_sample(w: int, h: int, *, periodic: bool = False, holes: bool = True) -> DecodedSample:
    """RGB encodes the pixel's own position; depth is a unique id per pixel (0 in a hole)."""
    yy, xx = np.mgrid[0:h, 0:w]
    rgb = np.zeros((h, w, 3), np.uint8)
    if periodic:  # x as an angle: smooth across the seam
        angle = 2 * np.pi * xx / w
        rgb[..., 0] = np.rint(127.5 + 127 * np.cos(angle))
        rgb[..., 2] = np.rint(127.5 + 127 * np.sin(angle))
    else:
        rgb[..., 0] = xx
    rgb[..., 1] = yy
    depth = (yy * w + xx + 1).astype(np.float32)
    if holes:
        depth[h // 3 : h // 2, w // 4 : w // 2] = 0
    label = (xx % 7 + 10 * (yy % 5)).astype(np.uint8)
    meta = {"periodic_x": periodic, "width": w, "height": h}
    return DecodedSample(key="k", rgb=rgb, meta=meta, depth=depth, depth_raw=None, label=label)


def positions(coords: np.ndarray, size: int, w: int, h: int) -> tuple[np.ndarray, np.ndarray]:
    """Source pixel positions of every output pixel centre, from the documented formula."""
    t = np.arange(size) / (size - 1)
    x1, y1, x2, y2 = coords.astype(np.float64)
    px = (x1 + (x2 - x1) * t) * (w - 1)
    py = (y1 + (y2 - y1) * t) * (h - 1)
    return np.broadcast_to(px[None, :], (size, size)), np.broadcast_to(py[:, None], (size, size))


def tolerance(box: Box, size: int) -> tuple[float, float]:
    # uint8 rounding + bilinear clamping at crop edges (0.5 px) + the antialias filter's edge bias
    # (about a tenth of an output pixel where the triangle is cut by the crop edge).
    return 1.0 + 0.15 * box.width / size, 1.0 + 0.15 * box.height / size


def check_view(view, sample: DecodedSample, size: int, periodic: bool) -> None:
    h, w = sample.rgb.shape[:2]
    px, py = positions(view.coords, size, w, h)
    tx, ty = tolerance(view.box, size)
    rgb = view.rgb.astype(np.float64)
    if periodic:
        angle = np.arctan2(rgb[..., 2] - 127.5, rgb[..., 0] - 127.5)
        dx = (angle * w / (2 * np.pi) - px + w / 2) % w - w / 2
    else:
        dx = rgb[..., 0] - px
    assert np.abs(dx).max() <= tx + (1.0 if periodic else 0.0)
    assert np.abs(rgb[..., 1] - py).max() <= ty
    # Depth: exactly the source value at the nearest source pixel, or 0 where the source is a hole.
    d = view.depth
    valid = d > 0
    ids = d[valid].astype(np.int64) - 1
    sx, sy = ids % w, ids // w
    ddx = sx - px[valid]
    if periodic:
        ddx = (ddx + w / 2) % w - w / 2
    eps = 1e-4  # coords are float32
    assert np.abs(ddx).max(initial=0) <= 0.5 + eps
    assert np.abs(sy - py[valid]).max(initial=0) <= 0.5 + eps
    assert np.array_equal(d[valid], sample.depth[sy, sx])
    # Zeros only where the nearest source pixel (either one, at a float tie) is a hole.
    near_hole = np.zeros(int((~valid).sum()), bool)
    for ex in (-eps, eps):
        for ey in (-eps, eps):
            nx = np.floor(px[~valid] + 0.5 + ex).astype(np.int64) % w
            ny = np.clip(np.floor(py[~valid] + 0.5 + ey).astype(np.int64), 0, h - 1)
            near_hole |= sample.depth[ny, nx] == 0
    assert near_hole.all()
    # Labels follow depth's geometry exactly.
    assert view.label.dtype == np.int64
    assert np.array_equal(view.label[valid], sample.label[sy, sx].astype(np.int64))


@PROPERTY
@given(
    w=st.integers(8, 200),
    h=st.integers(8, 200),
    size=st.sampled_from([4, 7, 16, 33, 64]),
    seed=st.integers(0, 2**31),
    periodic=st.booleans(),
    scale_lo=st.sampled_from([0.02, 0.08, 0.5]),
)
def test_views_agree_with_coords_everywhere(w, h, size, seed, periodic, scale_lo):
    cfg = ViewConfig(size=size, scale=(scale_lo, 1.0), photometric=False)
    sample = coded_sample(w, h, periodic=periodic)
    pair = make_views(sample, cfg, seed)
    assert pair.periodic == periodic
    for view in (pair.view1, pair.view2):
        check_view(view, sample, size, periodic)
        x1, _, x2, _ = view.coords
        assert (x1 > x2) == view.flip
        if not periodic:
            assert view.coords.min() >= -0.5 / max(min(w, h) - 1, 1) - 1e-6
            assert view.coords.max() <= 1 + 0.5 / max(min(w, h) - 1, 1) + 1e-6


@PROPERTY
@given(seed=st.integers(0, 2**31), periodic=st.booleans())
def test_colour_ops_never_touch_depth_or_geometry(seed, periodic):
    sample = coded_sample(64, 48, periodic=periodic)
    sample.rgb = np.random.default_rng(seed).integers(0, 256, sample.rgb.shape, dtype=np.uint8)
    on = make_views(
        sample,
        ViewConfig(size=32, photometric=True, blur_p=(1.0, 1.0), solarize_p=(1.0, 1.0)),
        seed,
    )
    off = make_views(sample, ViewConfig(size=32, photometric=False), seed)
    for a, b in ((on.view1, off.view1), (on.view2, off.view2)):
        assert a.box == b.box and a.flip == b.flip
        np.testing.assert_array_equal(a.coords, b.coords)
        np.testing.assert_array_equal(a.depth, b.depth)
        np.testing.assert_array_equal(a.label, b.label)
        assert a.depth.dtype == np.float32
    assert not np.array_equal(on.view1.rgb, off.view1.rgb)


def test_same_seed_same_views_and_other_seed_differs():
    sample = coded_sample(120, 90)
    cfg = ViewConfig(size=48)
    a, b, c = make_views(sample, cfg, 7), make_views(sample, cfg, 7), make_views(sample, cfg, 8)
    for va, vb in ((a.view1, b.view1), (a.view2, b.view2)):
        assert va.params == vb.params
        np.testing.assert_array_equal(va.rgb, vb.rgb)
        np.testing.assert_array_equal(va.depth, vb.depth)
    assert a.view1.params != c.view1.params


def test_recipe_is_asymmetric_and_switchable():
    cfg = ViewConfig()
    draws = [sample_pair(np.random.default_rng(i), 480, 640, cfg) for i in range(400)]
    blur1 = np.mean([p[0].photometric.blur_sigma > 0 for p in draws])
    blur2 = np.mean([p[1].photometric.blur_sigma > 0 for p in draws])
    sol1 = np.mean([p[0].photometric.solarize for p in draws])
    sol2 = np.mean([p[1].photometric.solarize for p in draws])
    jit = np.mean([p[0].photometric.jitter for p in draws])
    flip = np.mean([p[0].flip for p in draws])
    assert blur1 == 1.0 and 0.04 < blur2 < 0.2
    assert sol1 == 0.0 and 0.12 < sol2 < 0.3
    assert 0.7 < jit < 0.9 and 0.4 < flip < 0.6
    for v in (0, 1):  # grayscale p=0.2 on both views
        assert 0.12 < np.mean([p[v].photometric.grayscale for p in draws]) < 0.28
    # ColorJitter(0.4, 0.4, 0.2, 0.1): factors in [1 - s, 1 + s], hue in [-0.1, 0.1], both ends
    # reached
    for name, lo, hi in [("brightness", 0.6, 1.4), ("contrast", 0.6, 1.4),
                         ("saturation", 0.8, 1.2), ("hue", -0.1, 0.1)]:  # fmt: skip
        values = [getattr(p[v].photometric, name) for p in draws for v in (0, 1)]
        end = 0.05 * (hi - lo)
        assert lo <= min(values) < lo + end and hi - end < max(values) <= hi, name
    areas = [p[0].box.width * p[0].box.height / (640 * 480) for p in draws]
    assert min(areas) > 0.07 and max(areas) <= 1.0
    # photometric=False: no colour op on either view, whatever the draw
    off = dataclasses.replace(cfg, photometric=False)
    for i in range(50):
        for view in sample_pair(np.random.default_rng(i), 480, 640, off):
            assert view.photometric == Photometric(), view.photometric


def test_coords_convention_examples():
    # Whole 640-wide image to 224: first/last output centres sit inside the first/last source pixels.
    c = view_coords(Box(0, 0, 640, 480), False, 224, 480, 640)
    np.testing.assert_allclose(
        c * [639, 479, 639, 479],
        [
            0.5 * 640 / 224 - 0.5,
            0.5 * 480 / 224 - 0.5,
            639.5 - 0.5 * 640 / 224,
            479.5 - 0.5 * 480 / 224,
        ],
        rtol=1e-5,
    )
    f = view_coords(Box(0, 0, 640, 480), True, 224, 480, 640)
    assert f[0] == c[2] and f[2] == c[0]
    centres = cell_centres(torch.tensor(np.stack([c, f])), 7, 7, 224)
    assert centres.shape == (2, 7, 7, 2)
    # Cell centres of a flipped view mirror those of the unflipped one.
    torch.testing.assert_close(centres[0, :, :, 0], centres[1, :, :, 0].flip(-1))


def test_crop_area_is_uniform_in_scale_aspect_log_uniform_and_flips_at_hflip():
    # A 1000 x 1000 image and crops of at most 20 % at aspect <= 4: no draw is rejected, so the
    # area fraction is uniform on [0.05, 0.2] (quartiles 0.0875, 0.125, 0.1625) and log(w / h)
    # uniform on [-log 4, log 4] (quartiles -log 2, 0, log 2).
    cfg = ViewConfig(scale=(0.05, 0.2), ratio=(0.25, 4.0), hflip=0.2)
    rng = np.random.default_rng(0)
    params = [p for _ in range(2000) for p in sample_pair(rng, 1000, 1000, cfg)]
    w = np.array([p.box.width for p in params], np.float64)
    h = np.array([p.box.height for p in params], np.float64)
    quartiles = [0.25, 0.5, 0.75]
    np.testing.assert_allclose(
        np.quantile(w * h / 1e6, quartiles), [0.0875, 0.125, 0.1625], atol=0.01
    )
    np.testing.assert_allclose(np.quantile(np.log(w / h), quartiles), [-0.693, 0, 0.693], atol=0.08)
    assert 0.17 < np.mean([p.flip for p in params]) < 0.23
    never = ViewConfig(hflip=0.0)
    assert not any(p.flip for _ in range(50) for p in sample_pair(rng, 100, 100, never))


def test_crop_fallback_is_the_centred_image_clipped_to_the_ratio():
    # Every draw rejected (crops wider or taller than the image): torchvision's fallback, by hand.
    rng = np.random.default_rng(0)
    wide = ViewConfig(scale=(0.9, 1.0), ratio=(10.0, 10.0))
    tall = ViewConfig(scale=(0.9, 1.0), ratio=(0.1, 0.1))
    assert sample_box(rng, 100, 100, wide) == Box(0, 45, 100, 10)
    assert sample_box(rng, 100, 100, tall) == Box(45, 0, 10, 100)
    # 200 x 100 at full area: every aspect in 3/4..4/3 needs h > 100; in_ratio 2 > 4/3 -> 133 x 100.
    assert sample_box(rng, 100, 200, ViewConfig(scale=(1.0, 1.0))) == Box(33, 0, 133, 100)


def test_cpu_colour_ops_follow_torchvision_on_pil_images():
    """Each op of photometric.py against torchvision's functionals on PIL images: within one level
    (uint8 rounding); hue on pure colours (a wrong sign or scale is off by 100+ levels)."""
    import torchvision.transforms.functional as TF
    from PIL import Image

    from datakit.photometric import adjust_hue, apply_photometric

    rgb = np.random.default_rng(0).integers(0, 256, (31, 45, 3), dtype=np.uint8)
    pil = Image.fromarray(rgb)
    cases = [
        (Photometric(jitter=True, brightness=1.3, order=(0,)), TF.adjust_brightness, 1.3),
        (Photometric(jitter=True, brightness=0.6, order=(0,)), TF.adjust_brightness, 0.6),
        (Photometric(jitter=True, contrast=1.4, order=(1,)), TF.adjust_contrast, 1.4),
        (Photometric(jitter=True, contrast=0.6, order=(1,)), TF.adjust_contrast, 0.6),
        (Photometric(jitter=True, saturation=1.2, order=(2,)), TF.adjust_saturation, 1.2),
        (Photometric(jitter=True, saturation=0.0, order=(2,)), TF.adjust_saturation, 0.0),
        (Photometric(grayscale=True), lambda im, _: TF.rgb_to_grayscale(im, 3), None),
        (Photometric(solarize=True), TF.solarize, 128),
    ]
    for params, reference, arg in cases:
        ours = apply_photometric(rgb, params).astype(int)
        theirs = np.asarray(reference(pil, arg)).astype(int)
        assert np.abs(ours - theirs).max() <= 1, params
    pure = np.array([[[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0]]], np.uint8)
    for shift in (0.1, -0.1, 1 / 3, -0.25):
        ours = adjust_hue(pure, shift).astype(int)
        theirs = np.asarray(TF.adjust_hue(Image.fromarray(pure), shift)).astype(int)
        # Within two hue steps of 1/256 turn (6 levels each on a pure colour): OpenCV rounds hues
        # and the shift, PIL truncates them.
        assert np.abs(ours - theirs).max() <= 13, (shift, ours, theirs)
    # Blur: a Gaussian of the given sigma in output pixels (interior, where no border is involved).
    for sigma in (0.5, 1.5):
        ours = apply_photometric(rgb, Photometric(blur_sigma=sigma)).astype(int)
        k = int(2 * np.ceil(3 * sigma) + 1)
        chw = torch.from_numpy(rgb).permute(2, 0, 1)
        theirs = TF.gaussian_blur(chw, [k, k], [sigma, sigma]).permute(1, 2, 0).numpy().astype(int)
        assert np.abs(ours - theirs)[k:-k, k:-k].max() <= 1


def test_views_are_normalised_by_255_mean_and_std():
    # A flat colour survives crop, resize and flip exactly; normalisation by hand (ImageNet numbers).
    sample = coded_sample(40, 30)
    sample.rgb[:] = (0, 128, 255)
    cfg = ViewConfig(size=8, photometric=False)
    batch = collate_views([make_views(sample, cfg, 0)], cfg)
    expected = [
        (0 / 255 - 0.485) / 0.229,
        (128 / 255 - 0.456) / 0.224,
        (255 / 255 - 0.406) / 0.225,
    ]
    for key in ("view1", "view2"):
        got = batch[key][0].reshape(3, -1)
        torch.testing.assert_close(
            got, torch.tensor(expected).view(3, 1).expand_as(got), rtol=0, atol=1e-5
        )


def test_gpu_blur_of_views_smaller_than_its_kernel():
    """sigma 2 has a radius-6 kernel: on views under 7 px the GPU path's reflect border must fold
    over and over as OpenCV's (and numpy's) does; F.pad(mode="reflect") refused it and crashed."""
    from datakit.gpu_views import _gaussian_blur

    rng = np.random.default_rng(0)
    for s in (2, 3, 4, 6, 9):
        x = rng.random((3, s, s)).astype(np.float32)
        sigma, radius = 2.0, 6
        t = np.arange(-radius, radius + 1)
        k = np.exp(-0.5 * (t / sigma) ** 2)
        k /= k.sum()
        padded = np.pad(x, ((0, 0), (radius, radius), (radius, radius)), mode="reflect")
        rows = sum(k[i] * padded[:, i : i + s, :] for i in range(2 * radius + 1))
        ref = sum(k[i] * rows[:, :, i : i + s] for i in range(2 * radius + 1))
        got = _gaussian_blur(torch.from_numpy(x)[None], torch.tensor([sigma]))[0]
        np.testing.assert_allclose(got.numpy(), ref, atol=1e-5)
    cfg = ViewConfig(size=4, blur_p=(1.0, 1.0), blur_sigma=(2.0, 2.0))
    enc = [encode_decoded(coded_sample(64, 48), cfg, np.random.default_rng(0))]
    out = GpuViews(cfg, "cpu")(collate_encoded(enc, cfg))
    assert out["view1"].shape == (1, 3, 4, 4) and torch.isfinite(out["view1"]).all()


@given(seed=st.integers(0, 2**31))
@settings(max_examples=30, deadline=None)
def test_min_overlap_resamples_view2(seed):
    cfg = ViewConfig(size=16, scale=(0.2, 1.0), min_overlap=0.5, overlap_tries=50)
    p1, p2 = sample_pair(np.random.default_rng(seed), 100, 200, cfg)
    assert overlap(p1.box, p2.box, 200) >= 0.5


def test_overlap_wraps_for_periodic():
    a, b = Box(190, 0, 20, 10), Box(0, 0, 10, 10)
    assert overlap(a, b, 200) == 0
    assert overlap(a, b, 200, periodic=True) == 1.0
    # intersection over the smaller crop's area, by hand: 5 x 5 of 10 x 10; 5 x 4 of 20 x 4 across
    # the seam; crops apart in y share nothing even where their x ranges meet
    assert overlap(Box(0, 0, 10, 10), Box(5, 5, 10, 20), 200) == pytest.approx(25 / 100)
    assert overlap(Box(195, 0, 10, 10), Box(0, 2, 20, 4), 200, periodic=True) == 20 / 80
    assert overlap(Box(195, 0, 10, 10), Box(0, 2, 20, 4), 200) == 0
    assert overlap(Box(0, 0, 10, 10), Box(0, 20, 10, 10), 200) == 0


def test_periodic_crops_wrap_and_roll_can_be_switched_off():
    sample = coded_sample(64, 32, periodic=True)
    cfg = ViewConfig(size=16, scale=(0.3, 0.6))
    wrapped = [make_views(sample, cfg, s).view1.box for s in range(200)]
    assert any(b.left + b.width > 64 for b in wrapped)
    flat = dataclasses.replace(cfg, periodic_roll=False)
    boxes = [make_views(sample, flat, s).view1.box for s in range(200)]
    assert all(b.left + b.width <= 64 for b in boxes)


def test_config_validation():
    with pytest.raises(UsageError):
        ViewConfig(scale=(0.5, 0.1))
    with pytest.raises(UsageError):
        ViewConfig(min_overlap=2.0)
    with pytest.raises(UsageError):
        ViewConfig(hflip=1.5)
    for jitter in [(-0.1, 0.4, 0.2, 0.1), (0.4, 0.4, 0.2, 0.6)]:
        with pytest.raises(UsageError, match="jitter strengths"):
            ViewConfig(jitter=jitter)
    with pytest.raises(UsageError, match="blur_sigma"):
        ViewConfig(blur_sigma=(0.0, 2.0))


def test_jitter_factors_follow_torchvision_ranges():
    """[max(0, 1 - s), 1 + s]: a strength over 1 never gives a negative factor (which the CPU
    brightness op turned into its absolute value); strengths up to 1 keep their old draws."""
    from datakit.views import sample_photometric

    strong = ViewConfig(jitter=(1.5, 1.5, 1.5, 0.5), jitter_p=1.0)
    ps = [sample_photometric(np.random.default_rng(i), strong, 0) for i in range(300)]
    for name in ("brightness", "contrast", "saturation"):
        values = [getattr(p, name) for p in ps]
        assert min(values) >= 0 and max(values) <= 2.5 and max(values) > 2.0
    recipe = ViewConfig()
    p = sample_photometric(np.random.default_rng(7), recipe, 0)
    rng = np.random.default_rng(7)
    rng.random(5)
    u = rng.random(4)
    assert p.brightness == pytest.approx(0.6 + 0.8 * u[0]) and p.saturation == pytest.approx(
        0.8 + 0.4 * u[2]
    )


def test_collate_gives_the_spec_batch():
    samples = [coded_sample(80, 60), coded_sample(80, 60, periodic=True)]
    samples[1].label = None
    cfg = ViewConfig(size=24)
    batch = collate_views([make_views(s, cfg, i) for i, s in enumerate(samples)], cfg)
    assert tuple(batch) == BATCH_KEYS
    assert batch["view1"].shape == (2, 3, 24, 24) and batch["view1"].dtype == torch.float32
    assert batch["depth2"].shape == (2, 1, 24, 24) and batch["depth2"].dtype == torch.float32
    assert batch["coords1"].shape == (2, 4) and batch["coords1"].dtype == torch.float32
    assert batch["periodic"].tolist() == [False, True]
    assert batch["label1"].dtype == torch.int64 and (batch["label1"][1] == 255).all()


def gpu_path_matches_cpu_path(device: str) -> None:
    """The GPU path's resampling (separable weights) against the CPU path, photometric off."""
    cfg = ViewConfig(size=40, photometric=False)
    samples = [coded_sample(97, 71), coded_sample(97, 71, periodic=True), coded_sample(50, 130)]
    for seed in range(5):
        cpu = [make_views(s, cfg, seed * 10 + i) for i, s in enumerate(samples)]
        enc = [
            encode_decoded(s, cfg, np.random.default_rng(seed * 10 + i))
            for i, s in enumerate(samples)
        ]
        gpu = GpuViews(cfg, device)(collate_encoded(enc, cfg))
        ref = collate_views(cpu, cfg)
        for k in ("coords1", "coords2", "depth1", "depth2", "label1", "label2", "periodic"):
            torch.testing.assert_close(gpu[k].cpu(), ref[k], rtol=0, atol=0)
        std = torch.tensor(cfg.std).view(1, 3, 1, 1) * 255
        for k in ("view1", "view2"):
            diff = ((gpu[k].cpu() - ref[k]) * std).abs()
            assert diff.max() <= 2.5, (seed, k, float(diff.max()))


def test_gpu_path_geometry_matches_cpu_path_on_cpu_torch():
    gpu_path_matches_cpu_path("cpu")


def test_gpu_photometric_runs_and_leaves_depth():
    cfg = ViewConfig(size=32, blur_p=(1.0, 1.0), solarize_p=(0.5, 0.5), grayscale_p=0.5)
    samples = [coded_sample(64, 48) for _ in range(4)]
    enc = [encode_decoded(s, cfg, np.random.default_rng(i)) for i, s in enumerate(samples)]
    batch = collate_encoded(enc, cfg)
    out = GpuViews(cfg, "cpu")(batch)
    plain = GpuViews(dataclasses.replace(cfg, photometric=False), "cpu")(batch)
    assert torch.isfinite(out["view1"]).all()
    assert not torch.equal(out["view1"], plain["view1"])
    torch.testing.assert_close(out["depth1"], plain["depth1"], rtol=0, atol=0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_photometric_never_waits_for_the_gpu():
    """The colour ops are queued on the GPU without one host sync (the views they apply to are
    chosen from the host-side parameters; a nonzero() of a CUDA tensor waited ~20 times a batch),
    and give what the same ops give on the CPU."""
    from datakit.gpu_views import photometric

    cfg = ViewConfig(size=32, blur_p=(1.0, 0.5), solarize_p=(0.5, 0.5), grayscale_p=0.5)
    enc = [encode_decoded(coded_sample(64, 48), cfg, np.random.default_rng(i)) for i in range(8)]
    batch = collate_encoded(enc, cfg)
    x = torch.rand(16, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    on_cpu = photometric(x.clone(), batch)
    on_gpu = x.cuda()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        on_gpu = photometric(on_gpu, batch)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.testing.assert_close(on_gpu.cpu(), on_cpu, rtol=0, atol=1e-4)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_path_geometry_matches_cpu_path_on_cuda():
    gpu_path_matches_cpu_path("cuda")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_decode_never_writes_into_memory_the_stream_still_reads():
    """pytorch/vision#9606: nvJPEG could be handed a block freed while queued kernels still read it
    (on an H100 it corrupted 2 of 3 such reads, and our training batches went NaN). Queue slow work,
    then a reduction over blocks the size of a decoded image, free the blocks, decode: every
    reduction must still see what the blocks held."""
    import cv2

    h, w, n = 480, 640, 8
    rgb = np.random.default_rng(0).integers(0, 256, (h, w, 3), np.uint8)
    data = np.frombuffer(cv2.imencode(".jpg", rgb)[1].tobytes(), np.uint8)
    batch = {
        "jpeg_sizes": torch.full((n,), data.size),
        "jpeg_data": torch.from_numpy(np.tile(data, n)),
        "images": [],
    }
    views = GpuViews(ViewConfig(size=64), "cuda")
    slow = torch.randn(2048, 2048, device="cuda")
    wrong = 0
    for _ in range(40):
        blocks = [
            torch.ones(h * w * 3 // 4, device="cuda") for _ in range(n)
        ]  # decoded image bytes
        for _ in range(10):
            slow = torch.tanh(slow @ slow)  # keeps the stream busy while the decode is issued
        sums = [b.sum() for b in blocks]
        del blocks
        images = views.decode(batch)
        torch.cuda.synchronize()
        wrong += sum(int(s.item() != h * w * 3 // 4) for s in sums)
        assert all(im.shape == (3, h, w) for im in images)
    assert wrong == 0


def test_gpu_colour_ops_equal_torchvision_float_semantics():
    """The GPU path's jitter ops against torchvision's float-tensor functionals, hue included (our
    closed-form HSV -> RGB against torchvision's six-sector stack)."""
    import torchvision.transforms.v2.functional as TF

    from datakit.gpu_views import _jitter_op

    g = torch.Generator().manual_seed(0)
    x = torch.rand(6, 3, 17, 23, generator=g)
    x[0, :, :4] = 0.5  # grey pixels: saturation 0, hue undefined
    x[1, :, :, :3] = 0.0
    reference = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue)
    factors = [(0.6, 1.4), (0.6, 1.4), (0.8, 1.2), (-0.1, 0.1)]
    for op, fn in enumerate(reference):
        f = torch.empty(6).uniform_(*factors[op], generator=g)
        ours = _jitter_op(x.clone(), op, f)
        theirs = torch.stack([fn(x[i], float(f[i])) for i in range(6)])
        torch.testing.assert_close(ours, theirs, rtol=0, atol=5e-5)  # float op order; 1/255 = 4e-3


def test_overlap_is_symmetric_across_the_seam() -> None:
    # the crop that wraps may be either argument: b's copies one period left and right both count
    a, b = Box(190, 0, 20, 10), Box(0, 0, 10, 10)
    assert overlap(b, a, 200, periodic=True) == overlap(a, b, 200, periodic=True) == 1.0
    c, d = Box(5, 0, 10, 10), Box(195, 0, 20, 10)  # d covers columns 195..199 and 0..14
    assert overlap(c, d, 200, periodic=True) == overlap(d, c, 200, periodic=True) == 1.0
