"""Run an image matcher on two image arrays: resize, match, map keypoints back to the originals."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import torch

from visloc.io.images import resize_image, scale_keypoints
from visloc.matching.base import ImageMatcher
from visloc.types import Matches


def _tensor(image: np.ndarray, device: torch.device | str) -> torch.Tensor:
    if image.ndim == 2:
        image = image[..., None]
    if image.ndim != 3 or image.shape[2] not in (1, 3):
        raise ValueError(f"image: expected [H, W] or [H, W, 1|3], got {image.shape}")
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))[None].to(device)


def match_images(matcher: ImageMatcher, image0: np.ndarray, image1: np.ndarray, resize_max: Any = "conf",
                 device: torch.device | str = "cpu") -> Matches:
    """Match two RGB or gray float images with an image matcher.

    Args:
        matcher: a built image matcher (``MATCHERS`` kind ``image``).
        image0: ``[H, W]`` or ``[H, W, 3]`` float32 in ``[0, 1]``.
        image1: likewise.
        resize_max: longest edge before matching; ``"conf"`` uses ``matcher.conf.resize_max`` when it has
            one, None keeps the sizes.
        device: where the matcher runs.

    Returns:
        ``Matches`` on the CPU with ``keypoints0 / keypoints1`` in original pixels (pixel-centre-at-0).
    """
    if not isinstance(matcher, ImageMatcher):
        raise TypeError(f"matcher: expected an ImageMatcher, got {type(matcher).__name__}")
    if resize_max == "conf":
        resize_max = getattr(matcher.conf, "resize_max", None)
    r0, r1 = resize_image(image0, resize_max=resize_max), resize_image(image1, resize_max=resize_max)
    with torch.inference_mode():
        pred = matcher(_tensor(r0.image, device), _tensor(r1.image, device))[0].to("cpu")
    if pred.keypoints0 is None or pred.keypoints1 is None:
        raise RuntimeError(f"{type(matcher).__name__}: an image matcher must return keypoints0 and keypoints1")
    return replace(pred, keypoints0=torch.from_numpy(scale_keypoints(pred.keypoints0.numpy(), r0.scale)),
                   keypoints1=torch.from_numpy(scale_keypoints(pred.keypoints1.numpy(), r1.scale)))
