"""Image pairs related by a known homography: OpenCV's graf pair and built-in synthetic pairs.

``H_0to1`` maps pixels of image 0 to image 1 in the pixel-centre-at-0 convention of the original
(unresized) images.

- **graf** (Debian ``opencv-doc``, ``examples/data``): ``graf1.png`` -> ``graf3.png``, 800x640, a
  strong viewpoint change of a painted wall, with ``H1to3p.xml`` (the Oxford affine dataset's
  ground truth, an OpenCV FileStorage matrix ``H13``).
- **synthetic** (built in, needs only pip): real photos from ``skimage.data`` cropped to 640x480,
  each warped by a random homography (rotation, scale, perspective) with photometric changes
  (gain, gamma, blur, noise). Reproducible from ``seed``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from visloc.data.errors import DatasetError
from visloc.io.images import read_image

OPENCV_DATA = Path("/usr/share/doc/opencv-doc/examples/data")
SYNTHETIC_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "camera", "immunohistochemistry",
                    "hubble_deep_field", "retina")


@dataclass(frozen=True)
class HomographyPair:
    """Two RGB float32 images ``[H, W, 3]`` in ``[0, 1]`` and ``H_0to1 [3, 3]``."""

    name0: str
    name1: str
    image0: np.ndarray
    image1: np.ndarray
    H_0to1: np.ndarray

    @property
    def key(self) -> str:
        """``name0/name1`` with slashes in names replaced, as pair keys elsewhere."""
        return f"{self.name0.replace('/', '-')}/{self.name1.replace('/', '-')}"


def read_opencv_matrix(path: Path, node: str) -> np.ndarray:
    """Read matrix ``node`` of an OpenCV FileStorage XML/YAML file as float64."""
    if not path.is_file():
        raise DatasetError(f"{path}: not found")
    fs = cv2.FileStorage(str(path), cv2.FILE_STORAGE_READ)
    try:
        mat = fs.getNode(node).mat()
    finally:
        fs.release()
    if mat is None:
        raise DatasetError(f"{path}: no matrix named {node!r}")
    return np.asarray(mat, dtype=np.float64)


def load_graf(root: Path = OPENCV_DATA) -> list[HomographyPair]:
    """The graf1 -> graf3 pair with its ground-truth homography."""
    root = Path(root)
    files = [root / "graf1.png", root / "graf3.png", root / "H1to3p.xml"]
    missing = [f for f in files if not f.is_file()]
    if missing:
        raise DatasetError(f"{missing[0]}: not found; install the Debian package opencv-doc "
                           "(apt-get install opencv-doc)")
    H = read_opencv_matrix(files[2], "H13")
    return [HomographyPair("graf1.png", "graf3.png", read_image(files[0]), read_image(files[1]), H / H[2, 2])]


def _photo(name: str, size: tuple[int, int]) -> np.ndarray:
    import skimage.data

    img = getattr(skimage.data, name)()
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, 2)
    return fit_image(img[..., :3].astype(np.float32) / 255.0, size)


def fit_image(img: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Scale ``img [H, W, C]`` to cover ``size`` (W, H), then crop its centre to exactly that size."""
    w, h = size
    s = max(w / img.shape[1], h / img.shape[0])
    img = cv2.resize(img, (max(w, round(img.shape[1] * s)), max(h, round(img.shape[0] * s))),
                     interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR)
    y0, x0 = (img.shape[0] - h) // 2, (img.shape[1] - w) // 2
    return np.ascontiguousarray(img[y0:y0 + h, x0:x0 + w])


def random_homography(rng: np.random.Generator, size: tuple[int, int], max_angle: float = 25.0,
                      scale_range: tuple[float, float] = (0.75, 1.25), perspective: float = 0.1) -> np.ndarray:
    """A random ``H`` about the image centre: rotation, scale, then corner perturbation."""
    w, h = size
    c = np.array([(w - 1) / 2, (h - 1) / 2])
    a = np.deg2rad(rng.uniform(-max_angle, max_angle))
    s = rng.uniform(*scale_range)
    R = np.array([[s * np.cos(a), -s * np.sin(a)], [s * np.sin(a), s * np.cos(a)]])
    src = np.array([[0, 0], [w - 1, 0], [w - 1, h - 1], [0, h - 1]], dtype=np.float64)
    dst = (src - c) @ R.T + c + rng.uniform(-perspective, perspective, (4, 2)) * np.array([w, h])
    return cv2.getPerspectiveTransform(src.astype(np.float32), dst.astype(np.float32)).astype(np.float64)


def photometric(rng: np.random.Generator, image: np.ndarray) -> np.ndarray:
    """Gain, gamma, Gaussian blur and sensor noise, clipped to ``[0, 1]``."""
    out = np.clip(image * rng.uniform(0.6, 1.4), 0, 1) ** rng.uniform(0.7, 1.5)
    sigma = rng.uniform(0.0, 1.5)
    if sigma > 0.3:
        out = cv2.GaussianBlur(out, (0, 0), sigma)
    out = out + rng.normal(0.0, rng.uniform(0.0, 0.03), out.shape)
    return np.clip(out, 0, 1).astype(np.float32)


def synthetic_pairs(seed: int = 0, pairs_per_photo: int = 2, size: tuple[int, int] = (640, 480),
                    photos: tuple[str, ...] = SYNTHETIC_PHOTOS,
                    warp: Callable[[np.random.Generator, tuple[int, int]], np.ndarray] = random_homography,
                    ) -> list[HomographyPair]:
    """Built-in pairs from real photos: ``photo`` -> warped, photometrically changed copy."""
    rng = np.random.default_rng(seed)
    out = []
    for name in photos:
        base = _photo(name, size)
        for k in range(pairs_per_photo):
            H = warp(rng, size)
            warped = cv2.warpPerspective(base, H, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
            out.append(HomographyPair(f"{name}.png", f"{name}_warp{k}.png", base, photometric(rng, warped), H))
    return out
