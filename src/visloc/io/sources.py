"""A prefetching image source for extraction: decode and resize in ``DataLoader`` workers.

``ImageSource(root, names, ResizeSpec)`` is a torch ``Dataset`` of ``ImageRecord``: the image read by
``io.images.read_image`` and resized by ``io.images.resize_image`` as the extractor's conf asks
(``resize_max`` / ``resize_to``), with its original size and the ``scale = original / resized``
that maps keypoints back (``io.images.scale_keypoints``). An image may be cropped to a box first (the
revisited queries): it is then extracted as an image of the box's size, at the scale it has in the
resized full image (``crop_target_size``). A bad image gives a record with ``error``
set; a worker never raises for one. ``image_loader`` wraps it in a ``DataLoader`` with workers and
prefetch, and a ``SizeBatchSampler`` that batches images of equal resized size (up to ``B``; ``B =
1`` for parts whose capabilities declare ``max_batch=1``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Sampler

from visloc.errors import InputError
from visloc.io.images import MIN_SIDE, ImageError, read_image, resize_image

logger = logging.getLogger(__name__)

_TRANSPOSED = (5, 6, 7, 8)  # EXIF orientations that swap width and height


@dataclass(frozen=True)
class ResizeSpec:
    """How an extractor wants its input sized (the ``resize_max`` / ``resize_to`` of its conf).

    Attributes:
        resize_max: longest edge in pixels; larger images are shrunk (never enlarged). None: keep.
        resize_to: exact ``(W, H)``, aspect ratio not kept; wins over ``resize_max``.
        grayscale: decode to one channel (``[1, H, W]``) instead of RGB (``[3, H, W]``).
    """

    resize_max: int | None = None
    resize_to: tuple[int, int] | None = None
    grayscale: bool = False

    def __post_init__(self) -> None:
        if self.resize_to is not None and (len(self.resize_to) != 2 or min(self.resize_to) < 8):
            raise InputError(f"resize_to: expected (W, H) with sides >= 8, got {self.resize_to}")
        if self.resize_max is not None and self.resize_max < MIN_SIDE:
            raise InputError(f"resize_max: expected >= {MIN_SIDE} pixels (or none), got {self.resize_max}")

    @classmethod
    def from_conf(cls, conf: Any, grayscale: bool = False) -> ResizeSpec:
        """The spec of an extractor conf (its ``resize_max`` and ``resize_to`` fields, when it has them)."""
        size = getattr(conf, "resize_to", None)
        return cls(getattr(conf, "resize_max", None), tuple(size) if size is not None else None, grayscale)

    def target_size(self, width: int, height: int) -> tuple[int, int]:
        """``(W, H)`` after resizing an image of ``width x height`` (the arithmetic of ``resize_image``)."""
        if self.resize_to is not None:
            return int(self.resize_to[0]), int(self.resize_to[1])
        if self.resize_max is not None and max(width, height) > self.resize_max:
            s = self.resize_max / max(width, height)
            return max(1, round(width * s)), max(1, round(height * s))
        return width, height


Box = tuple[int, int, int, int]


def crop_target_size(spec: ResizeSpec, full_size: tuple[int, int], crop_size: tuple[int, int]) -> tuple[int, int]:
    """``(W, H)`` a crop of ``crop_size`` is resized to so it keeps the scale it has in the resized full image.

    As DELG's ``extract_features.py`` and cirtorch: the resize limit is scaled by ``max(crop) / max(full)``
    (``resize_max``), or ``resize_to`` per axis by ``crop / full``.
    """
    (fw, fh), (cw, ch) = full_size, crop_size
    if spec.resize_to is not None:
        return max(1, round(cw * spec.resize_to[0] / fw)), max(1, round(ch * spec.resize_to[1] / fh))
    if spec.resize_max is not None:
        limit = spec.resize_max * max(cw, ch) / max(fw, fh)
        if max(cw, ch) > limit:
            s = limit / max(cw, ch)
            return max(1, round(cw * s)), max(1, round(ch * s))
    return cw, ch


class BoxError(ValueError):
    """A crop box that is not a non-empty box inside its image."""


def check_box(box: Sequence[int], size: tuple[int, int]) -> Box:
    """``box = (x1, y1, x2, y2)`` (pixel edges) as ints; ``BoxError`` unless it is non-empty and inside ``size``."""
    if len(box) != 4:
        raise BoxError(f"box: expected [x1, y1, x2, y2], got {list(box)}")
    x1, y1, x2, y2 = (int(v) for v in box)
    if not (0 <= x1 < x2 <= size[0] and 0 <= y1 < y2 <= size[1]):
        raise BoxError(f"box [{x1}, {y1}, {x2}, {y2}] is empty or outside the {size[0]}x{size[1]} image")
    return x1, y1, x2, y2


@dataclass(frozen=True)
class ImageRecord:
    """One image of a source, resized, or the reason it cannot be used.

    Attributes:
        index: position in the source's ``names``.
        name: path relative to the root.
        image: ``[C, H, W]`` float32 in ``[0, 1]`` at the resized size; None when ``error`` is set.
        original_size: ``(W, H)`` of the file (after EXIF orientation), or of its crop; ``(0, 0)`` on error.
        scale: ``(sx, sy) = original / resized`` per axis.
        error: one-line reason (naming the file) the image was skipped, or None.
    """

    index: int
    name: str
    image: torch.Tensor | None
    original_size: tuple[int, int] = (0, 0)
    scale: tuple[float, float] = (1.0, 1.0)
    error: str | None = None


def probe_size(path: Path) -> tuple[int, int] | None:
    """``(W, H)`` from the file's header as ``read_image`` will orient it, or None if unreadable."""
    try:
        with Image.open(path) as img:
            w, h = img.size
            if img.getexif().get(0x0112) in _TRANSPOSED:
                w, h = h, w
            return w, h
    except (OSError, ValueError, Image.DecompressionBombError):
        return None


