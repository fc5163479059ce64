"""``datakit train`` end to end on synthetic shards (CPU): every method, config layering, exact resume
after a crash, DDP under torchrun (gloo) with disjoint shards, streaming from the S3 test server."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from click.testing import CliRunner

from datakit.cli import main
from datakit.errors import UsageError
from training import checkpoint
from training.config import TrainConfig, from_layers, resolve
from training.loop import queue_fill_note

REPO = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


# Small enough for 2 CPU cores: ResNet-18, 64 px views, batch 4, narrow heads.
FAST = [
    "--arch", "resnet18", "--image-size", "64", "--batch-size", "4", "--workers", "0",
    "--set", "proj_hidden=256", "--set", "head_hidden=256", "--set", "queue_size=64",
    "--no-progress",
]  # fmt: skip


def train(*args: str) -> Any:
    return CliRunner().invoke(main, ["train", *args], catch_exceptions=False)


def records(run: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize(
    "method,extra",
    [("pixpro", []), ("pixpro-depth", ["--multiscale"]), ("pixcon", ["--set", "matching=coord"])],
)
def test_train_every_method_20_steps(
    synthetic_dataset: Path, tmp_path: Path, method: str, extra: list[str]
) -> None:
    run = tmp_path / "run"
    res = train(
        "--data", str(synthetic_dataset), "--out", str(run), "--method", method, "--steps", "20",
        *FAST, "--set", "log_every=5", "--set", "ckpt_every=10", *extra,
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    state = torch.load(run / "last.pt", weights_only=True)
    assert state["step"] == 20 and state["method"] == method and state["arch"] == "resnet18"
    assert any(k.startswith("layer4.") for k in state["backbone"])
    assert not any(k.startswith("fc.") for k in state["backbone"])
    recs = records(run)
    assert [r["step"] for r in recs] == [5, 10, 15, 20]
    for r in recs:
        assert {"step", "loss", "lr", "samples_per_s", "data_wait"} <= set(r)
        assert torch.isfinite(torch.tensor(r["loss"]))
        assert 0 <= r["data_wait"] <= 1
    if method.startswith("pixpro"):
        assert all(0 <= r["pos_frac"] <= r["pos_frac_spatial"] <= 1 for r in recs)
    if method == "pixpro-depth":
        assert any(r["pos_frac"] < r["pos_frac_spatial"] for r in recs)  # the filter acts
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["method"] == method and saved["optimizer"] in ("lars", "sgd")
    assert saved["progress"] is False  # --no-progress
    assert saved["lr"] is not None and saved["warmup_steps"] is not None  # resolved
    assert list((run / "tb").glob("events.out.tfevents.*"))
    # SPEC 5's schedules, by hand, at the 0-based step k = logged step - 1: linear warmup to lr,
    # then cosine to 0 at the last step; m = 1 - (1 - ema)(cos(pi k / K) + 1) / 2
    lr, warmup, total, ema = saved["lr"], saved["warmup_steps"], saved["steps"], saved["ema"]
    assert 0 < warmup < total == 20

    def lr_at(k: int) -> float:
        if k < warmup:
            return lr * (k + 1) / warmup
        return lr * 0.5 * (1 + math.cos(math.pi * (k - warmup) / (total - warmup)))

    for r in recs:
        k = r["step"] - 1
        assert r["lr"] == pytest.approx(lr_at(k), rel=1e-6), r
        assert r["momentum"] == pytest.approx(
            1 - (1 - ema) * (math.cos(math.pi * k / total) + 1) / 2, rel=1e-9
        ), r
    # the optimiser itself ran the last step at the scheduled lr, not only the log
    groups = state["optimizer"]["param_groups"]
    assert [g["lr"] for g in groups] == pytest.approx([lr_at(total - 1)] * len(groups), rel=1e-6)


def test_pixcon_warns_when_its_queues_fill_late(synthetic_dataset: Path, tmp_path: Path) -> None:
    # batch 4 pushes 8 keys a step: 64 keys fill after 8 steps, 128 after 16 (over half of 20)
    assert (
        queue_fill_note(TrainConfig(method="pixcon", batch_size=4, steps=20, queue_size=64)) is None
    )
    assert (
        queue_fill_note(TrainConfig(method="pixpro", batch_size=4, steps=2, queue_size=64)) is None
    )
    note = queue_fill_note(TrainConfig(method="pixcon", batch_size=4, steps=20, queue_size=128))
    assert note is not None and "fill only after 16 of its 20 steps (8 keys a step)" in note
    note = queue_fill_note(TrainConfig(method="pixcon", batch_size=4, steps=20, queue_size=4096))
    assert note is not None and "never fill in this run of" in note
    run = tmp_path / "run"
    res = train(
        "--data", str(synthetic_dataset), "--out", str(run), "--method", "pixcon", "--steps", "3",
        *FAST, "--set", "queue_size=128",
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    assert (
        "datakit train: warning: the 128-key negative queues never fill in this run of"
        in res.output
    )


def test_config_layers_and_errors(synthetic_dataset: Path, tmp_path: Path) -> None:
    cfg_file = tmp_path / "run.yaml"
    cfg_file.write_text("method: pixcon\nsteps: 7\nimage_size: 96\ndepth_mode: log\n")
    cfg = from_layers(
        config_file=str(cfg_file),
        flags={"data": "d", "out": "o", "steps": 9, "arch": None},
        overrides=["tau=0.1"],
    )
    assert (cfg.method, cfg.steps, cfg.image_size, cfg.depth_mode, cfg.tau, cfg.arch) == (
        "pixcon", 9, 96, "log", 0.1, "resnet50"
    )  # fmt: skip
    resolved = resolve(cfg, num_samples=640)
    assert resolved.optimizer == "sgd" and resolved.lr == pytest.approx(0.4 * 64 / 256)
    assert resolved.warmup_steps == min(5 * 640 // 64, 9 // 2)
    # PyYAML reads 1e-4 (no dot) as a string: still the number the user wrote
    cfg_file.write_text("weight_decay: 1e-4\nlr: 2E-3\n")
    cfg = from_layers(
        config_file=str(cfg_file), flags={"data": "d", "out": "o"}, overrides=["base_lr=5e-1"]
    )
    assert (cfg.weight_decay, cfg.lr, cfg.base_lr) == (1e-4, 2e-3, 0.5)
    with pytest.raises(UsageError, match="expected a number, got '1e-4x'"):
        from_layers(flags={"data": "d", "out": "o"}, overrides=["lr=1e-4x"])

    runner = CliRunner()
    bad = tmp_path / "bad.yaml"
    bad.write_text("stepz: 3\n")
    res = runner.invoke(main, ["train", "--data", str(synthetic_dataset), "--out", str(tmp_path / "r"),
                               "--config", str(bad)])  # fmt: skip
    assert res.exit_code != 0 and "unknown config key 'stepz'" in res.output
    assert "Traceback" not in res.output
    res = runner.invoke(main, ["train", "--data", str(synthetic_dataset), "--out", str(tmp_path / "r"),
                               "--set", "depth_mode=median"])  # fmt: skip
    assert res.exit_code != 0 and "depth_mode" in res.output
    res = runner.invoke(main, ["train", "--data", str(synthetic_dataset), "--out", str(tmp_path / "r"),
                               *FAST, "--batch-size", "3", "--set", "accum_steps=2"])  # fmt: skip
    assert res.exit_code != 0 and "not divisible" in res.output
    # PixCon's heads batch-normalise: one image a pass cannot be normalised
    res = runner.invoke(main, ["train", "--data", str(synthetic_dataset), "--out", str(tmp_path / "r"),
                               *FAST, "--method", "pixcon", "--batch-size", "2",
                               "--set", "accum_steps=2"])  # fmt: skip
    assert res.exit_code != 0 and "batch-normalise over at least 2" in res.output
    res = runner.invoke(
        main, ["train", "--data", str(tmp_path / "nothing"), "--out", str(tmp_path / "r")]
    )
    assert res.exit_code != 0 and "Traceback" not in res.output


def test_credentials_in_the_data_url_are_not_written_to_the_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """storage.md: credentials in a URL are taken out of it as soon as it is parsed, so the URLs
    recorded are clean: config.yaml (and last.pt's config) must not hold them."""
    import datakit.urls
    from datakit.urls import url_credentials

    monkeypatch.setattr(datakit.urls, "_CREDENTIALS", {})  # what this test registers stays here

    url = "s3://KEYID:s3cr3t-value@bucket-cred/ds"
    out = str(tmp_path / "r")
    for cfg in (
        from_layers(flags={"data": url, "out": out}),
        from_layers(flags={"out": out}, overrides=[f"data={url}"]),
    ):
        assert cfg.data == "s3://bucket-cred/ds"
        assert url_credentials(cfg.data) == ("KEYID", "s3cr3t-value")


def test_bad_values_are_refused_in_one_line(synthetic_dataset: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    base = ["train", "--data", str(synthetic_dataset), "--out", str(tmp_path / "r")]
    for extra, msg in [
        (["--lr", "-1"], "config lr: must be positive"),
        (["--set", "base_lr=0"], "config base_lr: must be positive"),
    ]:
        res = runner.invoke(main, [*base, *extra])
        assert res.exit_code == 2 and msg in res.output, res.output
    bad = tmp_path / "bad.yaml"
    bad.write_text("steps: [1\n")
    res = runner.invoke(main, [*base, "--config", str(bad)])
    assert res.exit_code == 2 and "not valid YAML" in res.output
    assert len(res.output.strip().splitlines()) == 1, res.output
    assert not (tmp_path / "r").exists()
    for override, msg in [
        ("momentum=-1", "config momentum: must be in [0, 1)"),  # torch's SGD: a traceback
        ("warmup_steps=-1", "config warmup_steps: must be >= 0"),
        ("weight_decay=-0.0001", "config weight_decay: must be >= 0"),
        ("ema=1.5", "config ema: must be in [0, 1]"),
        ("tau=0", "config tau: must be positive"),
        ("proj_dim=0", "config proj_dim: must be at least 1"),
        ("epoch_samples=0", "config epoch_samples: must be at least 1"),
        ("seed=-1", "config seed: must be >= 0"),  # numpy's traceback once training started
        ("level_weights=[1, -1, 1]", "config level_weights: must be >= 0"),  # a loss to maximise
        ("level_weights=[0, 0, 0]", "and not all 0"),  # 0/0 in the weighted mean
        ("level_weights=[1, 1, 0]", "C5's weight must be positive without multiscale"),
    ]:
        with pytest.raises(UsageError, match=re.escape(msg)):
            from_layers(flags={"data": "d", "out": str(tmp_path / "r")}, overrides=[override])


class Crash(Exception):
    pass


def test_killed_run_resumes_to_the_same_parameters(
    synthetic_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    common = [
        "--data", str(synthetic_dataset), "--method", "pixpro-depth", "--steps", "6", "--deterministic",
        *FAST, "--set", "log_every=1", "--set", "ckpt_every=3", "--set", "accum_steps=2",
    ]  # fmt: skip
    full = tmp_path / "full"
    assert train(*common, "--out", str(full)).exit_code == 0

    # The second run dies during step 5, after its checkpoint at step 3 (and a log line at 4).
    from training import metrics

    original = metrics.MetricsLog.log

    def crash_at_5(self: metrics.MetricsLog, step: int, values: dict[str, float]) -> None:
        if step == 5:
            raise Crash
        original(self, step, values)

    part = tmp_path / "part"
    with monkeypatch.context() as mp:
        mp.setattr(metrics.MetricsLog, "log", crash_at_5)
        with pytest.raises(Crash):
            train(*common, "--out", str(part))
    assert torch.load(part / "last.pt", weights_only=True)["step"] == 3
    res = train("--out", str(part), "--resume")  # data, method, ... come from RUN/config.yaml
    assert res.exit_code == 0, res.output

    a = torch.load(full / "last.pt", weights_only=True)
    b = torch.load(part / "last.pt", weights_only=True)
    assert b["step"] == 6
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k
    assert [r["step"] for r in records(part)] == [1, 2, 3, 4, 5, 6]
    assert [r["loss"] for r in records(part)] == [r["loss"] for r in records(full)]


def test_resume_that_does_not_fit_is_refused_and_keeps_the_run(
    synthetic_dataset: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    args = ["--data", str(synthetic_dataset), "--out", str(run), *FAST]
    assert train(*args, "--steps", "1").exit_code == 0
    saved = (run / "config.yaml").read_text()
    runner = CliRunner()
    for extra, msg in [
        (["--multiscale"], "was trained with multiscale False, not True"),  # was a traceback
        (["--set", "proj_dim=64"], "was trained with proj_dim 256, not 64"),
        (["--set", "optimizer=adamw"], "was trained with optimizer 'lars', not 'adamw'"),
    ]:
        res = runner.invoke(main, ["train", "--out", str(run), "--resume", "--steps", "2", *extra])
        assert res.exit_code == 2 and msg in res.output, res.output
        assert (run / "config.yaml").read_text() == saved  # the run still resumes as it was
    # another per-rank batch: the checkpoint's position counts batches of 4, so the next epoch
    res = train("--out", str(run), "--resume", "--steps", "2", "--batch-size", "8")
    assert res.exit_code == 0, res.output
    assert checkpoint.load(run / "last.pt")["data"] == [{"epoch": 1, "batch": 1}]


def test_a_pixcon_checkpoint_from_before_head_bn_resumes_only_without_bn(
    synthetic_dataset: Path, tmp_path: Path
) -> None:
    """Checkpoints written before ``head_bn`` existed have no such key; their PixCon heads had no
    BatchNorm, so they resume with head_bn=false and are refused (one line) with the BN default."""
    run = tmp_path / "run"
    args = ["--data", str(synthetic_dataset), "--out", str(run), *FAST, "--method", "pixcon"]
    assert train(*args, "--steps", "1", "--set", "head_bn=false").exit_code == 0
    state = checkpoint.load(run / "last.pt")
    del state["config"]["head_bn"]
    checkpoint.save(run / "last.pt", state)
    saved = yaml.safe_load((run / "config.yaml").read_text())  # a resume starts from it
    del saved["head_bn"]
    (run / "config.yaml").write_text(yaml.safe_dump(saved))
    res = CliRunner().invoke(main, ["train", "--out", str(run), "--resume", "--steps", "2"])
    assert res.exit_code == 2 and "was trained with head_bn False, not True" in res.output
    res = train("--out", str(run), "--resume", "--steps", "2", "--set", "head_bn=false")
    assert res.exit_code == 0, res.output
    assert checkpoint.load(run / "last.pt")["step"] == 2
    assert "pixcon resnet18: 2 steps (resumed at step 1), loss" in res.output  # says what was kept


def test_resume_of_a_finished_run_trains_nothing_and_says_so(
    synthetic_dataset: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    assert (
        train("--data", str(synthetic_dataset), "--out", str(run), *FAST, "--steps", "1").exit_code
        == 0
    )
    before = {p.name: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    res = train("--out", str(run), "--resume")
    assert res.exit_code == 0, res.output
    assert "is already at step 1 of 1; nothing to train" in res.output and "nan" not in res.output
    assert {p.name: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before


def test_resume_uses_this_runs_optimiser_settings(synthetic_dataset: Path, tmp_path: Path) -> None:
    """The checkpoint's optimiser state carries its hyperparameters; a resume with another weight
    decay or momentum trains with the new ones (they were silently the old ones)."""
    run = tmp_path / "run"
    args = ["--data", str(synthetic_dataset), "--out", str(run), *FAST]
    assert train(*args, "--steps", "1").exit_code == 0
    old = checkpoint.load(run / "last.pt")["optimizer"]["param_groups"]
    res = train(
        "--out", str(run), "--resume", "--steps", "2", "--set", "weight_decay=0.001",
        "--set", "momentum=0.5",
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    state = checkpoint.load(run / "last.pt")["optimizer"]
    assert [g["weight_decay"] for g in old] == [1e-5, 0.0]
    assert [g["weight_decay"] for g in state["param_groups"]] == [0.001, 0.0]
    assert {g["momentum"] for g in state["param_groups"]} == {0.5}
    assert state["state"]  # the momentum buffers came with the checkpoint


def test_checkpoint_reaches_the_disk_before_its_rename(
    tmp_path: Path, disk_events: list[str]
) -> None:
    checkpoint.save(tmp_path / "last.pt", {"x": torch.zeros(2)})
    tmp = f".last.pt.tmp-{os.getpid()}"
    assert disk_events == [f"fsync {tmp}", f"replace {tmp}"]


def test_checkpoint_holds_the_optimiser_state_on_the_cpu() -> None:
    """A GPU run's momentum buffers must not make last.pt unloadable without a GPU."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from training.config import resolve
    from training.methods import build_method
    from training.optim import build_optimizer

    cfg = resolve(
        TrainConfig(data="-", out="-", arch="resnet18", proj_hidden=16, steps=1, batch_size=4),
        num_samples=4,
    )
    method = build_method(cfg)
    optimizer = build_optimizer(method, cfg)
    with FakeTensorMode():  # a CUDA tensor without a GPU
        on_gpu = torch.zeros(3, device="cuda")
    optimizer.state[next(method.parameters())]["momentum_buffer"] = on_gpu
    state = checkpoint.build_state(cfg, method, optimizer, 1, [{"epoch": 0, "batch": 1}])
    buffers = [s["momentum_buffer"] for s in state["optimizer"]["state"].values()]
    assert buffers and all(b.device.type == "cpu" for b in buffers)


def test_existing_run_needs_resume(synthetic_dataset: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    args = ["--data", str(synthetic_dataset), "--out", str(run), "--steps", "1", *FAST]
    assert train(*args).exit_code == 0
    res = CliRunner().invoke(main, ["train", *args])
    assert res.exit_code != 0 and "--resume" in res.output


def test_diverging_run_stops_with_one_line_and_keeps_no_nan_checkpoint(
    synthetic_dataset: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    res = train(
        "--data", str(synthetic_dataset), "--out", str(run), "--steps", "20", *FAST,
        "--set", "optimizer=sgd", "--lr", "1e30", "--set", "warmup_steps=0", "--set", "log_every=1",
    )  # fmt: skip
    assert res.exit_code == 1
    assert "loss is nan" in res.output and "at step" in res.output
    assert not (run / "last.pt").exists()
    # checkpoints every step, no loss logged before the end: the weights check stops it instead
    run = tmp_path / "run2"
    res = train(
        "--data", str(synthetic_dataset), "--out", str(run), "--steps", "20", *FAST,
        "--set", "optimizer=sgd", "--lr", "1e30", "--set", "warmup_steps=0",
        "--set", "log_every=100", "--set", "ckpt_every=1",
    )  # fmt: skip
    assert res.exit_code == 1 and "weights are not finite after step" in res.output
    if (run / "last.pt").exists():
        state = torch.load(run / "last.pt", map_location="cpu", weights_only=True)
        assert all(
            torch.isfinite(t).all() for t in state["model"].values() if t.is_floating_point()
        )


def test_abs_depth_filter_refuses_inverse_depth(synthetic_dataset: Path, tmp_path: Path) -> None:
    data = tmp_path / "inverse"
    shutil.copytree(synthetic_dataset, data)
    info = json.loads((data / "_info.json").read_text())
    info["depth"]["unit"] = "1/m"
    (data / "_info.json").write_text(json.dumps(info))
    args = ["--data", str(data), "--out", str(tmp_path / "run"), "--method", "pixpro-depth",
            "--steps", "1", *FAST]  # fmt: skip
    res = train(*args, "--set", "depth_mode=abs")
    assert res.exit_code == 2 and "inverse depth (1/m)" in res.output
    assert train(*args, "--set", "depth_mode=log").exit_code == 0


DDP_SCRIPT = """
import json, os, sys
import datakit.loader
from datakit.cli import main

seen = []
original = datakit.loader._CpuViews.__call__

def record(self, sample):
    seen.append(sample["__url__"])
    return original(self, sample)

datakit.loader._CpuViews.__call__ = record
try:
    main(sys.argv[1:], standalone_mode=False)
finally:
    out = os.path.join(os.environ["TRACE_DIR"], f"rank{os.environ['RANK']}.json")
    with open(out, "w") as f:
        json.dump(sorted(set(seen)), f)
"""


def torchrun_train(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``datakit train ARGS`` on 2 CPU ranks under torchrun, each rank writing the shards it read
    to tmp_path/rankR.json."""
    script = tmp_path / "ddp_train.py"
    script.write_text(textwrap.dedent(DDP_SCRIPT))
    env = {
        **os.environ,
        "TRACE_DIR": str(tmp_path),
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": str(REPO),
    }
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        str(script), "train", *args, "--device", "cpu", *FAST, "--set", "log_every=1",
    ]  # fmt: skip
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


def test_torchrun_two_ranks_read_disjoint_shards(synthetic_dataset: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    proc = torchrun_train(
        tmp_path, "--data", str(synthetic_dataset), "--out", str(run), "--steps", "5"
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    shards = [set(json.loads((tmp_path / f"rank{r}.json").read_text())) for r in (0, 1)]
    assert shards[0] and shards[1] and not shards[0] & shards[1]
    state = checkpoint.load(run / "last.pt")
    assert state["step"] == 5 and len(state["data"]) == 2
    assert [r["step"] for r in records(run)] == [1, 2, 3, 4, 5]
    assert all(r["samples_per_s"] > 0 for r in records(run))
    assert proc.stdout.count(": 5 steps, loss ") == 1, proc.stdout  # rank 0's summary only


def test_train_streams_from_s3(
    s3_server: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for k, v in s3_server.env().items():
        monkeypatch.setenv(k, v)
    url = f"s3://{s3_server.bucket}/train-syn"
    res = CliRunner().invoke(
        main,
        [
            "convert",
            "synthetic",
            url,
            "--num",
            "8",
            "--size",
            "96x72",
            "--shard-size",
            "4",
            "--no-progress",
        ],
    )
    assert res.exit_code == 0, res.output
    run = tmp_path / "run"
    res = train("--data", url, "--out", str(run), "--steps", "3", *FAST, "--set", "log_every=1")
    assert res.exit_code == 0, res.output
    assert checkpoint.load(run / "last.pt")["config"]["data"] == url
    assert len(records(run)) == 3


def test_train_config_defaults_are_valid() -> None:
    cfg = TrainConfig(data="d", out="o")
    assert cfg.levels == ("c5",) and cfg.image_size == 224 and cfg.method == "pixpro"


@pytest.mark.gpu
@pytest.mark.parametrize(
    "method,extra", [("pixpro-depth", ["--multiscale", "--compile"]), ("pixcon", [])]
)
def test_train_on_cuda(
    synthetic_dataset: Path, tmp_path: Path, method: str, extra: list[str]
) -> None:
    """bf16 autocast, channels_last, GPU views (nvJPEG), optionally torch.compile."""
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    run = tmp_path / "run"
    res = train(
        "--data", str(synthetic_dataset), "--out", str(run), "--method", method, "--steps", "6",
        "--device", "cuda", *FAST, "--set", "log_every=1", *extra,
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    recs = records(run)
    assert len(recs) == 6 and all(torch.isfinite(torch.tensor(r["loss"])) for r in recs)
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["precision"] == "auto" and checkpoint.load(run / "last.pt")["step"] == 6


def test_prefetching_stream_gives_the_same_batches_and_positions(synthetic_dataset: Path) -> None:
    from datakit.reader import open_dataset
    from training.data import BatchStream

    cfg = TrainConfig(data=str(synthetic_dataset), out="-", image_size=64, workers=0)
    seen = []
    for prefetch in (0, 2):
        stream = BatchStream(open_dataset(cfg.data), cfg, per_rank=4, position={"epoch": 0, "batch": 3},
                             prefetch=prefetch)  # fmt: skip
        try:
            seen.append(
                [(next(stream)["view1"].sum().item(), dict(stream.position)) for _ in range(3)]
            )
        finally:
            stream.close()
    assert seen[0] == seen[1]
    assert [p for _, p in seen[0]] == [
        {"epoch": 0, "batch": 4},
        {"epoch": 1, "batch": 1},
        {"epoch": 1, "batch": 2},
    ]


def test_skipped_shards_and_samples_are_counted_in_metrics_and_summary(
    synthetic_dataset: Path, tmp_path: Path
) -> None:
    """A shard cut short and a sample with a garbled JPEG, read by 2 loader workers: with
    --on-error skip the run goes on, and metrics.jsonl and the summary count each skip once (7
    batches of 2 from the 14 good samples: the run's 7 steps read the whole epoch); without it the
    run stops with one line naming the shard."""
    from tests.conftest import with_bad_units

    shard = with_bad_units(synthetic_dataset, tmp_path / "bad")
    args = [
        "--data", str(tmp_path / "bad"), "--steps", "7", *FAST, "--batch-size", "2",
        "--workers", "2", "--set", "log_every=1",
    ]  # fmt: skip
    run = tmp_path / "run"
    res = train(*args, "--out", str(run), "--on-error", "skip")
    assert res.exit_code == 0, res.output
    recs = records(run)
    assert [r["step"] for r in recs] == list(range(1, 8))
    totals = [(r["skipped_shards"], r["skipped_samples"]) for r in recs]
    assert totals == sorted(totals) and totals[-1] == (1, 1), totals  # running totals
    summary = res.stdout.strip().splitlines()[-1]
    assert summary.endswith("; skipped 1 shard, 1 sample (see the log lines above)"), summary
    assert checkpoint.load(run / "last.pt")["skipped"] == {"shards": 1, "samples": 1}
    # a resumed run goes on counting from the checkpoint's total (one more epoch: 2 of each)
    res = train("--out", str(run), "--resume", "--steps", "14")
    assert res.exit_code == 0, res.output
    assert (records(run)[-1]["skipped_shards"], records(run)[-1]["skipped_samples"]) == (2, 2)
    assert "skipped 2 shards, 2 samples" in res.stdout

    res = CliRunner().invoke(main, ["train", *args, "--out", str(tmp_path / "strict")])
    assert res.exit_code == 1 and "Traceback" not in res.output, res.output
    assert res.output.strip().splitlines()[-1].startswith(f"Error: {shard}: "), res.output


def test_torchrun_sums_the_skips_of_both_ranks(synthetic_dataset: Path, tmp_path: Path) -> None:
    """The bad shard (a garbled sample, cut short) goes to rank 1 (seed 0): rank 0's metrics and
    summary still count its skips. 3 steps of 2 a rank read that rank's 6 good samples whole."""
    from tests.conftest import with_bad_units

    shard = with_bad_units(synthetic_dataset, tmp_path / "bad")
    run = tmp_path / "run"
    proc = torchrun_train(
        tmp_path, "--data", str(tmp_path / "bad"), "--out", str(run), "--steps", "3",
        "--seed", "0", "--on-error", "skip",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert str(shard) in json.loads((tmp_path / "rank1.json").read_text())
    last = records(run)[-1]
    assert (last["skipped_shards"], last["skipped_samples"]) == (1, 1), last
    assert proc.stdout.count("; skipped 1 shard, 1 sample (see the log lines above)") == 1


def run_train(tmp_path: Path, run: Path, *args: str, **popen: Any) -> subprocess.Popen[str]:
    """``datakit train`` of 1 step in a subprocess, then its checkpoint."""
    return subprocess.Popen(
        [sys.executable, "-m", "datakit", "train", "--data", str(tmp_path / "ds"), "--out",
         str(run), "--steps", "1", *FAST, "--set", "ckpt_every=1", "--set", "log_every=1", *args],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"}, **popen,
    )  # fmt: skip


@pytest.mark.parametrize(
    "failed,limit,left",
    [("last.pt", 8 << 20, ["config.yaml", "metrics.jsonl", "tb"]), ("config.yaml", 512, [])],
)
def test_a_failed_write_is_one_line_naming_it_and_leaves_no_temporary(
    tmp_path: Path, failed: str, limit: int, left: list[str]
) -> None:
    """A checkpoint (or config.yaml) cut short by a full disk, here a file-size limit, is one error
    line naming it; no half file, no temporary."""
    import resource
    import signal

    from tests.conftest import convert_synthetic

    convert_synthetic(tmp_path / "ds", num=8, size=(64, 48))

    def limited() -> None:  # writes past the limit fail with EFBIG, not a SIGXFSZ kill
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    run = tmp_path / "run"
    proc = run_train(tmp_path, run, preexec_fn=limited)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 1, err
    assert err.strip().splitlines() == [
        f"Error: {run / failed}: cannot be written (File too large)"
    ], err
    assert sorted(p.name for p in run.iterdir()) == left


def test_sigterm_while_a_checkpoint_is_written_leaves_no_temporary(tmp_path: Path) -> None:
    import signal
    import time

    from tests.conftest import convert_synthetic

    convert_synthetic(tmp_path / "ds", num=8, size=(64, 48))
    run = tmp_path / "run"
    proc = run_train(tmp_path, run)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if run.is_dir() and any(p.name.startswith(".last.pt.tmp") for p in run.iterdir()):
                break
            time.sleep(0.002)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 143, err
    assert err.strip().splitlines()[-1] == "Terminated; the same command with --resume continues"
    assert not [p.name for p in run.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("error", [OSError(27, "File too large"), KeyboardInterrupt()])
def test_a_checkpoint_write_cut_short_raises_its_cause_and_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, error: BaseException
) -> None:
    """torch.save wraps what a file's write raised in a RuntimeError ('unexpected pos'): a full
    disk must still be named and a Ctrl-C stay a Ctrl-C."""
    import builtins

    class Failing:
        def __init__(self, f: Any) -> None:
            self.f, self.n = f, 0

        def write(self, b: Any) -> int:
            self.n += len(b)
            if self.n > 4096:
                raise error
            return self.f.write(b)

        def __getattr__(self, name: str) -> Any:
            return getattr(self.f, name)

        def __enter__(self) -> Any:
            return self

        def __exit__(self, *exc: object) -> None:
            self.f.close()

    def failing_open(*args: Any) -> Failing:
        return Failing(builtins.open(*args))  # noqa: SIM115 - closed by Failing.__exit__

    monkeypatch.setattr(checkpoint, "open", failing_open, raising=False)
    with pytest.raises(type(error)) as raised:
        checkpoint.save(tmp_path / "last.pt", {"x": torch.zeros(10_000)})
    if isinstance(error, OSError):
        assert str(raised.value) == (
            f"[Errno 27] cannot be written (File too large): '{tmp_path / 'last.pt'}'"
        )
    assert list(tmp_path.iterdir()) == []
