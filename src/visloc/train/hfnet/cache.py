"""Optional compact target cache, for teachers too slow to run online.

HF-Net's original pipeline exported the teachers' dense predictions of every training image, about
6.16 MB per image (``HFNET_BYTES_PER_IMAGE``). This cache keeps what the losses read, compactly:

- dense descriptors ``[D, h, w]`` in float16, optionally average-pooled by ``reduce`` (restored by
  bilinear upsampling at the cell centres and re-normalised);
- the 65-way cell distribution as its ``top_k`` entries per cell (uint8 index + value; the rest is
  zero and the kept mass is re-normalised), or whole;
- the global vector ``[G]`` and the teacher's keypoints ``[N, 2]``.

Targets are computed once on the centre crop at the training size (``augment=False``), so cached
runs have no random crops or homographies; the student still gets photometric augmentation. One
``<sha1 of the name>.npz`` per image (atomic writes, a re-run skips what is there); ``cache.json``
records the settings, and a cache made with others raises.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from visloc.errors import InputError
from visloc.io.atomic import atomic_path, atomic_write_text
from visloc.train.datasets.augment import photometric_hfnet
from visloc.train.hfnet.conf import CacheConf, HFNetDistillConf
from visloc.train.hfnet.data import DistillDataset
from visloc.train.hfnet.teachers import CELL, Targets, Teacher

logger = logging.getLogger(__name__)

#: bytes per image of HF-Net's exported teacher predictions (Sarlin et al. 2019's training set export)
HFNET_BYTES_PER_IMAGE = 6.16e6


def estimate_bytes_per_image(
    size: tuple[int, int], descriptor_dim: int, global_dim: int, conf: CacheConf, max_keypoints: int = 512
) -> int:
    """Upper bound of the cached bytes of one image of ``size = (W, H)`` (arrays only, no file overhead)."""
    h, w = size[1] // CELL, size[0] // CELL
    fb = 2 if conf.fp16 else 4
    dense = descriptor_dim * (-(-h // conf.reduce)) * (-(-w // conf.reduce)) * fb
    cells = h * w * (conf.top_k * (1 + fb) if conf.top_k else 65 * fb)
    return int(dense + cells + global_dim * fb + max_keypoints * 2 * 4)


def bytes_report(
    size: tuple[int, int], descriptor_dim: int, global_dim: int, conf: CacheConf, max_keypoints: int = 512
) -> str:
    """One line: the estimate per image next to HF-Net's 6.16 MB."""
    b = estimate_bytes_per_image(size, descriptor_dim, global_dim, conf, max_keypoints)
    return (
        f"target cache: about {b / 1e6:.3f} MB per image at {size[0]}x{size[1]} "
        f"(HF-Net's export: {HFNET_BYTES_PER_IMAGE / 1e6:.2f} MB, {HFNET_BYTES_PER_IMAGE / b:.0f}x more)"
    )


def compress(
    dense: torch.Tensor, cells: torch.Tensor, global_: torch.Tensor, keypoints: torch.Tensor, conf: CacheConf
) -> dict[str, np.ndarray]:
    """Targets of one image (``dense [D, h, w]``, ``cells [65, h, w]``, ``global [G]``, ``keypoints [N, 2]``)."""
    dt = np.float16 if conf.fp16 else np.float32
    if conf.reduce > 1:
        dense = F.avg_pool2d(dense[None].float(), conf.reduce, ceil_mode=True)[0]
    out = {
        "dense": dense.cpu().numpy().astype(dt),
        "global": global_.cpu().numpy().astype(dt),
        "keypoints": keypoints.cpu().numpy().astype(np.float32),
        "reduce": np.int64(conf.reduce),
    }
    if conf.top_k:
        val, idx = cells.float().topk(conf.top_k, dim=0)
        out |= {"cells_value": val.cpu().numpy().astype(dt), "cells_index": idx.cpu().numpy().astype(np.uint8)}
    else:
        out["cells"] = cells.cpu().numpy().astype(dt)
    return out


