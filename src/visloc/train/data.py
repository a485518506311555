"""Training images for distillation: folders, list files and the built-in offline images.

An item is a random crop of one image at the training size ``(W, H)`` (scaled to cover it, times a
factor in ``scale_range``), optionally warped by a random homography. The teachers see the clean
RGB crop (``image [3, H, W]``); the student sees its grayscale copy after HF-Net's photometric
augmentation (``student_image [1, H, W]``), so that it learns the teachers' answer on clean images
from degraded ones. A file that cannot be read is logged once and replaced by the next image; the
run never stops for it.

Built-in names are ``skimage:<function>`` for ``skimage.data`` photos and absolute paths for the
Debian ``opencv-doc`` examples and the ViSP Castle-simu frames.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from visloc.data.castle import CASTLE_ROOT
from visloc.data.homography import OPENCV_DATA, fit_image
from visloc.io.images import ImageError, list_images, read_image
from visloc.train.augment import homographic, photometric_hfnet
from visloc.train.config import DataConf

logger = logging.getLogger(__name__)

#: ``skimage.data`` images shipped inside the package (no download)
SKIMAGE_PHOTOS = (
    "astronaut",
    "brick",
    "camera",
    "chelsea",
    "clock",
    "coffee",
    "coins",
    "grass",
    "gravel",
    "hubble_deep_field",
    "immunohistochemistry",
    "moon",
    "page",
    "retina",
    "rocket",
    "text",
    "stereo_motorcycle",
)
#: opencv-doc examples that are photographs or rendered scenes (not logos, plots or text files)
OPENCV_PHOTOS = (
    "aero1.jpg",
    "aero3.jpg",
    "aloeL.jpg",
    "aloeR.jpg",
    "apple.jpg",
    "baboon.jpg",
    "basketball1.png",
    "basketball2.png",
    "blox.jpg",
    "board.jpg",
    "box.png",
    "box_in_scene.png",
    "building.jpg",
    "butterfly.jpg",
    "fruits.jpg",
    "graf1.png",
    "graf3.png",
    "home.jpg",
    "lena.jpg",
    "leuvenA.jpg",
    "leuvenB.jpg",
    "left01.jpg",
    "messi5.jpg",
    "orange.jpg",
    "rubberwhale1.png",
    "rubberwhale2.png",
    "smarties.png",
    "squirrel_cls.jpg",
    "starry_night.jpg",
    "stuff.jpg",
    "sudoku.png",
    "Blender_Suzanne1.jpg",
    "Blender_Suzanne2.jpg",
    "HappyFish.jpg",
    "ela_original.jpg",
)


def builtin_images(opencv_root: Path = OPENCV_DATA, castle_root: Path = CASTLE_ROOT) -> list[str]:
    """Names of the offline images present on this machine (skimage always; Debian packages if installed)."""
    names = [f"skimage:{n}" for n in SKIMAGE_PHOTOS]
    names += [str(opencv_root / n) for n in OPENCV_PHOTOS if (opencv_root / n).is_file()]
    castle = Path(castle_root) / "Images"
    if castle.is_dir():
        names += sorted(str(p) for p in castle.glob("Image_*.pgm"))
    return names


def read_list(path: str | Path) -> list[str]:
    """Image paths of a text list (one a line, ``#`` comments); relative ones are relative to its folder."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: image list not found")
    out = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            p = Path(line)
            out.append(str(p if p.is_absolute() else path.parent / p))
    return out


def gather_images(conf: DataConf) -> list[str]:
    """Every image name of the configured sources, in a stable order; no images raises ``ValueError``."""
    names: list[str] = []
    for folder in conf.folders:
        names += [str(Path(folder) / n) for n in list_images(folder)]
    for lst in conf.lists:
        names += read_list(lst)
    if conf.builtin:
        names += builtin_images()
    if not names:
        raise ValueError(f"data: no images found in folders {list(conf.folders)} / lists {list(conf.lists)}")
    return names


def load_rgb(name: str) -> np.ndarray:
    """``[H, W, 3]`` float32 in ``[0, 1]`` of a file path or a ``skimage:<name>`` image."""
    if not name.startswith("skimage:"):
        return read_image(name)
    import skimage.data

    fn = getattr(skimage.data, name[len("skimage:") :], None)
    if fn is None:
        raise ImageError(f"{name}: no such skimage.data image")
    img = fn()
    img = np.asarray(img[0] if isinstance(img, tuple) else img)
    img = img.astype(np.float32) / (255.0 if img.dtype == np.uint8 else max(float(img.max()), 1e-6))
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, 2)
    return np.ascontiguousarray(img[..., :3])


