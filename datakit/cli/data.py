"""``datakit convert`` (one generated subcommand per registered converter), ``merge``, and the
commands that inspect a dataset: ``info``, ``verify``, ``preview``.

Converters are imported only when a ``convert`` subcommand is listed or run; torch only by ``preview``.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from datakit.errors import UsageError
from datakit.skips import plural
from datakit.urls import check_writable


class ByteSizeType(click.ParamType):
    """``500M``, ``2G``, ``1048576`` -> bytes; click names the option in the error."""

    name = "SIZE"

    def convert(self, value: Any, param: Any, ctx: Any) -> int:
        if isinstance(value, int):
            return value
        from datakit.remote import parse_bytes

        try:
            return parse_bytes(value)
        except (ValueError, OverflowError):
            self.fail(f"{value!r} is not a size like 500M or 2G", param, ctx)


BYTE_SIZE = ByteSizeType()


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
            type=BYTE_SIZE,
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
        check_writable(out, "OUT")
        common = {k: kwargs.pop(k) for k in COMMON_NAMES}
        if common["resume"] and common["overwrite"]:
            raise UsageError("--resume and --overwrite exclude each other")
        mode = (
            "resume" if common.pop("resume") else "overwrite" if common.pop("overwrite") else "new"
        )
        common.pop("overwrite", None)
        cfg = ConvertConfig(mode=mode, **common)
        converter = conv_cls.from_cli(**kwargs)
        result = convert(converter, out, cfg)
        if result.finished_before:
            kept = "; already complete, nothing converted"
        elif result.kept_shards:
            samples, shards = (
                plural(result.kept_samples, "sample"),
                plural(result.kept_shards, "shard"),
            )
            kept = f"; {samples} in {shards} kept from the earlier run"
        else:
            kept = ""
        click.echo(
            f"{plural(result.num_samples, 'sample')} in {plural(len(result.shards), 'shard')} "
            f"-> {result.location} "
            f"({result.seconds:.1f} s"
            + (f", {result.skipped} skipped: see errors.jsonl" if result.skipped else "")
            + f"{kept}); manifest {result.manifest}"
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


@click.group(cls=ConvertGroup)
def convert() -> None:
    """Convert a source dataset into shards + _info.json under OUT (folder or URL)."""


@click.command()
@click.argument("out")
def merge(out: str) -> None:
    """Join the manifests of --part runs under OUT into one _info.json."""
    from datakit.merge import merge as merge_parts

    info = merge_parts(out)
    click.echo(
        f"merged {plural(len(info['shards']), 'shard')}, "
        f"{plural(sum(s['num_samples'] for s in info['shards']), 'sample')} -> {out}/_info.json"
    )


# --- inspect -----------------------------------------------------------------------------------


def _scale(value: object) -> str:
    """A depth code's size for people: 6 significant digits (a ScanNet-style 1/163.84 m would
    print 0.006103608758678569); the exact value is in _info.json."""
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return str(n)


@click.command()
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
        f"samples   {inf.num_samples()} in {plural(len(inf.shards), 'shard')}, "
        f"{_human(inf.total_bytes())}"
    )
    width = max((len(s) for s in inf.splits), default=0)
    for split in inf.splits:
        click.echo(
            f"  {split:<{max(width, 8)}} {inf.num_samples(split):>8} samples  "
            f"{len(inf.shards_of(split)):>5} shards  "
            f"{_human(inf.total_bytes(split))}"
        )
    d = inf.depth
    if d:
        rng = "n/a" if d.get("min") is None else f"{d['min']:.4g} .. {d['max']:.4g} {d['unit']}"
        click.echo(
            f"depth     {rng}, scale {_scale(d.get('scale'))} {d['unit']}/code, "
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


@click.command()
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
        f"OK: {plural(report.shards, 'shard')}, {plural(report.samples, 'sample')}, "
        f"{_human(report.bytes)} "
        f"verified in {report.location}"
    )


@click.command()
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
    "--seed",
    default=0,
    show_default=True,
    type=click.IntRange(min=0),
    help="Which samples, views and pairs are shown.",
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
    skipped = result.stats.shards_skipped
    click.echo(
        f"{plural(len(result.rows), 'sample')} from "
        f"{plural(len(result.stats.shards_opened) - len(skipped), 'shard')} "
        f"-> {out}"
        + (f", {html}" if html else "")
        + (f" ({plural(len(skipped), 'unreadable shard')} skipped)" if skipped else "")
    )
