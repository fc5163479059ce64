"""Synthetic scenes: deterministic, sensor-like depth, classes learnable, edges are depth edges."""

from __future__ import annotations

import numpy as np

from converters.synthetic import (
    CLASSES,
    FLOOR,
    OBJECT_CLASSES,
    WALL,
    SyntheticConfig,
    SyntheticConverter,
    render_sample,
)

CFG = SyntheticConfig(num=24, val=8, size=(96, 72))


def test_deterministic_by_seed_and_index():
    a, b = render_sample(CFG, "train", 3), render_sample(CFG, "train", 3)
    np.testing.assert_array_equal(a.rgb, b.rgb)
    np.testing.assert_array_equal(a.depth, b.depth)
    c = render_sample(SyntheticConfig(size=(96, 72), seed=1), "train", 3)
    assert not np.array_equal(a.rgb, c.rgb)
    assert not np.array_equal(a.rgb, render_sample(CFG, "val", 3).rgb)


def test_units_cover_splits_in_order():
    units = SyntheticConverter(CFG).units()
    assert [u.split for u in units] == ["train"] * 6 + ["val"] * 2
    keys = [s.key for u in units for s in SyntheticConverter(CFG).convert(u)]
    assert keys == [f"train_{i:06d}" for i in range(24)] + [f"val_{i:06d}" for i in range(8)]


def test_scene_content_and_sensor_depth():
    samples = [render_sample(CFG, "train", i) for i in range(24)]
    for s in samples:
        assert (
            s.rgb.shape == (72, 96, 3) and s.depth.dtype == np.uint16 and s.label.dtype == np.uint8
        )
        present = set(np.unique(s.label).tolist())
        assert FLOOR in present and WALL in present
        assert present & set(OBJECT_CLASSES)
        valid = s.depth > 0
        assert 0.5 < valid.mean() < 1.0  # holes exist, most pixels valid
    all_classes = set().union(*(np.unique(s.label).tolist() for s in samples))
    assert all_classes == set(range(len(CLASSES)))


def test_object_boundaries_are_depth_discontinuities():
    jumps, total = 0, 0
    for i in range(12):
        s = render_sample(CFG, "train", i)
        d = s.depth.astype(np.float64)
        lab = s.label
        # horizontal neighbours across an object/background boundary, both depths valid
        obj = np.isin(lab, OBJECT_CLASSES)
        edge = (lab[:, 1:] != lab[:, :-1]) & (obj[:, 1:] ^ obj[:, :-1])
        both = (d[:, 1:] > 0) & (d[:, :-1] > 0) & edge
        rel = np.abs(d[:, 1:] - d[:, :-1]) / np.maximum(np.maximum(d[:, 1:], d[:, :-1]), 1)
        jumps += int((rel[both] > 0.05).sum())
        total += int(both.sum())
    assert total > 0 and jumps / total > 0.6


def test_classes_are_learnable_from_appearance():
    """A nearest-mean colour classifier fitted on some frames labels pixels of others well above chance."""
    train = [render_sample(CFG, "train", i) for i in range(12)]
    test = [render_sample(CFG, "train", i) for i in range(12, 20)]

    def feats(s):
        return s.rgb.reshape(-1, 3).astype(np.float64), s.label.reshape(-1)

    xs, ys = zip(*(feats(s) for s in train))
    x, y = np.concatenate(xs), np.concatenate(ys)
    means = np.stack([x[y == c].mean(0) for c in range(len(CLASSES))])
    hits = n = 0
    for s in test:
        xt, yt = feats(s)
        pred = np.argmin(((xt[:, None, :] - means[None]) ** 2).sum(-1), 1)
        hits += int((pred == yt).sum())
        n += len(yt)
    assert hits / n > 0.5  # chance with 6 classes ~ 0.17; colour alone, no texture or context


def test_sensor_noise_grows_with_range_and_far_is_invalid():
    from converters.synthetic import MAX_RANGE_M, sensor_depth

    rng = np.random.default_rng(0)
    near = sensor_depth(rng, np.full((64, 64), 1.0))
    far = sensor_depth(rng, np.full((64, 64), 5.0))
    beyond = sensor_depth(rng, np.full((64, 64), MAX_RANGE_M + 0.5))
    err_near = near[near > 0].astype(float) - 1000
    err_far = far[far > 0].astype(float) - 5000
    assert err_far.std() > 5 * err_near.std()
    assert abs(err_near.mean()) < 1 and abs(err_far.mean()) < 5
    assert (beyond == 0).all()
