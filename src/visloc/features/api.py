"""Run an extractor on one image array: resize, convert, extract, map keypoints back."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from visloc.features.base import Extractor
from visloc.io.images import resize_image, scale_keypoints


def image_to_tensor(image: np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
    """``[H, W]`` or ``[H, W, 3]`` float32 in ``[0, 1]`` -> ``[1, C, H, W]``."""
    if image.ndim == 2:
        image = image[..., None]
    if image.ndim != 3 or image.shape[2] not in (1, 3):
        raise ValueError(f"image: expected [H, W] or [H, W, 1|3], got {image.shape}")
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))[None].to(device)


def extract_array(extractor: Extractor, image: np.ndarray, resize_max: Any = "conf",
                  device: torch.device | str = "cpu") -> dict[str, np.ndarray]:
    """Extract local features from an RGB or gray float image.

    Args:
        extractor: a built extractor.
        image: ``[H, W]`` or ``[H, W, 3]`` float32 in ``[0, 1]``.
        resize_max: longest edge before extraction; ``"conf"`` uses ``extractor.conf.resize_max``,
            None keeps the size. ``extractor.conf.resize_to = (W, H)``, when set, resizes to exactly
            that size instead (aspect ratio not kept; keypoints are still mapped back per axis).
        device: where the network runs.

    Returns:
        ``keypoints [N, 2]`` in original pixels (pixel-centre-at-0), ``scores [N]``,
        ``descriptors [N, D]`` float32 L2-normalised, ``image_size [2]`` as ``(W, H)``; and
        ``global_descriptor [G]`` float32 when the extractor returns one (``[1, G]``).
    """
    if resize_max == "conf":
        resize_max = getattr(extractor.conf, "resize_max", None)
    size = getattr(extractor.conf, "resize_to", None)
    if size is not None and (len(size) != 2 or min(size) < 8):
        raise ValueError(f"resize_to: expected (W, H) with sides >= 8, got {size}")
    resized = resize_image(image, resize_max=resize_max, size=tuple(size) if size is not None else None)
    with torch.inference_mode():
        pred = extractor(image_to_tensor(resized.image, device))
    kpts = pred["keypoints"][0].detach().cpu().numpy().astype(np.float32)
    out = {
        "keypoints": scale_keypoints(kpts, resized.scale),
        "scores": pred["scores"][0].detach().cpu().numpy().astype(np.float32),
        "descriptors": pred["descriptors"][0].detach().cpu().numpy().astype(np.float32),
        "image_size": np.array(resized.original_size, dtype=np.int64),
    }
    if "global_descriptor" in pred:
        out["global_descriptor"] = pred["global_descriptor"][0].detach().cpu().numpy().astype(np.float32)
    return out
