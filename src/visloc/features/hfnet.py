"""``hfnet``: HF-Net local features and global descriptor from one network pass (torch eager).

The image (gray; RGB is converted by ``check_image``) is padded at the bottom and right, by
replicating its last row and column, to a multiple of 8; keypoints are found on the heatmap cropped
back to the image, so they need no shift. Descriptors are sampled from the padded map with the
convention of ``models.hfnet.sample_descriptors`` (cell ``(i, j)`` at pixel ``(8 j + 3.5, 8 i + 3.5)``).
The global descriptor covers the padded image. Weights: see ``visloc.weights.hfnet``. The
extractor folds the BatchNorms into the convolutions (``models.backbones.fuse_batchnorm``), as
onnxruntime does, which saves torch eager a pass over every feature map, and runs in the
``channels_last`` memory format (oneDNN's native layout; measured faster on this CPU).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from visloc.features.base import EXTRACTORS, Extractor
from visloc.models.backbones import fuse_batchnorm
from visloc.models.hfnet import CELL, detect_keypoints, logits_to_heatmap, sample_descriptors
from visloc.registry import Capabilities
from visloc.weights.hfnet import resolve_hfnet

__all__ = ["HFNetExtractor", "HFNetExtractorConf", "hfnet_postprocess", "pad_to_cell"]


@dataclass(frozen=True)
class HFNetExtractorConf:
    """Detection settings and weights of the ``hfnet`` extractor.

    Attributes:
        weights: a visloc HF-Net checkpoint (``save_hfnet``); None: the shipped default student.
        allow_random: without weights, build a random network instead of raising (speed tests).
        nms_radius: NMS window radius in pixels.
        detection_threshold: keep heatmap maxima above it.
        max_num_keypoints: keep the highest scores (< 0: all).
        remove_borders: drop keypoints within this many pixels of the image edge.
        resize_max: longest edge before extraction (None: keep the size).
        resize_to: ``(W, H)``: exact size, overrides ``resize_max``.
    """

    weights: str | None = None
    allow_random: bool = False
    nms_radius: int = 4
    detection_threshold: float = 0.005
    max_num_keypoints: int = 2048
    remove_borders: int = 4
    resize_max: int | None = 1024
    resize_to: tuple[int, ...] | None = None


def pad_to_cell(image: torch.Tensor) -> torch.Tensor:
    """Pad ``[B, C, H, W]`` at the bottom and right (edge replication) to multiples of 8."""
    h, w = image.shape[-2:]
    pad_h, pad_w = -h % CELL, -w % CELL
    if pad_h == 0 and pad_w == 0:
        return image
    return F.pad(image, (0, pad_w, 0, pad_h), mode="replicate")


def hfnet_postprocess(pred: dict[str, torch.Tensor], image_size: tuple[int, int],
                      conf: HFNetExtractorConf) -> dict[str, torch.Tensor]:
    """Network outputs of one padded image -> the extractor contract's keys.

    Args:
        pred: ``logits [1, 65, h, w]``, ``dense_descriptors [1, D, h, w]``, ``global_descriptor [1, G]``.
        image_size: ``(H, W)`` of the image before padding (``H <= 8 h``, ``W <= 8 w``).
        conf: detection settings.

    Returns:
        ``keypoints [1, N, 2]`` ``(x, y)`` pixels, ``scores [1, N]``, ``descriptors [1, N, D]``
        L2-normalised, ``global_descriptor [1, G]``.
    """
    height, width = image_size
    heatmap = logits_to_heatmap(pred["logits"])[:, :height, :width]
    max_kp = conf.max_num_keypoints if conf.max_num_keypoints >= 0 else None
    kpts, scores = detect_keypoints(heatmap, conf.nms_radius, conf.detection_threshold, max_kp,
                                    conf.remove_borders)[0]
    dense = pred["dense_descriptors"]
    if len(kpts):
        desc = sample_descriptors(dense, kpts[None])
    else:
        desc = dense.new_zeros(1, 0, dense.shape[1])
    return {"keypoints": kpts[None].float(), "scores": scores[None].float(), "descriptors": desc.float(),
            "global_descriptor": pred["global_descriptor"].float()}


class HFNetExtractor(Extractor):
    """HF-Net keypoints, ``descriptor_dim``-d descriptors and ``global_descriptor [1, G]``, gray input."""

    input_channels = 1
    exportable = True
    lightglue_features = None

    def __init__(self, conf: HFNetExtractorConf) -> None:
        super().__init__(conf)
        if conf.nms_radius < 0 or conf.remove_borders < 0:
            raise ValueError(f"hfnet: nms_radius and remove_borders must be >= 0, got {conf.nms_radius}, "
                             f"{conf.remove_borders}")
        net = fuse_batchnorm(resolve_hfnet(conf.weights, conf.allow_random).eval())
        self.net = net.to(memory_format=torch.channels_last)
        self.eval()

    @property
    def descriptor_dim(self) -> int:
        """D of the local descriptors (the network's ``descriptor_dim``)."""
        return self.net.descriptor_dim

    @property
    def global_dim(self) -> int:
        """G of the global descriptor."""
        return self.net.global_dim

    @torch.inference_mode()
    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        """Detect, describe and aggregate ``image [1, C, H, W]``; see the contract in ``features.base``."""
        image = self.check_image(image)
        pred = self.net(pad_to_cell(image).contiguous(memory_format=torch.channels_last))
        return hfnet_postprocess(pred, (image.shape[-2], image.shape[-1]), self.conf)


def hfnet_capabilities(conf: HFNetExtractorConf) -> Capabilities:
    """Local (``hfnet-<dim>``: its own family, no pretrained matcher) and global features."""
    return Capabilities(frozenset({"local", "global"}), "hfnet", exportable=True)


EXTRACTORS.register("hfnet", HFNetExtractorConf(), HFNetExtractor, capabilities=hfnet_capabilities)
