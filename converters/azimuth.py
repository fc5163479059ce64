"""The periodic azimuth axis of borehole images: resampling n sectors to any number of columns.

Column ``j`` of ``columns`` covers azimuth ``[j, j + 1) * 360 / columns`` degrees; sector ``i`` of
``n`` covers ``[i, i + 1) * 360 / n`` and is centred at ``(i + 0.5) * 360 / n``. The last sector and
the first touch, so every rule wraps around.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class AzimuthPlan:
    """``out[:, j] = sum_t w[j, t] * in[:, idx[j, t]]``: periodic, at pixel centres."""

    index: np.ndarray  # (columns, taps) int64, sector indices modulo sectors
    weight: np.ndarray  # (columns, taps) float64, rows sum to 1


def azimuth_plan(sectors: int, columns: int) -> AzimuthPlan:
    """Linear interpolation when enlarging, area averaging when shrinking; both wrap at 360 deg.

    Positions use exact integer arithmetic, so rolling the input by one sector rolls the output by
    ``columns / sectors`` columns bit for bit when that ratio is an integer.
    """
    j = np.arange(columns, dtype=np.int64)
    if columns >= sectors:
        # Column centre j + 0.5 in sector units is ((2j + 1) * sectors) / (2 * columns); sector centres
        # sit at i + 0.5, so the position between sector centres is that minus 0.5.
        num = (2 * j + 1) * sectors - columns
        den = 2 * columns
        left = num // den
        frac = (num - left * den) / den
        index = np.stack([left % sectors, (left + 1) % sectors], axis=1)
        weight = np.stack([1.0 - frac, frac], axis=1)
        return AzimuthPlan(index, weight)
    taps = -(-sectors // columns) + 1
    index = np.zeros((columns, taps), dtype=np.int64)
    weight = np.zeros((columns, taps), dtype=np.float64)
    for col in range(columns):
        a, b = col * sectors / columns, (col + 1) * sectors / columns
        first = math.floor(a)
        for t in range(taps):
            s = first + t
            overlap = min(b, s + 1) - max(a, s)
            if overlap > 0:
                index[col, t] = s % sectors
                weight[col, t] = overlap
    weight /= weight.sum(axis=1, keepdims=True)
    return AzimuthPlan(index, weight)


def resample_periodic(values: np.ndarray, plan: AzimuthPlan) -> tuple[np.ndarray, np.ndarray]:
    """(rows, sectors) with NaN = invalid -> ((rows, columns) values, (rows, columns) valid).

    An output pixel is valid when valid inputs carry at least half its weight (for interpolation:
    when its nearest sector is valid); its value is the weighted mean of the valid inputs.
    """
    finite = np.isfinite(values)
    clean = np.where(finite, values, 0.0)
    weight = finite.astype(np.float64)
    acc = np.zeros((values.shape[0], plan.index.shape[0]))
    wsum = np.zeros_like(acc)
    for t in range(plan.index.shape[1]):
        m = np.take(weight, plan.index[:, t], axis=1)
        m *= plan.weight[:, t]
        v = np.take(clean, plan.index[:, t], axis=1)
        v *= m
        acc += v
        wsum += m
    valid = wsum >= 0.5
    out = np.where(valid, acc / np.where(valid, wsum, 1.0), 0.0)
    return out, valid