class ImageSource(Dataset[ImageRecord]):
    """Images ``root / name`` for each of ``names``, read and resized as ``spec`` asks.

    Args:
        root: image root.
        names: image paths relative to ``root`` (the names the feature file will use).
        spec: the resizing the extractor wants.
        crops: per name, a box ``(x1, y1, x2, y2)`` in pixel edges to crop the image to before resizing
            (``image[y1:y2, x1:x2]``, as PIL's ``crop``); keypoints are then in the crop's pixels.
    """

    def __init__(self, root: str | Path, names: Sequence[str], spec: ResizeSpec = ResizeSpec(),
                 crops: Mapping[str, Sequence[int]] | None = None) -> None:
        self.root = Path(root)
        self.names = list(names)
        self.spec = spec
        self.crops = {n: tuple(int(v) for v in b) for n, b in (crops or {}).items()}

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, index: int) -> ImageRecord:
        name = self.names[index]
        path = self.root / name
        try:
            image = read_image(path, grayscale=self.spec.grayscale)
            full = (image.shape[1], image.shape[0])
            box = self.crops.get(name)
            if box is None:
                size = self.spec.target_size(*full)
            else:
                x1, y1, x2, y2 = check_box(box, full)
                image = np.ascontiguousarray(image[y1:y2, x1:x2])
                size = crop_target_size(self.spec, full, (x2 - x1, y2 - y1))
            resized = resize_image(image, size=size)
        except BoxError as e:
            return ImageRecord(index, name, None, error=f"{path}: {e}")
        except ImageError as e:
            return ImageRecord(index, name, None, error=str(e))
        except (OSError, ValueError, MemoryError, cv2.error) as e:  # never let one file stop a worker
            return ImageRecord(index, name, None, error=f"{path}: {type(e).__name__}: {str(e).splitlines()[0][:80]}")
        pixels = resized.image[..., None] if resized.image.ndim == 2 else resized.image
        tensor = torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1), dtype=np.float32))
        return ImageRecord(index, name, tensor, resized.original_size, resized.scale)

    def target_sizes(self, threads: int = 8) -> list[tuple[int, int] | None]:
        """Resized ``(W, H)`` of every image from its header (None: unreadable), without decoding.

        With ``resize_to`` no file is opened. Otherwise one header read per image, in ``threads`` threads.
        """
        if self.spec.resize_to is not None and not self.crops:
            return [self.spec.target_size(0, 0)] * len(self.names)
        with ThreadPoolExecutor(max(1, threads)) as pool:
            sizes = list(pool.map(probe_size, (self.root / n for n in self.names), chunksize=64))
        return [None if s is None else self._target(n, s) for n, s in zip(self.names, sizes, strict=True)]

    def _target(self, name: str, size: tuple[int, int]) -> tuple[int, int] | None:
        box = self.crops.get(name)
        if box is None:
            return self.spec.target_size(*size)
        try:
            x1, y1, x2, y2 = check_box(box, size)
        except ValueError:
            return None
        return crop_target_size(self.spec, size, (x2 - x1, y2 - y1))


