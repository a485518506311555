"""The extractor contract.

An extractor is an ``nn.Module`` built from a frozen conf. It declares its input
(``input_spec``: an image of 1 or 3 channels, or an event representation) and the largest batch it
takes (``max_batch``, None for any). ``forward(image [B, C, H, W])`` (float32 in ``[0, 1]``) returns
one ``types.Features`` per image, in the pixels of the *input* tensor (pixel-centre-at-0) and with
``image_size`` its ``(W, H)``; ``features.api`` resizes the user's image before and maps keypoints
back to the original image after. What it outputs (local features, a global descriptor, or both) and
its descriptor family are the registry entry's ``capabilities(conf)``, known without building it.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from visloc.errors import ItemError
from visloc.registry import EXTRACTORS
from visloc.types import IMAGE_RGB, Features, InputSpec
from visloc.utils.image_ops import rgb_to_gray_torch


class Extractor(nn.Module):
    """Base class of feature extractors (local, global, or both)."""

    input_spec: ClassVar[InputSpec] = IMAGE_RGB
    #: the largest batch ``forward`` takes (None: any); a declared limit of the part, not of the contract
    max_batch: ClassVar[int | None] = None
    #: the smallest image side the network takes (a smaller image raises ``ItemError`` in ``check_image``)
    min_side: ClassVar[int] = 1

    def __init__(self, conf: Any) -> None:
        super().__init__()
        self.conf = conf

    @property
    def descriptor_dim(self) -> int:
        """``D`` of the local descriptors (0 for global-only extractors)."""
        raise NotImplementedError

    def check_image(self, image: torch.Tensor) -> torch.Tensor:
        """Validate ``[B, C, H, W]`` and convert RGB <-> gray to the declared channels."""
        spec = self.input_spec
        if spec.kind != "image":
            if image.ndim != 4 or image.shape[1] != spec.channels:
                raise ValueError(f"image: expected [B, {spec.channels}, H, W] ({spec.representation}), "
                                 f"got {tuple(image.shape)}")
            return image
        if image.ndim != 4 or image.shape[1] not in (1, 3):
            raise ValueError(f"image: expected [B, 1 or 3, H, W], got {tuple(image.shape)}")
        if min(image.shape[-2:]) < self.min_side:
            raise ItemError(f"image of {image.shape[-1]}x{image.shape[-2]} px after resizing: "
                            f"{type(self).__name__} needs sides of at least {self.min_side} px")
        if self.max_batch is not None and image.shape[0] > self.max_batch:
            raise ValueError(f"image: {type(self).__name__} takes at most B={self.max_batch} images, "
                             f"got B={image.shape[0]}")
        if image.shape[1] == 3 and spec.channels == 1:
            image = rgb_to_gray_torch(image)
        elif image.shape[1] == 1 and spec.channels == 3:
            image = image.expand(-1, 3, -1, -1)
        return image

    def forward(self, image: torch.Tensor) -> list[Features]:  # pragma: no cover - abstract
        """``image [B, C, H, W]`` -> one ``Features`` per image (see the module docstring)."""
        raise NotImplementedError


def input_size(image: torch.Tensor) -> tuple[int, int]:
    """``(W, H)`` of ``image [B, C, H, W]``."""
    return int(image.shape[-1]), int(image.shape[-2])


def local_features(keypoints: torch.Tensor, scores: torch.Tensor, descriptors: torch.Tensor,
                   image: torch.Tensor, global_descriptor: torch.Tensor | None = None) -> Features:
    """``Features`` of one image of ``image``'s size, with float32 tensors on their device."""
    return Features(keypoints.float(), descriptors.float(), scores.float(), input_size(image),
                    None if global_descriptor is None else global_descriptor.float())


__all__ = ["EXTRACTORS", "Extractor", "input_size", "local_features"]
