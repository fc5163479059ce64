"""bench/compare.py's statistics: means over seeds and paired per-seed differences with t."""

from __future__ import annotations

import math

import pytest

from bench.compare import markdown, summarise


def _rec(method: str, seed: int, c5: float, c35: float) -> dict:
    return {"method": method, "seed": seed, "c5": c5, "c3-c5": c35}


def test_paired_differences_against_random_init_and_pixpro() -> None:
    records = [
        _rec("random-init", 0, 0.40, 0.70),
        _rec("random-init", 1, 0.44, 0.72),
        _rec("random-init", 2, 0.42, 0.71),
        _rec("pixpro", 0, 0.45, 0.78),
        _rec("pixpro", 1, 0.46, 0.79),
        _rec("pixpro", 2, 0.47, 0.77),
        _rec("pixpro-depth", 0, 0.47, 0.78),
        _rec("pixpro-depth", 2, 0.49, 0.78),  # seed 1 missing: paired over seeds 0 and 2 only
    ]
    s = summarise(records, ["random-init", "pixpro", "pixpro-depth"])
    assert s["table"]["pixpro"]["c5"]["mean"] == pytest.approx(0.46)
    assert s["table"]["pixpro"]["c5"]["std"] == pytest.approx(0.01)
    assert set(s["paired"]) == {
        f"{m} - {b} [{p}]"
        for m, b in (("pixpro", "random-init"), ("pixpro-depth", "random-init"), ("pixpro-depth", "pixpro"))
        for p in ("c5", "c3-c5")
    }  # fmt: skip
    d = s["paired"]["pixpro - random-init [c5]"]
    assert d["diffs"] == pytest.approx([0.05, 0.02, 0.05])
    mean, sd = 0.04, math.sqrt(((0.01) ** 2 + (0.02) ** 2 + (0.01) ** 2) / 2)
    assert d["mean"] == pytest.approx(mean)
    assert d["t"] == pytest.approx(mean / (sd / math.sqrt(3)))
    depth = s["paired"]["pixpro-depth - pixpro [c5]"]
    assert depth["seeds"] == [0, 2] and depth["diffs"] == pytest.approx([0.02, 0.02])
    assert depth["mean"] == pytest.approx(0.02) and depth["t"] > 1e6  # (almost) no spread
    table = markdown(s, records)
    assert "| pixpro - random-init [c5] | +5.0, +2.0, +5.0 | +4.0 ± 1.7 |" in table


def test_a_run_recorded_twice_counts_once() -> None:
    """A resumed run appends every (method, seed) to records.jsonl again: --from-records must not
    count them twice (that would shrink the std and inflate t)."""
    records = [
        _rec("random-init", 0, 0.40, 0.70),
        _rec("random-init", 1, 0.44, 0.72),
        _rec("pixpro", 0, 0.45, 0.78),
        _rec("pixpro", 1, 0.46, 0.79),
    ]
    once = summarise(records, ["random-init", "pixpro"])
    twice = summarise(records + records, ["random-init", "pixpro"])
    assert twice["table"] == once["table"]
    assert twice["paired"] == once["paired"]


def test_t_of_zero_differences_without_spread_is_undefined() -> None:
    records = [_rec(m, s, 0.4, 0.7) for m in ("random-init", "pixpro") for s in (0, 1)]
    d = summarise(records, ["random-init", "pixpro"])["paired"]["pixpro - random-init [c5]"]
    assert d["mean"] == 0.0 and math.isnan(d["t"])


def test_the_presets_train_every_method_on_one_optimizer_unless_a_variant_keeps_its_own() -> None:
    from bench.compare import BASE_LR, METHODS, OWN_OPTIMIZER, PRESETS, schedule_flags
    from training.config import METHOD_DEFAULTS

    cpu, gpu = PRESETS["cpu"], PRESETS["gpu"]
    assert cpu.shared_optimizer and gpu.shared_optimizer
    assert METHOD_DEFAULTS["pixpro"] == {"optimizer": "lars", "base_lr": 1.0, "weight_decay": 1e-5}
    assert METHOD_DEFAULTS["pixcon"]["optimizer"] == "sgd"
    # PixCon on PixPro's LARS and base lr, times the preset's multiplier; PixPro unchanged
    assert schedule_flags("pixcon", cpu) == [
        "--set", "optimizer=lars", "--set", "base_lr=16", "--set", "warmup_steps=10",
    ]  # fmt: skip
    assert schedule_flags("pixpro-depth", cpu) == [
        "--set",
        "base_lr=16",
        "--set",
        "warmup_steps=10",
    ]
    assert schedule_flags("pixcon", gpu) == ["--set", "optimizer=lars", "--set", "base_lr=4"]
    # the variants that keep their own recipe: SGD at its base lr (0.4, DenseCL's 0.3) x16
    assert set(OWN_OPTIMIZER) == {"pixcon-sr-sgd", "pixcon-sr-nobn"}
    assert schedule_flags("pixcon", cpu, own_optimizer=True)[:2] == ["--set", "base_lr=6.4"]
    assert schedule_flags("pixcon", cpu, BASE_LR["pixcon-sr-nobn"], own_optimizer=True)[:2] == [
        "--set",
        "base_lr=4.8",
    ]
    assert schedule_flags("pixcon", gpu, 0.3, own_optimizer=True) == ["--set", "base_lr=1.2"]
    assert "head_bn=false" in METHODS["pixcon-sr-nobn"]  # type: ignore[operator]
    assert METHODS["pixcon-sr-sgd"] == METHODS["pixcon-sr"]  # the optimizer is all that differs


def test_fine_tune_probes_are_summarised_beside_or_instead_of_the_linear_ones() -> None:
    records = [
        {"method": m, "seed": s, "c3-c5": 0.7 + d, "ft-c3-c5": 0.76 + d + 0.01 * s}
        for s in (0, 1)
        for m, d in (("random-init", 0.0), ("pixcon-sr", 0.02))
    ]
    s = summarise(records, ["random-init", "pixcon-sr"], ["c3-c5", "ft-c3-c5"])
    assert s["probes"] == ["c3-c5", "ft-c3-c5"]
    assert s["table"]["pixcon-sr"]["ft-c3-c5"]["mean"] == pytest.approx(0.785)
    assert s["paired"]["pixcon-sr - random-init [ft-c3-c5]"]["diffs"] == pytest.approx([0.02] * 2)
    assert "c5" not in s["table"]["pixcon-sr"]
    table = markdown(s, records).splitlines()
    assert table[0] == (
        "| method | mIoU C3-C5 probe (%) | mIoU C3-C5 fine-tune (%) | positives kept | final loss |"
    )
    assert table[1] == "|---|---|---|---|---|"
    assert table[3] == "| pixcon-sr | 72.0 ± 0.0 | 78.5 ± 0.7 | - | - |"
