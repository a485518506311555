"""``visloc data gldv2 prepare`` on a miniature GLDv2 made by the world's ``landmarks`` generator (packed into
tars), reading by tar offset, and the shard-aware resumable order the DELG training data uses."""

from __future__ import annotations

import collections
import shutil
from pathlib import Path
from typing import Any, cast

import lightning as L
import pytest
import torch
from typer.testing import CliRunner

from visloc.cli import app
from visloc.conf import ConfError, apply_overrides
from visloc.data.errors import DatasetError
from visloc.data.gldv2_index import INDEX_CSV, Gldv2Index, read_index_csv, scan_tar
from visloc.data.gldv2_prepare import Gldv2PrepareConf, prepare_gldv2
from visloc.data.gldv2_split import RELABELING_CSV
from visloc.data.scene.city_conf import CityConf
from visloc.data.world import gldv2_layout as gl
from visloc.data.world.landmarks import LandmarksConf, generate_landmarks
from visloc.train.core import train
from visloc.train.datasets.sharded import ResumableLoader, ShardedSampler
from visloc.train.delg.recipe import DELGRecipe

CITY = CityConf(num_streets_x=2, num_streets_y=4, block_length_m=40.0, block_depth_m=30.0, width=96, height=72,
                focal=75.0, split=(0.34, 0.33, 0.33), px_per_m=8.0, ground_px_per_m=4.0)


