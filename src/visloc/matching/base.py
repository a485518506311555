"""The matcher contracts: feature matchers and image matchers, in one registry (``MATCHERS``).

- A **feature matcher** (kind ``feature``: nearest neighbour, LightGlue) takes the local features of
  two images, ``matcher(feats0: Features, feats1: Features) -> Matches``; the match indices refer to
  the keypoints it was given. Which descriptor families it accepts is its entry's
  ``capabilities(conf).accepts`` (empty: any), and an entry may adapt its conf to a family
  (``select.matcher_conf``: LightGlue picks its weights from the features' family).
  ``match_many(feats0, others)`` matches one image with several (a query with its retrieved images),
  in one call where the matcher can, with the matches of pair-by-pair ``forward``.
- An **image matcher** (kind ``image``: detector-free matchers such as Coarse LoFTR, or an extractor +
  feature matcher run as one) takes two images, ``matcher(image0 [B, C, H, W], image1 [B, C, H, W])
  -> list[Matches]``, and returns its own keypoints in ``Matches.keypoints0 / keypoints1`` (pixels of
  the input tensors, pixel-centre-at-0). ``matching.api.match_images`` resizes the user's images and
  maps the keypoints back; ``pipelines.match_dense`` merges each image's keypoints over all its pairs
  into one keypoint set, so that maps, localization and evaluation take image matchers unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import nn

from visloc.registry import MATCHERS
from visloc.types import IMAGE_GRAY, Features, InputSpec, Matches
from visloc.utils.image_ops import rgb_to_gray_torch


def check_features(feats: Features, which: str) -> None:
    """Raise ``ValueError`` naming ``which`` unless ``feats`` has local features."""
    if not isinstance(feats, Features):
        raise ValueError(f"{which}: expected visloc.types.Features, got {type(feats).__name__}")
    if not feats.has_local and feats.num_keypoints:
        raise ValueError(f"{which}: no local descriptors (a global-only extractor's features cannot be matched)")


class Matcher(nn.Module):
    """Base class of feature matchers: ``forward(feats0, feats1) -> Matches``."""

    kind: ClassVar[str] = "feature"

    def __init__(self, conf: Any) -> None:
        super().__init__()
        self.conf = conf

    def forward(self, feats0: Features, feats1: Features) -> Matches:  # pragma: no cover - abstract
        """Match two images' features (see the module docstring)."""
        raise NotImplementedError

    def match_many(self, feats0: Features, others: Sequence[Features]) -> list[Matches]:
        """``feats0`` against each of ``others``: per pair, the matches ``forward`` gives on that pair alone.

        Pair by pair here; a matcher that can run the pairs as one call with the same results overrides it
        (``nearest_neighbor``). LightGlue does not: kornia runs a batch pair by pair whenever point pruning is
        on (its default), and without pruning early stopping waits for every pair of the batch, which changes
        the matches of the pairs that would have stopped sooner.
        """
        return [self(feats0, f) for f in others]


class ImageMatcher(nn.Module):
    """Base class of image matchers: ``forward(image0, image1) -> list[Matches]`` with keypoints."""

    kind: ClassVar[str] = "image"
    input_spec: ClassVar[InputSpec] = IMAGE_GRAY
    #: the largest batch of pairs ``forward`` takes (None: any)
    max_batch: ClassVar[int | None] = 1

    def __init__(self, conf: Any) -> None:
        super().__init__()
        self.conf = conf

    def check_images(self, image0: torch.Tensor, image1: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Validate two ``[B, 1 or 3, H, W]`` batches of equal ``B``; convert to the declared channels."""
        out = []
        for which, image in (("image0", image0), ("image1", image1)):
            if image.ndim != 4 or image.shape[1] not in (1, 3):
                raise ValueError(f"{which}: expected [B, 1 or 3, H, W], got {tuple(image.shape)}")
            if self.max_batch is not None and image.shape[0] > self.max_batch:
                raise ValueError(f"{which}: {type(self).__name__} takes at most B={self.max_batch} pairs, "
                                 f"got B={image.shape[0]}")
            if image.shape[1] == 3 and self.input_spec.channels == 1:
                image = rgb_to_gray_torch(image)
            elif image.shape[1] == 1 and self.input_spec.channels == 3:
                image = image.expand(-1, 3, -1, -1)
            out.append(image)
        if out[0].shape[0] != out[1].shape[0]:
            raise ValueError(f"image0, image1: batches of {out[0].shape[0]} and {out[1].shape[0]} images")
        return out[0], out[1]

    def forward(self, image0: torch.Tensor, image1: torch.Tensor) -> list[Matches]:  # pragma: no cover
        """Match each pair of the two batches (see the module docstring)."""
        raise NotImplementedError


__all__ = ["MATCHERS", "ImageMatcher", "Matcher", "check_features"]
