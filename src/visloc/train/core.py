"""The training core: one Lightning run of any recipe (``train.recipe_base.Recipe``) in its run folder.

Everything here is recipe-independent: the shared ``train:`` section (``OptimConf``), the run
folder and its conf record, seeding, CPU threads, the Trainer (precision, accumulation, DDP,
checkpoints, TensorBoard), resume and the rank-zero preparation. A run folder holds::

    conf.yaml              the resolved conf, with its ``recipe:`` key (loadable by ``load_recipe_conf``)
    checkpoints/last.ckpt  Lightning state every ``train.checkpoint_every`` steps and at the end
    tb/                    TensorBoard scalars and pictures
    ...                    what the recipe prepares (vocabularies, caches) and exports

Order of one run, on every process::

    run folder claimed            the launching process only: its lock, for the whole run
    Trainer built                 ranks known (torchrun / SLURM env, or Lightning's own launcher)
    recipe.module(conf, run_dir)  the trainable network; must not read what prepare() writes
    resume checked, conf.yaml     global rank zero: checkpoints of this recipe and network, or none
    trainer.fit:
      recipe.prepare(...)         global rank zero only; the other ranks wait at a barrier
      recipe.data(...)            every rank, after the barrier (Lightning's datamodule setup)
      module.setup(stage)         every rank: the place to load what prepare() wrote
      restore last.ckpt           when it exists (weights_only=True: tensors and plain containers)
      optimisation
    last.ckpt saved (full state), recipe.export(...) on global rank zero

The barrier is Lightning's own ``prepare_data`` protocol (``prepare_data_per_node=False``: one
process in the whole job prepares, so the run folder must be on a filesystem every node sees).

One job writes a run folder at a time, and a folder's checkpoints resume only a run of the same recipe
and network (``train.run_folder``: one line otherwise, before any work). Starting a run in a folder that
has ``checkpoints/last.ckpt`` resumes from it (weights, optimiser,
scheduler, step), so a crashed run continues with the same command, and a finished one continues
with a higher ``train.max_steps``. Multi-process: ``train.devices=N`` (Lightning launches DDP), or
``torchrun --nproc_per_node N ...`` (devices and nodes are then read from torchrun's environment).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
import yaml
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from torch.utils.data import DataLoader

from visloc.conf import ConfError, conf_to_dict
from visloc.io.atomic import atomic_write_text
from visloc.train.run_folder import check_resume, claim_run_folder

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class OptimConf:
    """The ``train:`` section every recipe shares: optimisation and the Lightning Trainer."""

    max_steps: int = 2000
    batch_size: int = 8
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup_steps: int = 0  # linear warm-up of the learning rate over this many steps
    accumulate_grad_batches: int = 1
    # auto: 16-mixed on CUDA, 32-true elsewhere; "32" is the same as "32-true"
    precision: Literal["auto", "32", "32-true", "16-mixed", "bf16-mixed"] = "auto"
    accelerator: str = "auto"
    devices: int = 1  # processes per node; > 1 runs Lightning's DDP (under torchrun: read from its env)
    num_nodes: int = 1
    checkpoint_every: int = 500
    log_every: int = 10  # scalars (and the metrics that cost something) every N optimiser steps
    image_every: int = 200  # recipes that log pictures do so every N steps (0 = never)
    seed: int = 0
    threads: int = 0  # torch CPU threads during the run (0 = leave torch's setting)


_AT_LEAST_ONE = ("max_steps", "batch_size", "accumulate_grad_batches", "devices", "num_nodes", "checkpoint_every",
                 "log_every")
_AT_LEAST_ZERO = ("warmup_steps", "image_every", "threads", "weight_decay")


def check_optim(t: OptimConf, where: str = "train") -> OptimConf:
    """Raise ``ConfError`` for values no run can use (one line naming ``where.field``); return ``t``."""
    for name in (*_AT_LEAST_ONE, *_AT_LEAST_ZERO, "lr"):
        if not math.isfinite(getattr(t, name)):
            raise ConfError(f"{where}.{name}: must be a finite number, got {getattr(t, name)}")
    for names, low in ((_AT_LEAST_ONE, 1), (_AT_LEAST_ZERO, 0)):
        for name in names:
            if not getattr(t, name) >= low:
                raise ConfError(f"{where}.{name}: must be >= {low}, got {getattr(t, name)}")
    if not t.lr > 0:
        raise ConfError(f"{where}.lr: must be > 0, got {t.lr}")
    return t


def warmup_lambda(warmup_steps: int) -> Any:
    """``LambdaLR`` factor: linear warm-up over ``warmup_steps`` optimiser steps, then 1."""
    warm = max(0, warmup_steps)
    return lambda s: min(1.0, (s + 1) / warm) if warm else 1.0


@contextmanager
def cpu_threads(n: int) -> Iterator[None]:
    """Run the block with ``torch.set_num_threads(n)`` (``n <= 0``: unchanged); the old value comes back."""
    before = torch.get_num_threads()
    if n > 0:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@dataclass(frozen=True)
class Layout:
    """Processes of a run: per node (``devices``), nodes, and whether an outside launcher made them."""

    devices: int
    num_nodes: int
    external: bool

    @property
    def distributed(self) -> bool:
        """More than one process in the job."""
        return self.devices * self.num_nodes > 1 or self.external


def process_layout(t: OptimConf) -> Layout:
    """``train.devices`` and ``train.num_nodes``, or torchrun's world when this process runs under it."""
    if torch.distributed.is_available() and torch.distributed.is_torchelastic_launched():
        world = int(os.environ["WORLD_SIZE"])
        local = int(os.environ.get("LOCAL_WORLD_SIZE", world))
        nodes = max(1, world // max(local, 1))
        if (local, nodes) != (t.devices, t.num_nodes):
            logger.info("torchrun: %d process(es) x %d node(s) (train.devices=%d, train.num_nodes=%d ignored)",
                        local, nodes, t.devices, t.num_nodes)
        return Layout(local, nodes, True)
    return Layout(t.devices, t.num_nodes, False)


def resolve_precision(t: OptimConf) -> Literal["32-true", "16-mixed", "bf16-mixed"]:
    """Lightning's precision string: ``auto`` is 16-mixed when the run can use CUDA, else 32-true."""
    if t.precision == "auto":
        cuda = torch.cuda.is_available() and t.accelerator in ("auto", "gpu", "cuda")
        return "16-mixed" if cuda else "32-true"
    return "32-true" if t.precision == "32" else t.precision


def build_trainer(
    t: OptimConf, run_dir: Path, progress: bool = True, callbacks: Sequence[L.Callback] = ()
) -> L.Trainer:
    """Lightning Trainer: precision, accumulation, DDP, checkpoints every N steps + last.ckpt, TensorBoard."""
    layout = process_layout(t)
    ckpt = ModelCheckpoint(
        dirpath=run_dir / "checkpoints",
        filename="step{step:07d}",
        auto_insert_metric_name=False,
        every_n_train_steps=t.checkpoint_every,
        save_last=True,
        save_top_k=1,
    )
    return L.Trainer(
        max_steps=t.max_steps,
        max_epochs=-1,
        accelerator=t.accelerator,
        devices=layout.devices,
        num_nodes=layout.num_nodes,
        strategy="ddp" if layout.distributed else "auto",
        precision=resolve_precision(t),
        accumulate_grad_batches=t.accumulate_grad_batches,
        log_every_n_steps=t.log_every,
        logger=TensorBoardLogger(save_dir=str(run_dir), name="tb", version=""),
        callbacks=[ckpt, LearningRateMonitor(logging_interval="step"), *callbacks],
        default_root_dir=str(run_dir),
        enable_progress_bar=progress,
        enable_model_summary=progress,
        num_sanity_val_steps=0,
    )


class RecipeData(L.LightningDataModule):
    """The recipe's data as Lightning sees it: ``prepare`` on global rank zero, then ``data`` on every rank.

    Args:
        recipe: the recipe.
        conf: its conf.
        run_dir: the run folder.
    """

    def __init__(self, recipe: Any, conf: Any, run_dir: Path) -> None:
        super().__init__()
        self.prepare_data_per_node = False  # one process of the whole job prepares, the others wait
        self.recipe, self.conf, self.run_dir = recipe, conf, run_dir
        self.inner: DataLoader | L.LightningDataModule | None = None

    def prepare_data(self) -> None:
        """Global rank zero: the recipe's expensive, file-writing preparation."""
        logger.info("preparing %s in %s", self.recipe.name, self.run_dir)
        self.recipe.prepare(self.conf, self.run_dir)

    def setup(self, stage: str) -> None:
        """Every rank, after the barrier: build the recipe's loader (or datamodule)."""
        if self.inner is None:
            self.inner = self.recipe.data(self.conf, self.run_dir)
            if isinstance(self.inner, L.LightningDataModule):
                self.inner.trainer = self.trainer
                self.inner.setup(stage)

    def train_dataloader(self) -> Any:
        """The recipe's training loader."""
        if isinstance(self.inner, L.LightningDataModule):
            return self.inner.train_dataloader()
        return self.inner


@dataclass
class TrainResult:
    """What a run left, as seen by this process.

    Attributes:
        run_dir: the run folder.
        exported: what ``recipe.export`` wrote (None on the ranks other than zero).
        module: the trained LightningModule.
        global_step: optimiser steps done, resumed ones included.
        resumed_from: the checkpoint the run continued from, or None.
        global_rank: this process's rank.
    """

    run_dir: Path
    exported: Path | None
    module: L.LightningModule
    global_step: int
    resumed_from: Path | None
    global_rank: int = 0


def write_conf_record(run_dir: Path, recipe_name: str, conf: Any) -> Path:
    """``run_dir/conf.yaml``: ``recipe: NAME`` and the resolved conf (``load_recipe_conf`` reads it back)."""
    path = run_dir / "conf.yaml"
    atomic_write_text(path, yaml.safe_dump({"recipe": recipe_name, **conf_to_dict(conf)}, sort_keys=False))
    return path


def train(recipe: Any, conf: Any, progress: bool = True, callbacks: Sequence[L.Callback] = ()) -> TrainResult:
    """Run (or resume) ``recipe`` with ``conf`` in ``conf.run_dir``; see the module docstring.

    Args:
        recipe: a ``Recipe`` or its registered name.
        conf: the recipe's conf (``load_recipe_conf``); it has ``run_dir`` and ``train`` (``OptimConf``).
        progress: show Lightning's progress bar and model summary.
        callbacks: extra Lightning callbacks (tests, custom monitoring).
    """
    from visloc.train.recipe_base import get_recipe

    if isinstance(recipe, str):
        recipe = get_recipe(recipe)
    if not isinstance(conf, recipe.Conf):
        raise TypeError(f"recipe {recipe.name!r}: expected a {recipe.Conf.__name__}, got {type(conf).__name__}")
    t: OptimConf = conf.train
    run_dir = Path(conf.run_dir)
    with claim_run_folder(run_dir), cpu_threads(t.threads):
        L.seed_everything(t.seed, workers=True, verbose=False)
        trainer = build_trainer(t, run_dir, progress, callbacks)
        module = recipe.module(conf, run_dir)
        if trainer.is_global_zero:
            check_resume(run_dir, recipe.name, module)
            run_dir.mkdir(parents=True, exist_ok=True)
            write_conf_record(run_dir, recipe.name, conf)
        last = run_dir / "checkpoints" / "last.ckpt"
        resumed = last if last.is_file() else None
        if resumed:
            logger.info("resuming from %s", resumed)
        # the Lightning checkpoint holds tensors and plain containers only: no pickled objects on resume
        trainer.fit(module, datamodule=RecipeData(recipe, conf, run_dir), ckpt_path=str(resumed) if resumed else None,
                    weights_only=True)
        trainer.save_checkpoint(last, weights_only=False)  # full state (optimizer, loops): resumable
        exported = recipe.export(module, conf, run_dir) if trainer.is_global_zero else None
    return TrainResult(run_dir, exported, module, int(trainer.global_step), resumed, int(trainer.global_rank))
