"""The recipe contract: every registered recipe trains, resumes and exports through the one core.

Each recipe's ``tiny_conf(run_dir)`` gives a conf that trains in seconds on CPU on offline data, so
this suite needs no per-recipe code: a new recipe is covered by its registration alone.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch

from visloc.conf import ConfError, apply_overrides
from visloc.registry import RECIPES
from visloc.train.core import OptimConf, check_optim, cpu_threads, process_layout, resolve_precision, train
from visloc.train.recipe_base import get_recipe, load_recipe_conf


class _StartState(L.Callback):
    """The step and the module's full state when optimisation starts (after any restore)."""

    def on_train_start(self, trainer, pl_module):
        self.step = trainer.global_step
        self.state = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}


class _Steps(L.Callback):
    def __init__(self) -> None:
        self.steps: list[int] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.steps.append(trainer.global_step)


def _train_conf(conf, **values):
    return apply_overrides(conf, {"train": values})


@pytest.mark.slow
@pytest.mark.parametrize("name", RECIPES.names(kind="train"))
def test_recipe_trains_resumes_and_exports(name, tmp_path):
    recipe = get_recipe(name)
    run_dir = tmp_path / "run"
    conf = _train_conf(recipe.tiny_conf(run_dir), max_steps=3, checkpoint_every=3)
    assert isinstance(conf, recipe.Conf) and recipe.check(conf) == conf
    lines = recipe.describe(conf)
    assert lines and all(isinstance(x, str) and x and "\n" not in x for x in lines)

    first = train(recipe, conf, progress=False)
    assert first.global_step == 3 and first.resumed_from is None and first.global_rank == 0
    last = run_dir / "checkpoints" / "last.ckpt"
    saved = torch.load(last, map_location="cpu", weights_only=True)  # the resume discipline holds
    assert saved["global_step"] == 3
    # the run folder records the recipe and its conf, loadable as a recipe YAML
    assert load_recipe_conf(run_dir / "conf.yaml") == (name, conf)
    # the export loads without pickled objects
    assert first.exported is not None and first.exported.is_file()
    torch.load(first.exported, map_location="cpu", weights_only=True)

    fresh = recipe.module(conf, run_dir).state_dict()
    assert any(not torch.equal(fresh[k].cpu(), v) for k, v in saved["state_dict"].items())  # 3 steps moved it
    start, steps = _StartState(), _Steps()
    second = train(recipe, _train_conf(conf, max_steps=5, checkpoint_every=3), progress=False,
                   callbacks=[start, steps])
    assert second.resumed_from == last and start.step == 3 and steps.steps == [3, 4] and second.global_step == 5
    assert set(start.state) == set(saved["state_dict"])
    assert all(torch.equal(start.state[k].cpu(), v) for k, v in saved["state_dict"].items())
    assert torch.load(last, map_location="cpu", weights_only=True)["global_step"] == 5


def test_cpu_threads_are_restored():
    before = torch.get_num_threads()
    target = 1 if before != 1 else 2
    with cpu_threads(target):
        assert torch.get_num_threads() == target
    assert torch.get_num_threads() == before
    with pytest.raises(RuntimeError, match="boom"), cpu_threads(target):
        raise RuntimeError("boom")
    assert torch.get_num_threads() == before
    with cpu_threads(0):  # 0 leaves torch's setting
        assert torch.get_num_threads() == before


def test_optim_checks_and_precision():
    with pytest.raises(ConfError, match=r"train.num_nodes: must be >= 1, got 0"):
        check_optim(OptimConf(num_nodes=0))
    with pytest.raises(ConfError, match=r"train.warmup_steps: must be >= 0, got -1"):
        check_optim(OptimConf(warmup_steps=-1))
    assert resolve_precision(OptimConf(precision="32")) == "32-true"
    assert resolve_precision(OptimConf(precision="bf16-mixed")) == "bf16-mixed"
    assert resolve_precision(OptimConf(precision="auto", accelerator="cpu")) == "32-true"


def test_torchrun_environment_sets_the_process_layout(monkeypatch):
    layout = process_layout(OptimConf(devices=3))
    assert (layout.devices, layout.num_nodes, layout.distributed) == (3, 1, True)
    assert not process_layout(OptimConf()).distributed
    monkeypatch.setattr(torch.distributed, "is_torchelastic_launched", lambda: True)
    monkeypatch.setenv("WORLD_SIZE", "8")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    layout = process_layout(OptimConf(devices=1))  # torchrun's world wins over train.devices
    assert (layout.devices, layout.num_nodes, layout.external, layout.distributed) == (4, 2, True, True)


def test_a_recipe_yaml_must_name_its_recipe(tmp_path: Path):
    path = tmp_path / "c.yaml"
    path.write_text("run_dir: x\n")
    with pytest.raises(ConfError, match=rf"{path}: no top-level 'recipe:' key .*known: .*hfnet-distill"):
        load_recipe_conf(path)
    path.write_text("recipe: hfnet-distill\ndata: {builtin: true}\n")
    with pytest.raises(ConfError, match="chosen by the file's 'recipe:' key"):
        load_recipe_conf(path, ["recipe=other"])
    name, conf = load_recipe_conf(path, ["train.max_steps=7"])
    assert name == "hfnet-distill" and conf.train.max_steps == 7 and conf.data.builtin
    assert RECIPES.kind_of("hfnet-distill") == "train" and RECIPES.entry("hfnet-distill").conf_type is type(conf)
