"""The training loop behind ``datakit train``.

One process per device; under ``torchrun`` the processes form a DDP group (NCCL on CUDA, gloo on
CPU) and each reads its own shards. ``cfg.batch_size`` is the global batch of one optimiser step:
each rank's loader batch is ``batch_size / (world_size * accum_steps)``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from datakit.errors import DatakitError, UsageError
from datakit.skips import Skipped
from training import checkpoint
from training.config import TrainConfig, dump_yaml, resolve
from training.data import BatchStream, split_size
from training.methods import MomentumMethod, StepOutput, build_method, momentum_at
from training.metrics import MetricsLog
from training.optim import build_optimizer, lr_at

CONFIG_NAME = "config.yaml"


class TrainingDiverged(DatakitError):
    """The loss became NaN or infinite: the run stops instead of training on NaN weights."""


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


@dataclass(frozen=True)
class TrainResult:
    run: Path
    step: int
    loss: float
    checkpoint: Path
    finished_before: bool = False  # a --resume of a run already at its last step: nothing trained
    skipped: Skipped = Skipped()  # shards and samples skipped over the run (all ranks, resumes)
    start_step: int = 0  # a --resume: the checkpoint's step, where this call began


def start_runtime(cfg: TrainConfig) -> Runtime:
    """Pick the device and join the process group that ``torchrun`` describes in the environment."""
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA device is available")
    use_cuda = cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return Runtime(device, rank, world, local_rank)


def train(cfg: TrainConfig) -> TrainResult:
    """Train ``cfg.method`` and write RUN/last.pt, RUN/config.yaml, RUN/metrics.jsonl (+ tb/).

    Raises :class:`~datakit.errors.UsageError` for contradicting settings (batch not divisible, a
    RUN that already holds a checkpoint without ``resume``) and DatakitError for bad data.
    """
    rt = start_runtime(cfg)
    deterministic = torch.are_deterministic_algorithms_enabled()
    try:
        return _train(cfg, rt)
    finally:
        torch.use_deterministic_algorithms(deterministic)
        if rt.distributed and dist.is_initialized():
            dist.destroy_process_group()


def _configure_determinism(cfg: TrainConfig, rt: Runtime) -> None:
    if cfg.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    elif rt.device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def _to_device(batch: dict[str, Any], device: torch.device, channels_last: bool) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in batch.items():
        if isinstance(v, Tensor):
            v = v.to(device, non_blocking=True)
            if channels_last and v.dim() == 4 and k.startswith("view"):
                v = v.contiguous(memory_format=torch.channels_last)
        out[k] = v
    return out


def _mean_across_ranks(values: dict[str, Tensor], rt: Runtime) -> dict[str, float]:
    names = sorted(values)
    if not names:
        return {}
    t = torch.stack([values[n].detach().float() for n in names])
    if rt.distributed:
        dist.all_reduce(t)
        t = t / rt.world
    return dict(zip(names, t.tolist(), strict=True))


def _sum_across_ranks(skipped: Skipped, rt: Runtime) -> Skipped:
    if not rt.distributed:
        return skipped
    t = torch.tensor([skipped.shards, skipped.samples], dtype=torch.int64, device=rt.device)
    dist.all_reduce(t)
    return Skipped(*(int(v) for v in t.tolist()))


# depth units in which a difference is no distance: the depth filter's ``abs`` mode refuses them
NOT_A_DISTANCE = {"1/m": "inverse depth", "relative": "relative depth"}


def _check_depth_unit(cfg: TrainConfig, unit: str | None) -> None:
    if cfg.method == "pixpro-depth" and cfg.depth_mode == "abs" and unit in NOT_A_DISTANCE:
        raise UsageError(
            f"{cfg.data}: depth is {NOT_A_DISTANCE[unit]} ({unit}); depth_mode abs compares "
            f"distances: use depth_mode norm or log (log is the same on inverse depth)"
        )


def queue_fill_note(cfg: TrainConfig) -> str | None:
    """A warning when PixCon's negative queues fill only in the second half of the run (or never).

    Until a queue is full, part of the negatives are its random initial unit vectors; on short runs
    they let the global head send every image to one embedding (docs/results.md, section 1).
    """
    if cfg.method != "pixcon":
        return None
    per_step = 2 * cfg.batch_size  # both views' keys are pushed each step
    fill = -(-cfg.queue_size // per_step)
    if 2 * fill <= cfg.steps:
        return None
    when = f"fill only after {fill} of its" if fill <= cfg.steps else "never fill in this run of"
    return (
        f"warning: the {cfg.queue_size}-key negative queues {when} {cfg.steps} steps "
        f"({per_step} keys a step); "
        f"until then random initial keys are negatives, which can collapse the global head "
        f"(docs/results.md, section 1)"
    )


# Settings a resumed run must share with its checkpoint (the model's shape, the optimiser's kind);
# method and arch are checked before the dataset is opened.
RESUME_FIXED = (
    "optimizer",
    "multiscale",
    "proj_hidden",
    "proj_dim",
    "head_hidden",
    "head_dim",
    "pred_hidden",
    "head_bn",
    "queue_size",
)
# what a RESUME_FIXED key was in checkpoints written before it existed
RESUME_LEGACY = {"head_bn": False}  # PixCon's heads had no BatchNorm


def _prepare(cfg: TrainConfig, rt: Runtime) -> tuple[TrainConfig, Path, dict[str, Any] | None, Any]:
    from datakit.reader import open_dataset

    run = Path(cfg.out)
    ckpt_path = run / checkpoint.CHECKPOINT_NAME
    state = None
    if ckpt_path.exists():
        if not cfg.resume:
            raise UsageError(
                f"{run} already holds {ckpt_path.name}: pass --resume or choose another --out"
            )
        state = checkpoint.load(ckpt_path)
        for key in ("method", "arch"):
            if state[key] != getattr(cfg, key):
                raise UsageError(
                    f"--resume: {ckpt_path} was trained with {key} {state[key]!r}, not {getattr(cfg, key)!r}"
                )
    elif cfg.resume and rt.main:
        print(f"datakit train: no {ckpt_path}; starting from step 0", file=sys.stderr)
    dataset = open_dataset(cfg.data)
    _check_depth_unit(cfg, (dataset.info.depth or {}).get("unit"))
    cfg = resolve(cfg, num_samples=split_size(dataset, cfg.split))
    per_rank, rem = divmod(cfg.batch_size, rt.world * cfg.accum_steps)
    if rem or per_rank < 1:
        raise UsageError(
            f"batch size {cfg.batch_size} is not divisible by world size {rt.world} x accum_steps {cfg.accum_steps}"
        )
    if cfg.method == "pixcon" and cfg.head_bn and per_rank < 2 and not _sync_bn(cfg, rt):
        raise UsageError(
            f"batch size {cfg.batch_size} gives {per_rank} image per rank and pass; PixCon's heads "
            f"batch-normalise over at least 2 (or set head_bn=false)"
        )
    if state is not None:
        for key in RESUME_FIXED:
            if key == "head_bn" and cfg.method != "pixcon":
                continue  # the PixPro methods have no such heads
            was = state["config"].get(key, RESUME_LEGACY.get(key))
            if was != getattr(cfg, key):
                raise UsageError(
                    f"--resume: {ckpt_path} was trained with {key} {was!r}, "
                    f"not {getattr(cfg, key)!r}"
                )
    if rt.main and (note := queue_fill_note(cfg)):
        print(f"datakit train: {note}", file=sys.stderr)
    return cfg, ckpt_path, state, dataset


def _write_config(cfg: TrainConfig, rt: Runtime) -> None:
    """RUN/config.yaml (rank 0), once the checkpoint of a resumed run has loaded: a refused resume
    leaves the run's configuration as it was."""
    if rt.main:
        run = Path(cfg.out)
        run.mkdir(parents=True, exist_ok=True)
        text = dump_yaml(dataclasses.replace(cfg, resume=False))
        checkpoint.atomic_write(run / CONFIG_NAME, lambda p: p.write_text(text))


