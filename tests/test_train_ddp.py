"""Two-process CPU DDP (gloo) of the HF-Net recipe: every rank trains, rank zero alone prepares and exports."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SRC = Path(__file__).resolve().parents[1] / "src"

# Run in fresh processes (a launcher re-runs this file per rank); each rank prints one JSON line.
SCRIPT = """
import json, os, sys
from pathlib import Path

import visloc.train.hfnet.recipe as hr
from visloc.conf import apply_overrides
from visloc.train.core import train

calls = {"prepare": 0, "vocab_writes": 0, "export": 0}
save_vocabulary, prepare, export = hr.save_vocabulary, hr.HFNetDistill.prepare, hr.HFNetDistill.export

def count(key, fn):
    def wrapped(*args, **kwargs):
        calls[key] += 1
        return fn(*args, **kwargs)
    return wrapped

hr.save_vocabulary = count("vocab_writes", save_vocabulary)
hr.HFNetDistill.prepare = count("prepare", prepare)
hr.HFNetDistill.export = count("export", export)

recipe = hr.HFNetDistill()
conf = apply_overrides(recipe.tiny_conf(Path(sys.argv[1])), {"train": {
    "max_steps": 3, "accelerator": "cpu", "devices": int(sys.argv[2]), "checkpoint_every": 3}})
result = train(recipe, conf, progress=False)
print("RESULT " + json.dumps({"rank": result.global_rank, "step": result.global_step, **calls,
                              "exported": str(result.exported) if result.exported else None}), flush=True)
"""


def _run(cmd: list[str], tmp_path: Path) -> list[dict]:
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "OMP_NUM_THREADS": "1"}
    out = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    rows = [json.loads(line[len("RESULT "):]) for line in out.stdout.splitlines() if line.startswith("RESULT ")]
    return sorted(rows, key=lambda r: r["rank"])


def _check(rows: list[dict], run: Path) -> None:
    assert [r["rank"] for r in rows] == [0, 1]
    assert all(r["step"] == 3 for r in rows)  # both ranks ran the 3 steps
    assert [r["prepare"] for r in rows] == [1, 0] and [r["vocab_writes"] for r in rows] == [1, 0]
    assert [r["export"] for r in rows] == [1, 0]
    assert rows[0]["exported"] == str(run / "student.pt") and rows[1]["exported"] is None
    assert (run / "vocab.pt").is_file() and (run / "student.pt").is_file()
    assert torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["global_step"] == 3


@pytest.mark.slow
def test_ddp_two_processes_under_torchrun(tmp_path):
    script = tmp_path / "ddp_run.py"
    script.write_text(SCRIPT)
    run = tmp_path / "run"
    # train.devices=1 in the conf: torchrun's world (2 processes) wins
    rows = _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                 str(script), str(run), "1"], tmp_path)
    _check(rows, run)


@pytest.mark.slow
def test_ddp_two_processes_launched_by_lightning(tmp_path):
    script = tmp_path / "ddp_run.py"
    script.write_text(SCRIPT)
    run = tmp_path / "run"
    rows = _run([sys.executable, str(script), str(run), "2"], tmp_path)
    _check(rows, run)


# The DELG recipes under torchrun: delg, then delf's tuning stage (frozen parameters: DDP must see no unused
# one) in the same two processes; the per-class split is sharded by Lightning's DistributedSampler.
DELG_SCRIPT = """
import json, sys
from pathlib import Path

import visloc.train.delg.recipe as dr
from visloc.conf import apply_overrides
from visloc.train.core import train

calls = {"prepare": 0, "export": 0}
prepare, export = dr._DELGBase.prepare, dr._DELGBase.export

def count(key, fn):
    def wrapped(*args, **kwargs):
        calls[key] += 1
        return fn(*args, **kwargs)
    return wrapped

dr._DELGBase.prepare = count("prepare", prepare)
dr._DELGBase.export = count("export", export)
rows = []
for recipe in (dr.DELGRecipe(), dr.DELFRecipe()):
    conf = apply_overrides(recipe.tiny_conf(Path(sys.argv[1]) / recipe.name), {"train": {"max_steps": 3,
                           "batch_size": 2, "checkpoint_every": 3}})
    result = train(recipe, conf, progress=False)
    rows.append({"step": result.global_step, "batches": len(result.module.trainer.train_dataloader),
                 "exported": str(result.exported) if result.exported else None})
print("RESULT " + json.dumps({"rank": result.global_rank, **calls, "runs": rows}), flush=True)
"""


@pytest.mark.slow
def test_ddp_delg_and_delf_under_torchrun(tmp_path):
    script = tmp_path / "ddp_delg.py"
    script.write_text(DELG_SCRIPT)
    run = tmp_path / "run"
    rows = _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                 str(script), str(run)], tmp_path)
    assert [r["rank"] for r in rows] == [0, 1]
    assert [r["prepare"] for r in rows] == [2, 0] and [r["export"] for r in rows] == [2, 0]
    for rank, row in enumerate(rows):
        assert [r["step"] for r in row["runs"]] == [3, 3]
        # 3 classes x 4 training images (5 each, 1 to validation) = 12, sharded: 6 per process, batches of 2
        assert [r["batches"] for r in row["runs"]] == [3, 3]
        expected = [str(run / "delg" / "delg.pt"), str(run / "delf" / "delf_tuning.pt")] if rank == 0 else [None] * 2
        assert [r["exported"] for r in row["runs"]] == expected
    assert (run / "delg" / "relabeling.csv").is_file() and (run / "delf" / "delf_tuning.pt").is_file()
