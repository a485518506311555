"""The ``event-vpr`` recipe: split rule, metric thresholds, triplet loss, mining, recall, conf errors, training.

Fast tests use constructed places and random event windows on a 40x30 sensor; the slow ones train on tiny
generated event drives (64x48, two day traversals 0.5 m apart, about 20 s each to simulate).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from visloc.conf import ConfError, apply_overrides
from visloc.errors import InputError
from visloc.events import EventStream
from visloc.train.event_vpr.conf import EventVPRTrainConf, check_conf
from visloc.train.event_vpr.data import PlaceSet, WindowStore, build_pairs
from visloc.train.event_vpr.losses import triplet_losses
from visloc.train.event_vpr.mining import MiningCache
from visloc.train.event_vpr.module import EventVPRTrainModule
from visloc.train.event_vpr.recipe import EventVPRRecipe
from visloc.train.event_vpr.validation import ValSet, recall

RECIPE = EventVPRRecipe()
SIZE = (40, 30)


def place_set(xy, traversal, drive=None) -> PlaceSet:
    xy = np.asarray(xy, np.float64).reshape(-1, 2)
    traversal = np.asarray(traversal, np.int64)
    drive = np.zeros(len(xy), np.int64) if drive is None else np.asarray(drive, np.int64)
    names = tuple((f"d{int(drive[traversal == t][0])}", f"t{t}") for t in range(int(traversal.max()) + 1))
    index = np.zeros(len(xy), np.int64)
    for t in np.unique(traversal):
        index[traversal == t] = np.arange(int((traversal == t).sum()))
    return PlaceSet(xy, drive, traversal, index, names, ("day",) * len(names))


def random_window(seed: int, n: int = 300) -> EventStream:
    rng = np.random.default_rng(seed)
    return EventStream.from_arrays(np.sort(rng.integers(0, 10_000, n)), rng.integers(0, SIZE[0], n),
                                   rng.integers(0, SIZE[1], n), rng.choice([-1, 1], n), SIZE)


# ---------------------------------------------------------------- split rule and thresholds


def test_thresholds_are_metres_not_squared():
    """Query at the origin; another traversal at 0, 3.2, 9.9, 10.1, 24.9, 25.1 and 40 m; its own at 30 m."""
    dist = [0.0, 3.2, 9.9, 10.1, 24.9, 25.1, 40.0]
    xy = [[0.0, 0.0], [30.0, 0.0]] + [[0.0, d] for d in dist]
    pairs = build_pairs(place_set(xy, [0, 0] + [1] * len(dist)), 10.0, 25.0, queries=["t0"])
    assert pairs.queries.tolist() == [0]  # row 1 (30 m along t0) has no positive within 10 m: dropped
    assert pairs.positives[0].tolist() == [2, 3, 4]  # 0, 3.2, 9.9 m (a squared rule would stop at 3.16 m)
    assert pairs.negatives[0].tolist() == [7, 8]  # 25.1, 40 m (a squared rule would start at 5 m)
    # 10.1 and 24.9 m are neither; the query's own traversal (row 1, 30 m away) is never a negative


def test_split_rule_never_pairs_a_query_with_its_own_traversal():
    """Three traversals of one route and one of another drive at the same coordinates, windows 2 m apart."""
    line = np.stack([np.arange(0, 80, 2.0), np.zeros(40)], axis=1)
    xy = np.concatenate([line, line + [0, 0.5], line + [0, -0.3], line])
    traversal = np.repeat([0, 1, 2, 3], 40)
    drive = np.repeat([0, 0, 0, 1], 40)
    places = place_set(xy, traversal, drive)
    pairs = build_pairs(places, 10.0, 25.0)
    assert len(pairs) == 120  # the lone traversal of drive 1 has nothing to pair with: dropped
    for q, pos, neg in zip(pairs.queries, pairs.positives, pairs.negatives, strict=True):
        for rows in (pos, neg):
            assert not np.any(traversal[rows] == traversal[q]) and np.all(drive[rows] == drive[q])
        assert np.all(np.hypot(*(xy[pos] - xy[q]).T) <= 10.0) and np.all(np.hypot(*(xy[neg] - xy[q]).T) > 25.0)
        assert len(pos) >= 2  # its neighbour places of the two other traversals
    # database traversals: queries from t0 only, positives / negatives from t1 only
    only = build_pairs(places, 10.0, 25.0, queries=["t0"], database=["t1"])
    assert set(traversal[only.queries]) == {0}
    assert all(set(traversal[r]) == {1} for r in (*only.positives, *only.negatives))
    with pytest.raises(InputError, match="no query has a positive within 10.0 m"):
        build_pairs(place_set(line, np.zeros(40)), 10.0, 25.0)


# ---------------------------------------------------------------- loss and mining


def test_triplet_loss_is_the_margin_hinge_on_l2_distances():
    q = torch.tensor([[1.0, 0.0]])
    p = torch.tensor([[0.8, 0.6]])  # |q - p| = sqrt(0.4) = 0.632
    n = torch.tensor([[0.6, 0.8], [-1.0, 0.0]])  # |q - n| = 0.894 (inside the margin 0.3), 2.0 (outside)
    out = triplet_losses(torch.cat([q, p, n]), 1, 2, margin=0.3)
    d_pos, d_neg = np.sqrt(0.4), np.array([np.sqrt(0.8), 2.0])
    assert out["total"].item() == pytest.approx(np.maximum(0, d_pos - d_neg + 0.3).mean(), abs=1e-6)
    assert out["active"].item() == 0.5 and out["d_pos"].item() == pytest.approx(d_pos, abs=1e-6)
    with pytest.raises(ValueError, match=r"desc: expected \[1 \* \(2 \+ 3\), D\]"):
        triplet_losses(torch.cat([q, p, n]), 1, 3)


def _angles_encode(angle: np.ndarray, calls: list):
    def encode(rows: np.ndarray) -> torch.Tensor:
        calls.append(np.asarray(rows).tolist())
        a = torch.as_tensor(angle[rows], dtype=torch.float32)
        return torch.stack([a.cos(), a.sin()], dim=1)
    return encode


def test_mining_cache_picks_the_hardest_and_refreshes_on_schedule():
    # query 0 (traversal 0 at x=0); traversal 1: positives at 1 and 8 m, negatives at 30..38 m
    xy = [[0, 0], [1, 0], [8, 0]] + [[30 + i, 0] for i in range(9)]
    places = place_set(xy, [0, 1, 1] + [1] * 9)
    pairs = build_pairs(places, 10.0, 25.0, queries=["t0"])
    # descriptor angles: the 8 m positive is the nearer one in descriptor space; negatives at various angles
    angle = np.array([0.0, 1.5, 0.2, 2.0, 0.3, 2.5, 0.1, 1.0, 3.0, 0.25, 2.8, 0.6])
    calls: list = []
    cache = MiningCache(pairs, len(places), num_negatives=3, candidates=12, refresh_every=5, seed=0)
    q, p, n = cache.select(np.array([0]), _angles_encode(angle, calls), step=0)
    assert q.tolist() == [0] and p.tolist() == [2]  # nearest in descriptor space, not in metres
    assert n.tolist() == [[6, 9, 4]]  # negatives by descriptor distance: 0.1, 0.25, 0.3 rad
    assert len(calls) == 1 and calls[0] == list(range(12))  # the refresh; nothing recomputed after it
    cache.select(np.array([0]), _angles_encode(angle, calls), step=4)
    assert len(calls) == 1 and not cache.stale(4) and cache.stale(5)
    cache.select(np.array([0]), _angles_encode(angle, calls), step=5)
    assert len(calls) == 2 and cache.refreshed_at == 5
    # few candidates: those that are negatives come first, random negatives of the query fill up
    small = MiningCache(pairs, len(places), num_negatives=3, candidates=4, refresh_every=5, seed=1)
    _, _, n = small.select(np.array([0]), _angles_encode(angle, []), step=0)
    cached_negs = [r for r in small.rows if r >= 3]
    assert n[0, :len(cached_negs)].tolist() == sorted(cached_negs, key=lambda r: angle[r])[:3]
    assert set(n[0].tolist()) <= set(range(3, 12))


# ---------------------------------------------------------------- the module on constructed windows


def tiny_module(tmp_path: Path, **mining) -> EventVPRTrainModule:
    conf = apply_overrides(EventVPRTrainConf(), {
        "run_dir": str(tmp_path), "data": {"roots": [str(tmp_path / "none")]}, "val": {"every": 0},
        "model": {"arch": {"representation": "est", "bins": 2, "input_size": 32, "num_clusters": 4},
                  "init_windows": 6},
        "mining": {"num_negatives": 2, "candidates": 10, "refresh_every": 3, "batch_size": 8, **mining}})
    torch.manual_seed(0)
    module = EventVPRTrainModule(check_conf(conf), tmp_path)
    line = np.stack([np.arange(0, 60, 3.0), np.zeros(20)], axis=1)
    places = place_set(np.concatenate([line, line + [0, 0.5]]), np.repeat([0, 1], 20))
    module.attach(places, WindowStore(random_window, capacity=8), build_pairs(places, 10.0, 25.0))
    return module


def test_positive_gets_gradients_in_one_forward_pass(tmp_path):
    module = tiny_module(tmp_path)
    network = module.net.network
    seen: list[torch.Tensor] = []
    forward = network.forward

    def spy(x):
        if torch.is_grad_enabled():
            x.retain_grad()
            seen.append(x)
        return forward(x)

    network.forward = spy  # type-agnostic wrapper of the instance's forward
    module.net.train()
    losses = module.triplet_forward(np.array([0, 5]))
    assert len(seen) == 1 and seen[0].shape[0] == 2 * (2 + 2)  # q, p and negatives in one pass with grad
    losses["total"].backward()
    grad = seen[0].grad
    assert grad is not None
    assert all(grad[i].abs().sum() > 0 for i in range(8))  # positives (rows 2, 3) included
    est = list(module.net.representation.parameters())
    assert est and all(p.grad is not None and p.grad.abs().sum() > 0 for p in est)  # the EST kernel trains too


def test_netvlad_kmeans_init_from_training_windows(tmp_path):
    module = tiny_module(tmp_path)
    pool = module.net.network.pool
    before = pool.centroids.detach().clone()
    module.init_netvlad(seed=0)
    assert not torch.equal(before, pool.centroids) and pool.alpha != 100.0
    # the conv follows the centroids (2 alpha c, -alpha |c|^2)
    assert torch.allclose(pool.conv.weight[:, :, 0, 0], 2 * pool.alpha * pool.centroids, atol=1e-4)
    assert torch.allclose(pool.centroids.norm(dim=1), torch.ones(4), atol=0.2)  # k-means of unit descriptors


def test_recall_counts_a_hit_within_the_radius():
    # database t0 at 0, 30, 60 m; queries t1 at 1 m (nearest desc: db 1, then db 0), 59 m (desc: db 2)
    places = place_set([[0, 0], [30, 0], [60, 0], [1, 0], [59, 0]], [0, 0, 0, 1, 1])
    desc = F.normalize(torch.tensor([[1.0, 0, 0], [0, 1, 0], [0, 0, 1], [0.5, 1, 0], [0, 0, 1]]), dim=1)
    vset = ValSet(places, WindowStore(random_window), np.array([0, 1, 2]), np.array([3, 4]))
    out = recall(lambda rows: desc[rows], vset, radius_m=25.0, ns=(1, 2, 5))
    assert out == {"recall@1": 0.5, "recall@2": 1.0, "num_evaluated": 2.0}  # N > database size left out


# ---------------------------------------------------------------- conf and folder errors


@pytest.mark.parametrize(("override", "message"), [
    ({"loss": {"margin": 1.0 + 1.5}}, r"loss.margin: expected in \(0, 2\)"),
    ({"data": {"positive_m": 30.0}}, r"data: expected 0 < positive_m < negative_m \(metres\), got 30.0 and 25.0"),
    ({"data": {"roots": []}}, r"data.roots: one or more event drive folders"),
    ({"val": {"root": ""}}, r"val.root: a validation event drive folder"),
    ({"mining": {"candidates": 5}}, r"mining.candidates: expected >= 10, got 5"),
    ({"model": {"arch": {"bins": 1}}}, r"bins: est needs >= 2, got 1"),
    ({"data": {"traversals": ["a"], "queries": ["b"]}}, r"data.queries: \['b'\] not among data.traversals"),
])
def test_conf_errors_are_one_line_and_name_the_field(override, message):
    base = {"data": {"roots": ["/x"]}, "val": {"root": "/y"}}
    with pytest.raises(ConfError, match=message) as e:
        check_conf(apply_overrides(EventVPRTrainConf(), apply_overrides_dict(base, override)))
    assert "\n" not in str(e.value)


def apply_overrides_dict(base: dict, update: dict) -> dict:
    from visloc.conf import merge

    return merge(base, update)


def test_held_out_validation_traversals_must_be_disjoint_from_training():
    sections = {"data": {"roots": ["/d"], "traversals": ["a", "b"]}, "val": {"root": "/d", "database": ["b"],
                                                                          "queries": ["c"]}}
    with pytest.raises(ConfError, match=r"val.root: /d is also a training root"):
        check_conf(apply_overrides(EventVPRTrainConf(), sections))
    sections["data"]["traversals"] = ["a", "d"]
    check_conf(apply_overrides(EventVPRTrainConf(), sections))


def test_missing_folders_are_one_line_errors(tmp_path):
    conf = apply_overrides(RECIPE.tiny_conf(tmp_path), {"generate": {"enabled": False}})
    with pytest.raises(InputError, match=rf"data.roots\[0\]: {tmp_path / 'drive_train'}: no such folder"):
        RECIPE.prepare(conf, tmp_path)
    (tmp_path / "drive_train").mkdir()
    with pytest.raises(InputError, match=r"data.roots\[0\]: .*world.yaml: file not found"):
        RECIPE.prepare(conf, tmp_path)


# ---------------------------------------------------------------- training on tiny generated drives

GENERATE = RECIPE.tiny_conf(Path("unused")).generate.overrides


@pytest.fixture(scope="session")
def tiny_drives(tmp_path_factory) -> tuple[Path, Path]:
    """A train-split and a val-split tiny event drive (about 20 s and 10 s to simulate)."""
    from visloc.data.world import run_generator

    root = tmp_path_factory.mktemp("event_drives")
    for split in ("train", "val"):
        run_generator("event-drive", root / split, split=split, overrides=list(GENERATE), progress=False)
    return root / "train", root / "val"


def drive_conf(run: Path, drives: tuple[Path, Path], **sections) -> EventVPRTrainConf:
    base = {"data": {"roots": [str(drives[0])]}, "val": {"root": str(drives[1])}, "generate": {"enabled": False}}
    return RECIPE.check(apply_overrides(RECIPE.tiny_conf(run), apply_overrides_dict(base, sections)))


def _scalars(run: Path) -> dict[str, list[float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run / "tb"))
    acc.Reload()
    return {tag: [e.value for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


@pytest.mark.slow
def test_a_short_run_learns_resumes_and_exports(tiny_drives, tmp_path):
    """40 steps of 4 queries (2 mined negatives each): the triplet loss falls below a third of its start.

    (Measured: the mean of the first 10 steps about 0.08, of the last 10 about 0.001; the two day
    traversals 0.5 m apart make the validation easy: recall@1 is about 0.9 before and after.)
    """
    from visloc.events.vpr import build_event_vpr
    from visloc.models.event_vpr import EventVPRConf
    from visloc.train.core import train
    from visloc.weights.checkpoint import build_model, load_model_record

    run = tmp_path / "run"
    # augmentation off: this measures fitting the training places (augment is tested in its own file)
    conf = drive_conf(run, tiny_drives, val={"every": 40}, mining={"refresh_every": 10, "candidates": 40},
                      train={"max_steps": 40, "batch_size": 4, "checkpoint_every": 100}, augment={"enabled": False})
    first = train(RECIPE, conf, progress=False)
    assert first.global_step == 40 and first.exported == run / "event_vpr.pt"
    s = _scalars(run)
    loss = s["train/triplet"]
    assert len(loss) == 40 and np.mean(loss[-10:]) < np.mean(loss[:10]) / 3, loss
    assert np.mean(s["train/d_pos"][-10:]) < np.mean(s["train/d_pos"][:10]) - 0.1
    history = first.module.val_history
    assert [h["step"] for h in history] == [0.0, 40.0] and all(0 <= h["recall@1"] <= 1 for h in history)
    assert len(s["val/recall@1"]) == 2 and "val/recall@10" in s
    # the export: representation and network, loadable without pickles
    model = build_model(load_model_record(first.exported, "event-vpr"), EventVPRConf, build_event_vpr)
    assert model.conf == conf.model.arch
    trained = first.module.net.state_dict()
    assert all(torch.equal(v, trained[k].cpu()) for k, v in model.state_dict().items())
    # resume from last.ckpt: no new k-means, the loader's position and the step continue
    import lightning as L

    class Steps(L.Callback):
        steps: list[int] = []

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            self.steps.append(trainer.global_step)

    steps = Steps()
    second = train(RECIPE, apply_overrides(conf, {"train": {"max_steps": 43}}), progress=False, callbacks=[steps])
    assert second.resumed_from == run / "checkpoints" / "last.ckpt" and steps.steps == [40, 41, 42]


DDP_SCRIPT = """
import json, sys
from pathlib import Path