@pytest.fixture(scope="module")
def mini(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The world's train landmarks in GLDv2's layout: the extracted tree, and tars of 5 images with md5 files."""
    conf = LandmarksConf(city=CITY, views_per_landmark=4, min_views=2, pack=True, tar_size=5)
    return generate_landmarks(conf, tmp_path_factory.mktemp("gldv2"), split="train", progress=False).root


def _packed_only(mini: Path, dest: Path) -> Path:
    """A copy of ``mini`` with its CSVs and tars but no extracted image."""
    dest.mkdir()
    for f in mini.iterdir():
        if f.is_file():
            shutil.copy(f, dest / f.name)
    return dest


def test_prepare_gives_the_exact_classes_and_per_class_split(mini: Path, tmp_path: Path) -> None:
    summary = prepare_gldv2(mini, tmp_path, Gldv2PrepareConf(locate="tars"))
    clean = gl.read_train_clean_csv(mini / gl.TRAIN_CLEAN_CSV)
    assert summary.num_classes == len(clean) and summary.missing == () and summary.skipped_tars == ()
    entries = read_index_csv(tmp_path / INDEX_CSV)
    assert summary.from_tars == len(entries) == sum(len(v) for v in clean.values())
    # relabeling: landmark ids in sorted order -> 0..K-1, written as DELF's relabeling.csv
    old = sorted(clean)
    lines = (tmp_path / RELABELING_CSV).read_text().splitlines()
    assert lines[0] == "new_label,old_label" and lines[1:] == [f"{k},{lid}" for k, lid in enumerate(old)]
    # per class: max(1, int(0.2 n)) to validation, the rest to training, every image once, labels consistent
    per = collections.defaultdict(collections.Counter)
    for e in entries:
        assert e.landmark_id == old[e.label] and e.id in clean[e.landmark_id]
        per[e.landmark_id][e.split] += 1
    for lid, ids in clean.items():
        n = len(ids)
        assert per[lid] == {"val": max(1, int(0.2 * n)), **({"train": n - max(1, int(0.2 * n))} if n > 1 else {})}
    assert len({e.id for e in entries}) == len(entries)
    # reading by tar offset returns the extracted file's bytes, for every image
    index = Gldv2Index.open(tmp_path)
    assert [index.entry(k) for k in range(len(index))] == entries  # the columns hold every field
    for e in entries:
        assert e.tar and index.read_bytes(e.id) == (mini / gl.image_relpath(e.id)).read_bytes()
    train_items = index.items("train")
    assert list(train_items) == [(e.id, e.label) for e in entries if e.split == "train"]
    assert list(train_items[2:4]) == list(train_items)[2:4]
    with pytest.raises(DatasetError, match="image ffffffffffffffff is not in the index"):
        index.read_bytes("ffffffffffffffff")
    # the same seed gives the same index; auto prefers the extracted files
    again = prepare_gldv2(mini, tmp_path / "again", Gldv2PrepareConf(locate="tars"))
    assert (tmp_path / "again" / INDEX_CSV).read_bytes() == (tmp_path / INDEX_CSV).read_bytes()
    auto = prepare_gldv2(mini, tmp_path / "auto")
    assert auto.from_tars == 0 and auto.train == again.train


def test_missing_images_and_damaged_tars_are_reported_not_fatal(mini: Path, tmp_path: Path) -> None:
    root = _packed_only(mini, tmp_path / "packed")
    tars = sorted(root.glob("images_*.tar"))
    gone = set(scan_tar(tars[0]))
    tars[0].unlink()  # never downloaded
    cut = set(scan_tar(tars[1]))
    tars[1].write_bytes(tars[1].read_bytes()[:1500])  # truncated mid-member
    summary = prepare_gldv2(root, tmp_path / "idx")
    assert set(summary.missing) == gone | cut
    assert [name for name, _ in summary.skipped_tars] == [tars[1].name]
    assert summary.skipped_tars[0][1].startswith("truncated tar (unexpected end of data")
    assert (tmp_path / "idx" / "missing.txt").read_text().split() == sorted(gone | cut)
    entries = read_index_csv(tmp_path / "idx" / INDEX_CSV)
    assert not {e.id for e in entries} & (gone | cut)
    assert sorted({e.label for e in entries}) == list(range(summary.num_classes))  # classes left empty dropped
    assert any(str(len(gone | cut)) in line for line in summary.lines())
    # a tar replaced after prepare: the read names the tar and the shortfall
    index = Gldv2Index.open(tmp_path / "idx")
    victim = next(e for e in entries if e.tar == tars[2].name)
    tars[2].write_bytes(b"")
    with pytest.raises(DatasetError, match=rf"{tars[2].name}: image {victim.id} at byte \d+ has 0 of"):
        index.read_bytes(victim.id)


def test_prepare_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="neither train.csv nor train_clean.csv found"):
        prepare_gldv2(tmp_path)
    (tmp_path / gl.TRAIN_CSV).write_text("id,url,landmark_id\n0123456789abcdef,u,1\n")
    with pytest.raises(DatasetError, match="none of the 1 listed images was found"):
        prepare_gldv2(tmp_path)
    with pytest.raises(ConfError, match="locate must be auto, tars or files"):
        Gldv2PrepareConf(locate=cast(Any, "web"))
    (tmp_path / INDEX_CSV).write_text("id,label\n")
    with pytest.raises(DatasetError, match=rf"{INDEX_CSV}: header must be id,label,landmark_id"):
        read_index_csv(tmp_path / INDEX_CSV)


def test_cli_prepare(mini: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["data", "gldv2", "prepare", str(mini), "--out", str(tmp_path), "--locate",
                                      "tars", "--val-fraction", "0.25"])
    assert result.exit_code == 0, result.output
    assert "classes" in result.output and (tmp_path / INDEX_CSV).is_file()
    bad = CliRunner().invoke(app, ["data", "gldv2", "prepare", str(tmp_path / "nowhere")])
    assert bad.exit_code == 2 and "neither train.csv nor train_clean.csv found" in bad.output


def _toy(n: int) -> torch.utils.data.Dataset:
    return torch.utils.data.TensorDataset(torch.arange(n))


def test_sharded_sampler_deals_whole_shards_evenly_and_resumes() -> None:
    sizes = [7, 3, 5, 9, 4, 6]
    shards = [f"images_{s:03d}.tar" for s, k in enumerate(sizes) for _ in range(k)]
    ds = _toy(len(shards))
    ranks = [ShardedSampler(ds, shards, seed=3, num_replicas=2, rank=r) for r in (0, 1)]
    for epoch in (0, 1):
        got = [s.indices(epoch) for s in ranks]
        assert len(got[0]) == len(got[1]) == len(ranks[0])  # equal steps per rank
        assert not set(got[0]) & set(got[1])
        owned = [{shards[i] for i in g} for g in got]
        assert not owned[0] & owned[1]  # each tar read by one rank only
        assert got == [s.indices(epoch) for s in ranks]  # seeded
    assert ranks[0].indices(0) != ranks[0].indices(1)
    # resume mid-epoch: the rest of that epoch, then the next epoch from its start
    s = ranks[1]
    s.resume(1, 4)
    assert list(s) == s.indices(1)[4:] and list(s) == s.indices(1)
    # fewer shards than ranks: items are dealt, as DistributedSampler
    items = [ShardedSampler(ds, [""] * len(shards), seed=0, num_replicas=4, rank=r).indices(0) for r in range(4)]
    assert sorted(sum(items, [])) == sorted(set(sum(items, []))) and len(items[0]) == len(shards) // 4
    with pytest.raises(ConfError, match="3 shard keys for 34 items"):
        ShardedSampler(ds, shards[:3])


def test_resumable_loader_state_continues_where_training_stopped() -> None:
    ds = _toy(40)
    shards = [str(i // 8) for i in range(40)]
    loader = ResumableLoader(ds, ShardedSampler(ds, shards, seed=1), batch_size=4)
    epochs = [[b[0].tolist() for b in loader] for _ in range(2)]
    assert epochs[0] != epochs[1] and loader.epoch == 1
    stopped = ResumableLoader(ds, ShardedSampler(ds, shards, seed=1), batch_size=4)
    for k, _ in enumerate(stopped):
        stopped.mark_consumed()
        if k == 2:
            break
    state = stopped.state_dict()
    assert state == {"epoch": 0, "batches": 3}
    fresh = ResumableLoader(ds, ShardedSampler(ds, shards, seed=1), batch_size=4)
    fresh.load_state_dict(state)
    assert [b[0].tolist() for b in fresh] == epochs[0][3:]
    assert [b[0].tolist() for b in fresh] == epochs[1]
    done = ResumableLoader(ds, ShardedSampler(ds, shards, seed=1), batch_size=4)
    done.load_state_dict({"epoch": 0, "batches": len(done)})  # saved at the end of epoch 0
    assert [b[0].tolist() for b in done] == epochs[1]
    with pytest.raises(ConfError, match="persistent_workers"):
        ResumableLoader(ds, ShardedSampler(ds, shards), batch_size=4, num_workers=1, persistent_workers=True)


class _Batches(L.Callback):
    """The dataset indices of every batch trained on."""

    def __init__(self) -> None:
        self.seen: list[list[int]] = []

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, idx: int) -> None:
        self.seen.append(batch["index"].tolist())


class _Crash(L.Callback):
    """Raise at the start of step ``at`` (after the checkpoint of the step before)."""

    def __init__(self, at: int) -> None:
        self.at = at

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, idx: int) -> None:
        if trainer.global_step == self.at:
            raise RuntimeError("simulated crash")


def test_delg_trains_from_the_index_and_resumes_mid_epoch_to_the_same_weights(mini: Path, tmp_path: Path) -> None:
    """Reading straight from the tars: a run that crashed after its step-3 checkpoint and was resumed ends with
    the weights of an uninterrupted 6-step run (same batches, same augmentation); a restart that re-shuffled
    its epoch would not."""
    summary = prepare_gldv2(_packed_only(mini, tmp_path / "packed"), tmp_path / "idx", Gldv2PrepareConf(seed=2))
    assert summary.from_tars == summary.train + summary.val
    recipe = DELGRecipe()

    def conf(run: str, steps: int = 6) -> Any:
        return apply_overrides(recipe.tiny_conf(tmp_path / run), {
            "generate": {"classes": 0}, "data": {"index": str(tmp_path / "idx"), "root": ""},
            "val": {"every": 0, "retrieval_root": None},
            "train": {"max_steps": steps, "batch_size": 4, "checkpoint_every": 3}})

    assert summary.train // 4 > 6  # the crash falls mid-epoch
    seen = _Batches()
    whole = train(recipe, conf("whole"), progress=False, callbacks=[seen])
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(recipe, conf("split"), progress=False, callbacks=[_Crash(at=4)])
    resumed = train(recipe, conf("split"), progress=False)
    assert resumed.resumed_from is not None and resumed.global_step == 6
    a, b = whole.module.state_dict(), resumed.module.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])][:3]
    # a finished run continued to more steps takes the batches an uninterrupted longer run takes
    more, longer = _Batches(), _Batches()
    train(recipe, conf("split", 8), progress=False, callbacks=[more])
    train(recipe, conf("long", 8), progress=False, callbacks=[longer])
    assert longer.seen[:6] == seen.seen and more.seen == longer.seen[6:]


DDP_SCRIPT = """
import json, sys
from pathlib import Path

import lightning as L
from visloc.conf import apply_overrides
from visloc.data.gldv2_index import Gldv2Index
from visloc.train.core import train
from visloc.train.delg.recipe import DELGRecipe

index = Gldv2Index.open(sys.argv[2])
seen = set()

class Tars(L.Callback):
    def on_train_batch_start(self, trainer, pl_module, batch, idx):
        items = trainer.train_dataloader.dataset.items
        seen.update(index.entry(index.row(items[i][0])).tar for i in batch["index"].tolist())

recipe = DELGRecipe()
conf = apply_overrides(recipe.tiny_conf(Path(sys.argv[1])), {
    "generate": {"classes": 0}, "data": {"index": sys.argv[2], "root": ""},
    "val": {"every": 0, "retrieval_root": None},
    "train": {"max_steps": 4, "batch_size": 2, "checkpoint_every": 4}})
result = train(recipe, conf, progress=False, callbacks=[Tars()])
row = {"rank": result.global_rank, "step": result.global_step, "tars": sorted(seen)}
print("RESULT " + json.dumps(row), flush=True)
"""


@pytest.mark.slow
def test_ddp_ranks_read_disjoint_tars_from_the_index(mini: Path, tmp_path: Path) -> None:
    """Two gloo processes under torchrun train DELG from the index; each reads only the tars dealt to it."""
    import json
    import os
    import subprocess
    import sys

    prepare_gldv2(_packed_only(mini, tmp_path / "packed"), tmp_path / "idx")
    script = tmp_path / "ddp_index.py"
    script.write_text(DDP_SCRIPT)
    src = Path(__file__).resolve().parents[1] / "src"
    env = {**os.environ, "PYTHONPATH": f"{src}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          str(script), str(tmp_path / "run"), str(tmp_path / "idx")],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    rows = sorted((json.loads(line[7:]) for line in out.stdout.splitlines() if line.startswith("RESULT ")),
                  key=lambda r: r["rank"])
    assert [r["rank"] for r in rows] == [0, 1] and [r["step"] for r in rows] == [4, 4]
    assert rows[0]["tars"] and rows[1]["tars"] and not set(rows[0]["tars"]) & set(rows[1]["tars"])
