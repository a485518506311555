"""Small image operations shared by every part (one home each, so that no copy drifts).

Luminance is ITU-R BT.601 (``0.299 R + 0.587 G + 0.114 B``), as OpenCV's ``COLOR_RGB2GRAY`` and
``io.images.read_image(grayscale=True)``; the images are linear float32 in ``[0, 1]``.
"""

from __future__ import annotations

import numpy as np
import torch

#: ITU-R BT.601 luma weights of R, G, B
LUMA_WEIGHTS = (0.299, 0.587, 0.114)


def rgb_to_gray(image: np.ndarray) -> np.ndarray:
    """``[..., 3]`` RGB float array -> ``[...]`` luminance float32 (a new contiguous array)."""
    if image.shape[-1] != 3:
        raise ValueError(f"image: expected [..., 3] RGB, got {image.shape}")
    return np.ascontiguousarray(image.astype(np.float32, copy=False) @ np.asarray(LUMA_WEIGHTS, np.float32))


def rgb_to_gray_torch(image: torch.Tensor) -> torch.Tensor:
    """``[B, 3, H, W]`` RGB tensor -> ``[B, 1, H, W]`` luminance, same dtype and device."""
    if image.ndim != 4 or image.shape[1] != 3:
        raise ValueError(f"image: expected [B, 3, H, W], got {tuple(image.shape)}")
    w = torch.tensor(LUMA_WEIGHTS, dtype=image.dtype, device=image.device)
    return (image * w[None, :, None, None]).sum(1, keepdim=True)
