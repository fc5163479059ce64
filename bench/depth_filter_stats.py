"""What the depth filter does to PixPro's positives, measured against the labels.

Draws training view pairs exactly as ``datakit train`` does (the loader, SPEC 4 views) from a labeled
dataset, builds the spatial positives A_spatial of PixPro on the feature grid of a level (C5: S/32,
C3: S/8) and the depth-filtered positives A = A_spatial AND D for several depth modes and thresholds,
and scores each against the semantic labels: a pair of cells is a TRUE positive when the cells'
majority labels agree. Reported per setting: the fraction of spatial positives kept, the precision
of the kept positives, the recall of the true spatial positives, and how many of the false spatial
positives the filter removes. Also: scene statistics (cells straddling a label boundary, depth range).

    python bench/depth_filter_stats.py DATASET --image-size 128 --batches 20
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from datakit.loader import make_loader
from datakit.reader import open_dataset
from datakit.views import ViewConfig
from training.losses import DepthRule, cell_depth, positive_pairs

SETTINGS = [("none", 0.0)] + [
    (mode, t)
    for mode, ts in (("norm", (0.05, 0.1, 0.2, 0.3, 0.5)), ("log", (0.05, 0.1, 0.2, 0.4)))
    for t in ts
]


def cell_labels(
    labels: Tensor, h: int, w: int, num_classes: int, ignore: int
) -> tuple[Tensor, Tensor]:
    """labels (B, S, S) -> (majority label (B, h*w), its share of the cell's labelled pixels); a cell
    with no labelled pixel gets label -1."""
    lab = labels.clone()
    lab[(lab == ignore) | (lab < 0) | (lab >= num_classes)] = num_classes
    one_hot = F.one_hot(lab, num_classes + 1).permute(0, 3, 1, 2).float()[:, :num_classes]
    counts = F.adaptive_avg_pool2d(one_hot, (h, w)).flatten(2)  # (B, K, h*w)
    total = counts.sum(1)
    share, major = counts.max(1)
    major = torch.where(total > 0, major, torch.full_like(major, -1))
    return major, share / total.clamp_min(1e-12)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("dataset")
    ap.add_argument("--image-size", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--batches", type=int, default=10)
    ap.add_argument("--radius", type=float, default=0.7)
    ap.add_argument("--json", default=None, help="Also write the numbers here.")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    ds = open_dataset(args.dataset)
    labels = ds.info.labels
    if not labels:
        print(f"{args.dataset}: no labels", file=sys.stderr)
        return 1
    k, ignore = len(labels["classes"]), int(labels["ignore_index"])
    s = args.image_size
    levels = {"c5": s // 32, "c3": s // 8}
    loader = make_loader(ds, args.batch_size, views=ViewConfig(size=s), num_workers=0, seed=0)
    acc: dict[str, dict[str, float]] = {}
    cells, mixed_cells = 0, 0.0
    depth_span_m: list[float] = []
    valid_depth: list[float] = []
    for n, batch in enumerate(loader):
        if n >= args.batches:
            break
        for d in (batch["depth1"], batch["depth2"]):
            for z in d.flatten(1):
                v = z[z > 0]
                valid_depth.append(float((z > 0).float().mean()))
                if len(v):
                    depth_span_m.append(float(v.max() - v.min()))
        for lv, g in levels.items():
            lab1, share1 = cell_labels(batch["label1"], g, g, k, ignore)
            lab2, _ = cell_labels(batch["label2"], g, g, k, ignore)
            if lv == "c5":
                cells += share1.numel()
                mixed_cells += float((share1 < 0.9).sum())
            known = (lab1 >= 0)[:, :, None] & (lab2 >= 0)[:, None, :]
            same = (lab1[:, :, None] == lab2[:, None, :]) & known
            z1 = cell_depth(batch["depth1"], g, g)
            z2 = cell_depth(batch["depth2"], g, g)
            gap_same, gap_diff = [], []
            for mode, t in SETTINGS:
                rule = None if mode == "none" else DepthRule(mode=mode, threshold=t)
                spatial, pos = positive_pairs(
                    batch["coords1"],
                    batch["coords2"],
                    (g, g),
                    (g, g),
                    s,
                    radius=args.radius,
                    periodic=batch["periodic"],
                    depth_q=batch["depth1"],
                    depth_k=batch["depth2"],
                    depth_rule=rule,
                )
                a = acc.setdefault(
                    f"{lv} {mode} {t}",
                    dict.fromkeys(
                        ("spatial", "kept", "tp_spatial", "tp_kept", "fp_spatial", "fp_kept"), 0.0
                    ),
                )
                a["spatial"] += float(spatial.sum())
                a["kept"] += float(pos.sum())
                a["tp_spatial"] += float((spatial & same).sum())
                a["tp_kept"] += float((pos & same).sum())
                a["fp_spatial"] += float((spatial & known & ~same).sum())
                a["fp_kept"] += float((pos & known & ~same).sum())
                if mode == "none":
                    both = (z1 > 0)[:, :, None] & (z2 > 0)[:, None, :]
                    nz1 = torch.log(z1.clamp_min(1e-6))[:, :, None]
                    nz2 = torch.log(z2.clamp_min(1e-6))[:, None, :]
                    gap = (nz1 - nz2).abs()
                    gap_same.append(gap[spatial & same & both])
                    gap_diff.append(gap[spatial & known & ~same & both])
            if gap_same:
                a = acc[f"{lv} none 0.0"]
                a["log_gap_same_median"] = (
                    float(torch.cat(gap_same).median()) if torch.cat(gap_same).numel() else 0.0
                )
                a["log_gap_diff_median"] = (
                    float(torch.cat(gap_diff).median()) if torch.cat(gap_diff).numel() else 0.0
                )
    report: dict[str, Any] = {"settings": {}, "scene": {}}
    print(
        f"{args.dataset}: {args.batches} batches of {args.batch_size} pairs at {s} px, radius {args.radius}"
    )
    print(f"{'level mode t':<16} {'kept':>6} {'precision':>9} {'recall':>7} {'FP removed':>10}")
    for name, a in acc.items():
        row = {
            "kept": a["kept"] / max(a["spatial"], 1),
            "precision": a["tp_kept"] / max(a["tp_kept"] + a["fp_kept"], 1),
            "recall": a["tp_kept"] / max(a["tp_spatial"], 1),
            "fp_removed": 1 - a["fp_kept"] / max(a["fp_spatial"], 1),
            "spatial_pairs": a["spatial"],
        }
        for key in ("log_gap_same_median", "log_gap_diff_median"):
            if key in a:
                row[key] = a[key]
        report["settings"][name] = row
        print(
            f"{name:<16} {row['kept']:6.3f} {row['precision']:9.3f} {row['recall']:7.3f} "
            f"{row['fp_removed']:10.3f}"
        )
    spans = torch.tensor(depth_span_m)
    report["scene"] = {
        "c5_cells_mixed_lt90pct": mixed_cells / max(cells, 1),
        "view_depth_span_m_median": float(spans.median()) if len(spans) else None,
        "valid_depth_fraction": float(torch.tensor(valid_depth).mean()),
    }
    for lv in levels:
        row = report["settings"][f"{lv} none 0.0"]
        print(
            f"{lv}: median |log z_i - log z'_j| over spatial positives: same label "
            f"{row.get('log_gap_same_median', 0):.3f}, different label {row.get('log_gap_diff_median', 0):.3f}"
        )
    print("scene:", json.dumps(report["scene"]))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
