"""The ``datakit`` command: the composition root.

Converters and training are imported inside the command functions, so ``datakit convert`` never pays
for importing torch. Bad input ends as one line on stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import click

from datakit import __version__
from datakit.errors import DatakitError


class CliError(click.ClickException):
    """A DatakitError shown as ``Error: <message>``, exit status 1 (bad data)."""

    exit_code = 1


class CliUsageError(CliError):
    """Exit status 2 (arguments that contradict each other or the state of the output)."""

    exit_code = 2


def _cli_error(message: str, exit_code: int = 1) -> CliError:
    return CliUsageError(message) if exit_code == 2 else CliError(message)


def _run_guarded(fn: Any, *args: Any, **kwargs: Any) -> Any:
    try:
        return fn(*args, **kwargs)
    except DatakitError as exc:
        raise _cli_error(str(exc), exc.exit_code) from None
    except FileNotFoundError as exc:
        raise CliError(f"{exc.filename}: no such file or directory") from None
    except PermissionError as exc:
        raise CliError(f"{exc.filename}: permission denied") from None
    except OSError as exc:
        if not exc.filename:
            raise
        raise CliError(f"{exc.filename}: {exc.strerror or exc}") from None


class GuardedGroup(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        return _run_guarded(super().invoke, ctx)


@click.group(cls=GuardedGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="datakit")
@click.option(
    "--cache-dir",
    default=None,
    metavar="DIR",
    help="Keep a local copy of every remote shard read and reuse it while unchanged "
    "(env DATAKIT_CACHE_DIR).",
)
@click.option(
    "--on-shard-error",
    type=click.Choice(["fail", "skip"]),
    default=None,
    help="A remote shard still unreadable after retries: stop (default) or log and skip it "
    "(env DATAKIT_ON_SHARD_ERROR).",
)
def main(cache_dir: str | None, on_shard_error: str | None) -> None:
    """RGB-D datasets to verified WebDataset shards, and pixel-level contrastive pretraining.

    DATASET and OUT are folders or URLs (s3://, gs://, http(s)://); see docs/storage.md.
    """
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    # Storage settings travel as environment variables so that loader worker processes see them.
    if cache_dir:
        os.environ["DATAKIT_CACHE_DIR"] = cache_dir
    if on_shard_error:
        os.environ["DATAKIT_ON_SHARD_ERROR"] = on_shard_error


# --- convert -----------------------------------------------------------------------------------


def _parse_bytes(value: str) -> int:
    units = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
    v = str(value).strip().lower().removesuffix("b").removesuffix("i")
    num, unit = (v[:-1], v[-1]) if v and v[-1] in units else (v, "")
    try:
        return int(float(num) * units[unit])
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a size like 500M or 2G") from None


def _common_convert_options() -> list[click.Parameter]:
    return [
        click.Option(
            ["--shard-size"],
            type=click.IntRange(min=1),
            default=1000,
            show_default=True,
            help="Samples per shard.",
        ),
        click.Option(
            ["--max-shard-bytes"],
            default="1G",
            show_default=True,
            help="Close a shard before it passes this size (e.g. 500M).",
        ),
        click.Option(
            ["--workers"],
            type=click.IntRange(min=1),
            default=1,
            show_default=True,
            help="Processes converting work units (output is the same for any number).",
        ),
        click.Option(
            ["--rgb-format"], type=click.Choice(["jpg", "png"]), default="jpg", show_default=True
        ),
        click.Option(
            ["--jpeg-quality"], type=click.IntRange(1, 100), default=95, show_default=True
        ),
        click.Option(
            ["--on-error"],
            type=click.Choice(["fail", "skip"]),
            default="fail",
            show_default=True,
            help="On a bad frame or file: stop, or log it to errors.jsonl and go on.",
        ),
        click.Option(
            ["--resume"], is_flag=True, help="Keep complete shards of an earlier run and continue."
        ),
        click.Option(
            ["--overwrite"], is_flag=True, help="Delete an existing dataset at OUT first."
        ),
        click.Option(
            ["--part"],
            type=click.IntRange(min=0),
            default=None,
            help="Convert slice I of --num-parts (SLURM arrays, indexed jobs); then `datakit merge`.",
        ),
        click.Option(["--num-parts"], type=click.IntRange(min=1), default=None),
        click.Option(
            ["--name"],
            default=None,
            help="Dataset name in _info.json (default: the source's name).",
        ),
        click.Option(["--progress/--no-progress"], default=True, show_default=True),
    ]


COMMON_NAMES = (
    "shard_size",
    "max_shard_bytes",
    "workers",
    "rgb_format",
    "jpeg_quality",
    "on_error",
    "resume",
    "overwrite",
    "part",
    "num_parts",
    "name",
    "progress",
)


def _convert_command(name: str) -> click.Command:
    import converters

    conv_cls = converters.get(name)
    own = list(conv_cls.params)
    params = (
        [p for p in own if isinstance(p, click.Argument)]
        + [click.Argument(["out"], metavar="OUT")]
        + [p for p in own if not isinstance(p, click.Argument)]
        + _common_convert_options()
    )

    def callback(**kwargs: Any) -> None:
        from datakit.writer import ConvertConfig, convert

        out = kwargs.pop("out")
        common = {k: kwargs.pop(k) for k in COMMON_NAMES}
        if common["resume"] and common["overwrite"]:
            raise CliUsageError("--resume and --overwrite exclude each other")
        mode = (
            "resume" if common.pop("resume") else "overwrite" if common.pop("overwrite") else "new"
        )
        common.pop("overwrite", None)
        common["max_shard_bytes"] = _parse_bytes(common["max_shard_bytes"])
        cfg = ConvertConfig(mode=mode, **common)
        converter = conv_cls.from_cli(**kwargs)
        result = convert(converter, out, cfg)
        click.echo(
            f"{result.num_samples} samples in {len(result.shards)} shards -> {result.location} "
            f"({result.seconds:.1f} s"
            + (f", {result.skipped} skipped: see errors.jsonl" if result.skipped else "")
            + f"); manifest {result.manifest}"
        )

    return click.Command(
        name,
        params=params,
        callback=callback,
        help=conv_cls.help,
        short_help=conv_cls.help.split(". ")[0],
    )


class ConvertGroup(click.Group):
    """``datakit convert SOURCE``: one subcommand per entry of the converter registry, loaded lazily."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        import converters

        return converters.names()

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        import converters

        if cmd_name not in converters.REGISTRY:
            return None
        return _convert_command(cmd_name)


@main.group(cls=ConvertGroup)
def convert() -> None:
    """Convert a source dataset into shards + _info.json under OUT (folder or URL)."""


@main.command()
@click.argument("out")
def merge(out: str) -> None:
    """Join the manifests of --part runs under OUT into one _info.json."""
    from datakit.merge import merge as merge_parts

    info = merge_parts(out)
    click.echo(
        f"merged {len(info['shards'])} shards, "
        f"{sum(s['num_samples'] for s in info['shards'])} samples -> {out}/_info.json"
    )


# --- inspect -----------------------------------------------------------------------------------


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return str(n)


@main.command()
@click.argument("dataset")
@click.option("--json", "as_json", is_flag=True, help="Print _info.json as it is.")
def info(dataset: str, as_json: bool) -> None:
    """Summary of DATASET: source, splits, counts, bytes, depth range, labels."""
    from datakit.manifest import read_info
    from datakit.storage import Location

    loc = Location(dataset)
    inf = read_info(loc)
    if as_json:
        click.echo(json.dumps(inf.raw, indent=1))
        return
    r = inf.raw
    click.echo(f"dataset   {inf.name}  ({loc.display})")
    click.echo(f"source    {inf.source}   created by {r.get('created_by', '?')}")
    click.echo(
        f"samples   {inf.num_samples()} in {len(inf.shards)} shards, {_human(inf.total_bytes())}"
    )
    for split in inf.splits:
        click.echo(
            f"  {split:<8} {inf.num_samples(split):>8} samples  {len(inf.shards_of(split)):>5} shards  "
            f"{_human(inf.total_bytes(split))}"
        )
    d = inf.depth
    if d:
        rng = "n/a" if d.get("min") is None else f"{d['min']:.4g} .. {d['max']:.4g} {d['unit']}"
        click.echo(
            f"depth     {rng}, scale {d.get('scale')} {d['unit']}/code, "
            f"valid {100 * float(d.get('valid_fraction') or 0):.1f}%"
        )
    else:
        click.echo("depth     none (samples carry no depth member)")
    lab = inf.labels
    if lab:
        click.echo(
            f"labels    {lab['name']}: {len(lab['classes'])} classes "
            f"({', '.join(lab['classes'][:8])}{', ...' if len(lab['classes']) > 8 else ''}), "
            f"ignore {lab['ignore_index']}"
        )
    else:
        click.echo("labels    none")
    err = r.get("errors") or {}
    click.echo(
        f"skipped   {err.get('skipped', 0)}" + (f" (log: {err['log']})" if err.get("log") else "")
    )


@main.command()
@click.argument("dataset")
@click.option("--quiet", "-q", is_flag=True, help="Print only faults and the verdict.")
def verify(dataset: str, quiet: bool) -> None:
    """Check every shard's sha256 and decode + validate every sample; exit 1 on any fault."""
    from datakit.verify import verify as run_verify

    def on_shard(entry: Any) -> None:
        if not quiet:
            click.echo(f"checked {entry.name}", err=True)

    report = run_verify(dataset, on_shard=on_shard)
    for fault in report.faults:
        click.echo(f"FAULT {fault}", err=True)
    if report.faults:
        click.echo(f"{len(report.faults)} fault(s) in {report.location}", err=True)
        sys.exit(1)
    click.echo(
        f"OK: {report.shards} shards, {report.samples} samples, {_human(report.bytes)} "
        f"verified in {report.location}"
    )


@main.command()
@click.argument("dataset")
@click.option(
    "-o", "--out", required=True, type=click.Path(dir_okay=False), help="Contact sheet PNG."
)
@click.option(
    "--html",
    default=None,
    type=click.Path(dir_okay=False),
    help="Also write a self-contained HTML page (images embedded, sample JSON beside).",
)
@click.option(
    "--n", default=8, show_default=True, type=click.IntRange(min=1), help="Samples (rows)."
)
@click.option(
    "--seed", default=0, show_default=True, help="Which samples, views and pairs are shown."
)
@click.option("--split", default=None, help="Only this split (default: all).")
def preview(dataset: str, out: str, html: str | None, n: int, seed: int, split: str | None) -> None:
    """Contact sheet of N samples: RGB, depth, labels, both views, crops and positive pairs."""
    from datakit.preview import PreviewConfig, torch_pair_rule
    from datakit.preview import preview as run_preview
    from training.losses import DepthRule, positive_pairs

    result = run_preview(
        dataset,
        out,
        html=html,
        config=PreviewConfig(n=n, seed=seed, split=split),
        pair_rule=torch_pair_rule(positive_pairs, DepthRule()),
    )
    click.echo(
        f"{len(result.rows)} samples from {len(result.stats.shards_opened)} shards -> {out}"
        + (f", {html}" if html else "")
    )


# --- train / export ------------------------------------------------------------------------------


@main.command()
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
@click.option("--seed", type=int, default=None, help="[0]")
@click.option("--multiscale/--no-multiscale", default=None, help="Loss on C3, C4, C5 [off].")
@click.option("--compile/--no-compile", "compile_", default=None, help="torch.compile [off].")
@click.option("--deterministic", is_flag=True, default=None, help="Deterministic algorithms.")
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

    flags.update(compile=compile_, resume=resume or None)
    cfg = from_layers(
        saved=os.path.join(flags["out"], CONFIG_NAME) if resume else None,
        config_file=config_file,
        flags=flags,
        overrides=overrides,
    )
    result = run_train(cfg)
    click.echo(
        f"{cfg.method} {cfg.arch}: {result.step} steps, loss {result.loss:.4f} -> {result.checkpoint}"
    )


@main.command()
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


@main.command("eval")
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
    help="With --random-init (a checkpoint names its own).",
)
@click.option(
    "--levels", default=None, help="Feature maps: c5 (default) or c3,c4,c5 (concatenated)."
)
@click.option("--image-size", type=click.IntRange(min=32), default=None, help="Short side [224].")
@click.option("--epochs", type=click.IntRange(min=1), default=None, help="[30 linear, 15 finetune]")
@click.option("--batch-size", type=click.IntRange(min=1), default=None)
@click.option(
    "--lr", type=float, default=None, help="Head lr (AdamW) [0.01 linear, 0.001 finetune]."
)
@click.option("--train-split", default=None, help="[train]")
@click.option("--eval-split", default=None, help="[val; a held-out 20%% of train when missing]")
@click.option("--max-train", type=click.IntRange(min=1), default=None)
@click.option("--max-eval", type=click.IntRange(min=1), default=None)
@click.option("--workers", type=click.IntRange(min=0), default=None, help="Decoding processes.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default=None)
@click.option("--seed", type=int, default=None)
def eval_command(config_file: str | None, random_init: bool, **flags: Any) -> None:
    """Segmentation probe of a pretrained backbone on DATASET's labels: mIoU and per-class IoU."""
    from training.config import read_yaml
    from training.evaluate import build_config, evaluate

    if (flags["checkpoint"] is None) == (not random_init):
        raise CliUsageError(
            "pass --checkpoint RUN/last.pt, or --random-init for the baseline (not both)"
        )
    cfg = build_config(("config", read_yaml(config_file) if config_file else {}), ("flags", flags))
    r = evaluate(cfg, log=lambda msg: click.echo(msg, err=True))
    click.echo(
        f"{r['protocol']} probe, {r['arch']} {'+'.join(r['levels'])}: {r['num_train']} train / "
        f"{r['num_eval']} {r['eval_split']} samples at {r['input_size']['width']}x"
        f"{r['input_size']['height']} ({r['seconds']:.1f} s)"
    )
    for name, iou in zip(r["classes"], r["per_class_iou"]):
        click.echo(f"  {name:<16} {'  n/a' if iou is None else f'{100 * iou:5.1f}'}")
    miou = "n/a" if r["miou"] is None else f"{100 * r['miou']:.1f}"
    click.echo(
        f"  {'mIoU':<16} {miou:>5}   pixel accuracy {100 * (r['pixel_accuracy'] or 0):.1f}  "
        f"-> {cfg.out}"
    )


# --- demo --------------------------------------------------------------------------------------


@main.command()
@click.option("--out", default="demo-out", show_default=True, type=click.Path(file_okay=False))
@click.option("--num", default=64, show_default=True, help="Synthetic train samples.")
@click.option("--val", default=16, show_default=True, help="Synthetic val samples.")
@click.option("--workers", default=2, show_default=True)
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


if __name__ == "__main__":  # pragma: no cover
    main()
