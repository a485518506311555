"""Image sources every image recipe can use: folders, list files and the built-in offline images.

Shared building blocks live in ``train/datasets/`` (not inside a recipe's package) because later
recipes read the same sources: DELG's landmark images, LoFTR's pairs and the distillation crops
all start from ``gather_images`` and ``load_rgb``, and ``augment`` holds the photometric and
homographic augmentations any of them may apply.

Built-in names are ``skimage:<function>`` for ``skimage.data`` photos and absolute paths for the
Debian ``opencv-doc`` examples and the ViSP Castle-simu frames.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from visloc.data.castle import CASTLE_ROOT
from visloc.data.homography import OPENCV_DATA
from visloc.errors import InputError
from visloc.io.images import ImageError, list_images, read_image

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
        raise InputError(f"{path}: image list not found")
    out = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            p = Path(line)
            out.append(str(p if p.is_absolute() else path.parent / p))
    return out


def gather_images(folders: Sequence[str] = (), lists: Sequence[str] = (), builtin: bool = False) -> list[str]:
    """Every image name of the sources, in a stable order; no images raises ``InputError``.

    Args:
        folders: searched recursively.
        lists: text files of image paths (``read_list``).
        builtin: add ``builtin_images()``.
    """
    names: list[str] = []
    for folder in folders:
        names += [str(Path(folder) / n) for n in list_images(folder)]
    for lst in lists:
        names += read_list(lst)
    if builtin:
        names += builtin_images()
    if not names:
        raise InputError(f"data: no images found in folders {list(folders)} / lists {list(lists)}")
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


def collate(items: list[dict[str, Any]], lists: Sequence[str] = ("keypoints",)) -> dict[str, Any]:
    """Stack tensors of equal shape; keep other values (names) and the keys in ``lists`` as lists.

    ``lists`` names variable-length entries (keypoints ``[N_b, 2]``) that stay lists even when a
    batch happens to have equal lengths, so that the consumer sees one type.
    """
    out: dict[str, Any] = {}
    for key in items[0]:
        values = [it[key] for it in items]
        same = all(isinstance(v, torch.Tensor) and v.shape == values[0].shape for v in values)
        out[key] = torch.stack(values) if same and key not in lists else values
    return out
