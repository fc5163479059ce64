"""Colour ops of SPEC 4 on uint8 RGB (CPU): ColorJitter, grayscale, Gaussian blur, solarize.

Semantics follow torchvision's (blend factors, clamping after every op, hue shift as a fraction of a
turn) on 8-bit images as PIL does them; OpenCV kernels, one call each. Depth never comes here.
"""

from __future__ import annotations

import cv2
import numpy as np

from datakit.views import Photometric

_SOLARIZE_LUT = np.where(np.arange(256) >= 128, 255 - np.arange(256), np.arange(256)).astype(
    np.uint8
)


def _gray3(rgb: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY), cv2.COLOR_GRAY2RGB)


def adjust_brightness(rgb: np.ndarray, factor: float) -> np.ndarray:
    return cv2.convertScaleAbs(rgb, alpha=factor)


def adjust_contrast(rgb: np.ndarray, factor: float) -> np.ndarray:
    mean = float(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY).mean())
    lut = np.clip(np.rint(factor * np.arange(256) + (1 - factor) * mean), 0, 255).astype(np.uint8)
    return cv2.LUT(rgb, lut)


def adjust_saturation(rgb: np.ndarray, factor: float) -> np.ndarray:
    return cv2.addWeighted(rgb, factor, _gray3(rgb), 1 - factor, 0)


def adjust_hue(rgb: np.ndarray, shift: float) -> np.ndarray:
    """Rotate hue by ``shift`` turns (-0.5..0.5), on the 0-255 hue scale as PIL does."""
    hsv = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV_FULL)
    hsv[..., 0] = (hsv[..., 0].astype(np.int16) + int(round(shift * 255))) % 256
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB_FULL)


_JITTER = (adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue)


def apply_photometric(rgb: np.ndarray, p: Photometric) -> np.ndarray:
    """Apply the colour ops ``p`` names to an (H, W, 3) uint8 image; returns a new or the same array."""
    if p.jitter:
        factors = (p.brightness, p.contrast, p.saturation, p.hue)
        for op in p.order:
            rgb = _JITTER[op](rgb, factors[op])
    if p.grayscale:
        rgb = _gray3(rgb)
    if p.blur_sigma > 0:
        rgb = cv2.GaussianBlur(rgb, (0, 0), p.blur_sigma)
    if p.solarize:
        rgb = cv2.LUT(rgb, _SOLARIZE_LUT)
    return rgb
