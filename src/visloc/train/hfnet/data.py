"""HF-Net distillation items: random crops for the teachers and a degraded gray copy for the student.

An item is a random crop of one image at the training size ``(W, H)`` (scaled to cover it, times a
factor in ``scale_range``), optionally warped by a random homography. The teachers see the clean
RGB crop (``image [3, H, W]``); the student sees its grayscale copy after HF-Net's photometric
augmentation (``student_image [1, H, W]``), so that it learns the teachers' answer on clean images
from degraded ones. A file that cannot be read is logged once and replaced by the next image; the
run never stops for it. The image sources are ``train.datasets.images``.
"""

from __future__ import annotations

import logging
from typing import TypedDict

import numpy as np
import torch
from torch.utils.data import Dataset

from visloc.data.homography import fit_image
from visloc.errors import InputError
from visloc.io.images import ImageError
from visloc.train.datasets.augment import homographic, photometric_hfnet
from visloc.train.datasets.images import gather_images, load_rgb, random_crop
from visloc.train.hfnet.conf import DataConf
from visloc.utils.image_ops import rgb_to_gray

logger = logging.getLogger(__name__)


def training_images(conf: DataConf) -> list[str]:
    """Every image name of the data section's sources (``gather_images``)."""
    return gather_images(conf.folders, conf.lists, conf.builtin)


class DistillItem(TypedDict):
    """One training item: ``image [3, H, W]`` RGB and ``student_image [1, H, W]`` gray, float in [0, 1]."""

    name: str
    image: torch.Tensor
    student_image: torch.Tensor


class DistillDataset(Dataset[DistillItem]):
    """Random training crops; see the module docstring.

    Args:
        names: image paths or ``skimage:<name>``.
        conf: data section of the recipe.
        augment: random crops and augmentation; False gives the centre crop at scale 1, unaugmented.
    """

    def __init__(self, names: list[str], conf: DataConf, augment: bool = True) -> None:
        if not names:
            raise InputError("data: no training images")
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
        raise InputError(f"data: none of the {len(self.names)} training images can be read")

    def __getitem__(self, index: int) -> DistillItem:
        name, rgb = self._load(index % len(self.names))
        c = self.conf
        if not self.augment:
            rgb = fit_image(rgb, self.size)
            gray = rgb_to_gray(rgb)
        else:
            rng = np.random.default_rng(int(torch.randint(0, 2**62, (1,)).item()))
            rgb = random_crop(rng, rgb, self.size, (c.scale_range[0], c.scale_range[1]))
            if c.homographic:
                rgb, _ = homographic(rng, rgb, c.max_angle, c.scale_jitter, c.perspective)
            gray = rgb_to_gray(rgb)
            if c.photometric:
                gray = photometric_hfnet(rng, gray)
        return {
            "name": name,
            "image": torch.from_numpy(np.clip(rgb, 0, 1)).permute(2, 0, 1).contiguous(),
            "student_image": torch.from_numpy(gray)[None],
        }
