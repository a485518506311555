"""Draw two images side by side with inlier (green) and outlier (red) matches."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from visloc.errors import InputError
from visloc.io.atomic import atomic_path


def _to_bgr8(image: np.ndarray) -> np.ndarray:
    img = (np.clip(image, 0, 1) * 255).round().astype(np.uint8)
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, 2)
    return cv2.cvtColor(img, cv2.COLOR_RGB2BGR)


def draw_matches(image0: np.ndarray, image1: np.ndarray, kpts0: np.ndarray, kpts1: np.ndarray,
                 inliers: np.ndarray | None = None, text: str = "", max_lines: int = 2000) -> np.ndarray:
    """Side-by-side picture ``[max(H0, H1), W0 + W1 + 10, 3]`` uint8 BGR.

    Args:
        image0: float ``[H0, W0(, 3)]`` in ``[0, 1]``.
        image1: float ``[H1, W1(, 3)]`` in ``[0, 1]``.
        kpts0: matched keypoints ``[M, 2]`` in image 0 (pixels).
        kpts1: matched keypoints ``[M, 2]`` in image 1.
        inliers: ``[M]`` bool; None draws every match as an inlier.
        text: a caption drawn at the top left.
        max_lines: draw at most this many matches (evenly subsampled).
    """
    a, b = _to_bgr8(image0), _to_bgr8(image1)
    gap = 10
    h = max(a.shape[0], b.shape[0])
    canvas = np.full((h, a.shape[1] + gap + b.shape[1], 3), 255, np.uint8)
    canvas[: a.shape[0], : a.shape[1]] = a
    canvas[: b.shape[0], a.shape[1] + gap:] = b
    inl = np.ones(len(kpts0), bool) if inliers is None else np.asarray(inliers, bool)
    idx = np.arange(len(kpts0))
    if len(idx) > max_lines:
        idx = idx[np.linspace(0, len(idx) - 1, max_lines).astype(int)]
    off = np.array([a.shape[1] + gap, 0])
    for i in sorted(idx, key=lambda i: inl[i]):  # inliers drawn last, on top
        color = (0, 200, 0) if inl[i] else (0, 0, 230)
        p0 = tuple(np.round(kpts0[i]).astype(int))
        p1 = tuple(np.round(kpts1[i] + off).astype(int))
        cv2.line(canvas, p0, p1, color, 1, cv2.LINE_AA)
        cv2.circle(canvas, p0, 2, color, -1, cv2.LINE_AA)
        cv2.circle(canvas, p1, 2, color, -1, cv2.LINE_AA)
    if text:
        for thickness, color in ((4, (0, 0, 0)), (1, (255, 255, 255))):
            cv2.putText(canvas, text, (10, 25), cv2.FONT_HERSHEY_SIMPLEX, 0.6, color, thickness, cv2.LINE_AA)
    return canvas


def save_image(path: str | Path, image_bgr: np.ndarray) -> Path:
    """Write an image atomically (format from the suffix); return the path."""
    path = Path(path)
    try:
        ok, buf = cv2.imencode(path.suffix or ".png", image_bgr)
    except cv2.error:  # OpenCV raises for a suffix it has no writer for
        ok = False
    if not ok:
        raise InputError(f"{path}: cannot encode an image with this suffix (use .png or .jpg)")
    with atomic_path(path) as tmp:
        tmp.write_bytes(buf.tobytes())
    return path
