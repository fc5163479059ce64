"""The pretraining methods, dispatched through :data:`METHODS`.

A method is an ``nn.Module`` holding the online network, its momentum copy and (PixCon) the negative
queues. ``forward(batch)`` takes the batch dict of SPEC 4 and returns a :class:`StepOutput`; the loop
calls ``momentum_update(m)`` before each optimiser step and ``push(keys)`` after each forward, both
outside the (possibly compiled, DDP-wrapped) forward.
"""

from __future__ import annotations

import copy
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from typing import NamedTuple, TypeVar

import torch
import torch.distributed as dist
from torch import Tensor, nn

from training import losses
from training.config import TrainConfig
from training.heads import (
    DenseProjector,
    GlobalProjector,
    PixelProjector,
    PixelPropagation,
    Predictor,
    Queue,
)
from training.models import Backbone, build_backbone


class StepOutput(NamedTuple):
    """loss: the scalar to minimise; metrics: 0-d tensors to log; keys: momentum keys for the
    queues (name -> (N, D)), pushed by the loop after the backward pass."""

    loss: Tensor
    metrics: dict[str, Tensor]
    keys: dict[str, Tensor]


def momentum_at(step: int, total: int, base: float = 0.99) -> float:
    """m = 1 - (1 - base) (cos(pi k / K) + 1) / 2: base at step 0, 1 at the last step."""
    return 1.0 - (1.0 - base) * (math.cos(math.pi * step / max(total, 1)) + 1.0) / 2.0


