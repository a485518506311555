"""The ``delg`` and ``delf`` recipes: DELG trained jointly, DELF in two stages, on a GLDv2 train folder.

What they add to a run folder (``train.core`` documents the rest)::

    relabeling.csv     new_label,old_label of the classifier's classes (DELF's build_image_dataset.py file)
    delg.pt            recipe delg: the network, a visloc model checkpoint (model ``delg``, no classifier)
    delf_<stage>.pt    recipe delf: the same for stage tuning or attn (``attn`` starts from a tuning export)

With ``generate.classes`` > 0, ``prepare`` first writes synthetic landmarks (``synthetic``) into
``data.root`` and ``val.retrieval_root``. The classifier's size ``K`` is known before ``prepare`` (the
module must not read what it writes): ``generate.classes``, else the labels of ``data.index`` or of
``data.root``'s CSVs. Batches come from a ``ResumableLoader`` over a ``ShardedSampler`` (tars dealt to ranks).

Exports load with ``load_model_record(path, "delg")`` and ``build_model(record, DELGConf, DELG)``. The
checkpoint does not record the input normalisation: DELF / DELG's ``(x - 128) / 128`` unless the run used
ImageNet's (``model.normalisation``; the run's ``conf.yaml`` says which).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import nn
from torch.utils.data import DataLoader

from visloc.conf import apply_overrides
from visloc.data.gldv2_split import RELABELING_CSV, read_labels, write_relabeling
from visloc.errors import InputError
from visloc.models.delg import DELG, DELGConf, num_parameters
from visloc.train.datasets.sharded import ResumableLoader, ShardedSampler
from visloc.train.delg import synthetic
from visloc.train.delg.conf import DELFTrainConf, DELGTrainConf, check_delf, check_delg
from visloc.train.delg.data import Augment, LandmarkImages, open_index_split, open_training_data
from visloc.train.delg.module import DELGTrainModule, Mode
from visloc.train.recipe_base import Recipe, register_recipe
from visloc.weights.checkpoint import build_model, load_model_record, save_model
from visloc.weights.records import IMAGENET_RGB

logger = logging.getLogger(__name__)
MODEL_NAME = "delg"
AnyConf = DELGTrainConf | DELFTrainConf


def load_network(model: DELG, path: str, what: str) -> None:
    """Copy a visloc ``delg`` checkpoint of the same architecture into ``model``."""
    init = build_model(load_model_record(path, MODEL_NAME, what), DELGConf, DELG)
    if init.conf != model.conf:
        raise InputError(f"{what}: {path} has conf {init.conf}, the run asks for {model.conf}")
    model.load_state_dict(init.state_dict())


def num_classes(conf: AnyConf) -> int:
    """``K``: ``generate.classes``, else of ``data.index``, else the distinct labels of ``data.root``'s CSVs."""
    if conf.generate.classes:
        return conf.generate.classes
    if conf.data.index:
        return open_index_split(conf.data.index)[1].num_classes
    return len(set(read_labels(conf.data.root, conf.data.clean).values()))


