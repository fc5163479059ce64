"""``datakit demo``: the whole path on synthetic data, from conversion to a linear probe."""

from __future__ import annotations

import json
import os

import click

from datakit.cli.data import info, preview, verify
from datakit.errors import UsageError
from datakit.urls import check_writable

# Left in --out by the demo: a folder that holds files but not this is not the demo's to replace
# (it deletes OUT/run and rewrites OUT/data).
MARKER = ".datakit-demo"


@click.command()
@click.option("--out", default="demo-out", show_default=True, type=click.Path(file_okay=False))
@click.option(
    "--num",
    default=64,
    show_default=True,
    type=click.IntRange(min=1),
    help="Synthetic train samples.",
)
@click.option(
    "--val",
    default=16,
    show_default=True,
    type=click.IntRange(min=0),
    help="Synthetic val samples.",
)
@click.option("--workers", default=2, show_default=True, type=click.IntRange(min=0))
@click.option(
    "--steps",
    default=20,
    show_default=True,
    type=click.IntRange(min=1),
    help="Pretraining steps (pixpro-depth, resnet18, 64 px views).",
)
@click.option(
    "--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True
)
def demo(out: str, num: int, val: int, workers: int, steps: int, device: str) -> None:
    """The embedded default: synthetic data -> info -> verify -> preview -> train -> eval."""
    from converters.synthetic import SyntheticConfig, SyntheticConverter
    from datakit.writer import ConvertConfig
    from datakit.writer import convert as run_convert

    check_writable(out, "--out", local_only=True)
    if os.path.isdir(out) and os.listdir(out) and not os.path.exists(os.path.join(out, MARKER)):
        raise UsageError(
            f"--out {out}: holds files not made by datakit demo, which replaces OUT/data and "
            "OUT/run; pass a new or empty folder"
        )
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, MARKER), "w") as f:
        f.write("outputs of datakit demo: a rerun replaces them\n")
    data = os.path.join(out, "data")
    click.echo(f"[1] convert synthetic -> {data}")
    res = run_convert(
        SyntheticConverter(SyntheticConfig(num=num, val=val)),
        data,
        ConvertConfig(shard_size=16, workers=workers, mode="overwrite"),
    )
    click.echo(f"    {res.num_samples} samples, {len(res.shards)} shards in {res.seconds:.1f} s")
    click.echo("[2] info")
    ctx = click.get_current_context()
    ctx.invoke(info, dataset=data, as_json=False)
    click.echo("[3] verify")
    ctx.invoke(verify, dataset=data, quiet=True)
    click.echo("[4] preview")
    ctx.invoke(
        preview,
        dataset=data,
        out=os.path.join(out, "preview.png"),
        html=os.path.join(out, "preview.html"),
        n=8,
        seed=0,
        split=None,
    )
    _demo_train_eval(
        out, data, steps=steps, batch=min(16, num), device=device, workers=min(workers, 1)
    )
    click.echo(f"demo outputs are in {os.path.abspath(out)}: dataset {os.path.abspath(data)}")


def _demo_train_eval(
    out: str, data: str, *, steps: int, batch: int, device: str, workers: int
) -> None:
    """[5] pretrain a small depth-aware PixPro, [6] probe it and a random-init twin; a summary."""
    import shutil

    from training.config import build_config
    from training.evaluate import EvalConfig, evaluate
    from training.loop import train as run_train

    run = os.path.join(out, "run")
    shutil.rmtree(run, ignore_errors=True)
    click.echo(f"[5] train pixpro-depth, resnet18, {steps} steps of {batch} x 64 px views -> {run}")
    cfg = build_config(
        (
            "demo",
            {
                "data": data,
                "out": run,
                "method": "pixpro-depth",
                "arch": "resnet18",
                "steps": steps,
                "batch_size": batch,
                "image_size": 64,
                "workers": workers,
                "device": device,
                "tensorboard": False,
                "log_every": max(1, steps // 5),
            },
        )
    )
    result = run_train(cfg)
    with open(os.path.join(run, "metrics.jsonl")) as f:
        logged = [json.loads(x) for x in f if x.strip()]
    click.echo("[6] eval: linear probe (frozen backbone, 1x1 conv on C3-C5) on the val split")
    scores = {}
    for name, ckpt in (("pretrained", str(result.checkpoint)), ("random init", None)):
        path = os.path.join(out, f"eval-{'pretrained' if ckpt else 'random'}.json")
        scores[name] = evaluate(
            EvalConfig(
                data=data,
                checkpoint=ckpt,
                out=path,
                arch="resnet18",
                levels=("c3", "c4", "c5"),
                image_size=64,
                epochs=20,
                device=device,
            )
        )
    r = scores["pretrained"]
    click.echo(f"\n{'summary':-<72}")
    click.echo(
        f"train   {steps} steps, loss {logged[0]['loss']:.3f} (step {logged[0]['step']}) -> "
        f"{logged[-1]['loss']:.3f}; positives kept by depth "
        f"{logged[-1].get('pos_frac', 0) / max(logged[-1].get('pos_frac_spatial', 1), 1e-9):.0%}"
    )
    click.echo(
        f"eval    {r['num_train']} train / {r['num_eval']} {r['eval_split']} images at "
        f"{r['input_size']['width']}x{r['input_size']['height']}"
    )
    click.echo(
        f"        {'class':<12}" + "".join(f"{c[:8]:>9}" for c in r["classes"]) + f"{'mIoU':>9}"
    )
    for name, res in scores.items():
        ious = "".join(
            "      n/a" if v is None else f"{100 * v:9.1f}" for v in res["per_class_iou"]
        )
        click.echo(f"        {name:<12}{ious}{100 * (res['miou'] or 0):9.1f}")
    click.echo(
        "        (a few CPU steps are a smoke test, not a pretraining: docs/results.md has a "
        "measured comparison)"
    )
