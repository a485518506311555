"""``loftr``: LoFTR (Sun et al., CVPR 2021), coarse and fine levels, from a user's checkpoint (kornia's network).

Built with kornia's ``LoFTR(pretrained=None)`` and the weights of ``--set weights=outdoor_ds.ckpt`` (a path
the user gives; ``visloc.weights.converters.loftr``): nothing is downloaded. kornia's keypoints are in the
reference implementation's frame (pixel centre at +0.5); they are returned pixel-centre-at-0.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from visloc import conf_ranges as ranges
from visloc.matching.base import MATCHERS, ImageMatcher
from visloc.registry import Capabilities
from visloc.types import Matches
from visloc.weights.load import WeightsError


@dataclass(frozen=True)
class LoFTRConf:
    """``loftr``.

    Attributes:
        weights: the LoFTR checkpoint (required).
        variant: ``outdoor`` / ``indoor`` (trained with the old positional encoding) or ``indoor_new``.
        threshold: coarse confidence threshold (LoFTR's ``match_coarse.thr``).
        resize_max: longest side the images are resized to (LoFTR's MegaDepth test: 840; ScanNet 640).
    """

    weights: str | None = None
    variant: str = "outdoor"
    threshold: float = 0.2
    resize_max: int | None = 840

    def __post_init__(self) -> None:
        ranges.between(self, 0, 1, "threshold")
        ranges.image_size(self)


class LoFTRMatcher(ImageMatcher):
    """kornia's LoFTR with the user's weights; keypoints of both images and coarse confidences."""

    max_batch = 1

    def __init__(self, conf: LoFTRConf) -> None:
        super().__init__(conf)
        from visloc.weights.converters.loftr import load_loftr_full

        if conf.weights is None:
            raise WeightsError("loftr: give the checkpoint with --set weights=FILE (e.g. LoFTR's outdoor_ds.ckpt); "
                               "visloc downloads nothing")
        self.net = load_loftr_full(conf.weights, conf.variant)
        self.net.coarse_matching.thr = conf.threshold

    @torch.inference_mode()
    def forward(self, image0: torch.Tensor, image1: torch.Tensor) -> list[Matches]:
        """Match one pair; see the contract in ``matching.base``."""
        image0, image1 = self.check_images(image0, image1)
        out = self.net({"image0": image0.float(), "image1": image1.float()})
        kp0, kp1 = out["keypoints0"].float() - 0.5, out["keypoints1"].float() - 0.5
        n = len(kp0)
        m = torch.arange(n).repeat(2, 1).T
        return [Matches(m, out["confidence"].float().cpu(), n, n, kp0.cpu(), kp1.cpu())]


def _capabilities(conf: LoFTRConf) -> Capabilities:
    return Capabilities(frozenset({"matches"}), weights=(conf.weights,) if conf.weights else ())


MATCHERS.register("loftr", LoFTRConf(), LoFTRMatcher, capabilities=_capabilities)
