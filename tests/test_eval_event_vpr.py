"""Event place recognition metrics on constructed places: exact recall, the 25 m boundary, per-condition pooling."""

from __future__ import annotations

import json

import numpy as np
import pytest

from visloc.conf import ConfError
from visloc.errors import InputError
from visloc.eval.event_vpr import (
    DescribedPlaces,
    RecallProtocol,
    chance_rows,
    format_table,
    markdown_table,
    nearest_neighbours,
    recall_rows,
)
from visloc.events.drive_dataset import EventTraversal
from visloc.events.windows import Trajectory
from visloc.pipelines.frame_vpr import FrameMethod, nearest_frames


def one_hot(i: int, d: int = 4, eps: float = 0.0, j: int | None = None) -> np.ndarray:
    """Unit vector ``e_i``, leaning by ``eps`` towards ``e_j``."""
    v = np.zeros(d, np.float32)
    v[i] = 1.0
    if j is not None:
        v[j] = eps
    return v / np.linalg.norm(v)


#: database places every 50 m along x, descriptor e_i for place i
DB = DescribedPlaces("db", "day", np.array([[0.0, 0.0], [50.0, 0.0], [100.0, 0.0]]), np.eye(3, 4, dtype=np.float32))


def test_a_place_24_m_away_is_a_positive_and_26_m_is_not():
    # q0 at 24 m from db0 (26 m from db1), looks like db0: hit at rank 0
    # q1 at 24 m from db2 (26 m from db1), looks like db1 then db2: first hit at rank 1
    # q2 at 26 m from db0 and 24 m from db1, looks like db0 then db1: first hit at rank 1
    # q3 looks exactly like db1 but lies 26 m from it and 24 m from db2, which it ranks last: rank 2
    xy = np.array([[24.0, 0.0], [76.0, 0.0], [26.0, 0.0], [76.0, 0.0]])
    desc = np.stack([one_hot(0), one_hot(1, eps=0.5, j=2), one_hot(0, eps=0.5, j=1), one_hot(1, eps=0.1, j=0)])
    (row, pooled) = recall_rows("events", DB, [DescribedPlaces("q", "day", xy, desc)],
                                RecallProtocol(ns=(1, 2, 3)))
    assert row.result.first_hit.tolist() == [0, 1, 1, 2]
    assert row.result.recall == {1: 0.25, 2: 0.75, 3: 1.0}
    assert row.result.without_positives == ()
    assert (row.queries, row.pair, row.pooled) == ("q", "day->day", False)
    assert pooled.pooled and pooled.result.recall == row.result.recall


def test_the_radius_is_inclusive_and_a_query_without_positive_is_counted_apart():
    xy = np.array([[25.0, 0.0], [300.0, 0.0], [125.0, 0.0], [126.0, 0.0]])  # 25 m, none, 25 m, 26 m (none)
    desc = np.stack([one_hot(0), one_hot(2), one_hot(2), one_hot(2)])
    row = recall_rows("events", DB, [DescribedPlaces("q", "night", xy, desc)])[0]
    assert row.result.without_positives == (1, 3)
    assert row.result.recall[1] == 1.0 and row.result.num_queries == 4
    out = row.to_json()
    assert out["recall@1"] == 1.0 and out["num_evaluated"] == 2 and out["queries_without_positives"] == [1, 3]


def test_a_condition_pools_the_queries_of_its_traversals():
    hit, miss = one_hot(0), one_hot(2)  # both at 10 m from db0; db2 is 90 m away
    at = np.array([[10.0, 0.0]])
    d2 = DescribedPlaces("d2", "day", at, hit[None])                                       # 1 of 1
    d3 = DescribedPlaces("d3", "day", np.repeat(at, 3, 0), np.stack([hit, miss, miss]))    # 1 of 3
    n1 = DescribedPlaces("n1", "night", np.repeat(at, 2, 0), np.stack([miss, miss]))       # 0 of 2
    rows = recall_rows("events", DB, [d2, n1, d3], RecallProtocol(ns=(1,)))
    got = {(r.queries, r.pooled): r.result.recall[1] for r in rows}
    assert got == {("d2", False): 1.0, ("n1", False): 0.0, ("d3", False): pytest.approx(1 / 3),
                   ("d2+d3", True): 0.5, ("n1", True): 0.0}  # 2 of 4 pooled, not the mean 2/3 of the two
    assert [r.query_condition for r in rows if r.pooled] == ["day", "night"]
    text = format_table(rows, (1,))
    assert "all day" in text and "all night" not in text  # night pools one traversal: its row is n1's
    assert markdown_table(rows, (1,)).count("\n") == 1 + 4


