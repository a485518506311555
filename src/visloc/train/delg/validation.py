"""Validation of DELF / DELG during training: classification accuracy and a single-scale retrieval mAP.

- Accuracy: top-1 of each classifier of the stage (``accuracy_global``: ArcFace's cosine, no margin;
  ``accuracy_attention``; ``accuracy_classifier``) over the per-class validation split, whole images
  resized to the training size.
- Retrieval: a Revisited-style folder (``jpg/<name>.jpg`` and a ``gnd_*.pkl`` read by
  ``data.oxford_paris.load_gnd``). Each image is resized so that its longest side is ``size`` (aspect kept,
  ``cv2.INTER_AREA``); a query is cropped to its ``bbx`` first and resized by the scale of its full image (as
  DELG and cirtorch extract queries). The descriptor is the module's: DELG's global descriptor, or for DELF
  (which has none) the L2-normalised average-pooled (``tuning``) or attention-pooled (``attn``) ``block3``, a
  proxy that follows the stage's training. Ranked by inner product; mAP per protocol with revisitop's exact
  metrics (``retrieval.metrics``): ``map_easy``, ``map_medium``, ``map_hard`` (``map`` for the original
  Oxford / Paris ground truth; a protocol where no query has a positive is left out).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from visloc.data.errors import DatasetError
from visloc.data.oxford_paris import load_gnd
from visloc.retrieval.metrics import evaluate_classic, evaluate_revisited, ranks_from_scores
from visloc.train.delg.data import decode_rgb, to_tensor
from visloc.weights.records import Preprocessing

#: images -> named logits [B, K] (accuracy) or L2-normalised descriptors [B, D] (retrieval)
LogitsFn = Callable[[torch.Tensor], Mapping[str, torch.Tensor]]
DescriptorFn = Callable[[torch.Tensor], torch.Tensor]


@torch.no_grad()
def classification_accuracy(logits_fn: LogitsFn, batches: Iterable[Mapping[str, Any]],
                            device: torch.device | str = "cpu") -> dict[str, float]:
    """Top-1 accuracy of each named classifier of ``logits_fn`` over ``batches`` (``image``, ``label``)."""
    hits: dict[str, int] = {}
    count = 0
    for batch in batches:
        labels = torch.as_tensor(batch["label"]).to(device)
        for name, logits in logits_fn(batch["image"].to(device)).items():
            hits[name] = hits.get(name, 0) + int((logits.argmax(dim=1) == labels).sum())
        count += len(labels)
    return {f"accuracy_{k}": v / count for k, v in hits.items()} if count else {}


def find_gnd(root: str | Path, name: str | None = None) -> Path:
    """``root/name``, or the only ``gnd_*.pkl`` / ``gnd*.json`` of ``root``; ``DatasetError`` otherwise."""
    root = Path(root)
    if name:
        return root / name
    found = sorted(root.glob("gnd_*.pkl")) + sorted(root.glob("gnd*.json"))
    if len(found) != 1:
        raise DatasetError(f"{root}: expected one gnd_*.pkl ground-truth file, found "
                           f"{[p.name for p in found] or 'none'} (set val.retrieval_gnd)")
    return found[0]


@dataclass(frozen=True)
class RetrievalSet:
    """The images and ground truth a retrieval validation uses (a subset of the file's, re-indexed)."""

    root: Path
    database: tuple[str, ...]
    queries: tuple[str, ...]
    boxes: tuple[np.ndarray | None, ...]
    gnd: tuple[dict[str, np.ndarray], ...]
    revisited: bool


def _remap(g: Mapping[str, np.ndarray], new: Mapping[int, int]) -> dict[str, np.ndarray]:
    return {k: np.asarray([new[int(i)] for i in v], np.int64) for k, v in g.items() if k != "bbx"}


def load_retrieval_set(root: str | Path, gnd_file: str | None = None, max_queries: int = 0,
                       max_database: int = 0) -> RetrievalSet:
    """A subset of a Revisited-style folder's ground truth, re-indexed.

    The first ``max_queries`` queries (0: all) and a database of every image they label, plus the others in
    order up to ``max_database`` images (0: all; the labelled ones are always kept).
    """
    g = load_gnd(find_gnd(root, gnd_file))
    nq = min(max_queries, len(g.qimlist)) if max_queries else len(g.qimlist)
    entries = g.gnd[:nq]
    used = sorted({int(i) for e in entries for k, v in e.items() if k != "bbx" for i in v})
    keep = set(used)
    for i in range(len(g.imlist)):
        if max_database and len(keep) >= max_database:
            break
        keep.add(i)
    order = sorted(keep)
    new = {old: k for k, old in enumerate(order)}
    return RetrievalSet(Path(root), tuple(g.imlist[i] for i in order), g.qimlist[:nq],
                        tuple(e.get("bbx") for e in entries), tuple(_remap(e, new) for e in entries), g.is_revisited)


def load_scaled(path: Path, size: int, bbx: np.ndarray | None = None) -> np.ndarray:
    """RGB uint8 of ``path`` at longest side ``size``; with ``bbx`` (x0, y0, x1, y1) cropped first, same scale."""
    if not path.is_file():
        raise DatasetError(f"{path}: image not found")
    rgb = decode_rgb(path.read_bytes(), str(path))
    scale = size / max(rgb.shape[:2])
    if bbx is not None:
        h, w = rgb.shape[:2]
        x0, y0 = int(np.clip(np.floor(bbx[0]), 0, w - 1)), int(np.clip(np.floor(bbx[1]), 0, h - 1))
        x1, y1 = int(np.clip(np.ceil(bbx[2]), x0 + 1, w)), int(np.clip(np.ceil(bbx[3]), y0 + 1, h))
        rgb = rgb[y0:y1, x0:x1]
    out_w, out_h = max(1, round(rgb.shape[1] * scale)), max(1, round(rgb.shape[0] * scale))
    return cv2.resize(rgb, (out_w, out_h), interpolation=cv2.INTER_AREA)


@torch.no_grad()
def embed(descriptor_fn: DescriptorFn, images: Sequence[np.ndarray], pre: Preprocessing, batch_size: int,
          device: torch.device | str = "cpu") -> np.ndarray:
    """``[N, D]`` float32 descriptors of RGB images, batched by equal shapes."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, im in enumerate(images):
        groups.setdefault(im.shape, []).append(i)
    out: list[np.ndarray | None] = [None] * len(images)
    for idx in groups.values():
        for s in range(0, len(idx), batch_size):
            part = idx[s:s + batch_size]
            x = torch.stack([to_tensor(images[i], pre) for i in part]).to(device)
            desc = descriptor_fn(x).float().cpu().numpy()
            for i, d in zip(part, desc, strict=True):
                out[i] = d
    return np.stack([d for d in out if d is not None]) if images else np.zeros((0, 0), np.float32)


def retrieval_map(descriptor_fn: DescriptorFn, rset: RetrievalSet, size: int, pre: Preprocessing,
                  batch_size: int = 16, device: torch.device | str = "cpu") -> dict[str, float]:
    """The mAP per protocol (module docstring) of ``descriptor_fn`` on ``rset`` at longest side ``size``."""
    def images(names: Sequence[str], boxes: Sequence[np.ndarray | None]) -> list[np.ndarray]:
        return [load_scaled(rset.root / "jpg" / f"{n}.jpg", size, b) for n, b in zip(names, boxes, strict=True)]

    db = embed(descriptor_fn, images(rset.database, [None] * len(rset.database)), pre, batch_size, device)
    q = embed(descriptor_fn, images(rset.queries, rset.boxes), pre, batch_size, device)
    ranks = ranks_from_scores(q.astype(np.float64) @ db.T.astype(np.float64))
    if rset.revisited:
        results = evaluate_revisited(ranks, rset.gnd, num_database=len(db))
        # a protocol without any query that has positives (nan) is left out
        return {f"map_{p}": r.mean_ap for p, r in results.items() if not np.isnan(r.mean_ap)}
    return {"map": evaluate_classic(ranks, rset.gnd, num_database=len(db))["classic"].mean_ap}
