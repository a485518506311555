"""The ``event-vpr`` recipe: Event-VPR (representation + ResNet-34 + NetVLAD) trained with mined triplets.

``visloc train configs/event_vpr.yaml``. What it adds to a run folder (``train.core`` documents the rest)::

    event_vpr.pt       the representation and the network at the last step, a visloc model checkpoint
                       (model ``event-vpr``, ``events.vpr.EventVPRWindows``: ``representation.*``, ``network.*``)
    event_vpr_best.pt  the same at the best validation so far (``val.select``; the untrained start counts)
    val_best.yaml      that step and its metrics

With ``generate.enabled``, ``prepare`` first writes tiny event drives (``visloc data world event-drive``) into
``data.roots[0]`` (split ``train``) and ``val.root`` (split ``val``) unless they are there. It then checks
that every folder is an event drive and that the split rule leaves queries (one-line ``InputError``s).
Batches are query positions from a ``ResumableLoader`` over a ``ShardedSampler`` (dealt to DDP ranks, the
position restored on resume); the module mines and reads the windows.

The export loads with ``build_model(load_model_record(path, "event-vpr"), EventVPRConf, build_event_vpr)``;
``visloc export event-vpr --weights event_vpr.pt`` exports its network to ONNX.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning as L
from torch.utils.data import DataLoader

from visloc.conf import apply_overrides
from visloc.errors import InputError
from visloc.events.vpr import build_event_vpr
from visloc.models.event_vpr import EventVPRConf
from visloc.train.datasets.sharded import ResumableLoader, ShardedSampler
from visloc.train.event_vpr.conf import EventVPRTrainConf, check_conf
from visloc.train.event_vpr.data import QueryIds, build_pairs, open_drives
from visloc.train.event_vpr.module import BEST_WEIGHTS, MODEL_NAME, EventVPRTrainModule
from visloc.train.event_vpr.validation import open_val
from visloc.train.recipe_base import Recipe, register_recipe
from visloc.weights.checkpoint import build_model, load_model_record, save_model

logger = logging.getLogger(__name__)
EXPORT_NAME = "event_vpr.pt"


def generate_drives(conf: EventVPRTrainConf) -> None:
    """Tiny event drives into ``data.roots[0]`` (train) and ``val.root`` (val) when absent (``generate``)."""
    from visloc.data.world import run_generator

    targets = [(conf.data.roots[0], "train")]
    if conf.val.every and conf.val.root and conf.val.root not in conf.data.roots:
        targets.append((conf.val.root, "val"))
    for root, split in targets:
        if not (Path(root) / "events.yaml").is_file():
            logger.info("generating a tiny %s event drive in %s", split, root)
            run_generator("event-drive", root, split=split, overrides=list(conf.generate.overrides), progress=False)


def _world_size() -> int:
    import torch

    dist = torch.distributed
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


class EventVPRRecipe(Recipe):
    """Event-VPR on event drives: triplets by metric distance across traversals, partial hard mining."""

    name = "event-vpr"
    Conf = EventVPRTrainConf

    def check(self, conf: EventVPRTrainConf) -> EventVPRTrainConf:
        """Values a run can use (``conf.check_conf``)."""
        return check_conf(conf)

    def describe(self, conf: EventVPRTrainConf) -> list[str]:
        """The run: network, data and thresholds, mining, validation."""
        a, d, g, v = conf.model.arch, conf.data, conf.mining, conf.val
        start = conf.model.init or conf.model.imagenet or "random init"
        val = (f"recall@{','.join(map(str, v.recall_at))} within {v.radius_m:g} m on {v.root} every {v.every} steps"
               if v.every else "no validation")
        return [
            *super().describe(conf),
            f"{a.representation} ({a.bins} bins) -> ResNet-34 at {a.input_size} -> NetVLAD {a.num_clusters}x512"
            f"{f' -> PCA {a.whiten_dim}' if a.whiten_dim else ''}, from {start}"
            f"{', NetVLAD k-means init' if conf.model.netvlad_init and not conf.model.init else ''}",
            f"data {', '.join(d.roots)}: {d.places.kind} windows every {d.places.stride_m:g} m; positives within "
            f"{d.positive_m:g} m, negatives beyond {d.negative_m:g} m, from other traversals only",
            f"triplets: margin {conf.loss.margin:g}, {g.num_negatives} hardest of {g.candidates} cached candidates "
            f"(refreshed every {g.refresh_every} steps); Adam lr {conf.train.lr:g}; {val}",
        ]

    def prepare(self, conf: EventVPRTrainConf, run_dir: Path) -> None:
        """Rank zero: tiny drives (``generate``), then a one-line error for any folder that cannot be used."""
        if conf.generate.enabled:
            generate_drives(conf)
        d = conf.data
        places, _ = open_drives(d.roots, d.places, d.traversals)
        pairs = build_pairs(places, d.positive_m, d.negative_m, d.queries, d.database)
        logger.info("training: %d places in %d traversals, %d queries with positives and negatives", len(places),
                    len(places.names), len(pairs))
        if conf.val.every:
            v = conf.val
            vset = open_val(v.root, v.places, v.database, v.queries)
            logger.info("validation: %d database and %d query places in %s", len(vset.database),
                        len(vset.queries), v.root)

    def module(self, conf: EventVPRTrainConf, run_dir: Path) -> EventVPRTrainModule:
        """The network, from ``model.init`` (a visloc ``event-vpr`` checkpoint) or ``model.imagenet``."""
        module = EventVPRTrainModule(conf, run_dir)
        if conf.model.init:
            init = build_model(load_model_record(conf.model.init, MODEL_NAME, "model.init"), EventVPRConf,
                               build_event_vpr)
            if init.conf != module.net.conf:
                raise InputError(f"model.init: {conf.model.init} has conf {init.conf}, the run asks for "
                                 f"{module.net.conf}")
            module.net.load_state_dict(init.state_dict())
        return module

    def data(self, conf: EventVPRTrainConf, run_dir: Path) -> DataLoader:
        """Batches of ``train.batch_size`` query positions, seeded and resumable (DDP: dealt to the ranks)."""
        d = conf.data
        places, _ = open_drives(d.roots, d.places, d.traversals)
        n = len(build_pairs(places, d.positive_m, d.negative_m, d.queries, d.database))
        world = _world_size()
        if n // world < conf.train.batch_size:
            raise InputError(f"data: {n} usable queries over {world} process(es) are fewer than "
                             f"train.batch_size={conf.train.batch_size} per process")
        dataset = QueryIds(n)
        return ResumableLoader(dataset, ShardedSampler(dataset, [""] * n, seed=conf.train.seed),
                               conf.train.batch_size)

    def export(self, module: L.LightningModule, conf: EventVPRTrainConf, run_dir: Path) -> Path:
        """``event_vpr.pt``: representation and network, model ``event-vpr``."""
        if not isinstance(module, EventVPRTrainModule):
            raise TypeError(f"{self.name} exports an EventVPRTrainModule, got {type(module).__name__}")
        path = save_model(Path(run_dir) / EXPORT_NAME, MODEL_NAME, module.net)
        if conf.val.every and (Path(run_dir) / BEST_WEIGHTS).is_file():
            logger.info("best validated weights: %s (val_best.yaml)", Path(run_dir) / BEST_WEIGHTS)
        return path

    def tiny_sections(self, run_dir: Path) -> dict[str, Any]:
        """Overrides of a tiny run: generated 64x48 drives in the run folder, input 64, 2 bins, batch 2."""
        run_dir = Path(run_dir)
        small = {"stride_m": 2.0, "kind": "count", "count": 3000}
        return {
            "run_dir": str(run_dir),
            "model": {"arch": {"representation": "est", "bins": 2, "input_size": 64, "num_clusters": 8},
                      "init_windows": 8},
            "data": {"roots": [str(run_dir / "drive_train")], "places": small},
            "mining": {"num_negatives": 2, "candidates": 16, "refresh_every": 2, "batch_size": 16},
            "val": {"every": 2, "root": str(run_dir / "drive_val"), "places": small, "batch_size": 16},
            "generate": {"enabled": True},
            "train": {"max_steps": 3, "batch_size": 2, "lr": 1e-4, "checkpoint_every": 2, "log_every": 1,
                      "threads": 1, "accelerator": "cpu", "precision": "32"},
        }

    def tiny_conf(self, run_dir: Path) -> EventVPRTrainConf:
        """Tiny generated drives (about 20 s each to simulate), a small input, a few steps."""
        return self.check(apply_overrides(EventVPRTrainConf(), self.tiny_sections(run_dir)))


__all__ = ["BEST_WEIGHTS", "EXPORT_NAME", "MODEL_NAME", "EventVPRRecipe", "generate_drives"]

register_recipe(EventVPRRecipe())