@dataclass
class Stepper:
    """One optimiser step: lr and momentum schedules, ``accum_steps`` forward/backward passes under
    bf16 autocast (DDP gradient sync on the last only), queue pushes, the optimiser update.

    ``model`` is the (DDP-wrapped, compiled) module called; ``method`` the bare one. Used by the loop
    and by bench/train.py, so the benchmark times exactly what training runs.
    """

    model: nn.Module
    method: MomentumMethod
    optimizer: torch.optim.Optimizer
    cfg: TrainConfig
    device: torch.device
    bf16: bool
    channels_last: bool
    distributed: bool = False

    def __call__(self, step: int, fetch: Callable[[], dict[str, Any]]) -> StepStats:
        cfg = self.cfg
        assert cfg.lr is not None and cfg.warmup_steps is not None
        lr = lr_at(step, lr=cfg.lr, total=cfg.steps, warmup=cfg.warmup_steps)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        m = momentum_at(step, cfg.steps, cfg.ema)
        self.method.momentum_update(m)
        sums: dict[str, Tensor] = {}
        wait = 0.0
        for micro in range(cfg.accum_steps):
            t0 = time.perf_counter()
            batch = _to_device(fetch(), self.device, self.channels_last)
            wait += time.perf_counter() - t0
            sync: contextlib.AbstractContextManager[Any] = contextlib.nullcontext()
            if self.distributed and micro < cfg.accum_steps - 1:
                sync = self.model.no_sync()  # type: ignore[operator]
            with sync:
                with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
                    out: StepOutput = self.model(batch)
                (out.loss / cfg.accum_steps).backward()
            self.method.push(out.keys)
            for k, v in {"loss": out.loss, **out.metrics}.items():
                sums[k] = sums.get(k, 0) + v.detach().float() / cfg.accum_steps
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return StepStats(sums, lr, m, wait)


