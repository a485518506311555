"""Pair lists: text files and the exhaustive / sequential generators."""

from __future__ import annotations

import re

import pytest

from visloc.io.pairs import PairsError, exhaustive_pairs, read_pairs, sequential_pairs, write_pairs


def _unordered(pairs):
    return [frozenset(p) for p in pairs]


def test_write_read_round_trip(tmp_path):
    pairs = [("q/1.jpg", "db/2.jpg"), ("q/1.jpg", "db/3.jpg"), ("a.png", "b.png")]
    path = write_pairs(tmp_path / "sub" / "pairs.txt", pairs)
    assert path == tmp_path / "sub" / "pairs.txt"
    assert path.read_text() == "q/1.jpg db/2.jpg\nq/1.jpg db/3.jpg\na.png b.png\n"
    assert read_pairs(path) == pairs
    assert [p.name for p in path.parent.iterdir()] == ["pairs.txt"]  # no temporary left


def test_write_overwrites(tmp_path):
    path = tmp_path / "pairs.txt"
    write_pairs(path, [("a", "b"), ("c", "d")])
    write_pairs(path, [("e", "f")])
    assert read_pairs(path) == [("e", "f")]
    write_pairs(path, [])
    assert read_pairs(path) == []


def test_read_comments_blank_lines_and_whitespace(tmp_path):
    path = tmp_path / "pairs.txt"
    path.write_text("# retrieval pairs\n\na.jpg b.jpg\n   \n  c.jpg\td.jpg  \n# x y\ne.jpg f.jpg 0.93\n")
    assert read_pairs(path) == [("a.jpg", "b.jpg"), ("c.jpg", "d.jpg"), ("e.jpg", "f.jpg")]


def test_read_malformed_line_names_file_and_line(tmp_path):
    path = tmp_path / "bad_pairs.txt"
    path.write_text("# header\na.jpg b.jpg\n\nlonely.jpg\n")
    with pytest.raises(PairsError, match=re.escape(f"{path}:4") + ".*lonely.jpg"):
        read_pairs(path)


def test_read_missing_file(tmp_path):
    with pytest.raises(PairsError, match="absent_pairs.txt.*not found"):
        read_pairs(tmp_path / "absent_pairs.txt")
    assert issubclass(PairsError, ValueError)


@pytest.mark.parametrize("n", [0, 1, 2, 5, 13])
def test_exhaustive_count_and_uniqueness(n):
    names = [f"im{i:02d}.jpg" for i in range(n)]
    pairs = exhaustive_pairs(names)
    assert len(pairs) == n * (n - 1) // 2
    assert len(set(_unordered(pairs))) == len(pairs)
    assert all(a != b for a, b in pairs)
    assert all(names.index(a) < names.index(b) for a, b in pairs)


def test_exhaustive_small():
    assert exhaustive_pairs(["a", "b", "c"]) == [("a", "b"), ("a", "c"), ("b", "c")]
    assert exhaustive_pairs(iter(["a", "b"])) == [("a", "b")]


def test_sequential_window():
    names = list("abcde")
    assert sequential_pairs(names, window=2) == [
        ("a", "b"), ("a", "c"), ("b", "c"), ("b", "d"), ("c", "d"), ("c", "e"), ("d", "e"),
    ]
    assert sequential_pairs(names, window=1) == [("a", "b"), ("b", "c"), ("c", "d"), ("d", "e")]


def test_sequential_loop_wraps_without_duplicates():
    names = list("abcde")
    pairs = sequential_pairs(names, window=2, loop=True)
    assert len(pairs) == 10
    assert ("d", "a") in pairs and ("e", "a") in pairs and ("e", "b") in pairs
    assert len(set(_unordered(pairs))) == len(pairs)
    assert all(a != b for a, b in pairs)


@pytest.mark.parametrize("window", [4, 5, 7, 12])
def test_sequential_large_window_covers_all_pairs_once(window):
    names = list("abcde")
    for loop in (False, True):
        pairs = sequential_pairs(names, window=window, loop=loop)
        assert len(pairs) == 10
        assert set(_unordered(pairs)) == set(_unordered(exhaustive_pairs(names)))
        assert all(a != b for a, b in pairs)


def test_sequential_count_formula():
    names = [str(i) for i in range(100)]
    window = 5
    assert len(sequential_pairs(names, window=window)) == sum(min(window, 99 - i) for i in range(100))
    assert len(sequential_pairs(names, window=window, loop=True)) == 100 * window


def test_sequential_edge_cases():
    assert sequential_pairs([], window=3) == []
    assert sequential_pairs(["a"], window=3, loop=True) == []
    assert sequential_pairs(["a", "b"], window=3, loop=True) == [("a", "b")]


@pytest.mark.parametrize("window", [0, -1])
def test_sequential_window_below_one(window):
    with pytest.raises(ValueError, match=f"window must be >= 1, got {window}"):
        sequential_pairs(["a", "b"], window=window)
