"""Training data of DELF / DELG: a GLDv2 train folder, relabelled, split per class, augmented as the TF code.

- Labels: ``Gldv2Train.labels(clean)`` (``train_clean.csv`` or ``train.csv``), landmark ids mapped to
  ``0..K-1`` in sorted order (DELF's ``build_image_dataset.py``; ``relabeling.csv`` in the run folder holds
  ``new_label,old_label``).
- Split (``split_per_class``): per class (in label order; its image ids sorted), a shuffle by a seeded numpy
  ``Generator``, then ``max(1, int(fraction * n))`` images to validation and the rest to training, as
  ``build_image_dataset.py`` (which uses ``RandomState(MT19937(SeedSequence(seed)))``: the same rule, other
  draws). A class of one image therefore goes to validation whole and is never trained on.
- Training images (``LandmarkImages`` with ``augment``): the crop of ``sample_crop`` (TF's
  ``sample_distorted_bounding_box`` over the whole image: aspect ratio and area drawn, up to 100 attempts,
  else the whole image), resized to ``image_size`` squared with ``cv2.INTER_AREA`` (aspect distorted),
  optional flip and colour jitter (off by default, as TF), then the weights' normalisation. Validation
  images: the whole image resized to ``image_size`` squared.

Each item's draws come from a generator seeded by ``(seed, epoch, index)``: call ``set_epoch`` each epoch
(the module does). The dataset is map-style, so under DDP Lightning's ``DistributedSampler`` shards it.
"""

from __future__ import annotations

import csv
import functools
import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypedDict

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from visloc.data.errors import DatasetError
from visloc.data.world.gldv2_layout import TRAIN_CLEAN_CSV, TRAIN_CSV, Gldv2Train, read_train_clean_csv, read_train_csv
from visloc.io.atomic import atomic_write_text
from visloc.weights.records import Preprocessing

RELABELING_CSV = "relabeling.csv"


def read_labels(root: str | Path, clean: bool = True) -> dict[str, int]:
    """``image id -> landmark_id`` from the CSVs alone (no tar is opened): what ``Gldv2Train.labels`` gives."""
    root = Path(root)
    if clean and (root / TRAIN_CLEAN_CSV).is_file():
        return {i: lid for lid, ids in read_train_clean_csv(root / TRAIN_CLEAN_CSV).items() for i in ids}
    return {r.id: r.landmark_id for r in read_train_csv(root / TRAIN_CSV)}


def relabel(labels: Mapping[str, int]) -> tuple[dict[str, int], list[int]]:
    """``(image id -> new label, old labels)``: landmark ids mapped to ``0..K-1`` in sorted order."""
    old = sorted(set(labels.values()))
    new = {lid: k for k, lid in enumerate(old)}
    return {i: new[lid] for i, lid in labels.items()}, old


def split_per_class(labels: Mapping[str, int], fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """``(train ids, validation ids)``: per class ``max(1, int(fraction * n))`` to validation (module docstring).

    ``fraction`` 0 puts every image in training. Both lists are in class order, each class shuffled.
    """
    by_class: dict[int, list[str]] = {}
    for i, lab in labels.items():
        by_class.setdefault(lab, []).append(i)
    rng = np.random.default_rng(seed)
    train, val = [], []
    for lab in sorted(by_class):
        ids = sorted(by_class[lab])
        ids = [ids[k] for k in rng.permutation(len(ids))]
        cut = max(1, int(fraction * len(ids))) if fraction > 0 else 0
        val += ids[:cut]
        train += ids[cut:]
    return train, val


@dataclass(frozen=True)
class LandmarkSplit:
    """The relabelled split of a GLDv2 folder.

    Attributes:
        train: ``(image id, label)`` of the training images.
        val: ``(image id, label)`` of the validation images.
        old_labels: landmark id of each new label ``[K]``.
    """

    train: tuple[tuple[str, int], ...]
    val: tuple[tuple[str, int], ...]
    old_labels: tuple[int, ...]

    @property
    def num_classes(self) -> int:
        """``K``."""
        return len(self.old_labels)


def build_split(labels: Mapping[str, int], fraction: float, seed: int) -> LandmarkSplit:
    """Relabel ``labels`` (``image id -> landmark_id``) and split them per class."""
    new, old = relabel(labels)
    train, val = split_per_class(new, fraction, seed)
    return LandmarkSplit(tuple((i, new[i]) for i in train), tuple((i, new[i]) for i in val), tuple(old))


def write_relabeling(path: str | Path, old_labels: Sequence[int]) -> Path:
    """``relabeling.csv``: ``new_label,old_label`` per class (DELF's file), atomically."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(("new_label", "old_label"))
    writer.writerows((k, int(lid)) for k, lid in enumerate(old_labels))
    return atomic_write_text(path, buf.getvalue())


@functools.lru_cache(maxsize=2)
def open_split(root: str, clean: bool = True, fraction: float = 0.2, seed: int = 0,
               verify_md5: bool = False) -> tuple[Gldv2Train, LandmarkSplit]:
    """The opened GLDv2 folder and its split (cached: ``data`` and the module's ``setup`` share one)."""
    layout = Gldv2Train.open(root, verify=verify_md5)
    labels = layout.labels(clean)
    if not labels:
        raise DatasetError(f"{root}: no labelled image in {TRAIN_CLEAN_CSV if clean else TRAIN_CSV}")
    return layout, build_split(labels, fraction, seed)


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
        layout: the opened folder.
        items: ``(image id, label)`` pairs.
        size: side of the square output.
        pre: the input normalisation.
        augment: the training augmentation, or None (validation: the whole image resized).
        seed: seed of the augmentation.
    """

    def __init__(self, layout: Gldv2Train, items: Sequence[tuple[str, int]], size: int, pre: Preprocessing,
                 augment: Augment | None = None, seed: int = 0) -> None:
        self.layout, self.items, self.size, self.pre = layout, list(items), size, pre
        self.augment, self.seed, self.epoch = augment, seed, 0

    def __len__(self) -> int:
        return len(self.items)

    def set_epoch(self, epoch: int) -> None:
        """Draw this epoch's augmentation (as ``DistributedSampler.set_epoch``)."""
        self.epoch = epoch

    def __getitem__(self, index: int) -> LandmarkItem:
        image_id, label = self.items[index]
        rgb = decode_rgb(self.layout.read_bytes(image_id), f"{self.layout.root}: image {image_id}")
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
