"""The steps of ``apply_conditions``: sRGB coding, season tint, veils (fog, rain), rain streaks, sensor noise.

Linear intensities are float32 RGB ``[H, W, 3]``, >= 0 (above 1 before the final clipping); every function
returns a new array, random ones draw only from the generator given.
"""

from __future__ import annotations

import cv2
import numpy as np

from visloc.data.scene.condition_conf import ConditionConf, ConditionModel


def srgb_to_linear(image: np.ndarray) -> np.ndarray:
    """float32 linear intensities of an sRGB-encoded image in [0, 1] (IEC 61966-2-1; clipped to [0, 1] first).

    Computed in float64, so that 0 and 1 map to exactly 0 and 1 both ways.
    """
    x = np.clip(np.asarray(image, np.float64), 0.0, 1.0)
    return np.where(x <= 0.04045, x / 12.92, np.power((x + 0.055) / 1.055, 2.4)).astype(np.float32)


def linear_to_srgb(image: np.ndarray) -> np.ndarray:
    """float32 sRGB encoding in [0, 1] of linear intensities (clipped to [0, 1] first)."""
    x = np.clip(np.asarray(image, np.float64), 0.0, 1.0)
    return np.where(x <= 0.0031308, x * 12.92, 1.055 * np.power(x, 1 / 2.4) - 0.055).astype(np.float32)


def season_tint(x: np.ndarray, season: str, model: ConditionModel) -> np.ndarray:
    """The season's tint of linear ``x`` (winter also desaturated towards the luminance)."""
    if season == "autumn":
        return x * np.asarray(model.autumn_tint, np.float32)
    if season == "winter":
        s = np.float32(model.winter_desaturation)
        luma = x @ _LUMA
        return ((1 - s) * x + s * luma[..., None]) * np.asarray(model.winter_tint, np.float32)
    return x


#: Rec. 709 luminance weights of linear RGB
_LUMA = np.array([0.2126, 0.7152, 0.0722], np.float32)


def veil(x: np.ndarray, beta: float, a: np.ndarray, depth: np.ndarray | None, no_depth_m: float) -> np.ndarray:
    """Koschmieder's law on linear ``x`` [H, W, 3]: ``J t + A (1 - t)``, ``t = exp(-beta d)``.

    ``beta`` per metre (> 0), ``a`` [3] the airlight, ``depth`` [H, W] metres (``inf``: the sky, which gets
    ``A``); without a depth map every pixel is at ``no_depth_m``.
    """
    d = np.full(x.shape[:2], no_depth_m, np.float32) if depth is None else depth
    t = np.exp(np.float32(-beta) * d)[..., None]
    return x * t + a * (1 - t)


def _streaks(shape: tuple[int, int], strength: float, model: ConditionModel, rng: np.random.Generator) -> np.ndarray:
    """float32 [H, W] coverage in [0, 1] of anti-aliased rain streaks slanted by a common wind angle."""
    H, W = shape
    layer = np.zeros((H, W), np.uint8)
    n = int(rng.poisson(strength * model.streak_density * H * W))
    if n == 0:
        return layer.astype(np.float32)
    wind = rng.normal(0.0, np.deg2rad(10.0))
    angle = wind + rng.normal(0.0, np.deg2rad(2.0), n)
    lo, hi = model.streak_length
    length = rng.uniform(lo, hi, n) * H
    start = rng.uniform((0.0, -0.1 * H), (W, H), (n, 2))
    end = start + length[:, None] * np.stack([np.sin(angle), np.cos(angle)], 1)
    lines = np.round(np.stack([start, end], 1) * 16).astype(np.int32)  # 4 fractional bits (shift=4)
    cv2.polylines(layer, list(lines), False, 255, 1, cv2.LINE_AA, 4)
    return layer.astype(np.float32) / np.float32(255.0)


def rain(x: np.ndarray, cond: ConditionConf, a: np.ndarray, depth: np.ndarray | None, model: ConditionModel,
         rng: np.random.Generator) -> np.ndarray:
    """Rain on linear ``x``: its veil, the contrast loss (glare towards the image mean), then the streaks."""
    x = veil(x, cond.rain * model.rain_beta, a, depth, model.no_depth_m)
    g = np.float32(cond.rain * model.rain_glare)
    x = (1 - g) * x + g * x.mean(axis=(0, 1), dtype=np.float32)
    alpha = (_streaks(x.shape[:2], cond.rain, model, rng) * np.float32(model.streak_opacity))[..., None]
    return x * (1 - alpha) + a * alpha


def sensor_noise(x: np.ndarray, noise_std: float, shot_gain: float, rng: np.random.Generator) -> np.ndarray:
    """Linear ``x`` plus zero-mean Gaussian noise of variance ``noise_std ** 2 * (1 + shot_gain * max(x, 0))``."""
    std = np.float32(noise_std) * np.sqrt(1 + np.float32(shot_gain) * np.maximum(x, 0))
    return x + std * rng.standard_normal(x.shape, dtype=np.float32)
