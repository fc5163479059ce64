"""Optimisers (LARS, SGD, AdamW) and the warmup + cosine learning-rate schedule."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch
from torch import Tensor, nn

from training.config import TrainConfig


class LARS(torch.optim.Optimizer):
    """SGD with momentum and layer-wise adaptive rate scaling (You et al. 2017), as in PixPro.

    For a group with ``adapt=True`` the update of each parameter p with gradient g is
    ``d = g + wd p; d *= trust ||p|| / ||d||`` (when both norms are non-zero); then
    ``buf = momentum buf + d; p -= lr buf``. Groups with ``adapt=False`` (1-D parameters: biases,
    batch-norm) are plain momentum SGD.
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict],
        lr: float,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        trust: float = 0.001,
    ) -> None:
        defaults = {
            "lr": lr,
            "momentum": momentum,
            "weight_decay": weight_decay,
            "trust": trust,
            "adapt": True,
        }
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            grads: list[Tensor] | tuple[Tensor, ...] = [
                p.grad for p in params if p.grad is not None
            ]
            if group["weight_decay"]:
                grads = torch._foreach_add(grads, params, alpha=group["weight_decay"])
            if group["adapt"]:
                p_norm = torch.stack(torch._foreach_norm(params))
                g_norm = torch.stack(torch._foreach_norm(grads))
                ratio = torch.where(
                    (p_norm > 0) & (g_norm > 0),
                    group["trust"] * p_norm / g_norm,
                    torch.ones_like(p_norm),
                )
                grads = torch._foreach_mul(grads, list(ratio.unbind()))
            bufs: list[Tensor] = []
            for p in params:
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p)
                bufs.append(state["momentum_buffer"])
            torch._foreach_mul_(bufs, group["momentum"])
            torch._foreach_add_(bufs, grads)
            torch._foreach_add_(params, bufs, alpha=-group["lr"])
        return loss


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two groups: weights (decayed, LARS-adapted) and 1-D parameters (neither), as in PixPro."""
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay, "adapt": True},
        {"params": no_decay, "weight_decay": 0.0, "adapt": False},
    ]


def _lars(groups: list[dict], cfg: TrainConfig) -> torch.optim.Optimizer:
    assert cfg.lr is not None
    return LARS(groups, lr=cfg.lr, momentum=cfg.momentum, trust=cfg.lars_trust)


def _sgd(groups: list[dict], cfg: TrainConfig) -> torch.optim.Optimizer:
    assert cfg.lr is not None
    for g in groups:
        g.pop("adapt")
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)


def _adamw(groups: list[dict], cfg: TrainConfig) -> torch.optim.Optimizer:
    assert cfg.lr is not None
    for g in groups:
        g.pop("adapt")
    return torch.optim.AdamW(groups, lr=cfg.lr)


OPTIMIZERS: dict[str, Callable[[list[dict], TrainConfig], torch.optim.Optimizer]] = {
    "lars": _lars,
    "sgd": _sgd,
    "adamw": _adamw,
}


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """The optimiser of a resolved config (``cfg.optimizer``, ``cfg.lr``, ``cfg.weight_decay`` set)."""
    assert cfg.optimizer is not None and cfg.weight_decay is not None
    return OPTIMIZERS[cfg.optimizer](param_groups(model, cfg.weight_decay), cfg)


def lr_at(step: int, *, lr: float, total: int, warmup: int) -> float:
    """Linear warmup over ``warmup`` steps (reaching lr at step warmup - 1), then cosine to 0 at
    ``total``. ``step`` is 0-based."""
    if step < warmup:
        return lr * (step + 1) / warmup
    span = max(total - warmup, 1)
    return lr * 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / span))
