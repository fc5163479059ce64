"""Heads on top of the backbone: PixPro's pixel projector and pixel propagation module, PixCon's
global and dense projectors, predictors and negative queues. Only modules that hold parameters or
buffers live here; the maths of the losses is in :mod:`training.losses`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class PixelProjector(nn.Sequential):
    """PixPro's projector: conv1x1 C -> hidden, BN, ReLU, conv1x1 -> out. (B, C, H, W) -> (B, out, H, W)."""

    def __init__(self, in_dim: int, hidden_dim: int = 4096, out_dim: int = 256) -> None:
        super().__init__(
            nn.Conv2d(in_dim, hidden_dim, 1),
            nn.BatchNorm2d(hidden_dim),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden_dim, out_dim, 1),
        )


class PixelPropagation(nn.Module):
    """PixPro's pixel propagation module (PPM).

    y_i = sum_j max(cos(x_i, x_j), 0) ** gamma * g(x_j), with g one conv1x1 whose output is
    L2-normalised per pixel, as in the released code. ``forward(x)``: (B, C, H, W) -> (B, C, H, W);
    the caller L2-normalises y (the loss does).
    """

    def __init__(self, dim: int = 256, gamma: float = 2.0) -> None:
        super().__init__()
        self.value = nn.Conv2d(dim, dim, 1)
        self.gamma = gamma

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        value = F.normalize(self.value(x), dim=1).flatten(2)  # (B, C, N)
        xn = F.normalize(x, dim=1).flatten(2)
        sim = torch.bmm(xn.transpose(1, 2), xn).clamp(min=0).pow(self.gamma)  # (B, N_i, N_j)
        return torch.bmm(value, sim.transpose(1, 2)).view(b, c, h, w)


def _hidden_norm(hidden_dim: int, bn: bool, *, dense: bool) -> nn.Module:
    if not bn:
        return nn.Identity()
    return nn.BatchNorm2d(hidden_dim) if dense else nn.BatchNorm1d(hidden_dim)


class GlobalProjector(nn.Sequential):
    """PixCon's global head (MoCo v2's, with BatchNorm in the hidden layer as in PixCon's released
    code unless ``bn`` is False): global average pool, Linear C -> hidden, BN, ReLU, Linear -> out.
    (B, C, H, W) -> (B, out)."""

    def __init__(
        self, in_dim: int, hidden_dim: int = 2048, out_dim: int = 128, *, bn: bool = True
    ) -> None:
        super().__init__(
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(1),
            nn.Linear(in_dim, hidden_dim),
            _hidden_norm(hidden_dim, bn, dense=False),
            nn.ReLU(inplace=True),
            nn.Linear(hidden_dim, out_dim),
        )


class DenseProjector(nn.Sequential):
    """DenseCL's dense head (BN in the hidden layer as in PixCon's released code unless ``bn`` is
    False): conv1x1 C -> hidden, BN, ReLU, conv1x1 -> out. (B, C, H, W) -> (B, out, H, W)."""

    def __init__(
        self, in_dim: int, hidden_dim: int = 2048, out_dim: int = 128, *, bn: bool = True
    ) -> None:
        super().__init__(
            nn.Conv2d(in_dim, hidden_dim, 1),
            _hidden_norm(hidden_dim, bn, dense=True),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden_dim, out_dim, 1),
        )


class Predictor(nn.Sequential):
    """The online side's predictor: Linear (or conv1x1 when ``dense``) dim -> hidden, BN (unless
    ``bn`` is False), ReLU, -> dim. With BN the global predictor needs two images to normalise over.
    """

    def __init__(
        self, dim: int = 128, hidden_dim: int = 2048, *, dense: bool = False, bn: bool = True
    ) -> None:
        layer = (lambda i, o: nn.Conv2d(i, o, 1)) if dense else nn.Linear
        super().__init__(
            layer(dim, hidden_dim),
            _hidden_norm(hidden_dim, bn, dense=dense),
            nn.ReLU(inplace=True),
            layer(hidden_dim, dim),
        )


class Queue(nn.Module):
    """A FIFO of L2-normalised negative keys, (size, dim), kept as buffers so it is checkpointed.

    ``push(keys)``: keys (N, dim), already normalised and gathered across ranks; N may exceed
    ``size`` (only the last ``size`` are kept) and need not divide it.
    """

    queue: Tensor
    ptr: Tensor

    def __init__(self, size: int, dim: int) -> None:
        super().__init__()
        self.register_buffer("queue", F.normalize(torch.randn(size, dim), dim=1))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def push(self, keys: Tensor) -> None:
        size = self.queue.shape[0]
        keys = keys.detach().to(self.queue.dtype)[-size:]
        n = keys.shape[0]
        idx = (int(self.ptr) + torch.arange(n, device=keys.device)) % size
        self.queue[idx] = keys
        self.ptr.fill_((int(self.ptr) + n) % size)