import visloc.train.event_vpr.recipe as er
from visloc.conf import apply_overrides
from visloc.train.core import train

calls = {"prepare": 0, "export": 0}
prepare, export = er.EventVPRRecipe.prepare, er.EventVPRRecipe.export

def count(key, fn):
    def wrapped(*args, **kwargs):
        calls[key] += 1
        return fn(*args, **kwargs)
    return wrapped

er.EventVPRRecipe.prepare = count("prepare", prepare)
er.EventVPRRecipe.export = count("export", export)
recipe = er.EventVPRRecipe()
conf = apply_overrides(recipe.tiny_conf(Path(sys.argv[1])), {
    "data": {"roots": [sys.argv[2]]}, "val": {"root": sys.argv[3]}, "generate": {"enabled": False},
    "train": {"max_steps": 3, "devices": 2, "checkpoint_every": 3}})
result = train(recipe, conf, progress=False)
print("RESULT " + json.dumps({"rank": result.global_rank, "step": result.global_step, **calls,
                              "batches": len(result.module.trainer.train_dataloader),
                              "exported": str(result.exported) if result.exported else None}), flush=True)
"""


@pytest.mark.slow
def test_ddp_two_gloo_processes(tiny_drives, tmp_path):
    import json
    import os
    import subprocess
    import sys

    script = tmp_path / "ddp_event_vpr.py"
    script.write_text(DDP_SCRIPT)
    run = tmp_path / "run"
    src = Path(__file__).resolve().parents[1] / "src"
    env = {**os.environ, "PYTHONPATH": f"{src}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, str(script), str(run), *map(str, tiny_drives)], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    rows = sorted((json.loads(x[len("RESULT "):]) for x in out.stdout.splitlines() if x.startswith("RESULT ")),
                  key=lambda r: r["rank"])
    assert [r["rank"] for r in rows] == [0, 1] and all(r["step"] == 3 for r in rows)
    assert [r["prepare"] for r in rows] == [1, 0] and [r["export"] for r in rows] == [1, 0]
    # each rank takes half of the queries: 78 over 2 ranks in batches of 2
    assert all(r["batches"] == 19 for r in rows)
    assert rows[0]["exported"] == str(run / "event_vpr.pt") and rows[1]["exported"] is None


@pytest.mark.slow
def test_validation_with_only_its_database_named_queries_every_other_traversal(tiny_drives):
    from visloc.events.drive_dataset import PlaceWindows
    from visloc.train.event_vpr.validation import open_val

    spec = PlaceWindows(stride_m=2.0, kind="count", count=3000)
    vset = open_val(str(tiny_drives[1]), spec, database=["a"])
    names = [name for _, name in vset.places.names]
    assert names == ["a", "b"] and len(vset.database) and len(vset.queries)
    assert set(vset.places.traversal[vset.queries].tolist()) == {names.index("b")}
    assert set(vset.places.traversal[vset.database].tolist()) == {names.index("a")}


def test_batchnorm_calibration_makes_eval_mode_compute_what_training_mode_does(tmp_path):
    module = tiny_module(tmp_path, batch_size=16)  # the 16 calibration windows in one batch
    norms = [m for m in module.net.network.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert norms and all(torch.equal(m.running_var, torch.ones_like(m.running_var)) for m in norms)
    rows = np.arange(16)
    module.calibrate_batchnorm(rows)
    assert all(m.momentum == 0.1 for m in norms) and module.net.training  # restored
    dense = module.net.dense(module._store().many(rows))
    with torch.no_grad():
        train_mode = module.net.network.features(dense)  # batch statistics of the same 16 windows
        module.net.eval()
        calibrated = module.net.network.features(dense)
        for m in norms:
            m.reset_running_stats()
        uncalibrated = module.net.network.features(dense)
    module.net.train()

    def rel(x: torch.Tensor) -> float:
        return float((x - train_mode).norm() / train_mode.norm())

    # the running variance is the unbiased one (n - 1; 16 windows at 1 x 1 in the last blocks of this tiny
    # network), training normalises by the biased one: close, not equal; the initial statistics are far off
    assert 0 < rel(calibrated) < 0.3 and rel(uncalibrated) > 2 * rel(calibrated)
