"""The LightningModule of the ``event-vpr`` recipe: representation + network, mining, triplet loss, recall.

``net`` is ``events.vpr.EventVPRWindows`` (the representation runs here: EST is learnable; a voxel grid
has no parameters). A training step takes ``B`` query positions from the loader, mines each query's best
positive and ``K`` hardest negatives (``mining.MiningCache``, refreshed every ``mining.refresh_every``
optimiser steps), reads the ``B (2 + K)`` windows (``data.WindowStore``) and encodes them in one forward
pass with gradients, then ``losses.triplet_losses``. The cache and the validation encode in eval mode
without gradients.

Before the first step of a fresh run (no ``last.ckpt``, no ``model.init``) ``setup`` sets NetVLAD's
centroids by k-means of conv5 descriptors of ``model.init_windows`` training windows
(``NetVLAD.init_from_descriptors``), after setting BatchNorm's running statistics from the same windows
(``model.bn_calibrate``); every rank computes the same ones (same seed, same weights).

Optimiser: Adam (``train.lr``, ``train.weight_decay``), the core's linear warm-up per optimiser step.
Scalars on global rank zero: ``train/{total,triplet,active,d_pos,d_neg}`` every ``train.log_every`` steps;
``val/{recall@N, num_evaluated}`` every ``val.every`` steps (and at the start and the end). The weights of
the best validation so far (``val.select``, the untrained start included) are kept in
``run_dir/event_vpr_best.pt`` with their step and metrics in ``run_dir/val_best.yaml``: the model to
evaluate is the one validation chose, not the last one, which may have fitted the training places.

Training windows are augmented (``augment``: mirror per triplet set, shift, thinning) before the forward
pass; the cache and the validation see them as they are.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from visloc.events.vpr import EventVPRWindows, build_event_vpr
from visloc.io.atomic import atomic_write_text
from visloc.train.core import warmup_lambda
from visloc.train.event_vpr.augment import augment_triplets
from visloc.train.event_vpr.conf import EventVPRTrainConf
from visloc.train.event_vpr.data import Pairs, PlaceSet, WindowStore, build_pairs, drive_store, open_drives
from visloc.train.event_vpr.losses import triplet_losses
from visloc.train.event_vpr.mining import MiningCache
from visloc.train.event_vpr.validation import ValSet, open_val, recall
from visloc.train.module_base import RecipeModule
from visloc.weights.checkpoint import save_model

logger = logging.getLogger(__name__)
MODEL_NAME = "event-vpr"
BEST_WEIGHTS = "event_vpr_best.pt"
BEST_RECORD = "val_best.yaml"


class EventVPRTrainModule(RecipeModule):
    """Event-VPR with its mining cache and validation (module docstring).

    Args:
        conf: the recipe's conf.
        run_dir: the run folder.
    """

    conf: EventVPRTrainConf

    def __init__(self, conf: EventVPRTrainConf, run_dir: Path | None = None) -> None:
        super().__init__(conf)
        self.run_dir = Path(run_dir) if run_dir is not None else Path(conf.run_dir)
        self.net: EventVPRWindows = build_event_vpr(conf.model.arch, imagenet=conf.model.imagenet)
        self.places: PlaceSet | None = None
        self.store: WindowStore | None = None
        self.pairs: Pairs | None = None
        self.cache: MiningCache | None = None
        self.val_set: ValSet | None = None

    # ------------------------------------------------------------------ data

    def attach(self, places: PlaceSet, store: WindowStore, pairs: Pairs) -> None:
        """Use these training places (``setup`` opens them from ``data``; tests attach constructed ones)."""
        g = self.conf.mining
        self.places, self.store, self.pairs = places, store, pairs
        self.cache = MiningCache(pairs, len(places), g.num_negatives, g.candidates, g.refresh_every,
                                 self.conf.train.seed)

    def open_training_data(self) -> None:
        """The training drives' places, windows and split rule (``data``)."""
        d = self.conf.data
        places, source = open_drives(d.roots, d.places, d.traversals)
        pairs = build_pairs(places, d.positive_m, d.negative_m, d.queries, d.database)
        self.attach(places, drive_store(places, source, d.cache_windows), pairs)

    @torch.no_grad()
    def encode(self, rows: np.ndarray, store: WindowStore | None = None) -> torch.Tensor:
        """``[n, D]`` descriptors of place ``rows`` (eval mode, no grad, batches of ``mining.batch_size``)."""
        store = store if store is not None else self._store()
        was_training = self.net.training
        self.net.eval()
        try:
            size = self.conf.mining.batch_size
            parts = [self.net(store.many(rows[s:s + size])).float().cpu() for s in range(0, len(rows), size)]
        finally:
            self.net.train(was_training)
        return torch.cat(parts) if parts else torch.zeros(0, self.net.conf.out_dim)

    def _store(self) -> WindowStore:
        if self.store is None:
            raise RuntimeError("event-vpr module: no training data attached (setup not run)")
        return self.store

    @torch.no_grad()
    def init_netvlad(self, seed: int = 0) -> None:
        """NetVLAD's centroids and ``alpha`` by k-means of conv5 descriptors of random training windows."""
        m, places = self.conf.model, self.places
        if places is None:
            raise RuntimeError("init_netvlad: no training data attached")
        rng = np.random.default_rng(seed)
        rows = np.sort(rng.choice(len(places), min(m.init_windows, len(places)), replace=False))
        if m.bn_calibrate:
            self.calibrate_batchnorm(rows)
        was_training = self.net.training
        self.net.eval()
        try:
            feats = []
            for s in range(0, len(rows), self.conf.mining.batch_size):
                dense = self.net.dense(self._store().many(rows[s:s + self.conf.mining.batch_size]))
                f = self.net.network.features(dense).float().cpu()  # [b, 512, h, w]
                feats.append(f.permute(0, 2, 3, 1).reshape(-1, f.shape[1]))
        finally:
            self.net.train(was_training)
        desc = torch.cat(feats)
        keep = rng.choice(len(desc), min(m.init_descriptors, len(desc)), replace=False)
        pool = self.net.network.pool
        pool.init_from_descriptors(desc[np.sort(keep)], seed=seed)
        logger.info("NetVLAD: %d centroids from %d conv5 descriptors of %d windows, alpha %.3g",
                    pool.num_clusters, len(keep), len(rows), pool.alpha)

    @torch.no_grad()
    def calibrate_batchnorm(self, rows: np.ndarray) -> None:
        """Set every BatchNorm's running statistics to the mean over the windows ``rows`` (cumulative average).

        A fresh network's running statistics are 0 and 1, while training normalises by batch statistics: a
        k-means of conv5 descriptors computed in eval mode with the initial statistics fits features that the
        first steps replace (on the world's drives validation recall@1 fell from 0.68 to 0.34 in 30 steps
        without this). Calibrated first, eval mode at the start is what training mode computes.
        """
        norms = [mod for mod in self.net.network.modules() if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm)]
        momenta = [mod.momentum for mod in norms]
        was_training = self.net.training
        for mod in norms:
            mod.reset_running_stats()
            mod.momentum = None  # cumulative moving average over the calibration batches
        self.net.train()
        try:
            for s in range(0, len(rows), self.conf.mining.batch_size):
                dense = self.net.dense(self._store().many(rows[s:s + self.conf.mining.batch_size]))
                self.net.network.features(dense)
        finally:
            for mod, momentum in zip(norms, momenta, strict=True):
                mod.momentum = momentum
            self.net.train(was_training)
        logger.info("BatchNorm: running statistics of %d layers from %d windows", len(norms), len(rows))

    # ------------------------------------------------------------------ Lightning hooks

    def setup(self, stage: str) -> None:
        """After ``prepare``: training places, NetVLAD's k-means (fresh runs), the validation drive (rank zero)."""
        if self.places is None:
            self.open_training_data()
        fresh = not (self.run_dir / "checkpoints" / "last.ckpt").is_file() and not self.conf.model.init
        if self.conf.model.netvlad_init and fresh and self.global_step == 0:
            self.init_netvlad(self.conf.train.seed)
        v = self.conf.val
        if v.every and self.trainer.is_global_zero and self.val_set is None:
            self.val_set = open_val(v.root, v.places, v.database, v.queries, self.conf.data.cache_windows)

    def triplet_batch(self, query_ids: np.ndarray) -> tuple[list[Any], int, int]:
        """The windows ``[q, p, n]`` of a batch of query positions (mined), ``B`` and ``K``."""
        if self.cache is None:
            raise RuntimeError("event-vpr module: no training data attached (setup not run)")
        q, p, n = self.cache.select(query_ids, self.encode, self.global_step)
        rows = np.concatenate([q, p, n.reshape(-1)])
        return self._store().many(rows), len(q), n.shape[1]

    def triplet_forward(self, query_ids: np.ndarray) -> dict[str, torch.Tensor]:
        """Mine the queries' triplets, augment them (``augment``), encode ``[q, p, n]`` in one pass with gradients."""
        windows, b, k = self.triplet_batch(query_ids)
        windows = augment_triplets(windows, b, k, self.conf.augment, self.conf.train.seed, self.global_step)
        desc = self.net(windows)  # [B (2 + K), D], one forward pass: positives get gradients too
        with torch.autocast(device_type=self.device.type, enabled=False):
            return triplet_losses(desc, b, k, self.conf.loss.margin)

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        """The batch's triplet loss (scalars every ``train.log_every`` optimiser steps); the total."""
        return self.log_losses(self.triplet_forward(batch.cpu().numpy()), batch_idx, len(batch))

    def val_metrics(self) -> dict[str, float] | None:
        """Recall@N within ``val.radius_m`` on the validation drive; None without one."""
        if self.val_set is None:
            return None
        v, vset = self.conf.val, self.val_set
        return recall(lambda rows: self.encode(rows, vset.store), vset, v.radius_m, v.recall_at)

    def validate(self) -> dict[str, float] | None:
        """Validate (``RecipeModule``); keep the weights when ``val.select`` is the best so far (rank zero)."""
        metrics = super().validate()
        if metrics is not None:
            self.keep_if_best(metrics)
        return metrics

    def keep_if_best(self, metrics: dict[str, float]) -> bool:
        """Write ``event_vpr_best.pt`` and ``val_best.yaml`` when ``metrics[val.select]`` beats the record.

        The record lives in the run folder, so a resumed run compares against the best of the steps before it.
        """
        key = self.conf.val.select
        if key not in metrics:
            logger.warning("val.select %s: not measured (database too small); best weights not updated", key)
            return False
        record = self.run_dir / BEST_RECORD
        best = yaml.safe_load(record.read_text()) if record.is_file() else None
        if isinstance(best, dict) and float(best.get(key, -1.0)) >= metrics[key]:
            return False
        self.run_dir.mkdir(parents=True, exist_ok=True)
        save_model(self.run_dir / BEST_WEIGHTS, MODEL_NAME, self.net)
        atomic_write_text(record, yaml.safe_dump({"step": int(self.global_step), "select": key,
                                                  **{k: float(v) for k, v in metrics.items()}}, sort_keys=False))
        logger.info("step %d: best %s so far (%.3f) -> %s", self.global_step, key, metrics[key],
                    self.run_dir / BEST_WEIGHTS)
        return True

    def configure_optimizers(self) -> dict[str, Any]:
        """Adam on every parameter (EST's kernel included); the core's warm-up, per optimiser step."""
        t = self.conf.train
        opt = torch.optim.Adam(self.parameters(), lr=t.lr, weight_decay=t.weight_decay)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_lambda(t.warmup_steps))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


__all__ = ["BEST_RECORD", "BEST_WEIGHTS", "MODEL_NAME", "EventVPRTrainModule"]
