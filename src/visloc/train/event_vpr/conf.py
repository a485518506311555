"""Typed, frozen configuration of the ``event-vpr`` recipe (``configs/event_vpr.yaml`` documents the defaults).

A YAML file holds ``recipe: event-vpr`` and the sections below at its top level; ``train:`` is the core's
``OptimConf`` (``train.lr``: Adam's rate, ``train.batch_size``: queries per step, each with one positive and
``mining.num_negatives`` negatives). ``check_conf`` raises ``ConfError`` naming the field.

Units: ``data.positive_m``, ``data.negative_m`` and ``val.radius_m`` are true metric distances (metres in the
drives' world ENU frame, never squared); ``loss.margin`` is in units of the L2 distance between two
L2-normalised descriptors (in ``[0, 2]``). Defaults follow the VG benchmark (gmberton/deep-visual-geo-
localization-benchmark: positives within 10 m, negatives beyond 25 m, margin 0.1, 10 negatives per query from
a partial cache of 1000 candidates, recall within 25 m) scaled to a CPU run where the benchmark's sizes would
not fit (``mining.refresh_every``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from visloc.conf import ConfError
from visloc.events.drive_dataset import PlaceWindows
from visloc.models.event_vpr import EventVPRConf
from visloc.train.core import OptimConf, check_optim
from visloc.train.event_vpr.augment import AugmentConf


@dataclass(frozen=True)
class ModelConf:
    """The network (``models.event_vpr``) and what it starts from.

    Attributes:
        arch: representation, bins, input size, NetVLAD clusters, whitening.
        imagenet: a torchvision ``resnet34`` state dict file for the backbone (conv1 adapted to the channels).
        init: a visloc ``event-vpr`` checkpoint to start from (its conf must be ``arch``); no k-means then.
        netvlad_init: set NetVLAD's centroids and ``alpha`` by k-means of conv5 descriptors of training
            windows before the first step of a fresh run (NetVLAD's ``init_params``).
        init_windows: training windows whose conv5 maps feed that k-means.
        bn_calibrate: first set BatchNorm's running statistics from those windows (``calibrate_batchnorm``), so
            that the k-means fits the features training starts from.
        init_descriptors: at most this many local descriptors (512-D) drawn from those maps.
    """

    arch: EventVPRConf = field(default_factory=EventVPRConf)
    imagenet: str | None = None
    init: str | None = None
    netvlad_init: bool = True
    init_windows: int = 64
    init_descriptors: int = 20_000
    bn_calibrate: bool = True


@dataclass(frozen=True)
class DataConf:
    """Training places: event drive folders, their windows, and the metric thresholds of the triplets.

    Split rule: a query of traversal ``T`` of drive ``R`` takes its positives and negatives from the other
    traversals of ``R`` only (``database``, less ``T``), never from ``T`` itself, so that neighbouring windows
    of one traversal never pair up; positions of different drives are never compared.

    Attributes:
        roots: event drive folders (``visloc data world event-drive``), one or more.
        traversals: the traversals used (empty: every traversal with events).
        queries: the traversals whose places are queries (empty: every used one).
        database: the traversals positives and negatives come from (empty: every used one), less the query's.
        places: place sampling and window policy (``events.drive_dataset.PlaceWindows``).
        positive_m: positives lie within this distance of the query (metres, inclusive).
        negative_m: negatives lie farther than this (metres); the places in between are neither.
        cache_windows: windows kept in memory (least recently used dropped); 0: read every time.
    """

    roots: tuple[str, ...] = ()
    traversals: tuple[str, ...] = ()
    queries: tuple[str, ...] = ()
    database: tuple[str, ...] = ()
    places: PlaceWindows = field(default_factory=PlaceWindows)
    positive_m: float = 10.0
    negative_m: float = 25.0
    cache_windows: int = 2048


@dataclass(frozen=True)
class MiningConf:
    """Partial hard-negative mining (VG benchmark ``partial``, NetVLAD's cache).

    Attributes:
        num_negatives: negatives per query in each triplet set (VG: 10).
        candidates: places whose descriptors are recomputed (no grad, eval mode) at each refresh; each
            query's negatives are its hardest among those that are its negatives (VG: 1000).
        refresh_every: optimiser steps between two refreshes (VG: 1000 queries' worth).
        batch_size: windows per no-grad forward pass of the cache.
    """

    num_negatives: int = 10
    candidates: int = 1000
    refresh_every: int = 200
    batch_size: int = 32


@dataclass(frozen=True)
class LossConf:
    """``mean(relu(|q - p| - |q - n| + margin))`` over the triplets; L2 distances of unit descriptors."""

    margin: float = 0.1


@dataclass(frozen=True)
class ValConf:
    """Recall@N within ``radius_m`` on a validation drive: database traversals vs query traversals.

    Attributes:
        every: optimiser steps between validations (0: never).
        at_start: also before the first step of a fresh run (the untrained model's recall).
        root: the validation drive folder (another split's drive, or held-out traversals of a training root).
        database: its database traversals (empty: the first traversal).
        queries: its query traversals (empty: every other traversal).
        places: place sampling of the validation drive.
        radius_m: a database place within this distance (metres, inclusive) is a correct match.
        recall_at: the ``N`` of recall@N.
        batch_size: windows per forward pass.
        select: the metric (``recall@N`` of ``recall_at``) whose best value so far keeps its weights in
            ``run_dir/event_vpr_best.pt`` (step and metrics in ``run_dir/val_best.yaml``); higher is better,
            the earlier step wins a tie.
    """

    every: int = 500
    at_start: bool = True
    root: str = ""
    database: tuple[str, ...] = ()
    queries: tuple[str, ...] = ()
    places: PlaceWindows = field(default_factory=PlaceWindows)
    radius_m: float = 25.0
    recall_at: tuple[int, ...] = (1, 5, 10)
    batch_size: int = 32
    select: str = "recall@1"


@dataclass(frozen=True)
class GenerateConf:
    """Tiny event drives ``prepare`` writes into ``data.roots[0]`` and ``val.root`` when missing (tests, demos).

    ``enabled`` turns it on; the drive is the ``event-drive`` world kind with these overrides
    (``visloc data world event-drive --set ...``), the training one of split ``train``, the validation one of
    split ``val``.
    """

    enabled: bool = False
    overrides: tuple[str, ...] = (
        "width=64", "height=48", "focal=50", "route_length_m=20",
        "traversals=[{name: a, condition: day}, {name: b, condition: day, lateral_offset_m: 0.5}]")


def _train() -> OptimConf:
    return OptimConf(max_steps=3000, batch_size=4, lr=1e-4, checkpoint_every=250, log_every=10)


@dataclass(frozen=True)
class EventVPRTrainConf:
    """The ``event-vpr`` recipe; ``run_dir`` receives checkpoints, logs and ``event_vpr.pt``."""

    run_dir: str = "outputs/train/event_vpr"
    model: ModelConf = field(default_factory=ModelConf)
    data: DataConf = field(default_factory=DataConf)
    mining: MiningConf = field(default_factory=MiningConf)
    loss: LossConf = field(default_factory=LossConf)
    augment: AugmentConf = field(default_factory=AugmentConf)
    val: ValConf = field(default_factory=ValConf)
    generate: GenerateConf = field(default_factory=GenerateConf)
    train: OptimConf = field(default_factory=_train)


def _at_least(where: str, value: int, low: int) -> None:
    if value < low:
        raise ConfError(f"{where}: expected >= {low}, got {value}")


def _check_data(d: DataConf) -> None:
    if not d.roots or any(not r for r in d.roots):
        raise ConfError(f"data.roots: one or more event drive folders (visloc data world event-drive), got "
                        f"{list(d.roots)}")
    if not 0 < d.positive_m < d.negative_m:
        raise ConfError(f"data: expected 0 < positive_m < negative_m (metres), got {d.positive_m} and "
                        f"{d.negative_m}")
    for name in ("queries", "database"):
        extra = sorted(set(getattr(d, name)) - set(d.traversals)) if d.traversals else []
        if extra:
            raise ConfError(f"data.{name}: {extra} not among data.traversals {list(d.traversals)}")
    _at_least("data.cache_windows", d.cache_windows, 0)


def _check_val(v: ValConf, d: DataConf) -> None:
    _at_least("val.every", v.every, 0)
    _at_least("val.batch_size", v.batch_size, 1)
    if v.every and not v.root:
        raise ConfError("val.root: a validation event drive folder (or val.every: 0 for no validation)")
    if not v.radius_m > 0:
        raise ConfError(f"val.radius_m: expected > 0 metres, got {v.radius_m}")
    if not v.recall_at or min(v.recall_at) < 1:
        raise ConfError(f"val.recall_at: expected N >= 1, got {list(v.recall_at)}")
    if v.select not in {f"recall@{n}" for n in v.recall_at}:
        raise ConfError(f"val.select: expected one of {[f'recall@{n}' for n in v.recall_at]}, got {v.select!r}")
    if set(v.database) & set(v.queries):
        raise ConfError(f"val: traversals {sorted(set(v.database) & set(v.queries))} are both database and queries")
    if v.every and v.root in d.roots:
        held_out = set(v.database) | set(v.queries)
        used = set(d.traversals)
        if not held_out or not used or held_out & used:
            raise ConfError(f"val.root: {v.root} is also a training root: name the held-out val.database and "
                            f"val.queries and the training data.traversals, disjoint (got {sorted(held_out)} and "
                            f"{sorted(used)})")


def check_conf(conf: EventVPRTrainConf) -> EventVPRTrainConf:
    """Raise ``ConfError`` for values no ``event-vpr`` run can use (naming the field); return ``conf``."""
    m = conf.model
    if m.init and m.imagenet:
        raise ConfError("model: give init (a visloc event-vpr checkpoint) or imagenet (a backbone file), not both")
    _at_least("model.init_windows", m.init_windows, 1)
    _at_least("model.init_descriptors", m.init_descriptors, m.arch.num_clusters)
    _check_data(conf.data)
    g = conf.mining
    _at_least("mining.num_negatives", g.num_negatives, 1)
    _at_least("mining.candidates", g.candidates, g.num_negatives)
    _at_least("mining.refresh_every", g.refresh_every, 1)
    _at_least("mining.batch_size", g.batch_size, 1)
    if not 0 < conf.loss.margin < 2:
        raise ConfError(f"loss.margin: expected in (0, 2) (L2 distance of unit descriptors), got {conf.loss.margin}")
    _check_val(conf.val, conf.data)
    check_optim(conf.train)
    return conf
