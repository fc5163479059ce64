"""The papers' claim, measured: does depth-aware PixPro beat PixPro on segmentation probes?

Pretrains random-init (no training) / PixPro / PixPro-depth / PixPro-depth multi-scale / PixCon (with
semantic reweighting) on the same synthetic scenes with the same budget (steps, batch, image size,
optimizer and lr: PixPro's LARS for every method unless ``--shared-optimizer no``) and seeds, evaluates each with the linear probe of ``datakit eval`` on C5 and on concatenated C3-C5,
or (``--probes ft-c5 ft-c3-c5``) with its fine-tune protocol, the backbone trained too,
prints a table of mean and std over the seeds and the paired per-seed differences against random
init and against PixPro (with t statistics), and saves a plot and ``summary.json``. Every step is a
``datakit`` command, logged with its exact command line in ``OUT/commands.txt``; finished runs are
kept, so a rerun resumes.

    python bench/compare.py --out bench/out/compare                 # GPU scale (docs/results.md)
    python bench/compare.py --out bench/out/compare-cpu --preset cpu # a smaller CPU run
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

# name -> extra `datakit train` flags (None: no pretraining, the random-init baseline)
METHODS: dict[str, list[str] | None] = {
    "random-init": None,
    "pixpro": ["--method", "pixpro"],
    "pixpro-depth": ["--method", "pixpro-depth"],
    # not run by default: the multi-scale loss without depth, to tell the two apart
    "pixpro-ms": ["--method", "pixpro", "--multiscale"],
    "pixpro-depth-ms": ["--method", "pixpro-depth", "--multiscale"],
    # semantic reweighting is on by default; a queue of 4096 as MoCo uses on small datasets (the
    # default 65536 would hold each of ~1000 scenes dozens of times over)
    "pixcon-sr": ["--method", "pixcon", "--set", "queue_size=4096"],
    # not run by default: PixCon on its own recipe's optimizer (SGD) at the scale's lr multiplier,
    # as the presets trained it until session 12 (docs/results.md, "PixCon's stem")
    "pixcon-sr-sgd": ["--method", "pixcon", "--set", "queue_size=4096"],
    # not run by default: PixCon as it was until session 8, heads without BN (MoCo v2's, DenseCL's),
    # 512-wide predictors, base lr 0.3 (DenseCL's), before we followed PixCon's released code
    "pixcon-sr-nobn": [
        "--method",
        "pixcon",
        "--set",
        "queue_size=4096",
        "--set",
        "head_bn=false",
        "--set",
        "pred_hidden=512",
    ],
}
EXTRA_METHODS = ("pixpro-ms", "pixcon-sr-sgd", "pixcon-sr-nobn")
DEFAULT_METHODS = [m for m in METHODS if m not in EXTRA_METHODS]  # the five
# recipe base lr where a variant differs from its method's (METHOD_DEFAULTS)
BASE_LR = {"pixcon-sr-nobn": 0.3}
# the method whose optimizer and base lr every method shares under Scale.shared_optimizer, and the
# variants that keep their own recipe's even then
SHARED_RECIPE = "pixpro"
OWN_OPTIMIZER = ("pixcon-sr-sgd", "pixcon-sr-nobn")


@dataclass(frozen=True)
class Probe:
    levels: str  # `datakit eval --levels`
    protocol: str = "linear"  # `datakit eval --protocol`; finetune keeps eval's own epochs and lr


PROBES = {
    "c5": Probe("c5"),
    "c3-c5": Probe("c3,c4,c5"),
    # the papers' own protocol (PixPro, PixCon and Ben Saad et al. fine-tune for segmentation)
    "ft-c5": Probe("c5", "finetune"),
    "ft-c3-c5": Probe("c3,c4,c5", "finetune"),
}
DEFAULT_PROBES = ("c5", "c3-c5")
# paired per-seed differences are taken against these, in this order (each pair once)
BASELINES = ("random-init", "pixpro")


@dataclass(frozen=True)
class Scale:
    num: int = 1024  # synthetic train scenes
    val: int = 256
    size: str = "320x240"
    arch: str = "resnet18"
    steps: int = 400
    batch_size: int = 64
    image_size: int = 128  # pretraining views; the probe's short side too, unless:
    eval_image_size: int | None = None  # the probe's short side when not the views' size
    eval_epochs: int = 30
    eval_batch_size: int = 32
    workers: int = 4  # loader processes per run
    # the recipe lr (base_lr x batch / 256; PixPro's for every method under shared_optimizer,
    # else each method's own) times this: a schedule of a few dozen steps
    # at a small batch moves a LARS network by lr x trust per step, far less than the recipe's
    # thousands of steps do (docs/results.md, section 1b)
    lr_scale: float = 1.0
    # every method on one optimizer and base lr, PixPro's (LARS, 1.0 x batch / 256, times
    # lr_scale), each keeping its own weight decay: plain SGD at the multiplied lr blows up a
    # ResNet's stem (PixCon's conv1 weights grow 16-24x in the CPU preset's 70 steps), LARS scales
    # each tensor's step to its norm (docs/results.md, "PixCon's stem")
    shared_optimizer: bool = True
    warmup_steps: int = 0  # 0: the trainer's default (5 epochs, at most half the steps)


PRESETS = {
    # lr x4: the CPU runs showed the recipe lr barely moves a network in a few hundred steps
    # (x16 there for 70 steps); not tuned on the GPU
    "gpu": Scale(lr_scale=4.0),
    "cpu": Scale(
        num=256,
        val=64,
        size="128x96",
        steps=70,
        batch_size=32,
        image_size=96,
        eval_epochs=20,
        workers=0,
        lr_scale=16.0,
        warmup_steps=10,
    ),
}

_lock = threading.Lock()


def _run(cmd: list[str], log: Path, record: Path, env: dict[str, str]) -> None:
    line = " ".join(shlex.quote(c) for c in cmd)
    with _lock, record.open("a") as f:
        f.write(line + "\n")
    t0 = time.perf_counter()
    with log.open("a") as out:
        out.write(f"$ {line}\n")
        out.flush()
        proc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, check=False)
    if proc.returncode:
        raise RuntimeError(
            f"failed ({proc.returncode}) after {time.perf_counter() - t0:.0f} s: "
            f"{line}\n  see {log}"
        )


def _datakit() -> list[str]:
    return [sys.executable, "-m", "datakit"]


def run_one(
    method: str,
    seed: int,
    sc: Scale,
    data: Path,
    out: Path,
    env: dict[str, str],
    device: str,
    train_set: list[str],
    probes: Sequence[str] = DEFAULT_PROBES,
) -> dict[str, Any]:
    """Train (unless random-init or already done) and probe one (method, seed); returns its record."""
    run = out / "runs" / f"{method}-s{seed}"
    run.mkdir(parents=True, exist_ok=True)
    log, record = run / "log.txt", out / "commands.txt"
    flags = METHODS[method]
    if flags is not None:
        flags = [
            *flags,
            *schedule_flags(
                flags[flags.index("--method") + 1],
                sc,
                BASE_LR.get(method),
                own_optimizer=method in OWN_OPTIMIZER,
            ),
        ]
    t0 = time.perf_counter()
    ckpt = run / "last.pt"
    if flags is not None and not (run / "done").exists():
        if ckpt.exists():
            ckpt.unlink()  # an interrupted run: start it again from scratch
        _run(
            [
                *_datakit(),
                "train",
                "--data",
                str(data),
                "--out",
                str(run),
                *flags,
                "--arch",
                sc.arch,
                "--steps",
                str(sc.steps),
                "--batch-size",
                str(sc.batch_size),
                "--image-size",
                str(sc.image_size),
                "--workers",
                str(sc.workers),
                "--seed",
                str(seed),
                "--device",
                device,
                "--set",
                "tensorboard=false",
                "--set",
                "progress=false",
                *[a for kv in train_set for a in ("--set", kv)],
            ],
            log,
            record,
            env,
        )
        (run / "done").write_text("")
    train_s = time.perf_counter() - t0
    rec: dict[str, Any] = {"method": method, "seed": seed, "train_seconds": round(train_s, 1)}
    for probe in probes:
        spec = PROBES[probe]
        path = run / f"eval-{probe}.json"
        if not path.exists():
            src = (
                ["--random-init", "--arch", sc.arch]
                if flags is None
                else ["--checkpoint", str(ckpt)]
            )
            schedule = (
                ["--epochs", str(sc.eval_epochs)]
                if spec.protocol == "linear"
                else ["--protocol", spec.protocol]
            )
            _run(
                [
                    *_datakit(),
                    "eval",
                    "--data",
                    str(data),
                    *src,
                    "--levels",
                    spec.levels,
                    "--image-size",
                    str(sc.eval_image_size or sc.image_size),
                    *schedule,
                    "--batch-size",
                    str(sc.eval_batch_size),
                    "--workers",
                    str(sc.workers),
                    "--seed",
                    str(seed),
                    "--device",
                    device,
                    "--out",
                    str(path),
                ],
                log,
                record,
                env,
            )
        rec[probe] = json.loads(path.read_text())["miou"]
    metrics = run / "metrics.jsonl"
    if metrics.exists():
        rows = [json.loads(x) for x in metrics.read_text().splitlines() if x.strip()]
        rec["final_loss"] = rows[-1].get("loss")
        for key in ("pos_frac", "pos_frac_spatial", "matched_frac"):
            vals = [r[key] for r in rows if key in r]
            if vals:
                rec[key] = statistics.fmean(vals)
        sps = [r["samples_per_s"] for r in rows[1:] if "samples_per_s" in r]
        if sps:
            rec["samples_per_s"] = statistics.fmean(sps)
    return rec


def schedule_flags(
    method: str, sc: Scale, base_lr: float | None = None, *, own_optimizer: bool = False
) -> list[str]:
    """``--set`` flags for the scale's optimizer, lr multiplier and warmup (none at the defaults).
    Under ``sc.shared_optimizer`` (unless ``own_optimizer``) ``method`` takes SHARED_RECIPE's
    optimizer and base lr; else its own recipe's, ``base_lr`` replacing the recipe's base lr."""
    from training.config import METHOD_DEFAULTS

    out = []
    recipe = METHOD_DEFAULTS[method]["base_lr"]
    if sc.shared_optimizer and not own_optimizer:
        shared = METHOD_DEFAULTS[SHARED_RECIPE]
        if METHOD_DEFAULTS[method]["optimizer"] != shared["optimizer"]:
            out += ["--set", f"optimizer={shared['optimizer']}"]
        recipe, base_lr = shared["base_lr"], None
    if sc.lr_scale != 1.0 or (base_lr is not None and base_lr != recipe):
        out += ["--set", f"base_lr={(recipe if base_lr is None else base_lr) * sc.lr_scale:g}"]
    if sc.warmup_steps:
        out += ["--set", f"warmup_steps={sc.warmup_steps}"]
    return out


def _yes(text: str) -> bool:
    if text.lower() not in ("1", "0", "true", "false", "yes", "no"):
        raise argparse.ArgumentTypeError(f"expected yes or no, got {text!r}")
    return text.lower() in ("1", "true", "yes")


# a Scale field's command-line parser (int unless named here)
FIELD_TYPES: dict[str, Callable[[str], Any]] = {
    "size": str,
    "arch": str,
    "lr_scale": float,
    "shared_optimizer": _yes,
}


def _ms(values: list[float]) -> tuple[float, float]:
    mean = statistics.fmean(values)
    return mean, (statistics.stdev(values) if len(values) > 1 else 0.0)


def summarise(
    records: list[dict[str, Any]], methods: list[str], probes: Sequence[str] = DEFAULT_PROBES
) -> dict[str, Any]:
    """Mean/std per method and probe, and paired per-seed differences (same seed) of every method
    against random init and against PixPro, with their t statistic (n - 1 degrees of freedom). A
    (method, seed) recorded more than once (records.jsonl of a resumed run) counts once, the last."""
    by = {
        m: sorted(
            {r["seed"]: r for r in records if r["method"] == m}.values(), key=lambda r: r["seed"]
        )
        for m in methods
    }
    table: dict[str, Any] = {}
    for m, rs in by.items():
        table[m] = {
            p: dict(zip(("mean", "std"), _ms([r[p] for r in rs]), strict=True)) for p in probes
        }
        table[m]["seeds"] = [r["seed"] for r in rs]
        table[m]["per_seed"] = {p: [r[p] for r in rs] for p in probes}
    paired: dict[str, Any] = {}
    for baseline in BASELINES:
        if baseline not in by:
            continue
        base = {r["seed"]: r for r in by[baseline]}
        for m in methods:
            if m in BASELINES[: BASELINES.index(baseline) + 1]:
                continue
            for p in probes:
                diffs = [r[p] - base[r["seed"]][p] for r in by[m] if r["seed"] in base]
                if len(diffs) < 2:
                    continue
                mean, sd = _ms(diffs)
                se = sd / math.sqrt(len(diffs))
                # no spread: a nonzero mean is infinitely far from 0, a zero one undefined (0 / 0)
                no_spread = math.copysign(math.inf, mean) if mean else math.nan
                t = mean / se if se > 0 else no_spread
                paired[f"{m} - {baseline} [{p}]"] = {
                    "diffs": diffs,
                    "seeds": [r["seed"] for r in by[m] if r["seed"] in base],
                    "mean": mean,
                    "std": sd,
                    "t": t,
                }
    return {"probes": list(probes), "table": table, "paired": paired}


def markdown(summary: dict[str, Any], records: list[dict[str, Any]]) -> str:
    pct = 100.0
    probes = summary["probes"]
    lines = [
        "| method | "
        + " | ".join(f"mIoU {_title(p)} (%)" for p in probes)
        + " | positives kept | final loss |",
        "|---" * (len(probes) + 3) + "|",
    ]
    for m, row in summary["table"].items():
        rs = [r for r in records if r["method"] == m]
        kept = [r["pos_frac"] / r["pos_frac_spatial"] for r in rs if r.get("pos_frac_spatial")]
        loss = [r["final_loss"] for r in rs if r.get("final_loss") is not None]
        cells = [f"{pct * row[p]['mean']:.1f} ± {pct * row[p]['std']:.1f}" for p in probes]
        lines.append(
            f"| {m} | {' | '.join(cells)} | "
            f"{f'{statistics.fmean(kept):.2f}' if kept else '-'} | "
            f"{f'{statistics.fmean(loss):.3f}' if loss else '-'} |"
        )
    lines += [
        "",
        "| paired per-seed difference | diffs (mIoU points) | mean ± std | t (n-1 dof) |",
        "|---|---|---|---|",
    ]
    for name, d in summary["paired"].items():
        diffs = ", ".join(f"{pct * x:+.1f}" for x in d["diffs"])
        lines.append(
            f"| {name} | {diffs} | {pct * d['mean']:+.1f} ± {pct * d['std']:.1f} | {d['t']:.2f} |"
        )
    return "\n".join(lines)


def _title(probe: str) -> str:
    """'c3-c5' -> 'C3-C5 probe', 'ft-c5' -> 'C5 fine-tune'."""
    levels = probe.removeprefix("ft-").upper()
    return f"{levels} {'probe' if PROBES[probe].protocol == 'linear' else 'fine-tune'}"


def plot(summary: dict[str, Any], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods, probes = list(summary["table"]), summary["probes"]
    fig, ax = plt.subplots(figsize=(max(8.0, 1.25 * len(methods)), 4), dpi=120)
    width = 0.8 / len(probes)
    for i, p in enumerate(probes):
        xs = [k + (i - (len(probes) - 1) / 2) * width for k in range(len(methods))]
        means = [100 * summary["table"][m][p]["mean"] for m in methods]
        stds = [100 * summary["table"][m][p]["std"] for m in methods]
        ax.bar(xs, means, width * 0.9, yerr=stds, capsize=3, label=_title(p), alpha=0.8)
        for x, m in zip(xs, methods, strict=True):
            seeds = [100 * v for v in summary["table"][m]["per_seed"][p]]
            ax.scatter([x] * len(seeds), seeds, s=8, color="k", zorder=3)
    ax.set_xticks(range(len(methods)), methods)
    ax.set_ylabel("val mIoU (%)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    lo = min(100 * min(r["per_seed"][p]) for r in summary["table"].values() for p in probes)
    ax.set_ylim(max(0.0, lo - 10), None)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("bench/out/compare"))
    ap.add_argument("--preset", choices=sorted(PRESETS), default="gpu")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--methods", nargs="+", choices=list(METHODS), default=DEFAULT_METHODS)
    ap.add_argument(
        "--probes",
        nargs="+",
        choices=list(PROBES),
        default=list(DEFAULT_PROBES),
        help="c5 / c3-c5: linear probes; ft-c5 / ft-c3-c5: `datakit eval --protocol finetune`.",
    )
    ap.add_argument("--jobs", type=int, default=1, help="(method, seed) runs at a time")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--plot", type=Path, default=None, help="[OUT/results.png]")
    ap.add_argument(
        "--train-set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="Extra `datakit train --set` for every method (repeatable).",
    )
    ap.add_argument(
        "--from-records",
        type=Path,
        default=None,
        help="Only rebuild table, summary and plot from a records.jsonl.",
    )
    for field in Scale.__dataclass_fields__:
        ap.add_argument(
            f"--{field.replace('_', '-')}",
            default=None,
            type=FIELD_TYPES.get(field, int),
        )
    args = ap.parse_args(argv)
    sc = replace(
        PRESETS[args.preset],
        **{k: getattr(args, k) for k in Scale.__dataclass_fields__ if getattr(args, k) is not None},
    )
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    if args.from_records:
        recorded = [json.loads(x) for x in args.from_records.read_text().splitlines() if x.strip()]
        seeds = sorted({r["seed"] for r in recorded})
        report(
            recorded,
            [m for m in METHODS if any(r["method"] == m for r in recorded)],
            [p for p in PROBES if all(p in r for r in recorded)],
            sc,
            seeds,
            out,
            args.plot,
            0.0,
        )
        return 0
    threads = max(1, (os.cpu_count() or 1) // max(1, args.jobs * (sc.workers + 1)))
    env = {
        **os.environ,
        "NO_ALBUMENTATIONS_UPDATE": "1",
        "OMP_NUM_THREADS": str(threads),
        "PYTHONUNBUFFERED": "1",
    }
    t0 = time.perf_counter()
    data = out / "data"
    if not (data / "_info.json").exists():
        _run(
            [
                *_datakit(),
                "convert",
                "synthetic",
                str(data),
                "--num",
                str(sc.num),
                "--val",
                str(sc.val),
                "--size",
                sc.size,
                "--seed",
                "0",
                "--shard-size",
                "64",
                "--workers",
                str(max(1, min(16, os.cpu_count() or 1))),
                "--no-progress",
                "--overwrite",
            ],
            out / "convert.log",
            out / "commands.txt",
            env,
        )
    print(f"data ready in {time.perf_counter() - t0:.0f} s; scale {asdict(sc)}", flush=True)
    jobs = [(m, s) for s in args.seeds for m in args.methods]
    records: list[dict[str, Any]] = []
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        futures = {
            pool.submit(
                run_one, m, s, sc, data, out, env, args.device, args.train_set, args.probes
            ): (m, s)
            for m, s in jobs
        }
        for fut in as_completed(futures):
            m, s = futures[fut]
            try:
                rec = fut.result()
            except Exception as exc:  # report and go on: one failed run must not hide the others
                print(f"FAILED {m} seed {s}: {exc}", flush=True)
                continue
            records.append(rec)
            with (out / "records.jsonl").open("a") as f:
                f.write(json.dumps(rec) + "\n")
            scores = "  ".join(f"{_title(p)} {100 * rec[p]:.1f}" for p in args.probes)
            print(
                f"{m:>16} seed {s}: {scores}  "
                f"(train {rec['train_seconds']:.0f} s, {time.perf_counter() - t0:.0f} s total)",
                flush=True,
            )
    methods = [m for m in args.methods if any(r["method"] == m for r in records)]
    report(records, methods, args.probes, sc, args.seeds, out, args.plot, time.perf_counter() - t0)
    print(f"total {time.perf_counter() - t0:.0f} s -> {out}")
    return 0 if len(records) == len(jobs) else 1


def report(
    records: list[dict[str, Any]],
    methods: list[str],
    probes: Sequence[str],
    sc: Scale,
    seeds: list[int],
    out: Path,
    plot_path: Path | None,
    seconds: float,
) -> None:
    """Write summary.json, table.md and the plot; print the table."""
    summary = summarise(records, methods, probes)
    summary.update(scale=asdict(sc), seeds=seeds, seconds=round(seconds, 1), records=records)
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    table = markdown(summary, records)
    (out / "table.md").write_text(table + "\n")
    print(table)
    title = (
        f"synthetic {sc.size}, {sc.num} train / {sc.val} val; {sc.arch}, {sc.steps} steps x "
        f"{sc.batch_size} at {sc.image_size} px"
        f"{f', recipe lr x{sc.lr_scale:g}' if sc.lr_scale != 1 else ''}; seeds {seeds}"
    )
    plot(summary, plot_path or out / "results.png", title)


if __name__ == "__main__":
    sys.exit(main())
