"""DELF / DELG extraction around the network: the image pyramid, keypoint selection, global aggregation.

One home for what the ``delg``, ``delg-global``, ``delf`` (torch) and ``delg-onnx`` (onnxruntime)
extractors share; each gives ``extract_pyramid`` a ``NetFn`` that runs its network at one scale.
As tensorflow/models ``delf/python/training/model/export_model_utils.py`` (``ExtractLocalFeatures``)
and ``delf/python/extractor.py``:

- pyramid: the normalised batch ``[B, 3, H, W]`` is resized per scale ``s`` to
  ``round(H s) x round(W s)`` (TF rounds a float32 product half to even) with
  ``F.interpolate(bilinear, align_corners=False, antialias=False)``, which is TF2's
  ``tf.image.resize(bilinear)`` (half-pixel centres, no antialiasing); the B images of a batch run
  in one pass per scale, and a scale that is not a global scale skips conv5. A scaled image with a
  side under ``MIN_SIDE`` pixels is skipped (DELF returns nothing for images under 10 px), so an
  image too small for every scale gives empty features and a zero global descriptor.
- local features: every block3 cell ``(i, j)`` of every local scale is a candidate, scored by its
  attention (softplus); candidates below ``threshold`` (an absolute score tied to the weights; None:
  none removed) are dropped, then NMS on the cells' receptive-field boxes (``torchvision.ops.nms``;
  IoU 1.0, DELF's default, removes nothing: the top ``max_num`` by score remain, without running it)
  keeps at most ``max_num``, by decreasing score. The keypoint is the receptive-field centre
  ``c = offset + 32 j`` of the scaled image mapped back to the input with the half-pixel rule,
  ``x = (c + 0.5) / s_x - 0.5`` where ``s_x = round(W s) / W`` is the level's actual ratio (``s``
  itself when ``W s`` is whole), and likewise ``y`` (``offset`` from the network's
  ``receptive_field(side)`` of that axis: the tf layout's stem padding depends on the side's
  parity). DELF's exporter puts the centre at ``32 j / s`` (offset 0, no half-pixel term); this
  is the exact centre. The per-keypoint scale ``1 / s`` goes to ``Features.extras["scales"]``.
- global descriptor: per global scale the L2-normalised embedding, summed over scales, L2-normalised.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.ops import nms

from visloc.models.resnet_delg import ReceptiveField
from visloc.types import Features

#: DELF / DELG's image pyramid (``image_scales`` of every official config)
LOCAL_SCALES = (0.25, 0.3536, 0.5, 0.7071, 1.0, 1.4142, 2.0)
#: DELG's global scales (``image_scales_ind: 3, 4, 5``)
GLOBAL_SCALES = (0.7071, 1.0, 1.4142)
#: a scaled image needs this many pixels per side (DELF's extractor: 10)
MIN_SIDE = 10
#: the official DELG checkpoints' attention thresholds (their ``delf_config`` ``score_threshold``); a
#: visloc-trained model needs its own (or top-k: no threshold)
OFFICIAL_THRESHOLDS = {"r50delg_gldv2clean_20200914": 454.6, "r101delg_gldv2clean_20200914": 357.48,
                       "r50delg_gld_20200814": 175.0, "r101delg_gld_20200814": 166.1, "delg_gld_20200520": 175.0}


@dataclass
class LevelOutput:
    """The network's outputs for one pyramid level of a batch (None where not asked).

    Attributes:
        attention: ``[B, 1, h, w]`` attention scores (softplus, >= 0).
        local: ``[B, D, h, w]`` local descriptors before L2 normalisation.
        global_descriptor: ``[B, G]`` L2-normalised global descriptor of this scale.
    """

    attention: torch.Tensor | None = None
    local: torch.Tensor | None = None
    global_descriptor: torch.Tensor | None = None


#: ``net(image [B, 3, h, w] normalised, local, global_) -> LevelOutput``
NetFn = Callable[[torch.Tensor, bool, bool], LevelOutput]


@dataclass(frozen=True)
class PyramidConf:
    """How the pyramid runs and which local features it keeps.

    Attributes:
        local_scales: scales giving local features (empty: none).
        global_scales: scales whose global descriptors are summed (empty: no global descriptor).
        threshold: keep cells with attention ``>=`` it; None: no threshold (top-k).
        max_num: at most this many local features per image.
        iou: NMS IoU threshold on receptive-field boxes (1.0: no suppression).
    """

    local_scales: tuple[float, ...] = LOCAL_SCALES
    global_scales: tuple[float, ...] = GLOBAL_SCALES
    threshold: float | None = None
    max_num: int = 1000
    iou: float = 1.0


@dataclass(frozen=True)
class Level:
    """One pyramid level: its scale, the scaled image's ``(h, w)`` and the network's outputs."""

    scale: float
    size: tuple[int, int]
    output: LevelOutput


def scaled_side(side: int, scale: float) -> int:
    """``round(side * scale)`` as TF computes it (float32 product, half to even)."""
    return int(np.round(np.float32(side) * np.float32(scale)))


def run_pyramid(net: NetFn, image: torch.Tensor, local_scales: Sequence[float], global_scales: Sequence[float]
                ) -> list[Level]:
    """Run ``net`` on ``image [B, 3, H, W]`` (normalised) at every scale of either set, smallest first.

    Scales whose image would have a side under ``MIN_SIDE`` pixels are skipped (all of them when the
    input itself is that small).
    """
    height, width = int(image.shape[-2]), int(image.shape[-1])
    if min(height, width) < MIN_SIDE:
        return []
    local_set, global_set = set(local_scales), set(global_scales)
    levels = []
    for s in sorted(local_set | global_set):
        h, w = scaled_side(height, s), scaled_side(width, s)
        if min(h, w) < MIN_SIDE:
            continue
        x = image if (h, w) == (height, width) else F.interpolate(
            image, size=(h, w), mode="bilinear", align_corners=False, antialias=False)
        levels.append(Level(s, (h, w), net(x, s in local_set, s in global_set)))
    return levels


def cell_geometry(rf: ReceptiveField, cells: int, side: int, scaled: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Centres ``[cells]`` and box half-extent (scalar tensor) of one axis, in input pixels.

    Args:
        rf: the receptive field along this axis of the scaled image.
        cells: block3 cells along the axis.
        side: the input's length along the axis.
        scaled: the scaled image's length (``round(side * s)``).
    """
    ratio = scaled / side
    centre = rf.centre(torch.arange(cells))
    return (centre + 0.5) / ratio - 0.5, torch.tensor((rf.size - 1) / 2 / ratio)