class SizeBatchSampler(Sampler[list[int]]):
    """Batches of up to ``batch_size`` indices sharing one resized size, in order of first appearance.

    Indices whose size is None (unreadable header) get a batch of their own.
    """

    def __init__(self, sizes: Sequence[tuple[int, int] | None], batch_size: int) -> None:
        if batch_size < 1:
            raise InputError(f"batch_size: expected at least 1, got {batch_size}")
        groups: dict[object, list[int]] = {}
        for i, size in enumerate(sizes):
            groups.setdefault(("alone", i) if size is None else size, []).append(i)
        self.batches = [idx[s:s + batch_size] for idx in groups.values() for s in range(0, len(idx), batch_size)]
        self.batches.sort(key=lambda b: b[0])

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


@dataclass
class ImageBatch:
    """What the loader yields: the batch's images stacked, and its bad images.

    Attributes:
        records: the good records, in batch order (their ``image`` is also in ``images``).
        images: ``[B, C, H, W]`` float32 stacked images of ``records``; None when no image is good.
        errors: records of the images that could not be read.
        leftover: good records whose size differs from the batch's (a header that disagrees with
            the pixels); run them one by one.
    """

    records: list[ImageRecord]
    images: torch.Tensor | None
    errors: list[ImageRecord] = field(default_factory=list)
    leftover: list[ImageRecord] = field(default_factory=list)

    def pin_memory(self) -> ImageBatch:
        """Pinned copy of ``images`` (the ``DataLoader`` calls this with ``pin_memory=True``)."""
        return replace(self, images=None if self.images is None else self.images.pin_memory())


def collate_images(records: list[ImageRecord]) -> ImageBatch:
    """Stack the good records of one batch; never raises on a bad or odd-sized image."""
    good = [r for r in records if r.image is not None]
    errors = [r for r in records if r.image is None]
    if not good:
        return ImageBatch([], None, errors)
    shape = good[0].image.shape if good[0].image is not None else None
    same = [r for r in good if r.image is not None and r.image.shape == shape]
    leftover = [r for r in good if r.image is not None and r.image.shape != shape]
    images = torch.stack([r.image for r in same if r.image is not None])
    return ImageBatch(same, images, errors, leftover)


def image_loader(source: ImageSource, batch_size: int = 1, max_batch: int | None = None, num_workers: int = 2,
                 prefetch_factor: int = 2, pin_memory: bool = False) -> DataLoader:
    """A ``DataLoader`` of ``ImageBatch`` over ``source``: decoding in workers, size-bucketed batches.

    Args:
        source: the images.
        batch_size: the largest batch wanted.
        max_batch: the part's own limit (``Capabilities.max_batch``; 1 for sparse detectors).
        num_workers: decoding processes (0: decode in the calling process).
        prefetch_factor: batches each worker keeps ready.
        pin_memory: pin the stacked images (for a CUDA device).
    """
    b = min(batch_size, max_batch) if max_batch is not None else batch_size
    if b < 1:
        raise InputError(f"batch_size: expected at least 1, got {b}")
    sizes = [None] * len(source) if b == 1 else source.target_sizes()  # B=1 needs no grouping
    sampler = SizeBatchSampler(sizes, b)
    extra: dict[str, Any] = {"prefetch_factor": prefetch_factor, "persistent_workers": False} if num_workers else {}
    return DataLoader(source, batch_sampler=sampler, collate_fn=collate_images, num_workers=num_workers,
                      pin_memory=pin_memory, **extra)