def decompress(data: dict[str, np.ndarray], h: int, w: int) -> dict[str, torch.Tensor]:
    """Inverse of ``compress`` at the student's cell grid ``h x w``: float32 tensors, same keys as a batch."""
    dense = torch.from_numpy(data["dense"].astype(np.float32))
    r = int(data["reduce"]) if "reduce" in data else 1
    if r > 1:
        # pooled cell I covers cells r I .. r I + r - 1, so cell i sits at (i - (r - 1) / 2) / r pooled cells
        n_y, n_x = dense.shape[-2:]
        u_y = ((torch.arange(h) - (r - 1) / 2) / r).clamp(0, n_y - 1)
        u_x = ((torch.arange(w) - (r - 1) / 2) / r).clamp(0, n_x - 1)
        gy, gx = 2 * u_y / max(n_y - 1, 1) - 1, 2 * u_x / max(n_x - 1, 1) - 1
        grid = torch.stack(torch.meshgrid(gy, gx, indexing="ij")[::-1], -1)[None]
        dense = F.grid_sample(dense[None], grid, mode="bilinear", align_corners=True)[0]
    dense = F.normalize(dense, p=2.0, dim=0)
    if "cells" in data:
        cells = torch.from_numpy(data["cells"].astype(np.float32))
    else:
        val = torch.from_numpy(data["cells_value"].astype(np.float32))
        idx = torch.from_numpy(data["cells_index"].astype(np.int64))
        cells = torch.zeros(65, h, w).scatter_(0, idx, val)
        cells = cells / cells.sum(0, keepdim=True).clamp_min(1e-12)
    return {
        "dense": dense,
        "cells": cells,
        "global": torch.from_numpy(data["global"].astype(np.float32)),
        "keypoints": torch.from_numpy(data["keypoints"]),
    }


def _key(name: str) -> str:
    return hashlib.sha1(name.encode()).hexdigest()


def _settings(conf: HFNetDistillConf) -> dict[str, Any]:
    c = conf.cache
    return {
        "size": list(conf.data.size),
        "teacher": json.loads(json.dumps(conf.teacher.__dict__)),
        "fp16": c.fp16,
        "top_k": c.top_k,
        "reduce": c.reduce,
    }


@torch.no_grad()
def build_cache(conf: HFNetDistillConf, names: list[str], teacher: Teacher, cache_dir: Path) -> Path:
    """Write the targets of every image not yet cached; returns ``cache_dir``; unreadable images are skipped."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    record, settings = cache_dir / "cache.json", _settings(conf)
    if record.is_file() and json.loads(record.read_text()) != settings:
        raise InputError(f"{cache_dir}: target cache made with other settings (see {record}); use another cache.dir")
    atomic_write_text(record, json.dumps(settings, indent=1))
    size = (int(conf.data.size[0]), int(conf.data.size[1]))
    logger.info(bytes_report(size, teacher.descriptor_dim, teacher.global_dim, conf.cache, conf.teacher.max_keypoints))
    ds = DistillDataset(names, conf.data, augment=False)
    for i, name in enumerate(names):
        path = cache_dir / f"{_key(name)}.npz"
        if path.is_file():
            continue
        item = ds[i]
        if item["name"] != name:  # unreadable: the dataset substituted the next image
            continue
        t: Targets = teacher(item["image"][None])
        arrays = compress(t.dense[0], t.cells[0], t.global_[0], t.keypoints[0], conf.cache)
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.savez(f, **arrays)  # pyright: ignore[reportArgumentType]  # numpy stub: **arrays could bind allow_pickle
    return cache_dir


class CachedDataset(Dataset):
    """Centre crops for the student (photometric augmentation) with the cached targets of the same crop."""

    def __init__(self, names: list[str], conf: HFNetDistillConf, cache_dir: Path) -> None:
        self.conf, self.cache_dir = conf, Path(cache_dir)
        self.names = [n for n in names if (self.cache_dir / f"{_key(n)}.npz").is_file()]
        if not self.names:
            raise InputError(f"{cache_dir}: no cached targets")
        self.base = DistillDataset(self.names, conf.data, augment=False)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = self.base[index]
        if self.conf.data.photometric:
            rng = np.random.default_rng(int(torch.randint(0, 2**62, (1,)).item()))
            item["student_image"] = torch.from_numpy(photometric_hfnet(rng, item["student_image"][0].numpy()))[None]
        with np.load(self.cache_dir / f"{_key(item['name'])}.npz") as f:
            data = {k: f[k] for k in f.files}
        w, h = (int(s) // CELL for s in self.conf.data.size)
        return item | decompress(data, h, w)
