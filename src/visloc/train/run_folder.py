"""The run folder of a training job: one job at a time, and only a run of the same recipe and network resumed.

``claim_run_folder`` is what ``train.core.train`` holds for a whole run, on the job's launching process
(global rank zero: the process the user started; Lightning's DDP children and torchrun's other ranks run
inside its lifetime and take nothing). Before any work it checks, with one line each:

- ``run_dir`` is a folder that can be written, or can be created (not a file);
- no other ``visloc train`` writes it (``io.locks.output_lock`` on the folder: a second job fails at once);
- a folder with checkpoints holds a run of this recipe (its ``conf.yaml``), and ``checkpoints/last.ckpt``
  holds tensors of the shapes this conf's network has: resuming another network would fail deep inside
  Lightning after the preparation, or load weights into the wrong layers.

A folder without checkpoints (a run that failed before its first one) blocks nothing: its ``conf.yaml`` is
replaced by the new run's.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
import yaml

from visloc.errors import InputError
from visloc.io.locks import output_lock
from visloc.io.outputs import check_folder_output

#: environment variables that name a process's rank (torchrun, Lightning's DDP children, SLURM)
RANK_VARIABLES = ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID")


def is_launching_process() -> bool:
    """True in the process the user started (rank zero of every launcher, or no launcher at all)."""
    return all(os.environ.get(name, "0") in ("", "0") for name in RANK_VARIABLES)


def recorded_recipe(run_dir: Path) -> str | None:
    """The ``recipe:`` of ``run_dir/conf.yaml``, or None when there is none (absent or unreadable file)."""
    path = run_dir / "conf.yaml"
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None
    recipe = data.get("recipe") if isinstance(data, dict) else None
    return str(recipe) if recipe is not None else None


def shape_differences(checkpoint: Mapping[str, Any], module: torch.nn.Module) -> list[str]:
    """``"key: (a) in the checkpoint, (b) in the conf"`` for each tensor of both whose shape differs.

    Only keys in both are compared: a module may register buffers in ``setup`` (after this check), so a key
    of the checkpoint the new module lacks yet is no evidence. No key in common at all is a difference.
    """
    own = module.state_dict()
    common = [k for k in checkpoint if k in own]
    if checkpoint and own and not common:
        return [f"no tensor name in common (checkpoint: {next(iter(checkpoint))}, ...)"]
    return [f"{k}: {tuple(checkpoint[k].shape)} in the checkpoint, {tuple(own[k].shape)} in the conf"
            for k in common if isinstance(checkpoint[k], torch.Tensor) and checkpoint[k].shape != own[k].shape]


def check_resume(run_dir: Path, recipe: str, module: torch.nn.Module) -> None:
    """Raise ``InputError`` unless the checkpoints of ``run_dir`` (if any) are of ``recipe`` and ``module``'s shapes."""
    checkpoints = run_dir / "checkpoints"
    if not checkpoints.is_dir() or not any(checkpoints.glob("*.ckpt")):
        return
    hint = f"choose another run_dir, or remove {checkpoints} to start afresh"
    old = recorded_recipe(run_dir)
    if old is not None and old != recipe:
        raise InputError(f"{run_dir}: holds checkpoints of recipe {old!r}, not {recipe!r}; {hint}")
    last = checkpoints / "last.ckpt"
    if not last.is_file():
        return
    try:
        state = torch.load(last, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # noqa: BLE001  any unreadable checkpoint: one line, the user decides
        raise InputError(f"{last}: cannot be read to resume ({type(e).__name__}: {str(e).splitlines()[0][:160]}); "
                         f"{hint}") from None
    weights = state.get("state_dict") if isinstance(state, dict) else None
    if not isinstance(weights, dict):
        raise InputError(f"{last}: has no state_dict (not a Lightning checkpoint); {hint}")
    differences = shape_differences(weights, module)
    if differences:
        more = f" (and {len(differences) - 1} more)" if len(differences) > 1 else ""
        raise InputError(f"{last}: a checkpoint of another network: {differences[0]}{more}; {hint}")


@contextlib.contextmanager
def claim_run_folder(run_dir: Path) -> Iterator[None]:
    """Hold ``run_dir``'s writer lock for the block (launching process only; see the module docstring).

    Raises:
        OutputError: ``run_dir`` is a file, or its folder cannot be written.
        OutputLockedError: another ``visloc train`` writes ``run_dir``.
    """
    if not is_launching_process():
        yield
        return
    check_folder_output(run_dir, "run_dir")
    with output_lock(run_dir, "run_dir"):
        yield
