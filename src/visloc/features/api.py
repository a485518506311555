"""Run an extractor on image arrays: resize, convert, extract, map keypoints back to the original.

``extract_image`` takes one image; ``extract_batch`` takes images already resized to one size (as
``io.sources`` batches them) and runs the extractor once on the whole batch, in chunks of its
``max_batch``. Both return ``types.Features`` in original-image pixels (pixel-centre-at-0).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import torch

from visloc.conf import ConfError
from visloc.features.base import Extractor
from visloc.io.images import Resized, resize_image, scale_keypoints
from visloc.types import Features


def image_to_tensor(image: np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
    """``[H, W]`` or ``[H, W, C]`` float32 in ``[0, 1]`` -> ``[1, C, H, W]``."""
    if image.ndim == 2:
        image = image[..., None]
    if image.ndim != 3 or image.shape[2] not in (1, 3):
        raise ValueError(f"image: expected [H, W] or [H, W, 1|3], got {image.shape}")
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))[None].to(device)


def resize_for(extractor: Extractor, image: np.ndarray, resize_max: Any = "conf") -> Resized:
    """``image`` resized as the extractor's conf asks (``resize_to`` wins over ``resize_max``).

    ``resize_max="conf"`` reads ``extractor.conf.resize_max``; an explicit value (or None: keep the
    size) overrides it.
    """
    if resize_max == "conf":
        resize_max = getattr(extractor.conf, "resize_max", None)
    size = getattr(extractor.conf, "resize_to", None)
    if size is not None and (len(size) != 2 or min(size) < 8):
        raise ConfError(f"resize_to: expected (W, H) with sides >= 8, got {size}")
    return resize_image(image, resize_max=resize_max, size=tuple(size) if size is not None else None)


def extract_image(extractor: Extractor, image: np.ndarray, resize_max: Any = "conf",
                  device: torch.device | str = "cpu") -> Features:
    """Features of one RGB or gray float image.

    Args:
        extractor: a built extractor.
        image: ``[H, W]`` or ``[H, W, 3]`` float32 in ``[0, 1]``.
        resize_max: longest edge before extraction; ``"conf"`` uses ``extractor.conf.resize_max``,
            None keeps the size. ``extractor.conf.resize_to = (W, H)``, when set, resizes to exactly
            that size instead (aspect ratio not kept; keypoints are still mapped back per axis).
        device: where the network runs.

    Returns:
        ``Features`` on the CPU: keypoints in original pixels, ``image_size`` the original ``(W, H)``.
    """
    resized = resize_for(extractor, image, resize_max)
    return extract_batch(extractor, [resized], device)[0]


def extract_batch(extractor: Extractor, images: Sequence[Resized], device: torch.device | str = "cpu"
                  ) -> list[Features]:
    """Features of images resized to one size, in batches of up to ``extractor.max_batch``.

    Args:
        extractor: a built extractor.
        images: resized images (``Resized``), all of the same shape.
        device: where the network runs.
    """
    if not images:
        return []
    shapes = {r.image.shape for r in images}
    if len(shapes) != 1:
        raise ValueError(f"images: a batch needs images of one size, got {sorted(shapes)}")
    batch = torch.cat([image_to_tensor(r.image) for r in images])
    return extract_tensor(extractor, batch, [r.scale for r in images], [r.original_size for r in images], device)


def extract_tensor(extractor: Extractor, images: torch.Tensor, scales: Sequence[tuple[float, float]],
                   original_sizes: Sequence[tuple[int, int]], device: torch.device | str = "cpu") -> list[Features]:
    """Features of a resized batch ``images [B, C, H, W]``, in chunks of up to ``extractor.max_batch``.

    Args:
        extractor: a built extractor.
        images: the resized images, float32 in ``[0, 1]``.
        scales: per image, ``(sx, sy) = original / resized``.
        original_sizes: per image, ``(W, H)`` of the original.
        device: where the network runs.
    """
    if not (len(images) == len(scales) == len(original_sizes)):
        raise ValueError(f"images, scales, original_sizes: lengths {len(images)}, {len(scales)}, "
                         f"{len(original_sizes)} differ")
    step = extractor.max_batch or len(images)
    out: list[Features] = []
    for i in range(0, len(images), step):
        with torch.inference_mode():
            feats = extractor(images[i:i + step].to(device))
        if len(feats) != len(images[i:i + step]):
            raise RuntimeError(f"{type(extractor).__name__} returned {len(feats)} results for "
                               f"{len(images[i:i + step])} images")
        for f, s, size in zip(feats, scales[i:i + step], original_sizes[i:i + step], strict=True):
            f = f.to("cpu")
            kpts = torch.from_numpy(scale_keypoints(f.keypoints.numpy(), s))
            out.append(replace(f, keypoints=kpts, image_size=(int(size[0]), int(size[1]))))
    return out
