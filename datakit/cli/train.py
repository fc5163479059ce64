"""``datakit train``, ``export`` and ``eval``: pretraining, the backbone for elsewhere, the probe.

``training`` (and so torch) is imported inside each command, never when the CLI is loaded.
"""

from __future__ import annotations

import os
from typing import Any

import click

from datakit.errors import UsageError
from datakit.skips import Skipped
from datakit.urls import check_writable

# train and eval read data the same way, so they skip it the same way
ON_ERROR = click.option(
    "--on-error",
    type=click.Choice(["fail", "skip"]),
    default=None,
    help="A bad sample or unreadable shard: stop with one line naming it, or log, count and "
    "skip it [fail].",
)


@click.command()
@click.option("--data", default=None, help="Dataset folder or URL (a resumed run remembers it).")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Run folder RUN.")
@click.option(
    "--method",
    type=click.Choice(["pixpro", "pixpro-depth", "pixcon"]),
    default=None,
    help="[pixpro]",
)
@click.option(
    "--config",
    "config_file",
    default=None,
    type=click.Path(dir_okay=False),
    help="YAML of TrainConfig keys (docs/training.md); flags win.",
)
@click.option(
    "--arch", type=click.Choice(["resnet18", "resnet50"]), default=None, help="[resnet50]"
)
@click.option("--steps", type=click.IntRange(min=1), default=None, help="Optimiser steps [1000].")
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=None,
    help="Global batch per optimiser step [64].",
)
@click.option("--image-size", type=click.IntRange(min=32), default=None, help="View side S [224].")
@click.option("--lr", type=float, default=None, help="[method's base lr x batch / 256]")
@click.option(
    "--workers", type=click.IntRange(min=0), default=None, help="Loader processes per rank [4]."
)
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default=None, help="[auto]")
@click.option("--seed", type=click.IntRange(min=0), default=None, help="[0]")
@ON_ERROR
@click.option("--multiscale/--no-multiscale", default=None, help="Loss on C3, C4, C5 [off].")
@click.option("--compile/--no-compile", "compile_", default=None, help="torch.compile [off].")
@click.option("--deterministic", is_flag=True, default=None, help="Deterministic algorithms.")
@click.option("--progress/--no-progress", default=None, help="Progress bar on stderr [on].")
@click.option("--resume", is_flag=True, help="Continue RUN from RUN/last.pt with RUN/config.yaml.")
@click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="Any other config key, e.g. --set depth_mode=log (repeatable).",
)
def train(
    config_file: str | None,
    resume: bool,
    overrides: tuple[str, ...],
    compile_: bool | None,
    **flags: Any,
) -> None:
    """Pretrain a backbone on DATASET: RUN/last.pt, RUN/config.yaml, RUN/metrics.jsonl."""
    from training.config import from_layers
    from training.loop import CONFIG_NAME
    from training.loop import train as run_train

    check_writable(flags["out"], "--out", local_only=True)
    flags.update(compile=compile_, resume=resume or None)
    cfg = from_layers(
        saved=os.path.join(flags["out"], CONFIG_NAME) if resume else None,
        config_file=config_file,
        flags=flags,
        overrides=overrides,
    )
    result = run_train(cfg)
    if os.environ.get("RANK", "0") != "0":  # under torchrun, one summary line, from rank 0
        return
    if result.finished_before:
        click.echo(
            f"{cfg.method} {cfg.arch}: {result.checkpoint} is already at step {result.step} of "
            f"{cfg.steps}; nothing to train (raise --steps to train on)"
        )
    else:
        resumed = f" (resumed at step {result.start_step})" if result.start_step else ""
        click.echo(
            f"{cfg.method} {cfg.arch}: {result.step} steps{resumed}, loss {result.loss:.4f} -> "
            f"{result.checkpoint}{result.skipped.suffix()}"
        )


@click.command()
@click.argument("checkpoint", type=click.Path(dir_okay=False))
@click.argument("out", type=click.Path(dir_okay=False))
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["torchvision", "detectron2"]),
    default="torchvision",
    show_default=True,
    help="torchvision state dict (strict-loadable) or detectron2's layout.",
)
def export(checkpoint: str, out: str, fmt: str) -> None:
    """The pretrained backbone of CHECKPOINT (RUN/last.pt) as OUT.pth for fine-tuning elsewhere."""
    from training.export import export as run_export

    path = run_export(checkpoint, out, fmt=fmt)
    click.echo(f"{fmt} backbone -> {path}")