@dataclass
class _Candidates:
    keypoints: torch.Tensor  # [N, 2] (x, y) input pixels
    boxes: torch.Tensor  # [N, 4] (x1, y1, x2, y2)
    scores: torch.Tensor  # [N]
    level: torch.Tensor  # [N] index into the levels
    cell: torch.Tensor  # [N] flat cell index in its level


def _candidates(levels: Sequence[Level], b: int, input_size: tuple[int, int],
                rf_of: Callable[[int], ReceptiveField], threshold: float | None) -> _Candidates:
    """Every cell of image ``b`` over the local levels with attention ``>= threshold``."""
    height, width = input_size
    parts: list[tuple[torch.Tensor, ...]] = []
    for li, level in enumerate(levels):
        att = level.output.attention
        if att is None or att.shape[-1] * att.shape[-2] == 0:
            continue
        scores = att[b, 0].float().cpu()
        hc, wc = scores.shape
        xs, hx = cell_geometry(rf_of(level.size[1]), wc, width, level.size[1])
        ys, hy = cell_geometry(rf_of(level.size[0]), hc, height, level.size[0])
        flat = torch.arange(hc * wc)
        if threshold is not None:
            flat = flat[scores.flatten() >= threshold]
        x, y = xs[flat % wc], ys[flat // wc]
        boxes = torch.stack([x - hx, y - hy, x + hx, y + hy], dim=1)
        parts.append((torch.stack([x, y], dim=1), boxes, scores.flatten()[flat], torch.full_like(flat, li), flat))
    if not parts:
        empty = torch.zeros(0, dtype=torch.long)
        return _Candidates(torch.zeros(0, 2), torch.zeros(0, 4), torch.zeros(0), empty, empty)
    return _Candidates(*(torch.cat(t) for t in zip(*parts, strict=True)))


def select_features(boxes: torch.Tensor, scores: torch.Tensor, max_num: int, iou: float) -> torch.Tensor:
    """Indices of at most ``max_num`` boxes kept by greedy NMS at ``iou``, by decreasing score.

    Equals ``torchvision.ops.nms(boxes, scores, iou)[:max_num]`` (DELF's NMS with ``max_boxes``), faster:
    ``nms`` drops a box whose IoU with a higher-scored kept box is ``> iou``, so ``iou >= 1`` keeps every
    box and this is the top ``max_num`` by score (DELF's default; a stable sort); otherwise ``nms`` runs
    on the best ``4 max_num`` candidates, doubled until ``max_num`` are kept or all were seen (whether a
    box is kept depends only on the boxes scored above it, so the result is the same).
    """
    if len(scores) == 0:
        return torch.zeros(0, dtype=torch.long)
    order = torch.argsort(scores, descending=True, stable=True)
    if iou >= 1.0:
        return order[:max_num]
    chunk = 4 * max_num
    while True:
        top = order[:chunk]
        kept = top[nms(boxes[top].float(), scores[top].float(), float(iou))]
        if len(kept) >= max_num or chunk >= len(order):
            return kept[:max_num]
        chunk *= 2


def local_features(levels: Sequence[Level], b: int, input_size: tuple[int, int],
                   rf_of: Callable[[int], ReceptiveField], conf: PyramidConf,
                   describe: Callable[[torch.Tensor], torch.Tensor], descriptor_dim: int
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(keypoints [N, 2], descriptors [N, D], scores [N], scales [N])`` of image ``b`` (CPU, float32).

    Args:
        levels: ``run_pyramid``'s levels.
        b: the image's index in the batch.
        input_size: ``(H, W)`` of the pyramid's input.
        rf_of: ``side -> ReceptiveField`` of the network (``DELG.receptive_field``).
        conf: the selection settings.
        describe: ``[N, D_raw]`` raw local descriptors -> ``[N, D]`` final ones (L2, PCA...).
        descriptor_dim: ``D`` (for the empty case).
    """
    cand = _candidates(levels, b, input_size, rf_of, conf.threshold)
    keep = select_features(cand.boxes, cand.scores, conf.max_num, conf.iou)
    raw: torch.Tensor | None = None
    for li in cand.level[keep].unique().tolist():
        local = levels[li].output.local
        if local is None:
            raise ValueError(f"pyramid level {levels[li].scale}: attention without local descriptors")
        rows = (cand.level[keep] == li).nonzero()[:, 0]
        values = local[b].flatten(1)[:, cand.cell[keep][rows].to(local.device)].T.float().cpu()
        raw = values.new_zeros(len(keep), values.shape[1]) if raw is None else raw
        raw[rows] = values
    scales = torch.tensor([1.0 / lv.scale for lv in levels], dtype=torch.float32)
    if raw is None:
        return torch.zeros(0, 2), torch.zeros(0, descriptor_dim), torch.zeros(0), torch.zeros(0)
    return cand.keypoints[keep].float(), describe(raw).float(), cand.scores[keep].float(), scales[cand.level[keep]]


def global_descriptor(levels: Sequence[Level], b: int, dim: int) -> torch.Tensor:
    """``[G]``: the sum of image ``b``'s per-scale L2-normalised descriptors, L2-normalised (zeros if none)."""
    parts = [lv.output.global_descriptor[b].float().cpu() for lv in levels if lv.output.global_descriptor is not None]
    if not parts:
        return torch.zeros(dim)
    return F.normalize(torch.stack(parts).sum(0), dim=0)


def extract_pyramid(net: NetFn, image: torch.Tensor, conf: PyramidConf, rf_of: Callable[[int], ReceptiveField],
                    describe: Callable[[torch.Tensor], torch.Tensor], descriptor_dim: int, global_dim: int
                    ) -> list[Features]:
    """One ``Features`` per image of the normalised batch ``image [B, 3, H, W]`` (module docstring).

    Local features when ``conf.local_scales`` is not empty (``extras["scales"]``: ``1 / s`` per
    keypoint), a global descriptor when ``conf.global_scales`` is not empty; keypoints in the pixels
    of ``image`` (pixel-centre-at-0), ``image_size`` its ``(W, H)``.
    """
    height, width = int(image.shape[-2]), int(image.shape[-1])
    levels = run_pyramid(net, image, conf.local_scales, conf.global_scales)
    out = []
    for b in range(image.shape[0]):
        g = global_descriptor(levels, b, global_dim) if conf.global_scales else None
        if not conf.local_scales:
            out.append(Features.global_only(g if g is not None else torch.zeros(global_dim), (width, height)))
            continue
        kpts, desc, scores, scales = local_features(levels, b, (height, width), rf_of, conf, describe,
                                                    descriptor_dim)
        out.append(Features(kpts, desc, scores, (width, height), g, {"scales": scales}))
    return out


__all__ = ["GLOBAL_SCALES", "LOCAL_SCALES", "MIN_SIDE", "OFFICIAL_THRESHOLDS", "Level", "LevelOutput", "NetFn",
           "PyramidConf", "cell_geometry", "extract_pyramid", "global_descriptor", "local_features", "run_pyramid",
           "scaled_side", "select_features"]
