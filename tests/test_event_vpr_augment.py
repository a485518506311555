"""Event-VPR training: augmentation of event windows and the best-by-validation weights."""

from __future__ import annotations

import numpy as np
import pytest
import yaml

from visloc.conf import ConfError, apply_overrides
from visloc.events import EventStream
from visloc.train.event_vpr.augment import AugmentConf, augment_triplets, transform_window
from visloc.train.event_vpr.conf import EventVPRTrainConf, check_conf
from visloc.train.event_vpr.module import BEST_RECORD, BEST_WEIGHTS, EventVPRTrainModule

SIZE = (10, 6)


def window() -> EventStream:
    return EventStream.from_arrays(np.array([0, 5, 5, 9]), np.array([0, 3, 9, 4]), np.array([0, 1, 5, 2]),
                                   np.array([1, -1, 1, -1]), SIZE, origin_us=100)


def test_mirror_then_shift_drops_what_leaves_the_sensor():
    w = window()
    m = transform_window(w, mirror=True)
    assert m.x.tolist() == [9, 6, 0, 5] and m.y.tolist() == w.y.tolist() and m.origin_us == 100
    s = transform_window(w, mirror=True, dx=1, dy=-1)  # x 10, 7, 1, 6; y -1, 0, 4, 1: the first leaves the sensor
    assert s.x.tolist() == [7, 1, 6] and s.y.tolist() == [0, 4, 1] and s.t.tolist() == w.t[1:].tolist()
    assert s.p.tolist() == [-1, 1, -1]
    assert w.x.tolist() == [0, 3, 9, 4]  # the input is untouched
    assert transform_window(w, dx=-9).x.tolist() == [0]


def test_thinning_keeps_about_the_fraction_and_needs_an_rng():
    rng = np.random.default_rng(0)
    n = 20_000
    big = EventStream.from_arrays(np.arange(n), rng.integers(0, 10, n), rng.integers(0, 6, n),
                                  rng.choice([-1, 1], n), SIZE)
    kept = transform_window(big, keep=0.7, rng=np.random.default_rng(1))
    assert abs(len(kept.t) / n - 0.7) < 0.02 and np.all(np.diff(kept.t) >= 0)
    with pytest.raises(ValueError, match="needs an rng"):
        transform_window(big, keep=0.5)


def marked(i: int) -> EventStream:
    """A one-event window at column ``i`` of a wide sensor: its column says whether it was mirrored."""
    return EventStream.from_arrays(np.array([0]), np.array([i]), np.array([0]), np.array([1]), (100, 1))


def test_a_query_and_its_positive_and_negatives_are_mirrored_together():
    b, k = 6, 3
    windows = [marked(i) for i in range(b * (2 + k))]
    conf = AugmentConf(mirror_p=0.5, shift_px=0, keep_min=1.0)
    out = augment_triplets(windows, b, k, conf, seed=0, step=7)
    flipped = np.array([int(o.x[0]) != i for i, o in enumerate(out)])
    q, p, n = flipped[:b], flipped[b:2 * b], flipped[2 * b:].reshape(b, k)
    assert np.array_equal(q, p) and np.all(n == q[:, None])
    assert 0 < q.sum() < b  # both kinds occur at p = 0.5 with this seed
    again = augment_triplets(windows, b, k, conf, seed=0, step=7)  # seeded by (seed, step): a resume repeats it
    assert [int(o.x[0]) for o in again] == [int(o.x[0]) for o in out]
    other = augment_triplets(windows, b, k, conf, seed=0, step=8)
    assert [int(o.x[0]) for o in other] != [int(o.x[0]) for o in out]
    assert augment_triplets(windows, b, k, AugmentConf(enabled=False), 0, 7) is windows
    with pytest.raises(ValueError, match=r"expected 6 x \(2 \+ 3\) windows, got 5"):
        augment_triplets(windows[:5], b, k, conf, 0, 0)


@pytest.mark.parametrize(("section", "message"), [
    ({"augment": {"mirror_p": 1.5}}, r"AugmentConf.mirror_p: expected a value in \[0, 1\], got 1.5"),
    ({"augment": {"shift_px": -1}}, r"AugmentConf.shift_px: expected >= 0, got -1"),
    ({"augment": {"keep_min": 0.0}}, r"AugmentConf.keep_min: expected > 0, got 0.0"),
    ({"val": {"select": "recall@20"}}, r"val.select: expected one of \['recall@1', 'recall@5', 'recall@10'\]"),
])
def test_augment_and_select_conf_errors(section, message):
    base = {"data": {"roots": ["/x"]}, "val": {"root": "/y"}}
    with pytest.raises(ConfError, match=message):
        check_conf(apply_overrides(apply_overrides(EventVPRTrainConf(), base), section))


def test_the_best_validation_keeps_its_weights_and_survives_a_restart(tmp_path):
    conf = check_conf(apply_overrides(EventVPRTrainConf(), {
        "run_dir": str(tmp_path), "data": {"roots": ["/x"]}, "val": {"root": "/y"},
        "model": {"arch": {"representation": "voxel-grid", "bins": 2, "input_size": 32, "num_clusters": 2}}}))
    module = EventVPRTrainModule(conf, tmp_path)
    assert module.keep_if_best({"recall@1": 0.5, "recall@5": 0.9})
    record = yaml.safe_load((tmp_path / BEST_RECORD).read_text())
    assert record == {"step": 0, "select": "recall@1", "recall@1": 0.5, "recall@5": 0.9}
    stamp = (tmp_path / BEST_WEIGHTS).stat().st_mtime_ns
    assert not module.keep_if_best({"recall@1": 0.5})  # a tie: the earlier step stays
    assert not module.keep_if_best({"recall@5": 1.0})  # select not measured
    restarted = EventVPRTrainModule(conf, tmp_path)  # a resumed run reads the record from the folder
    assert not restarted.keep_if_best({"recall@1": 0.4})
    assert (tmp_path / BEST_WEIGHTS).stat().st_mtime_ns == stamp
    assert restarted.keep_if_best({"recall@1": 0.6})
    assert yaml.safe_load((tmp_path / BEST_RECORD).read_text())["recall@1"] == 0.6
