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

from visloc import conf_ranges as ranges
from visloc.conf import ConfError
from visloc.features.base import EXTRACTORS, Extractor
from visloc.models.backbones import fuse_batchnorm
from visloc.models.hfnet import CELL, HFNetConf, detect_keypoints, logits_to_heatmap, sample_descriptors
from visloc.registry import Capabilities
from visloc.types import IMAGE_GRAY, Features
from visloc.weights.hfnet import DEFAULT_STUDENT_CONF, DEFAULT_WEIGHTS, resolve_hfnet

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

    def __post_init__(self) -> None:
        ranges.keypoint_budget(self)  # -1: every keypoint
        ranges.between(self, 0, 64, "nms_radius", "remove_borders")
        ranges.between(self, 0, 1, "detection_threshold")  # a softmax heatmap
        ranges.image_size(self)


def pad_to_cell(image: torch.Tensor) -> torch.Tensor:
    """Pad ``[B, C, H, W]`` at the bottom and right (edge replication) to multiples of 8."""
    h, w = image.shape[-2:]
    pad_h, pad_w = -h % CELL, -w % CELL
    if pad_h == 0 and pad_w == 0:
        return image
    return F.pad(image, (0, pad_w, 0, pad_h), mode="replicate")


def hfnet_postprocess(pred: dict[str, torch.Tensor], image_size: tuple[int, int],
                      conf: HFNetExtractorConf) -> list[Features]:
    """Network outputs of a padded batch -> one ``Features`` per image.

    Args:
        pred: ``logits [B, 65, h, w]``, ``dense_descriptors [B, D, h, w]``, ``global_descriptor [B, G]``.
        image_size: ``(H, W)`` of the images before padding (``H <= 8 h``, ``W <= 8 w``).
        conf: detection settings.

    Returns:
        Per image: ``keypoints [N, 2]`` ``(x, y)`` pixels, ``scores [N]``, ``descriptors [N, D]``
        L2-normalised, ``global_descriptor [G]``; ``image_size`` is ``(W, H)`` before padding.
    """
    height, width = image_size
    heatmap = logits_to_heatmap(pred["logits"])[:, :height, :width]
    max_kp = conf.max_num_keypoints if conf.max_num_keypoints >= 0 else None
    detections = detect_keypoints(heatmap, conf.nms_radius, conf.detection_threshold, max_kp, conf.remove_borders)
    out = []
    for b, (kpts, scores) in enumerate(detections):
        dense = pred["dense_descriptors"][b:b + 1]
        desc = sample_descriptors(dense, kpts[None])[0] if len(kpts) else dense.new_zeros(0, dense.shape[1])
        out.append(Features(kpts.float(), desc.float(), scores.float(), (width, height),
                            pred["global_descriptor"][b].float()))
    return out


class HFNetExtractor(Extractor):
    """HF-Net keypoints, ``descriptor_dim``-d descriptors and ``global_descriptor [1, G]``, gray input."""

    input_spec = IMAGE_GRAY

    def __init__(self, conf: HFNetExtractorConf) -> None:
        super().__init__(conf)
        if conf.nms_radius < 0 or conf.remove_borders < 0:
            raise ConfError(f"hfnet: nms_radius and remove_borders must be >= 0, got {conf.nms_radius}, "
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
    def forward(self, image: torch.Tensor) -> list[Features]:
        """Detect, describe and aggregate ``image [B, C, H, W]``; see the contract in ``features.base``."""
        image = self.check_image(image)
        pred = self.net(pad_to_cell(image).contiguous(memory_format=torch.channels_last))
        return hfnet_postprocess(pred, (image.shape[-2], image.shape[-1]), self.conf)


def _local_dim(conf: HFNetExtractorConf) -> int | None:
    """D of the network ``conf`` runs, read from the checkpoint's conf (memory-mapped), or None if unknown."""
    if conf.weights is None:  # the shipped default student or its random twin, unless a foreign ONNX file
        return None if getattr(conf, "onnx", None) else DEFAULT_STUDENT_CONF.descriptor_dim
    try:
        ckpt = torch.load(conf.weights, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # an unreadable file is reported when the extractor is built
        return None
    arch = ckpt.get("conf") if isinstance(ckpt, dict) else None
    return int(arch.get("descriptor_dim", HFNetConf().descriptor_dim)) if isinstance(arch, dict) else None


def hfnet_capabilities(conf: HFNetExtractorConf) -> Capabilities:
    """Local (``hfnet-<dim>``: its own family, no pretrained matcher) and global features."""
    files = [conf.weights] if conf.weights else [str(DEFAULT_WEIGHTS)] if DEFAULT_WEIGHTS.is_file() else []
    onnx = getattr(conf, "onnx", None)
    dim = _local_dim(conf)
    return Capabilities(frozenset({"local", "global"}), "hfnet" if dim is None else f"hfnet-{dim}",
                        weights=tuple(files + ([onnx] if onnx else [])))


EXTRACTORS.register("hfnet", HFNetExtractorConf(), HFNetExtractor, capabilities=hfnet_capabilities)
