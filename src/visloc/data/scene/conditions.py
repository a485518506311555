"""Query conditions applied to rendered images: day (unchanged), night (low light, gamma, tint, noise), blur.

Images are float32 RGB ``[H, W, 3]`` in [0, 1]; every function returns a new array and is reproducible from
the generator it is given.
"""

from __future__ import annotations

import cv2
import numpy as np

from visloc.data.scene.config import CONDITIONS, BlurConf, NightConf, SceneConf


def _check_image(image: np.ndarray, where: str) -> np.ndarray:
    img = np.asarray(image)
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"{where}: image must be [H, W, 3], got {img.shape}")
    return img.astype(np.float32, copy=False)


def night(image: np.ndarray, conf: NightConf, rng: np.random.Generator, depth: np.ndarray | None = None) -> np.ndarray:
    """Night-like image: ``clip(gain * tint * light * image ** gamma + N(0, noise_std), 0, 1)``.

    Args:
        image: float32 RGB ``[H, W, 3]`` in [0, 1].
        conf: gain, gamma, tint, noise, light falloff.
        rng: generator of the noise.
        depth: optional float32 ``[H, W]`` depth in metres (``inf`` for the sky); with it, ``light =
            ambient + (1 - ambient) / (1 + (depth / falloff_m) ** 2)``, without it (or ``falloff_m = 0``) 1.

    Returns:
        float32 ``[H, W, 3]`` in [0, 1]; darker than ``image`` for ``gain < 1`` or ``gamma > 1``.
    """
    img = _check_image(image, "night")
    out = np.power(np.clip(img, 0.0, 1.0), np.float32(conf.gamma)) * (np.float32(conf.gain)
                                                                         * np.asarray(conf.tint, np.float32))
    if depth is not None and conf.falloff_m > 0:
        if depth.shape != img.shape[:2]:
            raise ValueError(f"night: depth must be {img.shape[:2]}, got {depth.shape}")
        fade = 1.0 / (1.0 + np.square(depth.astype(np.float32) / np.float32(conf.falloff_m)))
        out *= (conf.ambient + (1.0 - conf.ambient) * fade)[..., None].astype(np.float32)
    if conf.noise_std > 0:
        out += rng.normal(0.0, conf.noise_std, out.shape).astype(np.float32)
    return np.clip(out, 0.0, 1.0)


def motion_kernel(length_px: float, angle_deg: float) -> np.ndarray:
    """Normalised float32 line kernel of ``length_px`` pixels at ``angle_deg`` (odd square size)."""
    if length_px < 1:
        raise ValueError(f"motion_kernel: length_px must be >= 1, got {length_px}")
    size = int(np.ceil(length_px)) | 1
    kernel = np.zeros((size, size), np.float32)
    c = (size - 1) / 2
    d = 0.5 * (length_px - 1) * np.array([np.cos(np.deg2rad(angle_deg)), np.sin(np.deg2rad(angle_deg))])
    # anti-aliased line: sample many points along the segment
    for s in np.linspace(-1.0, 1.0, 4 * size + 1):
        x, y = c + s * d
        x0, y0 = int(np.floor(x)), int(np.floor(y))
        fx, fy = x - x0, y - y0
        for dx, dy, w in ((0, 0, (1 - fx) * (1 - fy)), (1, 0, fx * (1 - fy)), (0, 1, (1 - fx) * fy), (1, 1, fx * fy)):
            if 0 <= x0 + dx < size and 0 <= y0 + dy < size:
                kernel[y0 + dy, x0 + dx] += w
    return kernel / kernel.sum()


def blur(image: np.ndarray, conf: BlurConf, rng: np.random.Generator) -> np.ndarray:
    """Linear motion blur of ``conf.length_px`` in a random direction, then Gaussian noise ``conf.noise_std``.

    Args:
        image: float32 RGB ``[H, W, 3]`` in [0, 1].
        conf: blur length and noise.
        rng: generator of the direction and the noise.

    Returns:
        float32 ``[H, W, 3]`` in [0, 1]; a constant image stays constant up to the noise.
    """
    img = _check_image(image, "blur")
    kernel = motion_kernel(conf.length_px, rng.uniform(0.0, 180.0))
    out = cv2.filter2D(img, -1, kernel, borderType=cv2.BORDER_REFLECT)
    if conf.noise_std > 0:
        out += rng.normal(0.0, conf.noise_std, out.shape).astype(np.float32)
    return np.clip(out, 0.0, 1.0)


def apply_condition(image: np.ndarray, condition: str, conf: SceneConf, rng: np.random.Generator,
                    depth: np.ndarray | None = None) -> np.ndarray:
    """Apply ``condition`` (``day``: unchanged copy, ``night``, ``blur``) with the settings of ``conf``.

    ``depth`` [H, W] (metres, ``inf`` = sky) feeds the night light falloff; the other conditions ignore it.
    """
    if condition == "day":
        return _check_image(image, "day").copy()
    if condition == "night":
        return night(image, conf.night, rng, depth)
    if condition == "blur":
        return blur(image, conf.blur, rng)
    raise ValueError(f"apply_condition: unknown condition {condition!r}; expected one of {CONDITIONS}")
