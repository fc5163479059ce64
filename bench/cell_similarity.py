"""How alike a frozen backbone makes the C5 cells of one image, and whether it keeps classes apart.

For each backbone (a ``RUN/last.pt``, or ``random:SEED`` for torchvision's initialisation of
``--arch``) this reads a labeled split as ``datakit eval`` does (same size, same normalisation, eval
mode), takes the C5 cells and each cell's majority label, and prints, over cells standardised per
channel on the split (what the linear probe's non-affine BatchNorm sees):

- ``within``: mean cosine between different cells of the same image;
- ``across``: mean cosine between cells of different images;
- ``same_pos``: mean cosine between cells at the same grid position of different images (features
  that code where a cell sits in the image, not what it shows, raise it);
- ``same`` / ``diff``: mean cosine between cells of the same image whose (pure) majority labels agree
  / differ; ``same - diff`` is how far the features keep classes apart inside an image.

A dense loss that can be lowered by telling images apart rather than places (PixCon's dense
InfoNCE against other images' pooled keys) can push ``within`` up and ``same - diff`` down
(docs/results.md, section 1).

    python bench/cell_similarity.py --data DATA random:0 RUN/last.pt ...
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from datakit.reader import open_dataset
from training.eval_data import LabeledImages, eval_size, normalise, read_split
from training.evaluate import load_backbone
from training.models import Backbone


def cell_labels(labels: Tensor, grid: tuple[int, int], ignore: int) -> tuple[Tensor, Tensor]:
    """labels (N, H, W) -> per cell of an (h, w) grid: majority label (N, h, w) and its share of the
    cell's labeled pixels (0 where the cell has none)."""
    n, (h, w) = labels.shape[0], grid
    rows = torch.linspace(0, labels.shape[1], h + 1).round().long().tolist()
    cols = torch.linspace(0, labels.shape[2], w + 1).round().long().tolist()
    major = torch.zeros(n, h, w, dtype=torch.long)
    share = torch.zeros(n, h, w)
    for i in range(h):
        for j in range(w):
            cell = labels[:, rows[i] : rows[i + 1], cols[j] : cols[j + 1]].reshape(n, -1)
            for k in range(n):
                vals = cell[k][cell[k] != ignore]
                if len(vals):
                    counts = torch.bincount(vals)
                    major[k, i, j] = int(counts.argmax())
                    share[k, i, j] = float(counts.max()) / len(vals)
    return major, share


def similarity_stats(
    feats: Tensor, major: Tensor, pure: Tensor, *, standardise: bool = True
) -> dict[str, float]:
    """feats (N, C, h, w), major (N, h, w) labels, pure (N, h, w) bool -> the mean cosines above
    (cells standardised per channel over all N * h * w cells first, unless ``standardise`` is
    False)."""
    n, c = feats.shape[:2]
    x = feats.permute(0, 2, 3, 1).reshape(n, -1, c).double()
    if standardise:
        flat = x.reshape(-1, c)
        x = (x - flat.mean(0)) / flat.std(0).clamp_min(1e-6)
    x = F.normalize(x, dim=2)
    m = x.shape[1]
    sims = x @ x.transpose(1, 2)  # (N, m, m) within each image
    off = ~torch.eye(m, dtype=torch.bool)
    within = float(sims[:, off].mean())
    total = x.reshape(-1, c).sum(0)
    per_image = x.sum(1)  # (N, C)
    all_pairs = float(total @ total) - float((per_image * per_image).sum())
    across = all_pairs / (n * m * (n * m - m))
    pos = x.sum(0)  # (m, C): each grid position summed over images
    same_pos = (float((pos * pos).sum()) - float((x * x).sum())) / (m * n * (n - 1))
    lab, ok = major.reshape(n, m), pure.reshape(n, m)
    both = ok[:, :, None] & ok[:, None, :] & off
    agree = lab[:, :, None] == lab[:, None, :]
    same = sims[both & agree]
    diff = sims[both & ~agree]
    return {
        "within": within,
        "across": across,
        "same_pos": same_pos,
        "same": float(same.mean()) if len(same) else float("nan"),
        "diff": float(diff.mean()) if len(diff) else float("nan"),
    }


@torch.no_grad()
def c5_features(backbone: Backbone, images: Tensor, batch_size: int = 32) -> Tensor:
    backbone.eval()
    parts = [
        backbone(normalise(images[i : i + batch_size]))["c5"].float()
        for i in range(0, len(images), batch_size)
    ]
    return torch.cat(parts)


def backbone_parser(description: str | None) -> argparse.ArgumentParser:
    """The arguments of the scripts that read frozen backbones on a labeled split: backbones
    (``RUN/last.pt`` or ``random:SEED``), ``--data``, ``--split``, ``--image-size``, ``--arch``."""
    ap = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawTextHelpFormatter
    )
    ap.add_argument("backbones", nargs="+", help="RUN/last.pt, or random:SEED")
    ap.add_argument("--data", required=True)
    ap.add_argument("--split", default="val")
    ap.add_argument("--image-size", type=int, default=96, help="short side, as datakit eval's")
    ap.add_argument("--arch", default="resnet18", help="for random:SEED")
    return ap


def load_spec(spec: str, levels: tuple[str, ...], arch: str) -> Backbone:
    """``RUN/last.pt`` (or weights), or ``random:SEED``: torchvision's initialisation of ``arch``
    under that seed."""
    if spec.startswith("random:"):
        torch.manual_seed(int(spec.split(":", 1)[1]))
        return load_backbone(None, levels, arch=arch)
    return load_backbone(spec, levels)


def read_labeled(args: argparse.Namespace, limit: int | None = None) -> tuple[Any, LabeledImages]:
    """The dataset of ``args.data`` and (at most ``limit`` of) its ``args.split``, read as ``datakit
    eval`` reads it at ``args.image_size``."""
    ds = open_dataset(args.data)
    first = ds.take(1, args.split)[0]
    size = eval_size(first.rgb.shape[0], first.rgb.shape[1], args.image_size)
    return ds, read_split(ds, args.split, size, limit=limit)


def main(argv: list[str] | None = None) -> int:
    ap = backbone_parser(__doc__)
    ap.add_argument("--purity", type=float, default=0.9, help="a cell's label counts above this")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    ds, data = read_labeled(args)
    ignore = int((ds.info.labels or {}).get("ignore_index", 255))
    for spec in args.backbones:
        backbone = load_spec(spec, ("c5",), args.arch)
        feats = c5_features(backbone, data.images)
        major, share = cell_labels(data.labels, tuple(feats.shape[2:]), ignore)  # type: ignore[arg-type]
        stats = similarity_stats(feats, major, share > args.purity)
        row = {"backbone": spec, "grid": list(feats.shape[2:]), **stats}
        row["same_minus_diff"] = stats["same"] - stats["diff"]
        print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
