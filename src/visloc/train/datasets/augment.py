"""Photometric and homographic augmentation of training images, shared by the image recipes.

It sits in ``train/datasets/`` rather than in ``train/hfnet/`` because it is not HF-Net's: any
recipe that trains on images (the HF-Net student, DELG, LoFTR) may degrade its inputs the same way.
HF-Net applies the photometric part to the student's input only and the homographic one to both
networks' input.

The photometric primitives and their ranges follow HF-Net's distillation config
(``hfnet_train_distill.yaml``, after SuperPoint's ``photometric_augmentation.py``): random
brightness (+-75/255), contrast (x0.3 to x1.5 about the mean), additive Gaussian noise (sigma up to
15/255), additive shade (blurred random ellipses, transparency -0.5 to 0.8) and motion blur (kernel
up to 7 px), applied in a random order. Images are float32 ``[H, W]`` grayscale in ``[0, 1]``.
"""

from __future__ import annotations

import cv2
import numpy as np

from visloc.data.homography import random_homography


def random_brightness(rng: np.random.Generator, img: np.ndarray, max_abs_change: float = 75 / 255) -> np.ndarray:
    """Add one uniform offset in ``[-max_abs_change, max_abs_change]``."""
    return np.clip(img + rng.uniform(-max_abs_change, max_abs_change), 0, 1)


def random_contrast(
    rng: np.random.Generator, img: np.ndarray, strength: tuple[float, float] = (0.3, 1.5)
) -> np.ndarray:
    """Scale the deviation from the mean by a factor in ``strength``."""
    m = float(img.mean())
    return np.clip((img - m) * rng.uniform(*strength) + m, 0, 1)


def additive_gaussian_noise(rng: np.random.Generator, img: np.ndarray, max_sigma: float = 15 / 255) -> np.ndarray:
    """Add i.i.d. Gaussian noise with a sigma drawn in ``[0, max_sigma]``."""
    return np.clip(img + rng.normal(0.0, rng.uniform(0, max_sigma), img.shape), 0, 1)


def additive_shade(
    rng: np.random.Generator,
    img: np.ndarray,
    transparency: tuple[float, float] = (-0.5, 0.8),
    kernel_size: tuple[int, int] = (50, 100),
    num_ellipses: int = 20,
) -> np.ndarray:
    """Darken (or brighten) blurred random ellipses, as SuperPoint's ``additive_shade``."""
    h, w = img.shape
    min_dim = min(h, w) / 4
    mask = np.zeros((h, w), np.uint8)
    for _ in range(num_ellipses):
        ax, ay = (int(max(rng.random() * min_dim, min_dim / 5)) for _ in range(2))
        r = max(ax, ay)
        if w <= 2 * r or h <= 2 * r:
            continue
        center = (int(rng.integers(r, w - r)), int(rng.integers(r, h - r)))
        cv2.ellipse(mask, center, (ax, ay), float(rng.random() * 90), 0, 360, 255, -1)
    k = int(rng.integers(*kernel_size)) | 1  # odd
    blurred = cv2.GaussianBlur(mask.astype(np.float32), (k, k), 0) / 255.0
    return np.clip(img * (1 - rng.uniform(*transparency) * blurred), 0, 1)


def motion_blur(rng: np.random.Generator, img: np.ndarray, max_kernel_size: int = 7) -> np.ndarray:
    """Blur along a random direction (horizontal, vertical, either diagonal), Gaussian-weighted."""
    ksize = int(rng.integers(0, (max_kernel_size + 1) // 2)) * 2 + 1
    if ksize == 1:
        return img
    c = (ksize - 1) // 2
    kernel = [np.eye(ksize), np.flipud(np.eye(ksize)), np.zeros((ksize, ksize)), np.zeros((ksize, ksize))]
    kernel[2][c, :] = 1.0
    kernel[3][:, c] = 1.0
    k = kernel[int(rng.integers(4))]
    grid = np.repeat(np.arange(ksize)[:, None], ksize, axis=1)
    k = k * np.exp(-((grid - c) ** 2 + (grid.T - c) ** 2) / (2.0 * ksize * ksize / 16.0))
    return cv2.filter2D(img, -1, (k / k.sum()).astype(np.float32), borderType=cv2.BORDER_REFLECT_101)


PRIMITIVES = (random_brightness, random_contrast, additive_gaussian_noise, additive_shade, motion_blur)


def photometric_hfnet(rng: np.random.Generator, img: np.ndarray) -> np.ndarray:
    """All five primitives in a random order on a grayscale ``[H, W]`` float image in ``[0, 1]``."""
    if img.ndim != 2:
        raise ValueError(f"img: expected a grayscale [H, W] image, got shape {img.shape}")
    out = img.astype(np.float32)
    for i in rng.permutation(len(PRIMITIVES)):
        out = PRIMITIVES[i](rng, out)
    return np.ascontiguousarray(out, dtype=np.float32)


def homographic(
    rng: np.random.Generator, img: np.ndarray, max_angle: float, scale_jitter: float, perspective: float
) -> tuple[np.ndarray, np.ndarray]:
    """Warp ``img [H, W, C]`` by a random homography about its centre (borders reflected).

    Returns:
        The warped image (same size) and ``H [3, 3]`` mapping input pixels to output pixels.
    """
    h, w = img.shape[:2]
    H = random_homography(rng, (w, h), max_angle, (1 - scale_jitter, 1 + scale_jitter), perspective)
    warped = cv2.warpPerspective(img, H, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
    return np.ascontiguousarray(warped.reshape(img.shape)), H