def gather(t: Tensor) -> Tensor:
    """Concatenate a tensor from every rank along dim 0 (identity when not distributed)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return t
    parts = [torch.empty_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, t.contiguous())
    return torch.cat(parts)


def period_of(batch: dict[str, Tensor]) -> Tensor | float:
    """The x period of periodic samples in normalised units: the batch's ``period`` (B,) when the
    loader provides it (W / (W - 1)), else 1.0."""
    return batch.get("period", 1.0)


M = TypeVar("M", bound=nn.Module)


def _frozen_copy(module: M) -> M:
    twin = copy.deepcopy(module)
    for p in twin.parameters():
        p.requires_grad_(False)
    return twin


class MomentumMethod(nn.Module, ABC):
    """Shared plumbing: pairs of (online, momentum) modules updated by exponential moving average."""

    backbone: Backbone
    backbone_m: Backbone  # the momentum copy

    @abstractmethod
    def momentum_pairs(self) -> Iterator[tuple[nn.Module, nn.Module]]:
        """(online, momentum) module pairs that the EMA update walks."""

    @torch.no_grad()
    def momentum_update(self, m: float) -> None:
        online: list[Tensor] = []
        target: list[Tensor] = []
        for a, b in self.momentum_pairs():
            online.extend(p.detach() for p in a.parameters())
            target.extend(b.parameters())
        torch._foreach_mul_(target, m)
        torch._foreach_add_(target, online, alpha=1.0 - m)

    def push(self, keys: dict[str, Tensor]) -> None:
        """Enqueue momentum keys (no-op for methods without queues)."""


class PixPro(MomentumMethod):
    """PixPro, and with ``depth`` the depth-aware variant; ``cfg.multiscale`` adds C3 and C4 levels,
    each with its own projector and propagation module."""

    def __init__(self, cfg: TrainConfig, *, depth: bool = False) -> None:
        super().__init__()
        self.levels = cfg.levels
        # relative weights: the loss is their weighted mean over levels, so it keeps the one-level
        # loss's scale. The scale is what the weights would otherwise change: LARS normalises each
        # weight tensor's step, not the 1-D parameters' (BN, biases): a sum of three losses stepped
        # those of the shared stem and layer1-2 by three gradients (docs/results.md, section 1).
        total = sum(cfg.level_weight[lv] for lv in self.levels)
        self.weights = {lv: cfg.level_weight[lv] / total for lv in self.levels}
        self.radius = cfg.radius
        self.depth_rule = (
            losses.DepthRule(
                cfg.depth_mode, cfg.depth_threshold, cfg.depth_min_valid, cfg.depth_fallback
            )
            if depth
            else None
        )
        self.backbone = build_backbone(cfg.arch, self.levels, cfg.weights)
        self.projector = nn.ModuleDict(
            {
                lv: PixelProjector(c, cfg.proj_hidden, cfg.proj_dim)
                for lv, c in self.backbone.channels.items()
            }
        )
        self.ppm = nn.ModuleDict(
            {lv: PixelPropagation(cfg.proj_dim, cfg.ppm_gamma) for lv in self.levels}
        )
        self.backbone_m = _frozen_copy(self.backbone)
        self.projector_m = _frozen_copy(self.projector)

    def momentum_pairs(self) -> Iterator[tuple[nn.Module, nn.Module]]:
        yield self.backbone, self.backbone_m
        yield self.projector, self.projector_m

    def _encode(
        self, backbone: nn.Module, projector: nn.ModuleDict, x: Tensor
    ) -> dict[str, Tensor]:
        feats = backbone(x)
        return {lv: projector[lv](feats[lv]) for lv in self.levels}

    def forward(self, batch: dict[str, Tensor]) -> StepOutput:
        views = (batch["view1"], batch["view2"])
        x = [self._encode(self.backbone, self.projector, v) for v in views]
        y = {lv: (self.ppm[lv](x[0][lv]), self.ppm[lv](x[1][lv])) for lv in self.levels}
        with torch.no_grad():
            km = [self._encode(self.backbone_m, self.projector_m, v) for v in views]
        k = {lv: (km[0][lv], km[1][lv]) for lv in self.levels}
        terms = losses.multiscale_pixpro_loss(
            y,
            k,
            (batch["coords1"], batch["coords2"]),
            views[0].shape[-1],
            weights=self.weights,
            radius=self.radius,
            periodic=batch.get("periodic"),
            period=period_of(batch),
            depth=(batch["depth1"], batch["depth2"]) if self.depth_rule else None,
            depth_rule=self.depth_rule,
        )
        metrics = {"pos_frac_spatial": terms.pos_frac_spatial, "pos_frac": terms.pos_frac}
        return StepOutput(terms.loss, metrics, {})


class PixCon(MomentumMethod):
    """PixCon: MoCo-v2-style global InfoNCE plus dense InfoNCE with predictors on the online side,
    ``feature`` or ``coord`` matching and optional semantic reweighting."""

    def __init__(self, cfg: TrainConfig) -> None:
        super().__init__()
        self.tau = cfg.tau
        self.dense_weight = cfg.dense_weight
        self.matching = cfg.matching
        self.reweight = cfg.reweight
        self.radius = cfg.radius
        self.backbone = build_backbone(cfg.arch, ("c5",), cfg.weights)
        c = self.backbone.channels["c5"]
        bn = cfg.head_bn
        self.global_head = GlobalProjector(c, cfg.head_hidden, cfg.head_dim, bn=bn)
        self.dense_head = DenseProjector(c, cfg.head_hidden, cfg.head_dim, bn=bn)
        self.global_pred = Predictor(cfg.head_dim, cfg.pred_hidden, bn=bn)
        self.dense_pred = Predictor(cfg.head_dim, cfg.pred_hidden, dense=True, bn=bn)
        self.backbone_m = _frozen_copy(self.backbone)
        self.global_head_m = _frozen_copy(self.global_head)
        self.dense_head_m = _frozen_copy(self.dense_head)
        self.queue_global = Queue(cfg.queue_size, cfg.head_dim)
        self.queue_dense = Queue(cfg.queue_size, cfg.head_dim)

    def momentum_pairs(self) -> Iterator[tuple[nn.Module, nn.Module]]:
        yield self.backbone, self.backbone_m
        yield self.global_head, self.global_head_m
        yield self.dense_head, self.dense_head_m

    def forward(self, batch: dict[str, Tensor]) -> StepOutput:
        views = (batch["view1"], batch["view2"])
        coords = (batch["coords1"], batch["coords2"])
        periodic, period, size = batch.get("periodic"), period_of(batch), views[0].shape[-1]
        b = [self.backbone(v)["c5"] for v in views]
        q_g = [self.global_pred(self.global_head(f)) for f in b]
        q_d = [self.dense_pred(self.dense_head(f)) for f in b]
        with torch.no_grad():
            bm = [self.backbone_m(v)["c5"] for v in views]
            k_g = [self.global_head_m(f) for f in bm]
            k_d = [self.dense_head_m(f) for f in bm]
        queue_g, queue_d = self.queue_global.queue.clone(), self.queue_dense.queue.clone()
        loss_g = torch.zeros((), device=views[0].device)
        loss_d = torch.zeros((), device=views[0].device)
        matched = []
        for a, o in ((0, 1), (1, 0)):
            loss_g = loss_g + losses.info_nce(q_g[a], k_g[o], queue_g, tau=self.tau).mean() / 2
            shape_a, shape_o = tuple(b[a].shape[2:]), tuple(bm[o].shape[2:])
            sim = losses.backbone_similarity(b[a].detach(), bm[o])
            if self.matching == "feature":
                idx, valid = losses.match_feature(sim)
            else:
                dist_ = losses.pair_distance(
                    coords[a], coords[o], shape_a, shape_o, size, periodic=periodic, period=period
                )
                idx, valid = losses.match_coord(dist_, radius=self.radius)
            w = valid.float()
            if self.reweight:
                inside = losses.inside_crop(
                    coords[a], coords[o], shape_a, size, periodic=periodic, period=period
                )
                w = w * losses.semantic_weights(sim.amax(2), inside)
            loss_d = (
                loss_d + losses.dense_info_nce(q_d[a], k_d[o], queue_d, idx, w, tau=self.tau) / 2
            )
            matched.append(valid.float().mean())
        loss = (1 - self.dense_weight) * loss_g + self.dense_weight * loss_d
        metrics = {
            "loss_global": loss_g.detach(),
            "loss_dense": loss_d.detach(),
            "matched_frac": torch.stack(matched).mean(),
        }
        keys = {
            "global": torch.nn.functional.normalize(torch.cat(k_g).float(), dim=1),
            "dense": torch.nn.functional.normalize(
                torch.cat([k.float().mean((2, 3)) for k in k_d]), dim=1
            ),
        }
        return StepOutput(loss, metrics, keys)

    @torch.no_grad()
    def push(self, keys: dict[str, Tensor]) -> None:
        self.queue_global.push(gather(keys["global"]))
        self.queue_dense.push(gather(keys["dense"]))


METHODS: dict[str, Callable[[TrainConfig], MomentumMethod]] = {
    "pixpro": lambda cfg: PixPro(cfg),
    "pixpro-depth": lambda cfg: PixPro(cfg, depth=True),
    "pixcon": lambda cfg: PixCon(cfg),
}


def build_method(cfg: TrainConfig) -> MomentumMethod:
    return METHODS[cfg.method](cfg)
