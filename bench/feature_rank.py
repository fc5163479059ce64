"""How many directions a backbone's features use at each level, in the mode each protocol reads.

For each backbone (a ``RUN/last.pt``, or ``random:SEED`` for torchvision's initialisation of
``--arch``) this reads a labeled split as ``datakit eval`` does (same size, same normalisation),
takes the C3, C4 and C5 feature cells of ``--images`` images and prints, per level, the *effective
rank* of the centred cells (exp of the entropy of the normalised squared singular values: k for k
equal directions, 1 for features that vary along one line), in eval mode (BatchNorm's running
statistics: what the linear probe reads) and in train mode (batch statistics: what fine-tuning
starts from), and the norm of each stage's conv weights (``norm_conv1`` .. ``norm_layer4``).

    python bench/feature_rank.py --data DATA random:0 RUN/last.pt ...

docs/results.md (section 1, "Fine-tuning") has the table and what it says.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.cell_similarity import backbone_parser, load_spec, read_labeled  # noqa: E402
from training.eval_data import normalise  # noqa: E402

LEVELS = ("c3", "c4", "c5")


def effective_rank(cells: Tensor) -> float:
    """cells (N, C): exp(-sum p log p) with p the squared singular values of the centred cells,
    normalised to sum to 1 (Roy and Vetterli 2007). 1.0 for cells that are all alike."""
    x = cells.double() - cells.double().mean(0)
    s2 = torch.linalg.svdvals(x) ** 2
    if float(s2.sum()) == 0.0:
        return 1.0
    p = s2 / s2.sum()
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))


def stage_norms(backbone: torch.nn.Module) -> dict[str, float]:
    """The L2 norm of each stage's conv weights together (stem ``conv1``, ``layer1`` .. ``layer4``).
    BatchNorm follows every conv, so a conv's output does not depend on its weights' scale, but its
    effective step does (a step of size s moves a weight of norm n by s / n): plain SGD at a large
    lr grows these norms, LARS does not."""
    stages: dict[str, list[Tensor]] = {}
    for name, p in backbone.named_parameters():
        if p.dim() == 4:
            stages.setdefault(name.split(".", 1)[0], []).append(p.detach())
    return {
        k: float(torch.stack([(w.double() ** 2).sum() for w in ws]).sum().sqrt())
        for k, ws in stages.items()
    }


def main(argv: list[str] | None = None) -> int:
    ap = backbone_parser(__doc__)
    ap.add_argument("--images", type=int, default=64, help="one batch of this many images")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    images = normalise(read_labeled(args, limit=args.images)[1].images)
    for spec in args.backbones:
        backbone = load_spec(spec, LEVELS, args.arch)
        row: dict[str, object] = {"backbone": spec}
        for mode in ("eval", "train"):
            backbone.train(mode == "train")  # train mode: BatchNorm normalises by this batch
            with torch.no_grad():
                feats = backbone(images)
            for lv in LEVELS:
                f = feats[lv].float()
                row[f"{mode}_{lv}"] = round(effective_rank(f.transpose(0, 1).flatten(1).t()), 2)
        row.update({f"norm_{k}": round(v, 1) for k, v in stage_norms(backbone).items()})
        print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
