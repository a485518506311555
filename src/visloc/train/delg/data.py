"""Training data of DELF / DELG: a GLDv2 train folder, relabelled, split per class, augmented as the TF code.

- Labels and split: ``data.gldv2_split`` (DELF's relabelling to ``0..K-1`` and per-class 80 / 20 rule; the
  run folder's ``relabeling.csv`` holds ``new_label,old_label``), either from the folder's CSVs
  (``open_split``) or from the index that ``visloc data gldv2 prepare`` wrote (``open_index_split``).
- Training images (``LandmarkImages`` with ``augment``): the crop of ``sample_crop`` (TF's
  ``sample_distorted_bounding_box`` over the whole image: aspect ratio and area drawn, up to 100 attempts,
  else the whole image), resized to ``image_size`` squared with ``cv2.INTER_AREA`` (aspect distorted),
  optional flip and colour jitter (off by default, as TF), then the weights' normalisation. Validation
  images: the whole image resized to ``image_size`` squared.

An image that cannot be read or decoded is logged once and replaced by the next readable item (at most
``MAX_SUBSTITUTES`` tried), so one damaged JPEG among millions does not end a training run.

Each item's draws come from a generator seeded by ``(seed, epoch, index)``: call ``set_epoch`` each epoch
(the module does). The dataset is map-style, so under DDP Lightning's ``DistributedSampler`` shards it.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, TypedDict

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from visloc.data.errors import DatasetError
from visloc.data.gldv2_index import Gldv2Index, IndexItems
from visloc.data.gldv2_split import LandmarkSplit, build_split
from visloc.data.world.gldv2_layout import TRAIN_CLEAN_CSV, TRAIN_CSV, Gldv2Train
from visloc.train.delg.conf import DataConf
from visloc.weights.records import Preprocessing

logger = logging.getLogger(__name__)
#: how many following items an unreadable image may be replaced by before the batch fails
MAX_SUBSTITUTES = 16

@functools.lru_cache(maxsize=2)
def open_split(root: str, clean: bool = True, fraction: float = 0.2, seed: int = 0,
               verify_md5: bool = False) -> tuple[Gldv2Train, LandmarkSplit]:
    """The opened GLDv2 folder and its split (cached: ``data`` and the module's ``setup`` share one)."""
    layout = Gldv2Train.open(root, verify=verify_md5)
    labels = layout.labels(clean)
    if not labels:
        raise DatasetError(f"{root}: no labelled image in {TRAIN_CLEAN_CSV if clean else TRAIN_CSV}")
    return layout, build_split(labels, fraction, seed)


@functools.lru_cache(maxsize=2)
def open_index_split(folder: str) -> tuple[Gldv2Index, LandmarkSplit, np.ndarray]:
    """The index ``visloc data gldv2 prepare`` wrote in ``folder``, its split and each training image's shard.

    The split is the index's own (its ``label`` and ``split`` columns), backed by the index's arrays;
    ``relabeling.csv`` beside the index maps the labels back to landmark ids.
    """
    index = Gldv2Index.open(folder)
    labels, first = np.unique(index.labels, return_index=True)
    if len(labels) == 0 or labels[0] != 0 or labels[-1] != len(labels) - 1:
        raise DatasetError(f"{folder}: labels must be 0..K-1, got {len(labels)} distinct labels")
    old = index.landmarks[first]
    if bool((old[index.labels] != index.landmarks).any()):
        raise DatasetError(f"{folder}: a label stands for two landmark ids")
    train, val = index.items("train"), index.items("val")
    return index, LandmarkSplit(train, val, tuple(int(x) for x in old)), train.shards()


def open_training_data(d: DataConf) -> tuple[ImageBytes, LandmarkSplit, Sequence[str] | np.ndarray]:
    """``(reader, split, shard of each training image)`` of ``data:``: its prepared index, else its folder.

    Without an index every image is its own shard ``""`` (samplers then deal images, not tars).
    """
    if d.index:
        return open_index_split(d.index)
    layout, split = open_split(d.root, d.clean, d.val_fraction, d.split_seed, d.verify_md5)
    return layout, split, ("",) * len(split.train)


class ImageBytes(Protocol):
    """Where a dataset reads JPEG bytes by image id (``Gldv2Train`` or ``Gldv2Index``)."""

    @property
    def root(self) -> Path:
        """The folder named in messages."""
        ...

    def read_bytes(self, image_id: str) -> bytes:
        """The image's bytes; ``DatasetError`` naming the file when they cannot be read."""
        ...


def sample_crop(rng: np.random.Generator, height: int, width: int, area_range: Sequence[float] = (0.08, 1.0),
                aspect_range: Sequence[float] = (3 / 4, 4 / 3), min_covered: float = 0.1,
                max_attempts: int = 100) -> tuple[int, int, int, int]:
    """A random crop ``(y, x, h, w)`` in pixels, as TF's ``sample_distorted_bounding_box`` of the whole image.

    Per attempt: an aspect ratio ``w / h`` uniform in ``aspect_range``, a height uniform between those of the
    smallest and largest allowed area (capped by the image), the width from the ratio; accepted when its
    area lies in ``area_range`` times the image's and covers at least ``min_covered`` of it; the position is
    uniform. After ``max_attempts`` failures: the whole image (TF's fallback).
    """
    total = height * width
    lo, hi = area_range[0] * total, area_range[1] * total
    for _ in range(max_attempts):
        aspect = rng.uniform(aspect_range[0], aspect_range[1])
        h_min = int(math.ceil(math.sqrt(lo / aspect)))
        h_max = min(int(math.floor(math.sqrt(hi / aspect))), height, int(math.floor(width / aspect)))
        if h_max < max(h_min, 1):
            continue
        h = int(rng.integers(max(h_min, 1), h_max + 1))
        w = min(width, max(1, int(round(h * aspect))))
        area = h * w
        if not (lo <= area <= hi and area >= min_covered * total):
            continue
        return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
    return 0, 0, height, width


def jitter_colour(rng: np.random.Generator, image: np.ndarray, strength: float) -> np.ndarray:
    """Brightness, contrast and saturation factors in ``[1 - s, 1 + s]`` (random order) of float RGB in [0, 1]."""
    out = image
    for k in rng.permutation(3):
        f = float(rng.uniform(1 - strength, 1 + strength))
        if k == 0:
            out = out * f
        elif k == 1:
            out = (out - out.mean()) * f + out.mean()
        else:
            gray = out @ np.array([0.299, 0.587, 0.114], np.float32)
            out = (out - gray[..., None]) * f + gray[..., None]
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def decode_rgb(data: bytes, where: str) -> np.ndarray:
    """``[H, W, 3]`` uint8 RGB of JPEG (or PNG) bytes; ``DatasetError`` naming ``where`` when they do not decode."""
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if bgr is None:
        raise DatasetError(f"{where}: not a decodable image ({len(data)} bytes)")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def to_tensor(rgb: np.ndarray, pre: Preprocessing) -> torch.Tensor:
    """``[3, H, W]`` float32 normalised by ``pre`` from RGB ``[H, W, 3]`` (uint8, or float in [0, 1])."""
    x = rgb.astype(np.float32) / 255.0 if rgb.dtype == np.uint8 else rgb.astype(np.float32)
    mean, std = pre.normalisation()
    x = (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))


