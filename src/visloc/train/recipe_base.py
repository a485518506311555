"""What a training recipe provides, how it is registered, and how a YAML selects and configures it.

A recipe is a stateless object (one per registered name) with a typed, frozen ``Conf`` whose
fields include ``run_dir: str`` and ``train: OptimConf`` (the section ``train.core`` reads). A YAML
names its recipe at the top level::

    recipe: hfnet-distill
    run_dir: outputs/train/hfnet
    train: {max_steps: 2000, ...}
    ...                            # the recipe's own sections

``load_recipe_conf`` reads that key, loads the rest strictly into ``Conf`` (starting from its
defaults, so a partial nested section keeps them), applies ``key.sub=value`` overrides and runs the
recipe's ``check``. Recipes are registered in ``visloc.registry.RECIPES`` (kind ``train``); the
entry's conf is the recipe's default conf and its builder returns the recipe object.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import lightning as L
from torch.utils.data import DataLoader

from visloc.conf import ConfError, conf_to_dict, load_conf, load_yaml, merge, parse_overrides
from visloc.registry import RECIPES
from visloc.train.core import check_optim


class Recipe:
    """Base of the recipes; subclasses set ``name`` and ``Conf`` and implement the four steps.

    The core calls, on every process unless said otherwise: ``module`` (before the barrier: build
    the network, read no prepared file), ``prepare`` (global rank zero only, before the others go
    on), ``data`` (after the barrier), the module's own ``setup`` hook (after the barrier: load what
    ``prepare`` wrote), then ``export`` on global rank zero after the last step.
    """

    name: ClassVar[str] = ""
    Conf: ClassVar[type] = object

    def check(self, conf: Any) -> Any:
        """Raise ``ConfError`` for values no run can use; return ``conf``. Subclasses add their checks."""
        check_optim(conf.train)
        return conf

    def describe(self, conf: Any) -> list[str]:
        """Lines for ``visloc train`` (and its ``--dry-run``): what the run will do and cost."""
        t = conf.train
        return [f"recipe {self.name}: {t.max_steps} steps of batch {t.batch_size} -> {conf.run_dir}"]

    def prepare(self, conf: Any, run_dir: Path) -> None:
        """Global rank zero only: expensive preparation written into ``run_dir`` (idempotent: reuse what is there)."""

    def module(self, conf: Any, run_dir: Path) -> L.LightningModule:
        """The LightningModule to train."""
        raise NotImplementedError

    def data(self, conf: Any, run_dir: Path) -> DataLoader | L.LightningDataModule:
        """The training data, built after ``prepare``."""
        raise NotImplementedError

    def export(self, module: L.LightningModule, conf: Any, run_dir: Path) -> Path:
        """Write the trained model (a file that loads with ``torch.load(weights_only=True)``); return its path."""
        raise NotImplementedError

    def tiny_conf(self, run_dir: Path) -> Any:
        """A conf that trains in seconds on CPU on offline data (the recipe contract tests use it)."""
        raise NotImplementedError

    def load(self, data: Mapping[str, Any], where: str = "train conf") -> Any:
        """``Conf`` from a mapping: the recipe's defaults, then ``data``, strictly, then ``check``."""
        base = conf_to_dict(self.Conf())
        return self.check(load_conf(self.Conf, merge(base, data), where=where))


def register_recipe(recipe: Recipe) -> Recipe:
    """Add ``recipe`` to ``RECIPES`` under ``recipe.name`` (kind ``train``); returns it."""
    RECIPES.register(recipe.name, recipe.Conf(), lambda conf: recipe, kind="train")
    return recipe


def get_recipe(name: str) -> Recipe:
    """The registered recipe ``name``; an unknown name raises ``UnknownNameError`` listing the known ones."""
    entry = RECIPES.entry(name)
    return entry.builder(entry.conf)


def load_recipe_conf(
    path: str | Path, overrides: Sequence[str] | Mapping[str, Any] = ()
) -> tuple[str, Any]:
    """Read a recipe YAML: ``(recipe name, its checked conf)`` with dot-overrides applied.

    Raises:
        ConfError: no ``recipe:`` key (the message lists the known recipes), unknown keys, bad values.
        UnknownNameError: ``recipe:`` names no registered recipe.
    """
    data = load_yaml(path)
    name = data.pop("recipe", None)
    if not isinstance(name, str) or not name:
        raise ConfError(f"{path}: no top-level 'recipe:' key naming the recipe (known: {', '.join(RECIPES.names())})")
    if not isinstance(overrides, Mapping):
        overrides = parse_overrides(list(overrides))
    if "recipe" in overrides:
        raise ConfError(f"{path}: the recipe is chosen by the file's 'recipe:' key, not by an override")
    recipe = get_recipe(name)
    return name, recipe.load(merge(data, overrides), where=str(path))


def recipe_conf(name: str, overrides: Sequence[str] | Mapping[str, Any] = ()) -> Any:
    """The checked conf of recipe ``name``: its defaults with dot-overrides (no YAML file)."""
    if not isinstance(overrides, Mapping):
        overrides = parse_overrides(list(overrides))
    return get_recipe(name).load(overrides, where=f"recipe {name}")
