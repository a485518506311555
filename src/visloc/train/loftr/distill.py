"""Distillation of the coarse student: a LoFTR teacher's similarities, or ALIKED + LightGlue matches.

**LoFTR teacher** (a user's ``outdoor_ds.ckpt``, coarse part at 1/8, ``weights.converters.loftr``): its
similarity matrix ``[B, L8, S8]`` is brought to the student's 1/16 grid *spatially*. The 1/16 cell
``(R, C)`` covers the 2 x 2 block of 1/8 cells ``(2R + a, 2C + b)``, ``a, b in {0, 1}``; its centre
``(16C + 7.5, 16R + 7.5)`` lies exactly between their centres (``8(2C + b) + 3.5``), so no single 1/8
cell is the nearest. ``subsample_sim`` therefore averages the 2 x 2 blocks of both images
(``mode="mean"``, the default: 16 entries per student entry). Since the similarity is bilinear in
the features, this equals the similarity of the block-averaged teacher features. ``mode="pick"``
takes the block's top-left cell ``(2R, 2C)`` (4 px up and left of the student centre). Neither is
Kolkir's ``index_select(arange(L16) * 2)`` on the flattened index, which reads teacher row R instead
of 2R.

The loss is ``T^2 KL(teacher || student)`` of the row-wise ``log_softmax(sim / T)`` (each cell of
image 0 a distribution over the cells of image 1), averaged over rows and batch (``distill_kl``).

**ALIKED + LightGlue teacher** (offline, ``detector-pair``): its keypoint matches become coarse cell
pairs (``teacher_positives``) that add positives where the depth ground truth has none
(``merge_positives``, in ``TeacherPositivesPairs`` before any crop). They are computed once per pair by
``prepare`` and cached (``cache_teacher_matches``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from visloc.io.atomic import atomic_path
from visloc.train.loftr.data import WorldPairs, WorldPairsConf
from visloc.train.loftr.supervision import cell_index
from visloc.weights.load import safe_load

logger = logging.getLogger(__name__)

#: the file name of the ALIKED + LightGlue teacher cache inside its folder
TEACHER_CACHE = "teacher_matches.pt"


def subsample_sim(sim: torch.Tensor, hw0: tuple[int, int], hw1: tuple[int, int], mode: str = "mean") -> torch.Tensor:
    """A 1/8-grid similarity matrix on the 1/16 grid (module docstring).

    Args:
        sim: ``[B, h0 w0, h1 w1]`` teacher similarities, cells row-major (index ``y * w + x``).
        hw0: ``(h0, w0)``, the teacher grid of image 0 (both even).
        hw1: ``(h1, w1)``, that of image 1.
        mode: ``mean`` (average of the 2 x 2 blocks of both images) or ``pick`` (cell ``(2R, 2C)``).

    Returns:
        ``[B, (h0/2)(w0/2), (h1/2)(w1/2)]``.
    """
    (h0, w0), (h1, w1) = hw0, hw1
    if sim.ndim != 3 or sim.shape[1:] != (h0 * w0, h1 * w1):
        raise ValueError(f"sim: expected [B, {h0 * w0}, {h1 * w1}] for grids {hw0} and {hw1}, got {tuple(sim.shape)}")
    if h0 % 2 or w0 % 2 or h1 % 2 or w1 % 2:
        raise ValueError(f"subsample_sim: teacher grids {hw0} and {hw1} must have even sides")
    b = sim.shape[0]
    if mode == "mean":
        s = sim.reshape(b, h0 // 2, 2, w0 // 2, 2, h1 // 2, 2, w1 // 2, 2).mean(dim=(2, 4, 6, 8))
    elif mode == "pick":
        s = sim.reshape(b, h0, w0, h1, w1)[:, ::2, ::2, ::2, ::2]
    else:
        raise ValueError(f"subsample_sim: mode must be mean or pick, got {mode!r}")
    return s.reshape(b, (h0 // 2) * (w0 // 2), (h1 // 2) * (w1 // 2))


def distill_kl(student_sim: torch.Tensor, teacher_sim: torch.Tensor, temperature: float) -> torch.Tensor:
    """``T^2`` times the mean over rows and batch of ``KL(teacher_row || student_row)`` at temperature ``T``.

    Args:
        student_sim: ``[B, L, S]`` student similarities (before the dual-softmax temperature).
        teacher_sim: ``[B, L, S]`` teacher similarities on the same grid (``subsample_sim``).
        temperature: ``T`` (5 as Kolkir); both matrices are divided by it before the row softmax.
    """
    if student_sim.shape != teacher_sim.shape:
        raise ValueError(f"distill_kl: student {tuple(student_sim.shape)} and teacher "
                         f"{tuple(teacher_sim.shape)} differ")
    log_s = F.log_softmax(student_sim.float() / temperature, dim=-1)
    log_t = F.log_softmax(teacher_sim.float() / temperature, dim=-1)
    rows = student_sim.shape[0] * student_sim.shape[1]
    return F.kl_div(log_s, log_t, reduction="sum", log_target=True) / rows * temperature**2


def teacher_positives(kpts0: torch.Tensor, kpts1: torch.Tensor, matches: torch.Tensor, hw0: tuple[int, int],
                      hw1: tuple[int, int], resolution: int, scores: torch.Tensor | None = None) -> torch.Tensor:
    """Keypoint matches as one-to-one coarse cell pairs: ``matches0 [L]`` int64 (-1 none), ``L = h0 w0``.

    A keypoint belongs to the cell whose centre is nearest (``supervision.cell_index``, pixel-centre-at-0).

    Args:
        kpts0: ``[N0, 2]`` keypoints of image 0 in the pixels of the training image (x, y).
        kpts1: ``[N1, 2]`` likewise for image 1.
        matches: ``[M, 2]`` indices into ``kpts0`` and ``kpts1``.
        hw0: ``(h0, w0)`` cell grid of image 0.
        hw1: ``(h1, w1)`` cell grid of image 1.
        resolution: cell size in pixels.
        scores: ``[M]`` match confidences; when several matches fall in one cell of either image, the
            best one keeps it (in the given order without scores); the others are dropped.
    """
    m = matches.long().reshape(-1, 2)
    c0 = cell_index(kpts0.double().cpu().numpy()[m[:, 0].cpu().numpy()], hw0, resolution)
    c1 = cell_index(kpts1.double().cpu().numpy()[m[:, 1].cpu().numpy()], hw1, resolution)
    order = torch.argsort(scores.float(), descending=True, stable=True) if scores is not None else torch.arange(len(m))
    out = torch.full((hw0[0] * hw0[1],), -1, dtype=torch.int64)
    used1: set[int] = set()
    for i, j in zip(c0[order.numpy()].tolist(), c1[order.numpy()].tolist(), strict=True):
        if i >= 0 and j >= 0 and out[i] < 0 and j not in used1:
            out[i] = j
            used1.add(j)
    return out


def merge_positives(gt: torch.Tensor, extra: torch.Tensor) -> torch.Tensor:
    """``gt [L]`` with the ``extra [L]`` pairs added where ``gt`` has no match and the cell of image 1 is free."""
    if gt.shape != extra.shape:
        raise ValueError(f"merge_positives: gt {tuple(gt.shape)} and extra {tuple(extra.shape)} differ")
    out = gt.clone()
    used1 = set(gt[gt >= 0].tolist())
    for i in torch.nonzero((gt < 0) & (extra >= 0)).flatten().tolist():
        j = int(extra[i])
        if j not in used1:
            out[i] = j
            used1.add(j)
    return out


def cache_teacher_matches(items: Iterable[Mapping[str, Any]], matcher: Any, resolution: int, path: Path,
                          min_score: float = 0.0, flush_every: int = 100) -> dict[str, torch.Tensor]:
    """Run an image matcher on each pair, keep its matches as cell pairs, write ``{name: matches0}`` to ``path``.

    Pairs already in ``path`` are not run again (the cache is keyed by the pair's ``name``); the file is
    rewritten atomically every ``flush_every`` new pairs and at the end.

    Args:
        items: dataset items with ``name``, ``image0`` and ``image1`` ``[1, H, W]`` gray in [0, 1] (at the
            training size; the matcher sees them repeated to RGB).
        matcher: an ``ImageMatcher`` (e.g. ``detector-pair``: ALIKED + LightGlue) returning keypoints.
        resolution: the student's cell size.
        path: the cache file.
        min_score: matches below this confidence are ignored.
        flush_every: new pairs between two writes of the file.
    """
    cache = load_teacher_matches(path) if path.is_file() else {}
    added = 0

    def flush() -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            torch.save(cache, tmp)

    for item in items:
        name = str(item["name"])
        if name in cache:
            continue
        im0, im1 = item["image0"], item["image1"]
        hw0 = (im0.shape[-2] // resolution, im0.shape[-1] // resolution)
        hw1 = (im1.shape[-2] // resolution, im1.shape[-1] // resolution)
        with torch.inference_mode():
            m = matcher(im0[None].expand(1, 3, -1, -1), im1[None].expand(1, 3, -1, -1))[0]
        keep = m.scores >= min_score
        cache[name] = teacher_positives(m.keypoints0, m.keypoints1, m.matches[keep], hw0, hw1, resolution,
                                        m.scores[keep])
        added += 1
        if added % flush_every == 0:  # an interrupted prepare keeps what it computed
            flush()
    if added % flush_every or not path.is_file():
        flush()
    logger.info("teacher matches: %d pairs computed, %d cached in %s", added, len(cache), path)
    return cache


def load_teacher_matches(path: Path) -> dict[str, torch.Tensor]:
    """The ``{pair name: matches0 [L] int64}`` cache written by ``cache_teacher_matches``."""
    data = safe_load(path, "teacher match cache")
    if not isinstance(data, dict) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise ValueError(f"{path}: not a teacher match cache (expected {{name: tensor}})")
    return data



class TeacherPositivesPairs(WorldPairs):
    """``WorldPairs`` whose ground truth gains the cached teacher pairs (``merge_positives``) before any crop.

    Args:
        conf: the dataset conf (the teacher ran on its full resized images, at the same resolution).
        split: the split.
        table: ``{pair name: matches0 [L]}`` from ``cache_teacher_matches``.
    """

    def __init__(self, conf: WorldPairsConf, split: str, table: Mapping[str, torch.Tensor]) -> None:
        super().__init__(conf, split)
        self.table = table

    def gt(self, index: int) -> tuple[np.ndarray, bool]:
        """The depth ground truth of pair ``index`` merged with the teacher's cell pairs."""
        m, computed = super().gt(index)
        name = self.rows[index].name0
        extra = self.table.get(name)
        if extra is None or extra.shape != m.shape:
            raise ValueError(f"teacher match cache: no entry of {m.shape[0]} cells for pair {name!r} (delete the "
                             "cache and run prepare again)")
        return merge_positives(torch.from_numpy(m), extra).numpy(), computed
