"""SuperPoint as the local teacher, from the user's official ``superpoint_v1.pth`` (HF-Net's own teacher).

Targets at the student's resolution (same conventions as ``train.hfnet.teachers``):

- ``cells``: SuperPoint's own 65-way softmax per cell (what HF-Net distilled), no temperature;
- ``dense``: SuperPoint's coarse descriptor map sampled at the cell centres ``(8 j + 3.5, 8 i + 3.5)``
  the way SuperPoint / SuperGlue sample it at keypoints (``grid_sample(align_corners=True)`` after
  ``p - s / 2 + 0.5`` scaled by ``s w - s / 2 - 0.5``), re-normalised: the descriptor SuperPoint
  would give a keypoint at the centre of the cell;
- ``keypoints``: SuperPoint's detections (NMS radius 4, threshold 0.005, 4 px border).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from visloc.models.hfnet import detect_keypoints, logits_to_heatmap
from visloc.train.hfnet.conf import TeacherConf
from visloc.train.hfnet.teachers import CELL, Teacher, cell_centres, check_image
from visloc.utils.image_ops import rgb_to_gray_torch
from visloc.weights.converters.superpoint import load_superpoint


def sample_superpoint(desc: torch.Tensor, keypoints: torch.Tensor, s: int = CELL) -> torch.Tensor:
    """SuperPoint's descriptor sampling: ``desc [B, D, h, w]`` at ``keypoints [B, N, 2]`` px -> ``[B, N, D]``."""
    b, _, h, w = desc.shape
    k = keypoints - s / 2 + 0.5
    k = k / torch.tensor([w * s - s / 2 - 0.5, h * s - s / 2 - 0.5], device=k.device, dtype=k.dtype)
    out = F.grid_sample(desc, (k * 2 - 1).reshape(b, 1, -1, 2), mode="bilinear", align_corners=True)
    return F.normalize(out.reshape(b, desc.shape[1], -1), p=2.0, dim=1).transpose(1, 2)


class SuperPointTeacher(Teacher):
    """SuperPoint local teacher (``teacher.local_weights`` = the official ``superpoint_v1.pth``)."""

    def __init__(self, conf: TeacherConf) -> None:
        if not conf.local_weights:
            raise ValueError("teacher.local_weights: the SuperPoint teacher needs its official superpoint_v1.pth")
        super().__init__(conf, 256)
        self.net = load_superpoint(conf.local_weights)
        self.freeze()

    @torch.no_grad()
    def local(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """``image [B, 3, H, W]`` -> dense ``[B, 256, h, w]``, cells ``[B, 65, h, w]``, keypoints ``[N, 2]`` px."""
        check_image(image)
        out = self.net(rgb_to_gray_torch(image.float()))
        b, _, h, w = out["logits"].shape
        centres = cell_centres(h, w, image.device)[None].expand(b, -1, -1)
        dense = sample_superpoint(out["descriptors"], centres).transpose(1, 2).reshape(b, -1, h, w)
        cells = out["logits"].softmax(1)
        kpts = detect_keypoints(logits_to_heatmap(out["logits"]), 4, 0.005, self.conf.max_keypoints, border=4)
        return dense, cells, [k for k, _ in kpts]