class _DELGBase(Recipe):
    """What both recipes share: data, preparation, the module's initialisation, export, tiny confs."""

    export_name = ""

    def mode(self, conf: Any) -> Mode:
        """The module's training mode."""
        raise NotImplementedError

    def describe(self, conf: AnyConf) -> list[str]:
        """The run: network, data and augmentation, schedule, validation."""
        arch, d, t = conf.model.resolved, conf.data, conf.train
        name = conf.model.preset if conf.model.arch is None else "custom"
        start = conf.model.init or conf.model.imagenet or getattr(conf, "stage_init", None) or "random init"
        val = f"val every {conf.val.every} steps" if conf.val.every else "no validation"
        if conf.val.every and conf.val.retrieval_root:
            val += f" (+ retrieval mAP on {conf.val.retrieval_root} at {conf.val.retrieval_size} px)"
        return [
            *super().describe(conf),
            f"{self.mode(conf)}: {name} ({arch.depth} {arch.layout}, {num_parameters(DELG(arch)) / 1e6:.1f}M "
            f"parameters) from {start}, {conf.model.normalisation} normalisation",
            f"data {d.index or d.root} at {d.image_size}x{d.image_size}, crop {'on' if d.augment else 'off'}, flip "
            f"{'on' if d.flip else 'off'}; SGD lr {t.lr:g} ({conf.schedule.decay} decay), momentum "
            f"{conf.schedule.momentum:g}, weight decay {t.weight_decay:g}; {val}",
        ]

    def prepare(self, conf: AnyConf, run_dir: Path) -> None:
        """Rank zero: synthetic landmarks (``generate``), then ``relabeling.csv``."""
        g = conf.generate
        if g.classes:
            synthetic.write_gldv2(conf.data.root, g.classes, g.images_per_class, g.size, g.seed)
            if conf.val.retrieval_root:
                synthetic.write_revisited(conf.val.retrieval_root, g.classes, g.queries_per_class,
                                          g.database_per_class, g.size, g.seed)
        d = conf.data
        _, split, _ = open_training_data(d)
        write_relabeling(run_dir / RELABELING_CSV, split.old_labels)
        logger.info("%s: %d classes, %d training and %d validation images", d.index or d.root, split.num_classes,
                    len(split.train), len(split.val))

    def module(self, conf: AnyConf, run_dir: Path) -> DELGTrainModule:
        """The network and its classifiers, from ``model.init`` / ``model.imagenet`` / ``stage_init``."""
        module = DELGTrainModule(conf, self.mode(conf), num_classes(conf), run_dir)
        m = conf.model
        if m.init:
            load_network(module.model, m.init, "model.init")
        elif m.imagenet:
            from visloc.weights.converters.resnet_imagenet import load_imagenet_backbone

            logger.info("model.imagenet: %s weights from %s", load_imagenet_backbone(module.model, m.imagenet),
                        m.imagenet)
        stage_init = getattr(conf, "stage_init", None)
        if stage_init:
            load_network(module.model, stage_init, "stage_init")
        return module

    def data(self, conf: AnyConf, run_dir: Path) -> DataLoader:
        """Shuffled, augmented batches of ``train.batch_size`` (last partial one dropped; DDP: sharded)."""
        d = conf.data
        layout, split, shards = open_training_data(d)
        expected = num_classes(conf)
        if split.num_classes != expected:
            raise InputError(f"data: {d.index or d.root} has {split.num_classes} classes, the classifier {expected}")
        dist = torch.distributed
        world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
        if len(split.train) // world < conf.train.batch_size:
            raise InputError(f"data: {len(split.train)} training images in {d.index or d.root} over {world} "
                             f"process(es) are fewer than train.batch_size={conf.train.batch_size} per process")
        augment = Augment(d.area_range, d.aspect_range, d.min_object_covered, d.flip, d.color_jitter) \
            if d.augment else None
        dataset = LandmarkImages(layout, split.train, d.image_size, conf.model.preprocessing, augment, d.seed)
        # workers are re-made each epoch (not persistent) so that they see the epoch's set_epoch
        return ResumableLoader(dataset, ShardedSampler(dataset, shards, seed=d.seed), conf.train.batch_size,
                               num_workers=d.num_workers)

    def export_path(self, conf: AnyConf, run_dir: Path) -> Path:
        """The exported network's file."""
        return Path(run_dir) / self.export_name

    def export(self, module: L.LightningModule, conf: AnyConf, run_dir: Path) -> Path:
        """The network (no classifier) as a visloc model checkpoint, model ``delg``, recording its input normalisation.

        The extractors read ``extras["normalisation"]`` (``features.delg``), so a model trained with ImageNet
        normalisation is extracted with it. No attention threshold is recorded: a model trained here is
        extracted by top-k until one is calibrated.
        """
        if not isinstance(module, DELGTrainModule):
            raise TypeError(f"{self.name} exports a DELGTrainModule, got {type(module).__name__}")
        model: nn.Module = module.model
        normalisation = "imagenet" if conf.model.preprocessing == IMAGENET_RGB else "delg"
        return save_model(self.export_path(conf, run_dir), MODEL_NAME, model, extras={"normalisation": normalisation})

    def tiny_sections(self, run_dir: Path) -> dict[str, Any]:
        """Overrides of a tiny run: 3 synthetic classes at 64 px in the run folder, batch 4, 3 steps."""
        run_dir = Path(run_dir)
        return {
            "run_dir": str(run_dir),
            "model": {"arch": {"depth": 18, "layout": "torchvision", "attention_dim": 16, "local_dim": 8,
                               "global_dim": 32}},
            "data": {"root": str(run_dir / "landmarks"), "image_size": 64},
            "generate": {"classes": 3, "images_per_class": 5, "size": 80, "database_per_class": 2},
            "val": {"every": 2, "batch_size": 4, "retrieval_root": str(run_dir / "retrieval"),
                    "retrieval_size": 64},
            "train": {"max_steps": 3, "batch_size": 4, "checkpoint_every": 2, "log_every": 1, "threads": 1,
                      "accelerator": "cpu"},
        }


class DELGRecipe(_DELGBase):
    """DELG: ArcFace on the global embedding + attention + reconstruction, one joint SGD step."""

    name = "delg"
    Conf = DELGTrainConf
    export_name = "delg.pt"

    def mode(self, conf: DELGTrainConf) -> Mode:
        """Always ``delg``."""
        return "delg"

    def check(self, conf: DELGTrainConf) -> DELGTrainConf:
        """Values a run can use (``conf.check_delg``)."""
        return check_delg(conf)

    def tiny_conf(self, run_dir: Path) -> DELGTrainConf:
        """Three synthetic classes at 64 px, a ResNet-18 with tiny heads, batch 4, 3 steps."""
        return apply_overrides(DELGTrainConf(), self.tiny_sections(run_dir))


class DELFRecipe(_DELGBase):
    """DELF: ``stage: tuning`` (backbone + classifier), then ``stage: attn`` (attention on frozen features)."""

    name = "delf"
    Conf = DELFTrainConf

    def mode(self, conf: DELFTrainConf) -> Mode:
        """The stage."""
        return conf.stage

    def check(self, conf: DELFTrainConf) -> DELFTrainConf:
        """Values a run can use (``conf.check_delf``)."""
        return check_delf(conf)

    def export_path(self, conf: DELFTrainConf, run_dir: Path) -> Path:
        """``delf_tuning.pt`` or ``delf_attn.pt``."""
        return Path(run_dir) / f"delf_{conf.stage}.pt"

    def tiny_conf(self, run_dir: Path) -> DELFTrainConf:
        """The tuning stage of ``delg``'s tiny run on a DELF ResNet-18 (no autoencoder, no global head)."""
        sections = self.tiny_sections(run_dir)
        sections["model"]["arch"] |= {"local_dim": 0, "global_dim": 0}
        return apply_overrides(DELFTrainConf(), sections)


__all__ = ["MODEL_NAME", "DELFRecipe", "DELGRecipe", "num_classes"]

register_recipe(DELGRecipe())
register_recipe(DELFRecipe())
