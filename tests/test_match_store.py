"""Match HDF5 store: hloc's pair keys, int32 indices, reversed and legacy lookups, staging."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from visloc.io import parts
from visloc.io.matches_h5 import (
    MatchStoreError,
    commit_matches,
    done_pairs,
    has_pair,
    names_to_pair,
    names_to_pair_old,
    read_matches,
    stage_matches,
)

M0 = np.array([-1, 5, 40_000, -1, 0, 32_768, 70_000], dtype=np.int64)
S0 = np.array([0.0, 0.9, 0.5, 0.0, 0.25, 0.125, 0.75], dtype=np.float32)


def test_names_to_pair():
    assert names_to_pair("a/b.jpg", "c.jpg") == "a-b.jpg/c.jpg"
    assert names_to_pair("q/day/1.jpg", "db/2.jpg") == "q-day-1.jpg/db-2.jpg"
    assert names_to_pair("x.jpg", "y.jpg") == "x.jpg/y.jpg"
    assert names_to_pair_old("a/b.jpg", "c.jpg") == "a-b.jpg_c.jpg"


def test_stage_commit_read(tmp_path):
    path = tmp_path / "matches.h5"
    stage_matches(path, "a/b.jpg", "c.jpg", M0, S0)
    assert not path.exists()
    assert commit_matches(path) == 1
    assert not parts.parts_dir(path).exists()
    matches, scores = read_matches(path, "a/b.jpg", "c.jpg")
    np.testing.assert_array_equal(matches, [[1, 5], [2, 40_000], [4, 0], [5, 32_768], [6, 70_000]])
    assert matches.dtype == np.int64
    assert matches.shape == (5, 2)
    assert scores.dtype == np.float32
    expected = np.array([0.9, 0.5, 0.25, 0.125, 0.75], dtype=np.float16).astype(np.float32)
    np.testing.assert_array_equal(scores, expected)


def test_on_disk_dtypes_and_layout(tmp_path):
    path = tmp_path / "matches.h5"
    stage_matches(path, "a/b.jpg", "c.jpg", M0, S0)
    commit_matches(path)
    with h5py.File(path, "r") as fd:
        assert isinstance(fd["a-b.jpg"], h5py.Group)  # hloc's nested key
        grp = fd["a-b.jpg"]["c.jpg"]
        assert grp["matches0"].dtype == np.int32
        assert grp["matching_scores0"].dtype == np.float16
        assert grp["matches0"].shape == (len(M0),)
        np.testing.assert_array_equal(grp["matches0"][()], M0)  # > 32,767 survives, -1 kept
        assert grp["matches0"][()].max() == 70_000


def test_read_reverse_order_swaps_columns(tmp_path):
    path = tmp_path / "matches.h5"
    stage_matches(path, "a/b.jpg", "c.jpg", M0, S0)
    commit_matches(path)
    fwd, s_fwd = read_matches(path, "a/b.jpg", "c.jpg")
    rev, s_rev = read_matches(path, "c.jpg", "a/b.jpg")
    np.testing.assert_array_equal(rev, fwd[:, ::-1])
    np.testing.assert_array_equal(rev[:, 0], [5, 40_000, 0, 32_768, 70_000])
    np.testing.assert_array_equal(s_rev, s_fwd)


def test_no_matches_pair(tmp_path):
    path = tmp_path / "matches.h5"
    stage_matches(path, "a.jpg", "b.jpg", np.full(10, -1), np.zeros(10))
    commit_matches(path)
    matches, scores = read_matches(path, "a.jpg", "b.jpg")
    assert matches.shape == (0, 2)
    assert scores.shape == (0,)


def test_legacy_underscore_keys(tmp_path):
    path = tmp_path / "old_matches.h5"
    m0 = np.array([3, -1, 1], dtype=np.int16)  # what old hloc wrote
    s0 = np.array([0.5, 0.0, 1.0], dtype=np.float16)
    with h5py.File(path, "w") as fd:
        grp = fd.create_group("q-1.jpg_db-2.jpg")
        grp.create_dataset("matches0", data=m0)
        grp.create_dataset("matching_scores0", data=s0)
    matches, scores = read_matches(path, "q/1.jpg", "db/2.jpg")
    np.testing.assert_array_equal(matches, [[0, 3], [2, 1]])
    np.testing.assert_array_equal(scores, [0.5, 1.0])
    rev, _ = read_matches(path, "db/2.jpg", "q/1.jpg")
    np.testing.assert_array_equal(rev, [[3, 0], [1, 2]])
    assert has_pair(path, "q/1.jpg", "db/2.jpg")
    assert has_pair(path, "db/2.jpg", "q/1.jpg")
    assert done_pairs(path) == {"q-1.jpg_db-2.jpg"}


def test_missing_pair(tmp_path):
    path = tmp_path / "matches.h5"
    stage_matches(path, "a.jpg", "b.jpg", M0, S0)
    commit_matches(path)
    with pytest.raises(MatchStoreError, match=r"matches.h5.*a.jpg.*c.jpg"):
        read_matches(path, "a.jpg", "c.jpg")
    assert not has_pair(path, "a.jpg", "c.jpg")
    assert issubclass(MatchStoreError, ValueError)


def test_missing_and_corrupt_file(tmp_path):
    with pytest.raises(MatchStoreError, match="absent_matches.h5.*not found"):
        read_matches(tmp_path / "absent_matches.h5", "a.jpg", "b.jpg")
    assert not has_pair(tmp_path / "absent_matches.h5", "a.jpg", "b.jpg")
    assert done_pairs(tmp_path / "absent_matches.h5") == set()
    bad = tmp_path / "broken_matches.h5"
    bad.write_text("not hdf5\n" * 10)
    with pytest.raises(MatchStoreError, match="broken_matches.h5.*not a readable HDF5"):
        read_matches(bad, "a.jpg", "b.jpg")


def test_malformed_pair_entry_names_file_and_dataset(tmp_path):
    path = tmp_path / "matches.h5"
    with h5py.File(path, "w") as fd:
        grp = fd.create_group(names_to_pair("a.jpg", "b.jpg"))
        grp.create_dataset("matches0", data=np.zeros(3, np.int32))  # no matching_scores0
        fd.create_group(names_to_pair("a.jpg", "c.jpg")).create_group("matches0")  # a group, not a dataset
    with pytest.raises(MatchStoreError, match=r"matches.h5: /a.jpg/b.jpg/matching_scores0 is missing"):
        read_matches(path, "a.jpg", "b.jpg")
    with pytest.raises(MatchStoreError, match=r"matches.h5: /a.jpg/c.jpg/matches0 is a Group, not a dataset"):
        read_matches(path, "a.jpg", "c.jpg")


def test_has_pair_and_done_pairs_include_staged(tmp_path):
    path = tmp_path / "matches.h5"
    stage_matches(path, "a/1.jpg", "b/2.jpg", M0, S0)
    commit_matches(path)
    stage_matches(path, "c.jpg", "d/3.jpg", M0, S0)  # staged by a run that was killed
    assert has_pair(path, "a/1.jpg", "b/2.jpg")
    assert has_pair(path, "b/2.jpg", "a/1.jpg")
    assert has_pair(path, "c.jpg", "d/3.jpg")
    assert has_pair(path, "d/3.jpg", "c.jpg")  # either order, staged or not
    assert not has_pair(path, "a/1.jpg", "c.jpg")
    assert done_pairs(path) == {"a-1.jpg/b-2.jpg", "c.jpg/d-3.jpg"}
    with pytest.raises(MatchStoreError):
        read_matches(path, "c.jpg", "d/3.jpg")  # not committed yet
    assert commit_matches(path) == 1
    assert done_pairs(path) == {"a-1.jpg/b-2.jpg", "c.jpg/d-3.jpg"}
    np.testing.assert_array_equal(read_matches(path, "c.jpg", "d/3.jpg")[0][:, 1], M0[M0 >= 0])
    np.testing.assert_array_equal(read_matches(path, "a/1.jpg", "b/2.jpg")[0][:, 1], M0[M0 >= 0])


def test_staged_only_without_file(tmp_path):
    path = tmp_path / "matches.h5"
    stage_matches(path, "a.jpg", "b.jpg", M0, S0)
    assert has_pair(path, "a.jpg", "b.jpg")
    assert done_pairs(path) == {"a.jpg/b.jpg"}


def test_restaging_replaces_pair(tmp_path):
    path = tmp_path / "matches.h5"
    stage_matches(path, "a.jpg", "b.jpg", M0, S0)
    commit_matches(path)
    stage_matches(path, "a.jpg", "b.jpg", np.array([2, -1]), np.array([0.5, 0.0]))
    commit_matches(path)
    matches, scores = read_matches(path, "a.jpg", "b.jpg")
    np.testing.assert_array_equal(matches, [[0, 2]])
    np.testing.assert_array_equal(scores, [0.5])