def random_crop(
    rng: np.random.Generator, img: np.ndarray, size: tuple[int, int], scale_range: tuple[float, float]
) -> np.ndarray:
    """Scale ``img`` to cover ``size`` (W, H) times a factor in ``scale_range``, then crop randomly."""
    w, h = size
    s = max(w / img.shape[1], h / img.shape[0]) * rng.uniform(*scale_range)
    nw, nh = max(w, round(img.shape[1] * s)), max(h, round(img.shape[0] * s))
    img = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR)
    y0, x0 = int(rng.integers(0, nh - h + 1)), int(rng.integers(0, nw - w + 1))
    return np.ascontiguousarray(img[y0 : y0 + h, x0 : x0 + w])


def to_gray(rgb: np.ndarray) -> np.ndarray:
    """ITU-R 601 luminance ``[H, W]`` of ``[H, W, 3]`` (as ``read_image(grayscale=True)``)."""
    return np.ascontiguousarray(rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32))


def collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack tensors of equal shape; keep names and variable-length ``keypoints`` as lists."""
    out: dict[str, Any] = {}
    for key in items[0]:
        values = [it[key] for it in items]
        same = all(isinstance(v, torch.Tensor) and v.shape == values[0].shape for v in values)
        out[key] = torch.stack(values) if same and key != "keypoints" else values
    return out


class DistillDataset(Dataset):
    """Random training crops; see the module docstring.

    Args:
        names: image paths or ``skimage:<name>``.
        conf: data section of the recipe.
        augment: random crops and augmentation; False gives the centre crop at scale 1, unaugmented.
    """

    def __init__(self, names: list[str], conf: DataConf, augment: bool = True) -> None:
        if not names:
            raise ValueError("names: no training images")
        self.names, self.conf, self.augment = list(names), conf, augment
        self.size = (int(conf.size[0]), int(conf.size[1]))
        self.bad: set[str] = set()

    def __len__(self) -> int:
        return len(self.names) * max(1, self.conf.repeat)

    def _load(self, index: int) -> tuple[str, np.ndarray]:
        for k in range(len(self.names)):
            name = self.names[(index + k) % len(self.names)]
            if name in self.bad:
                continue
            try:
                return name, load_rgb(name)
            except (ImageError, OSError, ValueError) as e:
                self.bad.add(name)
                logger.warning("skipping training image %s: %s", name, str(e).splitlines()[0][:120])
        raise ValueError(f"data: none of the {len(self.names)} training images can be read")

    def __getitem__(self, index: int) -> dict[str, torch.Tensor | str]:
        name, rgb = self._load(index % len(self.names))
        c = self.conf
        if not self.augment:
            rgb = fit_image(rgb, self.size)
            gray = to_gray(rgb)
        else:
            rng = np.random.default_rng(int(torch.randint(0, 2**62, (1,)).item()))
            rgb = random_crop(rng, rgb, self.size, (c.scale_range[0], c.scale_range[1]))
            if c.homographic:
                rgb, _ = homographic(rng, rgb, c.max_angle, c.scale_jitter, c.perspective)
            gray = to_gray(rgb)
            if c.photometric:
                gray = photometric_hfnet(rng, gray)
        return {
            "name": name,
            "image": torch.from_numpy(np.clip(rgb, 0, 1)).permute(2, 0, 1).contiguous(),
            "student_image": torch.from_numpy(gray)[None],
        }