@dataclass(frozen=True)
class StepStats:
    sums: dict[str, Tensor]  # loss and method metrics, means over the micro-batches (on device)
    lr: float
    momentum: float
    wait: float  # seconds spent waiting for batches


def _sync_bn(cfg: TrainConfig, rt: Runtime) -> bool:
    """BatchNorm statistics taken over all ranks (SyncBatchNorm: distributed on CUDA)."""
    return rt.distributed and rt.device.type == "cuda" and cfg.sync_bn


def build_stepper(cfg: TrainConfig, rt: Runtime, state: dict[str, Any] | None = None) -> Stepper:
    """Method (seeded), optimiser, restored ``state`` (a checkpoint), DDP and torch.compile."""
    torch.manual_seed(cfg.seed)
    method = build_method(cfg).to(rt.device)
    channels_last = cfg.channels_last if cfg.channels_last is not None else rt.device.type == "cuda"
    if channels_last:
        method = method.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    if _sync_bn(cfg, rt):
        method = nn.SyncBatchNorm.convert_sync_batchnorm(method)  # type: ignore[assignment]
    optimizer = build_optimizer(method, cfg)
    if state is not None:
        try:
            method.load_state_dict(state["model"])
        except RuntimeError as exc:  # a model setting (multiscale, proj_dim, ...) changed
            lines = [line.strip() for line in str(exc).splitlines() if line.strip()] or [""]
            raise UsageError(
                f"--resume: {Path(cfg.out) / checkpoint.CHECKPOINT_NAME} does not fit this "
                f"configuration ({lines[min(1, len(lines) - 1)][:200]})"
            ) from None
        # the checkpoint brings the optimiser's state (momentum buffers, AdamW moments) and, with
        # it, its hyperparameters: this run's (momentum, weight decay, trust ...) win; lr is set
        # every step by the schedule
        settings = [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]
        optimizer.load_state_dict(state["optimizer"])
        for group, mine in zip(optimizer.param_groups, settings, strict=True):
            group.update(mine)
    model: nn.Module = method
    if rt.distributed:
        model = nn.parallel.DistributedDataParallel(
            method,
            device_ids=[rt.device.index] if rt.device.type == "cuda" else None,
            # every rank's buffers agree without a per-step broadcast: BN statistics under
            # SyncBatchNorm (or rank-local on CPU, where only rank 0 saves them), and the queues,
            # which push the keys gathered from all ranks
            forward_sync_buffers=False,
        )
    if cfg.compile:
        model = torch.compile(model)  # type: ignore[assignment]
    method.train()
    bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and rt.device.type == "cuda")
    return Stepper(model, method, optimizer, cfg, rt.device, bf16, channels_last, rt.distributed)


