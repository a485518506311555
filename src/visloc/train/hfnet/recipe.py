"""The ``hfnet-distill`` recipe: HF-Net (Sarlin et al. 2019) distilled from online ALIKED/SuperPoint + VLAD/NetVLAD.

What it adds to a run folder (``train.core`` documents the rest)::

    vocab.pt        the teacher's VLAD vocabulary (learned by rank zero at the first start, reused on resume)
    target_cache/   the optional compact target cache (rank zero builds it)
    student.pt      the student in the hfnet checkpoint format (``weights.hfnet``)
"""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
import numpy as np
from torch.utils.data import DataLoader

from visloc.conf import apply_overrides
from visloc.errors import InputError
from visloc.retrieval.vlad import load_vocabulary, save_vocabulary
from visloc.train.datasets.images import collate
from visloc.train.hfnet.cache import CachedDataset, bytes_report
from visloc.train.hfnet.conf import HFNetDistillConf, check_conf
from visloc.train.hfnet.data import DistillDataset, training_images
from visloc.train.hfnet.module import DistillModule
from visloc.train.hfnet.teachers import VOCAB_FILE, Teacher, build_teacher, check_dims, learn_teacher_vocabulary
from visloc.train.recipe_base import Recipe, register_recipe
from visloc.weights.hfnet import load_backbone_weights, load_hfnet, save_hfnet

logger = logging.getLogger(__name__)


def prepare_vocabulary(conf: HFNetDistillConf, names: list[str], run_dir: Path) -> Teacher:
    """The teacher; its VLAD vocabulary is learned into ``run_dir/vocab.pt`` unless the file is there."""
    teacher = build_teacher(conf.teacher)
    if conf.teacher.netvlad_weights:
        return teacher
    path = run_dir / VOCAB_FILE
    if path.is_file():
        teacher.set_vocabulary(load_vocabulary(path, conf.teacher.vlad_clusters, teacher.descriptor_dim).centroids)
        return teacher
    ds = DistillDataset(names, conf.data, augment=False)
    n = min(len(names), conf.teacher.vocab_images)
    idx = np.unique(np.linspace(0, len(names) - 1, n).round().astype(int))
    images = [ds[int(i)]["image"] for i in idx]
    k = conf.teacher.vlad_clusters
    centroids = learn_teacher_vocabulary(teacher, images, k, seed=conf.train.seed)
    save_vocabulary(
        path,
        centroids,
        {"num_clusters": k, "teacher": conf.teacher.local},
        {"extractor": f"{conf.teacher.local}-dense-cells", "images": len(images)},
    )
    teacher.set_vocabulary(centroids)
    return teacher


def cache_dir(conf: HFNetDistillConf, run_dir: Path) -> Path:
    """Where the target cache lives: ``cache.dir`` or ``run_dir/target_cache``."""
    return Path(conf.cache.dir) if conf.cache.dir else run_dir / "target_cache"


class HFNetDistill(Recipe):
    """HF-Net student, frozen teachers online on each batch (or from the compact target cache)."""

    name = "hfnet-distill"
    Conf = HFNetDistillConf

    def check(self, conf: HFNetDistillConf) -> HFNetDistillConf:
        """Data, teacher, student and loss values a run can use (``conf.check_conf``)."""
        return check_conf(conf)

    def describe(self, conf: HFNetDistillConf) -> list[str]:
        """The run in one line, and the target-cache estimate next to HF-Net's own export."""
        t, m = conf.teacher, conf.student.model
        glob = "NetVLAD" if t.netvlad_weights else f"VLAD {t.vlad_clusters}x{m.descriptor_dim}"
        size = (int(conf.data.size[0]), int(conf.data.size[1]))
        return [
            *super().describe(conf),
            f"teacher {t.local} + {glob} -> HF-Net student (width {m.width_mult}, {m.descriptor_dim}-d local, "
            f"{m.global_dim}-d global) at {size[0]}x{size[1]}",
            bytes_report(size, m.descriptor_dim, m.global_dim, conf.cache, t.max_keypoints),
        ]

    def prepare(self, conf: HFNetDistillConf, run_dir: Path) -> None:
        """Rank zero: the teacher's vocabulary and, when enabled, the target cache."""
        names = training_images(conf.data)
        teacher = prepare_vocabulary(conf, names, run_dir)
        check_dims(teacher, conf.student.model.descriptor_dim, conf.student.model.global_dim)
        if conf.cache.enabled:
            from visloc.train.hfnet.cache import build_cache

            build_cache(conf, names, teacher, cache_dir(conf, run_dir))

    def module(self, conf: HFNetDistillConf, run_dir: Path) -> DistillModule:
        """The student, initialised from ``student.init`` (an hfnet checkpoint) or ImageNet backbone weights."""
        module = DistillModule(conf, run_dir)
        s = conf.student
        if s.init:
            init = load_hfnet(s.init)
            if init.conf != s.model:
                raise InputError(f"student.init: {s.init} has conf {init.conf}, the recipe asks for {s.model}")
            module.student.load_state_dict(init.state_dict())
        elif s.backbone_weights:
            load_backbone_weights(module.student, s.backbone_weights)
        return module

    def dataset(self, conf: HFNetDistillConf, run_dir: Path) -> DistillDataset | CachedDataset:
        """Online items (the teacher runs on each batch) or centre crops with their cached targets."""
        names = training_images(conf.data)
        if not conf.cache.enabled:
            return DistillDataset(names, conf.data)
        return CachedDataset(names, conf, cache_dir(conf, run_dir))

    def data(self, conf: HFNetDistillConf, run_dir: Path) -> DataLoader:
        """Shuffled batches of ``train.batch_size`` (the last partial one dropped)."""
        dataset = self.dataset(conf, run_dir)
        n = len(dataset)
        if n < conf.train.batch_size:
            raise InputError(
                f"data: {n} items are fewer than train.batch_size={conf.train.batch_size} (raise data.repeat)"
            )
        workers = conf.data.num_workers
        return DataLoader(
            dataset,
            batch_size=conf.train.batch_size,
            shuffle=True,
            drop_last=True,
            num_workers=workers,
            persistent_workers=workers > 0,
            collate_fn=collate,
        )

    def export(self, module: L.LightningModule, conf: HFNetDistillConf, run_dir: Path) -> Path:
        """``run_dir/student.pt`` in the hfnet checkpoint format (loads with ``weights_only=True``)."""
        if not isinstance(module, DistillModule):
            raise TypeError(f"hfnet-distill exports a DistillModule, got {type(module).__name__}")
        return save_hfnet(run_dir / "student.pt", module.student)

    def tiny_conf(self, run_dir: Path) -> HFNetDistillConf:
        """64x64 crops of the built-in photos, batch 2, a 4-cluster vocabulary of 4 images, 3 steps."""
        return apply_overrides(
            HFNetDistillConf(),
            {
                "run_dir": str(run_dir),
                "data": {"builtin": True, "size": [64, 64], "photometric": True},
                "teacher": {"vocab_images": 4, "vlad_clusters": 4, "max_keypoints": 64},
                "student": {"model": {"global_dim": 512}},
                "train": {"max_steps": 3, "batch_size": 2, "checkpoint_every": 2, "log_every": 1,
                          "image_every": 0, "threads": 1},
            },
        )


register_recipe(HFNetDistill())