class LandmarkItem(TypedDict):
    """One image: ``image [3, S, S]`` normalised, ``label`` in ``[0, K)``, ``index`` in the dataset."""

    image: torch.Tensor
    label: int
    index: int


@dataclass(frozen=True)
class Augment:
    """The training augmentation (``DataConf``'s fields); None in ``LandmarkImages``: plain resize."""

    area_range: tuple[float, ...] = (0.08, 1.0)
    aspect_range: tuple[float, ...] = (3 / 4, 4 / 3)
    min_covered: float = 0.1
    flip: bool = False
    color_jitter: float = 0.0


class LandmarkImages(Dataset):
    """``(image id, label)`` items of a GLDv2 folder as ``LandmarkItem`` (module docstring).

    Args:
        layout: the opened folder or index.
        items: ``(image id, label)`` pairs.
        size: side of the square output.
        pre: the input normalisation.
        augment: the training augmentation, or None (validation: the whole image resized).
        seed: seed of the augmentation.
    """

    def __init__(self, layout: ImageBytes, items: Sequence[tuple[str, int]], size: int, pre: Preprocessing,
                 augment: Augment | None = None, seed: int = 0) -> None:
        self.layout, self.size, self.pre = layout, size, pre
        self.items = items if isinstance(items, IndexItems) else list(items)  # IndexItems: arrays, kept as is
        self.augment, self.seed, self.epoch = augment, seed, 0
        self.bad: set[str] = set()

    def __len__(self) -> int:
        return len(self.items)

    def set_epoch(self, epoch: int) -> None:
        """Draw this epoch's augmentation (as ``DistributedSampler.set_epoch``)."""
        self.epoch = epoch

    def _read(self, index: int) -> tuple[int, int, np.ndarray]:
        """``(index, label, RGB)`` of item ``index``, or of the next readable one (a bad image is logged, once)."""
        for k in range(min(MAX_SUBSTITUTES + 1, len(self.items))):
            i = (index + k) % len(self.items)
            image_id, label = self.items[i]
            try:
                return i, label, decode_rgb(self.layout.read_bytes(image_id), f"{self.layout.root}: image {image_id}")
            except DatasetError as e:
                if image_id not in self.bad:
                    self.bad.add(image_id)
                    logger.warning("%s (skipped: the next image is used in its place)", e)
        raise DatasetError(f"{self.layout.root}: items {index}..{index + MAX_SUBSTITUTES} are all unreadable")

    def __getitem__(self, index: int) -> LandmarkItem:
        index, label, rgb = self._read(index)
        a = self.augment
        if a is None:
            out = cv2.resize(rgb, (self.size, self.size), interpolation=cv2.INTER_AREA)
            return {"image": to_tensor(out, self.pre), "label": label, "index": index}
        rng = np.random.default_rng((self.seed, self.epoch, index))
        y, x, h, w = sample_crop(rng, rgb.shape[0], rgb.shape[1], a.area_range, a.aspect_range, a.min_covered)
        out = cv2.resize(rgb[y:y + h, x:x + w], (self.size, self.size), interpolation=cv2.INTER_AREA)
        if a.flip and rng.random() < 0.5:
            out = out[:, ::-1]
        if a.color_jitter > 0:
            out = jitter_colour(rng, out.astype(np.float32) / 255.0, a.color_jitter)
        return {"image": to_tensor(out, self.pre), "label": label, "index": index}
