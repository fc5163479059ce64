"""Units of well-log channels: canonical names, scaled units (``0.1 in``), conversions, 16-bit scales."""

from __future__ import annotations

import math
import re

import numpy as np

# Canonical unit -> (dimension, factor to the dimension's base unit). Index units must be length or
# time; the exogenous channel may use any of these and converts within its dimension.
UNIT_FACTORS: dict[str, tuple[str, float]] = {
    "m": ("length", 1.0),
    "cm": ("length", 0.01),
    "mm": ("length", 0.001),
    "ft": ("length", 0.3048),
    "in": ("length", 0.0254),
    "s": ("time", 1.0),
    "ms": ("time", 1e-3),
    "us": ("time", 1e-6),
}
_ALIASES: dict[str, str] = {
    **{a: "m" for a in ("m", "meter", "meters", "metre", "metres")},
    **{a: "ft" for a in ("ft", "f", "feet", "foot")},
    **{a: "in" for a in ("in", "inch", "inches")},
    "cm": "cm",
    "mm": "mm",
    **{a: "s" for a in ("s", "sec", "second", "seconds")},
    **{a: "ms" for a in ("ms", "msec", "millisecond", "milliseconds")},
    **{a: "us" for a in ("us", "usec", "µs", "μs", "microsecond", "microseconds")},
    **{a: "API" for a in ("api", "gapi")},
    **{a: "g/cm3" for a in ("g/cc", "g/cm3", "gm/cc", "g/cm^3")},
    "kg/m3": "kg/m3",
    **{a: "ohm.m" for a in ("ohm.m", "ohmm", "ohm-m", "ohm m")},
    **{a: "mS/m" for a in ("ms/m", "mmho/m")},
    "db": "dB",
    "mv": "mV",
    "v": "V",
    **{a: "degC" for a in ("degc", "c", "°c")},
    "degf": "degF",
    **{a: "deg" for a in ("deg", "dega", "degree", "degrees")},
    "rad": "rad",
    **{a: "pu" for a in ("pu", "p.u.")},
    "%": "%",
    **{a: "v/v" for a in ("v/v", "frac", "fraction", "dec")},
    "b/e": "b/e",
    **{a: "us/ft" for a in ("us/ft", "us/f")},
    "us/m": "us/m",
    "cps": "cps",
    "ppm": "ppm",
    **{a: "1" for a in ("unitless", "none", "1")},
}
_SCALED_UNIT = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s+(\S.*)$")


def parse_unit(raw: str | None) -> tuple[str, float] | None:
    """``"0.1 in"`` -> ``("in", 0.1)``, ``"M"`` -> ``("m", 1.0)``; None when not known."""
    if raw is None:
        return None
    text = raw.strip()
    factor = 1.0
    m = _SCALED_UNIT.match(text)
    if m:
        factor, text = float(m.group(1)), m.group(2).strip()
    unit = _ALIASES.get(text.lower())
    return None if unit is None else (unit, factor)


def convert_units(values: np.ndarray, src: str, dst: str) -> np.ndarray | None:
    """``values`` from unit ``src`` to ``dst`` (same dimension); None when they do not convert."""
    if src == dst:
        return values
    a, b = UNIT_FACTORS.get(src), UNIT_FACTORS.get(dst)
    if a is None or b is None or a[0] != b[0]:
        return None
    return values * (a[1] / b[1])


def known_units() -> list[str]:
    return sorted(set(_ALIASES.values()))


def nice_scale(max_value: float | None, levels: int = 65535) -> float:
    """The smallest 1, 2 or 5 x 10^k with ``max_value / scale <= levels`` (1.0 without data)."""
    if max_value is None or not math.isfinite(max_value) or max_value <= 0:
        return 1.0
    k = math.floor(math.log10(max_value / levels))
    for m in (1, 2, 5, 10):
        scale = float(f"{m}e{k}")
        if max_value / scale <= levels:
            return scale
    return float(f"1e{k + 1}")  # pragma: no cover - unreachable
