"""Draw two images side by side with inlier (green) and outlier (red) matches, or coloured by confidence."""

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


def confidence_colors(scores: np.ndarray) -> np.ndarray:
    """``[M]`` confidences in ``[0, 1]`` -> ``[M, 3]`` uint8 BGR, red (0) through yellow to green (1)."""
    s = np.clip(np.asarray(scores, np.float64), 0, 1)[:, None]
    low, mid, high = np.array([0, 0, 230.0]), np.array([0, 220, 230.0]), np.array([0, 200, 0.0])
    out = np.where(s < 0.5, low + (mid - low) * (2 * s), mid + (high - mid) * (2 * s - 1))
    return out.round().astype(np.uint8)


def draw_matches(image0: np.ndarray, image1: np.ndarray, kpts0: np.ndarray, kpts1: np.ndarray,
                 inliers: np.ndarray | None = None, text: str = "", max_lines: int = 2000, *,
                 scores: np.ndarray | None = None) -> np.ndarray:
    """Side-by-side picture ``[max(H0, H1), W0 + W1 + 10, 3]`` uint8 BGR.

    Args:
        image0: float ``[H0, W0(, 3)]`` RGB in ``[0, 1]``.
        image1: float ``[H1, W1(, 3)]`` RGB in ``[0, 1]``.
        kpts0: matched keypoints ``[M, 2]`` in image 0 (pixels).
        kpts1: matched keypoints ``[M, 2]`` in image 1.
        inliers: ``[M]`` bool, inliers green and outliers red; None draws every match as an inlier.
        text: a caption drawn at the top left.
        max_lines: draw at most this many matches (evenly subsampled).
        scores: ``[M]`` confidences in ``[0, 1]``; without ``inliers`` each line is coloured by its
            confidence (``confidence_colors``: red low, green high), the most confident drawn on top.
    """
    return draw_matches_bgr(_to_bgr8(image0), _to_bgr8(image1), kpts0, kpts1, inliers=inliers, scores=scores,
                            text=text, max_lines=max_lines)


def draw_matches_bgr(image0: np.ndarray, image1: np.ndarray, kpts0: np.ndarray, kpts1: np.ndarray, *,
                     inliers: np.ndarray | None = None, scores: np.ndarray | None = None, text: str = "",
                     max_lines: int = 2000, antialias: bool = True) -> np.ndarray:
    """``draw_matches`` on uint8 BGR images ``[H, W, 3]`` (video frames as OpenCV reads them).

    ``antialias=False`` draws plain lines, about 4x faster (for video at frame rate).
    """
    gap = 10
    h = max(image0.shape[0], image1.shape[0])
    canvas = np.full((h, image0.shape[1] + gap + image1.shape[1], 3), 255, np.uint8)
    canvas[: image0.shape[0], : image0.shape[1]] = image0
    canvas[: image1.shape[0], image0.shape[1] + gap:] = image1
    if inliers is None and scores is not None:
        rank = np.asarray(scores, np.float64)
        colors = confidence_colors(rank)
    else:
        rank = np.ones(len(kpts0)) if inliers is None else np.asarray(inliers, np.float64)
        colors = np.where(rank[:, None] > 0, np.array([0, 200, 0], np.uint8), np.array([0, 0, 230], np.uint8))
    idx = np.arange(len(kpts0))
    if len(idx) > max_lines:
        idx = idx[np.linspace(0, len(idx) - 1, max_lines).astype(int)]
    off = np.array([image0.shape[1] + gap, 0])
    line_type = cv2.LINE_AA if antialias else cv2.LINE_8
    for i in sorted(idx, key=lambda i: rank[i]):  # inliers (or the most confident) drawn last, on top
        color = tuple(int(c) for c in colors[i])
        p0 = tuple(np.round(kpts0[i]).astype(int))
        p1 = tuple(np.round(kpts1[i] + off).astype(int))
        cv2.line(canvas, p0, p1, color, 1, line_type)
        cv2.circle(canvas, p0, 2, color, -1, line_type)
        cv2.circle(canvas, p1, 2, color, -1, line_type)
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