def _train(cfg: TrainConfig, rt: Runtime) -> TrainResult:
    _configure_determinism(cfg, rt)
    cfg, ckpt_path, state, dataset = _prepare(cfg, rt)
    if state is not None and int(state["step"]) >= cfg.steps:  # nothing to train: build nothing
        return TrainResult(Path(cfg.out), int(state["step"]), math.nan, ckpt_path, True)
    stepper = build_stepper(cfg, rt, state)
    _write_config(cfg, rt)
    per_rank = cfg.batch_size // (rt.world * cfg.accum_steps)
    start, position = 0, {"epoch": 0, "batch": 0}
    skipped_before = Skipped()  # skips up to the checkpoint a resumed run starts from
    if state is not None:
        start = int(state["step"])
        skipped_before = Skipped(**state.get("skipped", {}))  # absent before it was counted
        checkpoint.set_rng_state(state["rng"])
        saved, ranks = state["config"], len(state["data"])
        saved_per_rank = saved["batch_size"] // (ranks * saved.get("accum_steps", 1))
        if ranks == rt.world and saved_per_rank == per_rank:
            position = state["data"][rt.rank]
        else:  # positions count batches of another size: every rank starts the next epoch
            position = {"epoch": int(state["data"][0]["epoch"]) + 1, "batch": 0}
    cuda = rt.device.type == "cuda"
    stream = BatchStream(
        dataset,
        cfg,
        per_rank=per_rank,
        position=position,
        device=str(rt.device),
        gpu_views=cfg.gpu_views if cfg.gpu_views is not None else cuda,
        prefetch=cfg.prefetch if cfg.prefetch is not None else (2 if cuda else 0),
    )
    log = MetricsLog(
        Path(cfg.out),
        enabled=rt.main,
        tensorboard=cfg.tensorboard,
        progress=cfg.progress,
        start_step=start,
        total_steps=cfg.steps,
    )
    last_loss, skipped = float("nan"), skipped_before
    t_log, wait, steps_since = time.perf_counter(), 0.0, 0
    try:
        for step in range(start, cfg.steps):
            stats = stepper(step, lambda: next(stream))
            done, steps_since, wait = step + 1, steps_since + 1, wait + stats.wait
            log.advance()
            logging = done % cfg.log_every == 0 or done == cfg.steps
            saving = done % cfg.ckpt_every == 0 or done == cfg.steps
            if logging or saving:  # one all-reduce, at steps every rank agrees on
                skipped = skipped_before + _sum_across_ranks(stream.skipped, rt)
            if logging:
                values = _mean_across_ranks(stats.sums, rt)
                elapsed = max(time.perf_counter() - t_log, 1e-9)
                values.update(
                    lr=stats.lr,
                    momentum=stats.momentum,
                    samples_per_s=cfg.batch_size * steps_since / elapsed,
                    data_wait=min(wait / elapsed, 1.0),
                    epoch=float(stream.position["epoch"]),
                )
                values.update(skipped_shards=skipped.shards, skipped_samples=skipped.samples)
                last_loss = values["loss"]
                log.log(done, values)
                if not math.isfinite(last_loss):
                    raise TrainingDiverged(
                        f"{cfg.out}: loss is {last_loss} at step {done} (lr {stats.lr:.4g}); "
                        f"no checkpoint written for it. Try --set precision=fp32, a lower lr "
                        f"or more warmup_steps"
                    )
                t_log, wait, steps_since = time.perf_counter(), 0.0, 0
            if saving:
                _save(ckpt_path, cfg, stepper, done, stream, rt, skipped)
    finally:
        stream.close()
        log.close()
    return TrainResult(
        Path(cfg.out), cfg.steps, last_loss, ckpt_path, skipped=skipped, start_step=start
    )


def _save(
    path: Path,
    cfg: TrainConfig,
    stepper: Stepper,
    step: int,
    stream: BatchStream,
    rt: Runtime,
    skipped: Skipped,
) -> None:
    params = [p.detach() for p in stepper.method.parameters()]
    if not bool(torch.isfinite(torch.stack(torch._foreach_norm(params))).all()):  # every rank
        raise TrainingDiverged(
            f"{cfg.out}: weights are not finite after step {step}; not written to {path.name}. "
            f"Try --set precision=fp32, a lower lr or more warmup_steps"
        )
    positions: list[Any] = [stream.position]
    if rt.distributed:
        positions = [None] * rt.world
        dist.all_gather_object(positions, stream.position)
    if rt.main:
        state = checkpoint.build_state(
            cfg, stepper.method, stepper.optimizer, step, positions, skipped=skipped.as_dict()
        )
        checkpoint.save(path, state)