# --- eval --------------------------------------------------------------------------------------


@click.command("eval")
@click.option("--data", required=True, help="A labeled dataset (folder or URL).")
@click.option(
    "--checkpoint", default=None, help="RUN/last.pt, or a backbone .pth from `datakit export`."
)
@click.option(
    "--random-init", is_flag=True, help="Evaluate a randomly initialised --arch (the baseline)."
)
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="EVAL.json to write.")
@click.option(
    "--protocol",
    type=click.Choice(["linear", "finetune"]),
    default=None,
    help="linear: frozen backbone + 1x1 conv (default); finetune: backbone trained too.",
)
@click.option(
    "--config",
    "config_file",
    default=None,
    type=click.Path(dir_okay=False),
    help="YAML of eval settings (flags win).",
)
@click.option(
    "--arch",
    type=click.Choice(["resnet18", "resnet50"]),
    default=None,
    help="With --random-init [resnet50]; with --checkpoint, must be the one it holds.",
)
@click.option(
    "--levels", default=None, help="Feature maps: c5 (default) or c3,c4,c5 (concatenated)."
)
@click.option("--image-size", type=click.IntRange(min=32), default=None, help="Short side [224].")
@click.option("--epochs", type=click.IntRange(min=1), default=None, help="[30 linear, 15 finetune]")
@click.option("--batch-size", type=click.IntRange(min=1), default=None, help="[16]")
@click.option(
    "--lr", type=float, default=None, help="Head lr (AdamW) [0.01 linear, 0.001 finetune]."
)
@click.option("--train-split", default=None, help="[train]")
@click.option(
    "--eval-split",
    default=None,
    help="[val, or a held-out 20% of train when the dataset has no val; a named split must exist]",
)
@click.option("--max-train", type=click.IntRange(min=1), default=None, help="[all]")
@click.option("--max-eval", type=click.IntRange(min=1), default=None, help="[all]")
@click.option("--workers", type=click.IntRange(min=0), default=None, help="Decoding processes [0].")
@ON_ERROR
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default=None, help="[auto]")
@click.option("--seed", type=int, default=None, help="[0]")
def eval_command(config_file: str | None, random_init: bool, **flags: Any) -> None:
    """Segmentation probe of a pretrained backbone on DATASET's labels: mIoU and per-class IoU."""
    from training.config import read_yaml
    from training.evaluate import build_config, evaluate

    from_file = read_yaml(config_file) if config_file else {}
    if random_init and flags["checkpoint"] is None:  # the flag wins over the file's checkpoint
        from_file = {k: v for k, v in from_file.items() if k != "checkpoint"}
    if (flags["checkpoint"] is None and from_file.get("checkpoint") is None) == (not random_init):
        raise UsageError(
            "pass --checkpoint RUN/last.pt, or --random-init for the baseline (not both)"
        )
    cfg = build_config(("config", from_file), ("flags", flags))
    r = evaluate(cfg, log=lambda msg: click.echo(msg, err=True))
    click.echo(
        f"{r['protocol']} probe, {r['arch']} {'+'.join(r['levels'])}: {r['num_train']} train / "
        f"{r['num_eval']} {r['eval_split']} samples at {r['input_size']['width']}x"
        f"{r['input_size']['height']} ({r['seconds']:.1f} s)"
    )
    for name, iou in zip(r["classes"], r["per_class_iou"]):
        click.echo(f"  {name:<16} {'  n/a' if iou is None else f'{100 * iou:5.1f}'}")
    miou = "n/a" if r["miou"] is None else f"{100 * r['miou']:.1f}"
    skipped = Skipped(**r["skipped"])
    click.echo(
        f"  {'mIoU':<16} {miou:>5}   pixel accuracy {100 * (r['pixel_accuracy'] or 0):.1f}  "
        f"-> {cfg.out}{skipped.suffix()}"
    )
