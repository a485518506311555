"""Classical extractors through OpenCV: SIFT, RootSIFT and ORB."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np
import torch

from visloc import conf_ranges as ranges
from visloc.features.base import EXTRACTORS, Extractor, input_size
from visloc.registry import Capabilities
from visloc.types import IMAGE_GRAY, Features


@dataclass(frozen=True)
class SIFTConf:
    """OpenCV SIFT; ``rootsift`` applies Hellinger normalisation (Arandjelovic & Zisserman 2012)."""

    max_num_keypoints: int = 4096
    contrast_threshold: float = 0.04
    edge_threshold: float = 10.0
    n_octave_layers: int = 3
    rootsift: bool = False
    resize_max: int | None = 1024
    resize_to: tuple[int, ...] | None = None  # (W, H): exact size, overrides resize_max

    def __post_init__(self) -> None:
        ranges.keypoint_budget(self)  # -1: every keypoint (OpenCV's nfeatures=0)
        ranges.between(self, 1, 32, "n_octave_layers")
        ranges.at_least(self, 0, "contrast_threshold")
        ranges.above(self, 0, "edge_threshold")
        ranges.image_size(self)


@dataclass(frozen=True)
class ORBConf:
    """OpenCV ORB; binary descriptors as +-1/sqrt(256), so inner product = 1 - 2 * Hamming / 256."""

    max_num_keypoints: int = 4096
    scale_factor: float = 1.2
    n_levels: int = 8
    fast_threshold: int = 20
    score_type: Literal["harris", "fast"] = "harris"
    resize_max: int | None = 1024
    resize_to: tuple[int, ...] | None = None  # (W, H): exact size, overrides resize_max

    def __post_init__(self) -> None:
        ranges.keypoint_budget(self, unlimited=False)
        ranges.above(self, 1, "scale_factor")
        ranges.between(self, 1, 64, "n_levels")
        ranges.between(self, 0, 255, "fast_threshold")
        ranges.image_size(self)


def _to_uint8(image: torch.Tensor) -> np.ndarray:
    return (image[0, 0].detach().cpu().numpy() * 255.0).round().clip(0, 255).astype(np.uint8)


def _pack(kps: list[cv2.KeyPoint], desc: np.ndarray | None, dim: int, size: tuple[int, int]) -> Features:
    if not kps or desc is None:
        return Features(torch.zeros(0, 2), torch.zeros(0, dim), torch.zeros(0), size)
    xy = np.array([k.pt for k in kps], dtype=np.float32)
    resp = np.array([k.response for k in kps], dtype=np.float32)
    return Features(torch.from_numpy(xy), torch.from_numpy(desc).float(), torch.from_numpy(resp), size)


class SIFT(Extractor):
    """SIFT or RootSIFT keypoints (OpenCV), descriptors L2-normalised ``[1, N, 128]``."""

    input_spec = IMAGE_GRAY

    def __init__(self, conf: SIFTConf) -> None:
        super().__init__(conf)
        self._sift = cv2.SIFT.create(nfeatures=max(conf.max_num_keypoints, 0), nOctaveLayers=conf.n_octave_layers,
                                     contrastThreshold=conf.contrast_threshold,
                                     edgeThreshold=conf.edge_threshold)

    @property
    def descriptor_dim(self) -> int:
        """128."""
        return 128

    def forward(self, image: torch.Tensor) -> list[Features]:
        """Detect and describe each image of the batch; see the contract in ``features.base``."""
        image = self.check_image(image)
        return [self._one(image[b:b + 1]) for b in range(image.shape[0])]

    def _one(self, image: torch.Tensor) -> Features:
        kps, desc = self._sift.detectAndCompute(_to_uint8(image), None)
        kps = list(kps)
        n_max = self.conf.max_num_keypoints
        if desc is not None and 0 < n_max < len(kps):  # OpenCV keeps every tie at the cut-off response
            keep = np.sort(np.argsort([-k.response for k in kps], kind="stable")[:n_max])
            kps, desc = [kps[i] for i in keep], desc[keep]
        if desc is not None:
            desc = desc.astype(np.float32)
            if self.conf.rootsift:
                desc = np.sqrt(desc / np.maximum(desc.sum(1, keepdims=True), 1e-8))
            desc /= np.maximum(np.linalg.norm(desc, axis=1, keepdims=True), 1e-8)
        return _pack(kps, desc, 128, input_size(image))


class ORB(Extractor):
    """ORB keypoints (OpenCV); 256 bits as an L2-normalised +-1 vector ``[1, N, 256]``."""

    input_spec = IMAGE_GRAY

    def __init__(self, conf: ORBConf) -> None:
        super().__init__(conf)
        score = cv2.ORB_HARRIS_SCORE if conf.score_type == "harris" else cv2.ORB_FAST_SCORE
        self._orb = cv2.ORB.create(nfeatures=conf.max_num_keypoints, scaleFactor=conf.scale_factor,
                                   nlevels=conf.n_levels, fastThreshold=conf.fast_threshold, scoreType=score)

    @property
    def descriptor_dim(self) -> int:
        """256."""
        return 256

    def forward(self, image: torch.Tensor) -> list[Features]:
        """Detect and describe each image of the batch; see the contract in ``features.base``."""
        image = self.check_image(image)
        return [self._one(image[b:b + 1]) for b in range(image.shape[0])]

    def _one(self, image: torch.Tensor) -> Features:
        kps, desc = self._orb.detectAndCompute(_to_uint8(image), None)
        if desc is not None:
            bits = np.unpackbits(np.asarray(desc, np.uint8), axis=1).astype(np.float32)  # ORB's are uint8
            desc = (2.0 * bits - 1.0) / 16.0  # sqrt(256) = 16
        return _pack(list(kps), desc, 256, input_size(image))


def _sift_capabilities(conf: SIFTConf) -> Capabilities:
    return Capabilities(frozenset({"local"}), "rootsift-128" if conf.rootsift else "sift-128")


EXTRACTORS.register("sift", SIFTConf(), SIFT, capabilities=_sift_capabilities)
EXTRACTORS.register("rootsift", SIFTConf(rootsift=True), SIFT, capabilities=_sift_capabilities)
EXTRACTORS.register("orb", ORBConf(), ORB, capabilities=lambda c: Capabilities(frozenset({"local"}), "orb-256"))
