"""Robust image reading and resizing.

Supported: JPEG, PNG, PGM/PPM, TIFF, BMP, WebP; 8 and 16 bit; gray, gray+alpha, RGB, RGBA, palette,
CMYK; EXIF orientation applied. Every failure raises ``ImageError`` with a one-line message that
names the file and the problem.

Pixel convention (as OpenCV and hloc): the centre of the top-left pixel is ``(0, 0)``. Resizing by
``scale = original / resized`` per axis maps a keypoint back by ``(p + 0.5) * scale - 0.5``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from visloc.errors import InputError, VislocError
from visloc.utils.image_ops import rgb_to_gray

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".pgm", ".ppm", ".pnm", ".tif", ".tiff", ".bmp", ".webp")
MAX_PIXELS = 300_000_000  # larger than any real photo; larger files are corrupt headers or bombs
MIN_SIDE = 8



class ImageError(VislocError, ValueError):
    """An image that cannot be used; the message names the file and the problem."""


def _to_float_array(img: Image.Image, path: Path) -> np.ndarray:
    """PIL image of any mode -> float32 ``[H, W]`` or ``[H, W, 3]`` in ``[0, 1]``."""
    mode = img.mode
    if mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
        mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        return np.asarray(img, dtype=np.uint16).astype(np.float32) / 65535.0
    if mode == "I":  # 32-bit container PIL uses for 16-bit data (PGM rescaled to 0..65535, older PNGs)
        # Always the 16-bit scale: guessing it from the maximum made dark 16-bit images 257x too bright.
        arr = np.asarray(img, dtype=np.int64)
        return np.clip(arr.astype(np.float32) / 65535.0, 0.0, 1.0)
    if mode == "F":
        arr = np.asarray(img, dtype=np.float32)
        if not np.isfinite(arr).all():
            raise ImageError(f"{path}: float image contains NaN or infinity")
        lo, hi = float(arr.min()), float(arr.max())
        return (arr - lo) / (hi - lo) if hi > lo else np.zeros_like(arr)
    if mode in ("1", "L"):
        return np.asarray(img.convert("L"), dtype=np.float32) / 255.0
    if mode == "LA":
        return np.asarray(img.getchannel(0), dtype=np.float32) / 255.0
    return np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0


def read_image(path: str | Path, grayscale: bool = False) -> np.ndarray:
    """Read an image as float32 in ``[0, 1]``.

    Args:
        path: image file.
        grayscale: return ``[H, W]`` luminance (ITU-R 601, as OpenCV) instead of ``[H, W, 3]`` RGB.

    Returns:
        ``[H, W]`` if ``grayscale`` else ``[H, W, 3]``; an alpha channel is dropped.

    Raises:
        ImageError: missing, unreadable, truncated, empty or absurdly large file.
    """
    path = Path(path)
    if not path.is_file():
        raise ImageError(f"{path}: file not found")
    if path.stat().st_size == 0:
        raise ImageError(f"{path}: empty file")
    try:
        with Image.open(path) as img:
            w, h = img.size
            if w * h > MAX_PIXELS:
                raise ImageError(f"{path}: absurd size {w}x{h} (more than {MAX_PIXELS} pixels)")
            if min(w, h) < MIN_SIDE:
                raise ImageError(f"{path}: image too small ({w}x{h}, need at least {MIN_SIDE} px per side)")
            img.load()
            img = ImageOps.exif_transpose(img) or img
            arr = _to_float_array(img, path)
    except UnidentifiedImageError:
        raise ImageError(f"{path}: not an image or an unsupported format") from None
    except Image.DecompressionBombError:
        raise ImageError(f"{path}: absurd size (decompression bomb)") from None
    except (OSError, SyntaxError, ValueError) as e:
        if isinstance(e, ImageError):
            raise
        raise ImageError(f"{path}: truncated or corrupt image ({str(e).splitlines()[0][:80]})") from None
    if grayscale and arr.ndim == 3:
        arr = rgb_to_gray(arr)
    if not grayscale and arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    return np.ascontiguousarray(arr, dtype=np.float32)


@dataclass(frozen=True)
class Resized:
    """A resized image and the per-axis ``scale = original / resized`` as ``(sx, sy)``."""

    image: np.ndarray
    scale: tuple[float, float]
    original_size: tuple[int, int]  # (W, H)


def resize_image(image: np.ndarray, resize_max: int | None = None, size: tuple[int, int] | None = None,
                 force: bool = False) -> Resized:
    """Resize so the longest edge is ``resize_max`` (or to exactly ``size = (W, H)``).

    ``resize_max`` only shrinks unless ``force`` is set. Area interpolation when shrinking, linear
    otherwise.

    Raises:
        InputError: ``resize_max`` is below 8 pixels (it comes from a conf or an option).
    """
    if resize_max is not None and resize_max < 8:
        raise InputError(f"resize_max: expected >= 8 pixels (or none), got {resize_max}")
    h, w = image.shape[:2]
    if size is not None:
        new_w, new_h = int(size[0]), int(size[1])
    elif resize_max is not None and (force or max(h, w) > resize_max):
        s = resize_max / max(h, w)
        new_w, new_h = max(1, round(w * s)), max(1, round(h * s))
    else:
        return Resized(image, (1.0, 1.0), (w, h))
    if (new_w, new_h) == (w, h):
        return Resized(image, (1.0, 1.0), (w, h))
    interp = cv2.INTER_AREA if new_w * new_h < w * h else cv2.INTER_LINEAR
    out = cv2.resize(image, (new_w, new_h), interpolation=interp)
    return Resized(out, (w / new_w, h / new_h), (w, h))


def scale_keypoints(keypoints: np.ndarray, scale: tuple[float, float]) -> np.ndarray:
    """Map ``[N, 2]`` keypoints from the resized image back to the original (pixel-centre-at-0)."""
    s = np.asarray(scale, dtype=np.float64)
    return ((keypoints.astype(np.float64) + 0.5) * s - 0.5).astype(np.float32)


def list_images(root: str | Path) -> list[str]:
    """Image files below ``root`` as sorted POSIX paths relative to it."""
    root = Path(root)
    if not root.is_dir():
        raise ImageError(f"{root}: not a directory")
    return sorted(
        p.relative_to(root).as_posix()
        for p in root.rglob("*")
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
    )