def test_chance_is_the_expected_recall_of_a_random_ranking():
    # q0: 1 positive of 3 (db0); q1: 2 of 3 (db1 and db2 at 25 m); q2: none (left out)
    xy = np.array([[0.0, 0.0], [75.0, 0.0], [500.0, 0.0]])
    q = DescribedPlaces("q", "night", xy, np.zeros((3, 4), np.float32))
    row, pooled = chance_rows(DB, [q], RecallProtocol(ns=(1, 2, 3, 20)))
    assert row.method == "chance" and row.result.without_positives == (2,)
    want = {1: (1 / 3 + 2 / 3) / 2, 2: (2 / 3 + 1.0) / 2, 3: 1.0, 20: 1.0}
    assert row.result.recall == pytest.approx(want, abs=1e-12)
    rng = np.random.default_rng(1)  # against random rankings: the same to a few percent
    hits = [[np.isin(rng.permutation(3)[:1], pos).any() for pos in ([0], [1, 2])] for _ in range(4000)]
    assert np.mean(hits) == pytest.approx(want[1], abs=0.03)
    assert pooled.pooled and pooled.result.recall == row.result.recall


def test_the_database_traversal_is_refused_as_a_query():
    with pytest.raises(ValueError, match="database traversal cannot be a query"):
        recall_rows("events", DB, [DB])
    other = DescribedPlaces("q", "day", DB.xy, np.zeros((3, 8), np.float32))
    with pytest.raises(ValueError, match="descriptors of size 8"):
        recall_rows("events", DB, [other])


def test_nearest_neighbours_are_exact_l2_and_padded():
    rng = np.random.default_rng(0)
    db, q = rng.normal(size=(30, 16)), rng.normal(size=(7, 16))
    d = ((q[:, None] - db[None]) ** 2).sum(-1)
    assert nearest_neighbours(db, q, 5).tolist() == np.argsort(d, axis=1)[:, :5].tolist()
    padded = nearest_neighbours(db[:2], q, 4)
    assert (padded[:, 2:] == -1).all() and set(padded[:, :2].ravel()) == {0, 1}


def test_protocol_and_places_checks():
    with pytest.raises(ConfError, match="radius_m"):
        RecallProtocol(radius_m=0)
    with pytest.raises(ConfError, match="ns"):
        RecallProtocol(ns=(0,))
    with pytest.raises(ValueError, match=r"descriptors must be finite \[P=2, D\]"):
        DescribedPlaces("q", "day", np.zeros((2, 2)), np.zeros((3, 4)))


def test_nearest_frame_in_time_ties_to_the_earlier_one(tmp_path):
    traj = Trajectory(np.array([0, 1_000_000]), np.array([[0.0, 0.0], [10.0, 0.0]]))
    frames = ((200_000, "a/f2.png"), (0, "a/f0.png"), (100_000, "a/f1.png"))  # unsorted on purpose
    trav = EventTraversal("a", "day", tmp_path / "a" / "events.h5", traj, frames)
    names, dt = nearest_frames(trav, np.array([0, 49_999, 50_000, 50_001, 260_000]))
    assert names == ["a/f0.png", "a/f0.png", "a/f0.png", "a/f1.png", "a/f2.png"]
    assert dt.tolist() == [0, 49_999, 50_000, 49_999, 60_000]
    with pytest.raises(InputError, match="no rendered frames"):
        nearest_frames(EventTraversal("a", "day", tmp_path / "events.h5", traj, ()), np.array([0]))


def test_frame_methods_route_their_overrides():
    methods = FrameMethod.parse(["hfnet-global", " vlad-aliked", ""], ["vlad-aliked:num_clusters=8"])
    assert methods == (FrameMethod("hfnet-global", "hfnet-global"),
                       FrameMethod("vlad-aliked", "vlad-aliked", ("num_clusters=8",)))
    with pytest.raises(InputError, match="EXTRACTOR:key=value"):
        FrameMethod.parse(["hfnet-global"], ["netvlad:weights=x"])
    with pytest.raises(InputError, match="twice"):
        FrameMethod.parse(["netvlad", "netvlad"])
    assert json.dumps(FrameMethod.parse([], [])) == "[]"
