"""The extractor contract.

An extractor is an ``nn.Module`` built from a frozen conf. ``forward`` takes an image batch
``[B, C, H, W]`` float32 in ``[0, 1]`` (``C`` = ``input_channels``) and returns a dict with
``keypoints [B, N, 2]`` as ``(x, y)`` pixels of the input (pixel-centre-at-0, as OpenCV),
``scores [B, N]`` and ``descriptors [B, N, D]`` L2-normalised. Sparse detectors return a variable
``N`` per image, so they take ``B == 1``.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from visloc.registry import EXTRACTORS


class Extractor(nn.Module):
    """Base class of local (and later global) feature extractors."""

    input_channels: ClassVar[int] = 3
    exportable: ClassVar[bool] = False
    #: the LightGlue weights that match this extractor's descriptors, if any
    lightglue_features: ClassVar[str | None] = None

    def __init__(self, conf: Any) -> None:
        super().__init__()
        self.conf = conf

    @property
    def descriptor_dim(self) -> int:
        """``D`` of ``descriptors``."""
        raise NotImplementedError

    def check_image(self, image: torch.Tensor) -> torch.Tensor:
        """Validate ``[1, C, H, W]``; convert RGB <-> gray to ``input_channels``."""
        if image.ndim != 4 or image.shape[1] not in (1, 3):
            raise ValueError(f"image: expected [B, 1 or 3, H, W], got {tuple(image.shape)}")
        if image.shape[0] != 1:
            raise ValueError(f"image: {type(self).__name__} extracts one image at a time, got B={image.shape[0]}")
        if image.shape[1] == 3 and self.input_channels == 1:
            w = torch.tensor([0.299, 0.587, 0.114], dtype=image.dtype, device=image.device)
            image = (image * w[None, :, None, None]).sum(1, keepdim=True)
        elif image.shape[1] == 1 and self.input_channels == 3:
            image = image.expand(-1, 3, -1, -1)
        return image


__all__ = ["EXTRACTORS", "Extractor"]
