"""Datasets generated from the built-in city (:mod:`visloc.data.scene`): one generator per kind.

``visloc data world KIND --seed S --split train|val|test --out DIR [--set key=value ...]`` runs
:func:`run_generator`; every generator is also a Python function ``generate_<kind>(conf, out, *, split,
progress)``. Kinds and their modules are listed in ``GENERATORS`` and imported only when used.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from visloc.conf import apply_overrides
from visloc.errors import UnknownNameError


@dataclass(frozen=True)
class GeneratorEntry:
    """Where a generator lives: ``module`` holds the conf class ``conf`` and the function ``function``."""

    module: str
    conf: str
    function: str
    description: str


#: kind -> generator (the conf class must have a ``city: CityConf`` field; ``--seed`` sets ``city.seed``)
GENERATORS: dict[str, GeneratorEntry] = {
    "distill": GeneratorEntry("visloc.data.world.distill", "DistillConf", "generate_distill",
                              "street views at random poses and conditions, for HF-Net distillation"),
    "drive": GeneratorEntry("visloc.data.world.drive", "DriveConf", "generate_drive",
                            "vehicle traversals of one route: frames, poses at up to 1000 Hz, pseudo-GPS"),
    "event-drive": GeneratorEntry("visloc.pipelines.event_drive", "EventDriveConf", "generate_event_drive",
                                  "the drive's traversals (day, dusk, night) with their ESIM events at 346 x 260"),
    "landmarks": GeneratorEntry("visloc.data.world.landmarks", "LandmarksConf", "generate_landmarks",
                                "GLDv2-layout landmark classes (train / val) or a Revisited-Oxford test set (test)"),
    "pairs": GeneratorEntry("visloc.data.world.pairs", "PairsConf", "generate_pairs",
                            "image pairs with depth, poses, overlap and difficulty bins (MegaDepth-like)"),
}


def generator_names() -> list[str]:
    """The registered kinds, sorted."""
    return sorted(GENERATORS)


def get_generator(kind: str) -> tuple[type[Any], Callable[..., Any]]:
    """The conf class and the function of ``kind``; ``UnknownNameError`` lists the known kinds."""
    entry = GENERATORS.get(kind)
    if entry is None:
        raise UnknownNameError(f"unknown world kind {kind!r}; known: {', '.join(generator_names()) or 'none'}")
    module = importlib.import_module(entry.module)
    return getattr(module, entry.conf), getattr(module, entry.function)


def generator_conf(kind: str, seed: int | None = None, overrides: Sequence[str] = ()) -> Any:
    """The default conf of ``kind`` with ``key=value`` overrides, then ``city.seed = seed`` when given."""
    conf_cls, _ = get_generator(kind)
    conf = conf_cls()
    if overrides:
        conf = apply_overrides(conf, list(overrides))
    if seed is not None:
        conf = apply_overrides(conf, {"city": {"seed": seed}})
    return conf


def run_generator(kind: str, out: str | Path, *, split: str, seed: int | None = None,
                  overrides: Sequence[str] = (), progress: bool = True) -> Any:
    """Generate the ``kind`` dataset of ``split`` into ``out``; returns the generator's files record.

    ``OutputLockedError`` when another job writes ``out`` (``io.locks.output_lock``).
    """
    from visloc.data.world.base import check_split
    from visloc.io.locks import output_lock

    split_ = check_split(split)
    conf = generator_conf(kind, seed, overrides)
    _, function = get_generator(kind)
    with output_lock(out):  # one writer per dataset folder (io.locks): a second job fails at once
        return function(conf, Path(out), split=split_, progress=progress)


__all__ = ["GENERATORS", "GeneratorEntry", "generator_conf", "generator_names", "get_generator", "run_generator"]
