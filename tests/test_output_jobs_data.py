"""One writer per output for the data, training and evaluation jobs, and a run folder resumed only by its own run.

``visloc data world / bdd / gldv2 download / gldv2 prepare / revisitop download``, ``visloc train`` and the
``visloc eval`` reports hold their output's lock: a lock held by this process makes the command (run in a
process of its own, under ``test_bad_inputs``' memory and time limits) fail at once with one line naming the
output, before any network, rendering or training. A run folder's checkpoints resume only a run of the same
recipe and network (``train.run_folder``).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from test_bad_inputs import refused, visloc

from visloc.errors import InputError
from visloc.io.locks import output_lock
from visloc.train.core import train
from visloc.train.recipe_base import get_recipe
from visloc.train.run_folder import check_resume, is_launching_process, shape_differences

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
NOWHERE = "http://127.0.0.1:9"  # discard port: a job that reached the network before its lock would fail otherwise


def _jobs(tmp: Path) -> dict[str, tuple[list[object], Path]]:
    """Each data command with the output folder whose lock it takes."""
    (tmp / "frames").mkdir()
    (tmp / "gl").mkdir()
    (tmp / "gl" / "train_clean.csv").write_text("landmark_id,images\n")
    return {
        "world": (["data", "world", "pairs", "--out", tmp / "w"], tmp / "w"),
        "bdd": (["data", "bdd", "--labels", tmp / "l.json", "--images", tmp / "frames", "--out", tmp / "b"], tmp / "b"),
        "gldv2-download": (["data", "gldv2", "download", "--out", tmp / "g", "--tars", "0", "--base-url", NOWHERE,
                            "--quiet"], tmp / "g" / "train"),
        "gldv2-prepare": (["data", "gldv2", "prepare", tmp / "gl", "--out", tmp / "p"], tmp / "p" / "gldv2-index.csv"),
        "revisitop-download": (["data", "revisitop", "download", "--out", tmp / "r", "--images-url", NOWHERE,
                                "--list-url", NOWHERE, "--quiet"], tmp / "r" / "roxford5k"),
    }


@pytest.mark.parametrize("job", ["world", "bdd", "gldv2-download", "gldv2-prepare", "revisitop-download"])
def test_data_jobs_hold_their_folders_lock(tmp_path: Path, job: str) -> None:
    args, locked = _jobs(tmp_path)[job]
    with output_lock(locked):
        refused(visloc(*args), locked, "another visloc job is writing it")
    assert not (locked / "world.yaml").exists() and not (locked / "images.txt").exists()


def test_train_holds_its_run_folders_lock(tmp_path: Path) -> None:
    run = tmp_path / "run"
    with output_lock(run, "run_dir"):
        line = refused(visloc("train", CONFIGS / "hfnet_default_student.yaml", f"run_dir={run}"), run,
                       "another visloc job is writing it")
    assert "choose another run_dir" in line and not (run / "conf.yaml").exists()


def test_train_refuses_a_file_as_run_folder(tmp_path: Path) -> None:
    photo = tmp_path / "photo.png"
    photo.write_bytes(b"\x89PNG\r\n\x1a\n")
    refused(visloc("train", CONFIGS / "hfnet_default_student.yaml", f"run_dir={photo}"), photo,
            "exists and is not a folder; run_dir must name a folder")
    assert photo.read_bytes() == b"\x89PNG\r\n\x1a\n"


def test_an_eval_report_is_locked_before_the_evaluation(tmp_path: Path) -> None:
    report = tmp_path / "r.json"
    missing = tmp_path / "missing.txt"  # read only after the lock: the refusal names the report
    with output_lock(report):
        refused(visloc("eval", "localization", "--gt", missing, "--pred", missing, "--out", report), report,
                "another visloc job is writing it")
    assert not report.exists()


def test_shape_differences_name_each_tensor_that_differs() -> None:
    module = torch.nn.Sequential(torch.nn.Linear(2, 4), torch.nn.Linear(4, 1))
    same = {k: v.clone() for k, v in module.state_dict().items()}
    assert shape_differences(same, module) == []
    assert shape_differences({**same, "2.weight": torch.zeros(7)}, module) == []  # a key only the checkpoint has
    other = {**same, "0.weight": torch.zeros(3, 2), "1.bias": torch.zeros(2)}
    assert shape_differences(other, module) == ["0.weight: (3, 2) in the checkpoint, (4, 2) in the conf",
                                                "1.bias: (2,) in the checkpoint, (1,) in the conf"]
    assert shape_differences({"x.weight": torch.zeros(1)}, module) == [
        "no tensor name in common (checkpoint: x.weight, ...)"]


def _plant(run: Path, recipe: str, state: object) -> Path:
    (run / "checkpoints").mkdir(parents=True)
    (run / "conf.yaml").write_text(f"recipe: {recipe}\n")
    last = run / "checkpoints" / "last.ckpt"
    torch.save(state, last)
    return last


def test_check_resume_refuses_another_recipe_another_network_and_an_unreadable_file(tmp_path: Path) -> None:
    module = torch.nn.Linear(2, 4)
    check_resume(tmp_path / "new", "loftr-coarse", module)  # no checkpoints: nothing to check
    good = _plant(tmp_path / "good", "loftr-coarse", {"state_dict": module.state_dict()})
    check_resume(good.parents[1], "loftr-coarse", module)
    with pytest.raises(InputError, match=r"holds checkpoints of recipe 'delg', not 'loftr-coarse'; choose another "
                                         r"run_dir, or remove .*checkpoints to start afresh"):
        check_resume(_plant(tmp_path / "delg", "delg", {}).parents[1], "loftr-coarse", module)
    other = _plant(tmp_path / "other", "loftr-coarse", {"state_dict": {"weight": torch.zeros(3, 2)}})
    with pytest.raises(InputError, match=r"last.ckpt: a checkpoint of another network: weight: \(3, 2\) in the "
                                         r"checkpoint, \(4, 2\) in the conf; choose another run_dir"):
        check_resume(other.parents[1], "loftr-coarse", module)
    bad = _plant(tmp_path / "bad", "loftr-coarse", {})
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match=r"last.ckpt: cannot be read to resume \("):
        check_resume(bad.parents[1], "loftr-coarse", module)
    no_state = _plant(tmp_path / "nostate", "loftr-coarse", {"epoch": 1})
    with pytest.raises(InputError, match="has no state_dict"):
        check_resume(no_state.parents[1], "loftr-coarse", module)


def test_train_refuses_to_resume_another_network_before_any_work(tmp_path: Path) -> None:
    recipe = get_recipe("loftr-coarse")
    conf = recipe.tiny_conf(tmp_path / "run")
    key, tensor = next(iter(recipe.module(conf, tmp_path / "run").state_dict().items()))
    wrong = torch.zeros(tuple(tensor.shape) + (2,))
    _plant(tmp_path / "run", "loftr-coarse", {"state_dict": {key: wrong}})
    with pytest.raises(InputError, match=rf"a checkpoint of another network: {key}: "):
        train(recipe, conf, progress=False)
    assert not (tmp_path / "run" / "world").exists()  # the preparation (world pairs) never started
    assert (tmp_path / "run" / "conf.yaml").read_text() == "recipe: loftr-coarse\n"


def test_only_the_launching_process_takes_the_lock(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID"):
        monkeypatch.delenv(name, raising=False)
    assert is_launching_process()
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert is_launching_process()
    monkeypatch.setenv("LOCAL_RANK", "1")  # a Lightning DDP child, or torchrun's second rank
    assert not is_launching_process()
