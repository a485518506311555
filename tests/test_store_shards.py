"""Scalable staging (name index, hash folders) and the sharded commit: cost, kills, layouts, consolidate."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import h5py
import numpy as np
import pytest

from visloc.io import features_h5, matches_h5, parts, shards
from visloc.io.features_h5 import (
    FeatureStoreError,
    commit_features,
    done_names,
    list_feature_names,
    read_features,
    stage_features,
    write_features,
)

SRC = Path(__file__).resolve().parents[1] / "src"


def _feats(n: int, d: int = 8, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"keypoints": rng.uniform(0, 100, (n, 2)).astype(np.float32),
            "scores": rng.uniform(0, 1, n).astype(np.float32),
            "descriptors": rng.standard_normal((n, d)).astype(np.float32),
            "image_size": np.array([100, 80])}


def _assert_same(path: Path, refs: dict[str, dict[str, np.ndarray]]) -> None:
    for name, ref in refs.items():
        got = read_features(path, name)
        for key, value in ref.items():
            np.testing.assert_array_equal(got[key], value, err_msg=f"{name}/{key}")


def _write_hloc_file(path: Path, refs: dict[str, dict[str, np.ndarray]]) -> None:
    """A self-contained file as hloc's extract_features writes it."""
    with h5py.File(path, "w") as fd:
        fd.attrs["made_by"] = "hloc"
        for name, f in refs.items():
            grp = fd.create_group(name)
            grp.create_dataset("keypoints", data=f["keypoints"])
            grp.create_dataset("scores", data=f["scores"])
            grp.create_dataset("descriptors", data=f["descriptors"].T)
            grp.create_dataset("image_size", data=f["image_size"])


def _hloc_list_h5_names(path: Path) -> list[str]:
    """hloc.utils.io.list_h5_names, as hloc lists a feature file."""
    names: list[str] = []
    with h5py.File(path, "r", libver="latest") as fd:
        fd.visititems(lambda _, o: names.append(o.parent.name.strip("/")) if isinstance(o, h5py.Dataset) else None)
    return sorted(set(names))


# --- staging ------------------------------------------------------------------------------------


def _count_member_reads(monkeypatch) -> list[str]:
    read: list[str] = []
    original = np.lib.npyio.NpzFile.__getitem__

    def counting(self, key):
        read.append(key)
        return original(self, key)

    monkeypatch.setattr(np.lib.npyio.NpzFile, "__getitem__", counting)
    return read


def test_staged_names_read_no_array(tmp_path, monkeypatch):
    path = tmp_path / "feats.h5"
    names = [f"db/{i:03d}.jpg" for i in range(6)]
    for i, name in enumerate(names):
        stage_features(path, name, _feats(2000, 128, seed=i))
    read = _count_member_reads(monkeypatch)
    assert parts.staged_names(path) == set(names)
    assert done_names(path) == set(names)
    assert read == []  # the index names every part: no npz is opened at all

    for index in parts.parts_dir(path).glob("index-*.tsv"):  # e.g. killed before the append
        index.unlink()
    assert parts.staged_names(path) == set(names)
    assert read == [parts.NAME_KEY] * len(names)  # only the name member of each part


def test_parts_spread_over_hash_folders(tmp_path):
    path = tmp_path / "feats.h5"
    for i in range(40):
        stage_features(path, f"{i}.jpg", _feats(3, seed=i))
    folder = parts.parts_dir(path)
    files = sorted(folder.glob("*/*.npz"))
    assert len(files) == 40 and not list(folder.glob("*.npz"))
    assert all(f.parent.name == f.stem[:2] for f in files)
    assert len({f.parent for f in files}) > 10  # 40 hashes over 256 folders


def test_torn_or_stale_index_lines(tmp_path):
    path = tmp_path / "feats.h5"
    stage_features(path, "a.jpg", _feats(3, seed=0))
    stage_features(path, "b.jpg", _feats(3, seed=1))
    (index,) = parts.parts_dir(path).glob("index-*.tsv")
    with open(index, "a") as f:  # a line with a hash that is not the name's, and a torn tail
        f.write(f"{'0' * 40}\t10\t\"ghost.jpg\"\n{'1' * 40}\t12\t\"tor")
    stage_features(path, "a.jpg", _feats(50, seed=2))  # restaged: bigger part, one more line
    assert parts.staged_names(path) == {"a.jpg", "b.jpg"}
    (part_b,) = [p for p in parts.parts_dir(path).glob("*/*.npz") if parts.load_part(p)[0] == "b.jpg"]
    part_b.write_bytes(part_b.read_bytes()[:100])  # damaged after staging: size no longer matches
    assert parts.staged_names(path) == {"a.jpg"}
    assert commit_features(path) == 1
    np.testing.assert_array_equal(read_features(path, "a.jpg")["keypoints"], _feats(50, seed=2)["keypoints"])


def test_flat_parts_of_older_versions_are_picked_up(tmp_path):
    path = tmp_path / "feats.h5"
    folder = parts.parts_dir(path)
    folder.mkdir()
    arrays = features_h5.to_storage(_feats(4, seed=3))
    np.savez(folder / "0123abcd.npz", **{parts.NAME_KEY: np.array("old.jpg")}, **arrays)
    assert done_names(path) == {"old.jpg"}
    assert commit_features(path) == 1
    _assert_same(path, {"old.jpg": _feats(4, seed=3)})


# --- sharded commit: layout and readers ---------------------------------------------------------


def test_commit_writes_master_of_links_read_by_plain_h5py(tmp_path):
    path = tmp_path / "feats.h5"
    refs = {f"q/night/img {i}.jpg": _feats(5 + i, seed=i) for i in range(3)}
    write_features(path, dict(list(refs.items())[:2]))
    write_features(path, dict(list(refs.items())[2:]))
    assert len(list(shards.shards_dir(path).glob("*.h5"))) == 2
    with h5py.File(path, "r") as fd:  # hloc's readers: fd[name]["keypoints"], name in fd
        for name, f in refs.items():
            assert name in fd
            assert isinstance(fd.get(name, getlink=True), h5py.ExternalLink)
            np.testing.assert_array_equal(fd[name]["keypoints"].__array__(), f["keypoints"])
            np.testing.assert_array_equal(fd[name]["descriptors"][()], f["descriptors"].T)  # (D, N)
            np.testing.assert_array_equal(fd[name]["image_size"][()], [100, 80])
    assert list_feature_names(path) == sorted(refs)
    assert features_h5.read_attrs(path) == {}  # the store's own attributes are not the caller's


def test_moved_folder_reads_and_lone_master_names_the_shard(tmp_path, monkeypatch):
    path = tmp_path / "a" / "feats.h5"
    refs = {"x.jpg": _feats(4, seed=1), "sub/y.jpg": _feats(6, seed=2),
            "g.jpg": {"global_descriptor": np.arange(4, dtype=np.float32)}}
    write_features(path, refs)
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    shutil.rmtree(tmp_path / "a")
    monkeypatch.chdir("/")  # links resolve against the master's folder, not the working directory
    _assert_same(tmp_path / "b" / "feats.h5", refs)
    np.testing.assert_array_equal(features_h5.read_global_descriptors(tmp_path / "b" / "feats.h5", ["g.jpg"])[1],
                                  [[0, 1, 2, 3]])

    lone = tmp_path / "lone.h5"
    shutil.copyfile(tmp_path / "b" / "feats.h5", lone)
    assert list_feature_names(lone) == ["g.jpg", "sub/y.jpg", "x.jpg"]
    with pytest.raises(FeatureStoreError, match=r"lone.h5: 'x.jpg' is stored in feats.h5.shards/.*cannot be opened"):
        read_features(lone, "x.jpg")
    with pytest.raises(FeatureStoreError, match=r"lone.h5: 'g.jpg' is stored in feats.h5.shards/.*cannot be opened"):
        features_h5.read_global_descriptors(lone, ["g.jpg"])


def test_commit_adopts_hloc_file_without_copying_it(tmp_path, monkeypatch):
    path = tmp_path / "feats.h5"
    old = {"db/1.jpg": _feats(5, seed=1), "db/2.jpg": _feats(6, seed=2)}
    _write_hloc_file(path, old)
    inode = path.stat().st_ino
    copied: list[int] = []
    original = shutil.copyfile
    monkeypatch.setattr(shutil, "copyfile", lambda a, b: copied.append(Path(a).stat().st_size) or original(a, b))
    write_features(path, {"q.jpg": _feats(7, seed=3)})
    assert copied == []  # the hloc file became the base shard by a hard link
    (base,) = shards.shards_dir(path).glob("*-base.h5")
    assert base.stat().st_ino == inode
    assert features_h5.read_attrs(path) == {"made_by": "hloc"}
    assert list_feature_names(path) == ["db/1.jpg", "db/2.jpg", "q.jpg"]
    _assert_same(path, {**old, "q.jpg": _feats(7, seed=3)})


def test_restaging_replaces_link_and_nesting_below_an_item_is_refused(tmp_path):
    path = tmp_path / "feats.h5"
    write_features(path, {"a.jpg": _feats(4, seed=0), "b.jpg": _feats(4, seed=1)})
    write_features(path, {"a.jpg": _feats(9, seed=9)})
    _assert_same(path, {"a.jpg": _feats(9, seed=9), "b.jpg": _feats(4, seed=1)})
    stage_features(path, "b.jpg/c.jpg", _feats(3))
    with pytest.raises(shards.StoreError, match=r"below the item 'b.jpg'"):
        commit_features(path)
    _assert_same(path, {"a.jpg": _feats(9, seed=9), "b.jpg": _feats(4, seed=1)})


def test_matches_on_shards_and_adopted_file(tmp_path):
    path = tmp_path / "matches.h5"
    with h5py.File(path, "w") as fd:  # old hloc file with a legacy key
        grp = fd.create_group("q-1.jpg_db-2.jpg")
        grp.create_dataset("matches0", data=np.array([3, -1, 1], np.int16))
        grp.create_dataset("matching_scores0", data=np.array([0.5, 0.0, 1.0], np.float16))
    matches_h5.stage_matches(path, "a/1.jpg", "b.jpg", np.array([-1, 2]), np.array([0.0, 0.5]))
    assert matches_h5.commit_matches(path) == 1
    assert matches_h5.done_pairs(path) == {"q-1.jpg_db-2.jpg", "a-1.jpg/b.jpg"}
    assert matches_h5.has_pair(path, "b.jpg", "a/1.jpg")
    np.testing.assert_array_equal(matches_h5.read_matches(path, "db/2.jpg", "q/1.jpg")[0], [[3, 0], [1, 2]])
    np.testing.assert_array_equal(matches_h5.read_matches(path, "a/1.jpg", "b.jpg")[0], [[1, 2]])
    with h5py.File(path, "r") as fd:
        assert fd["a-1.jpg"]["b.jpg"]["matches0"].dtype == np.int32


def test_consolidate_round_trips(tmp_path):
    path = tmp_path / "feats.h5"
    refs = {f"s/{i}.jpg": _feats(3 + i, seed=i) for i in range(4)}
    refs["g.jpg"] = {"global_descriptor": np.arange(16, dtype=np.float32)}
    for name, f in refs.items():  # one commit per item: five shards
        stage_features(path, name, f)
        commit_features(path, {"visloc_extractor": "rec"})
    assert len(list(shards.shards_dir(path).iterdir())) == 5
    assert shards.is_master(path)
    before = features_h5.read_global_descriptors(path, ["g.jpg"])
    with pytest.raises(FeatureStoreError, match=r"'s/0.jpg' has no global_descriptor"):
        features_h5.read_global_descriptors(path, ["g.jpg", "s/0.jpg"])
    shards.consolidate(path)
    after = features_h5.read_global_descriptors(path, ["g.jpg"])
    assert before[0] == after[0] == ["g.jpg"]
    np.testing.assert_array_equal(before[1], after[1])
    np.testing.assert_array_equal(after[1], [np.arange(16, dtype=np.float32)])
    assert not shards.is_master(path) and not shards.shards_dir(path).exists()
    assert [p.name for p in tmp_path.iterdir()] == ["feats.h5"]
    with h5py.File(path, "r") as fd:
        assert not any(isinstance(fd.get(n, getlink=True), h5py.ExternalLink) for n in ("g.jpg", "s/0.jpg"))
        assert dict(fd.attrs) == {"visloc_extractor": "rec"}
    assert _hloc_list_h5_names(path) == sorted(refs)  # hloc's listing sees every item again
    assert list_feature_names(path) == sorted(refs)
    _assert_same(path, refs)
    write_features(path, {"new.jpg": _feats(2, seed=7)})  # and it can be committed into again
    _assert_same(path, {**refs, "new.jpg": _feats(2, seed=7)})


# --- commit cost --------------------------------------------------------------------------------


def _commit_bytes(path: Path, monkeypatch) -> int:
    """Bytes a commit copies (shutil.copyfile) plus bytes of the files it publishes (os.replace)."""
    counted: list[int] = []
    copyfile, replace = shutil.copyfile, os.replace

    def count_copy(src, dst):
        counted.append(Path(src).stat().st_size)
        return copyfile(src, dst)

    def count_replace(src, dst):
        counted.append(Path(src).stat().st_size)
        return replace(src, dst)

    with monkeypatch.context() as m:
        m.setattr(shutil, "copyfile", count_copy)
        m.setattr(os, "replace", count_replace)
        assert commit_features(path) == 3
    return sum(counted)


@pytest.mark.parametrize("layout", ["sharded", "hloc"])
def test_commit_cost_does_not_grow_with_existing_data(tmp_path, monkeypatch, layout):
    costs, sizes = [], []
    for n_kpts in (10, 5000):  # the same 30 existing images, about 1.4 KB vs 0.7 MB of features each
        path = tmp_path / str(n_kpts) / "feats.h5"
        existing = {f"db/{i:02d}.jpg": _feats(n_kpts, 32, seed=i) for i in range(30)}
        if layout == "hloc":
            path.parent.mkdir()
            _write_hloc_file(path, existing)
        else:
            write_features(path, existing)
        sizes.append(sum(p.stat().st_size for p in path.parent.rglob("*") if p.is_file()))
        for i in range(3):
            stage_features(path, f"new/{i}.jpg", _feats(50, 32, seed=100 + i))
        costs.append(_commit_bytes(path, monkeypatch))
        assert len(list_feature_names(path)) == 33
    assert sizes[1] > 50 * sizes[0]  # the big store really is big
    assert costs[1] == pytest.approx(costs[0], rel=0.02)
    assert costs[1] < sizes[1] / 100


# --- kills in the middle of a commit ------------------------------------------------------------

KILLER = textwrap.dedent("""
    import os, shutil, signal, sys
    from pathlib import Path
    from visloc.io import features_h5, parts, shards

    out, kind, nth = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    calls = [0]

    def hit():
        calls[0] += 1
        if calls[0] == nth:
            os.kill(os.getpid(), signal.SIGKILL)

    def before(obj, attr):
        original = getattr(obj, attr)
        def wrapped(*args, **kwargs):
            hit()
            return original(*args, **kwargs)
        setattr(obj, attr, wrapped)

    def after(obj, attr):
        original = getattr(obj, attr)
        def wrapped(*args, **kwargs):
            result = original(*args, **kwargs)
            hit()
            return result
        setattr(obj, attr, wrapped)

    {"write": lambda: before(parts, "write_group"), "replace": lambda: before(os, "replace"),
     "replaced": lambda: after(os, "replace"), "link": lambda: before(shards, "_link"),
     "oslink": lambda: after(os, "link"), "discard": lambda: before(parts, "discard"),
     "unlink": lambda: before(os, "unlink")}[kind]()
    features_h5.commit_features(out, {"visloc_extractor": "rec"})
    sys.exit(3)  # the hook never fired
""")

# (layout before the commit, hook, nth call killed, whether the new master was already published)
MOMENTS = [("sharded", "write", 2, False),  # in the middle of the shard
           ("sharded", "replace", 1, False),  # shard complete, not renamed
           ("sharded", "link", 2, False),  # shard renamed, in the middle of the new master
           ("sharded", "replace", 2, False),  # new master complete, not renamed
           ("sharded", "replaced", 2, True),  # master renamed, parts still staged
           ("sharded", "discard", 1, True),
           ("sharded", "unlink", 1, True),  # collecting the orphan shard
           ("hloc", "oslink", 1, False),  # the hloc file just hard-linked as a base shard
           ("hloc", "link", 3, False),
           ("hloc", "replaced", 2, True)]


@pytest.mark.parametrize(("layout", "kind", "nth", "published"), MOMENTS)
def test_kill_during_commit_keeps_committed_items(tmp_path, layout, kind, nth, published):
    path = tmp_path / "feats.h5"
    old = {"x.jpg": _feats(10, seed=1), "sub/y.jpg": _feats(11, seed=2)}
    new = {f"n/{i}.jpg": _feats(5 + i, seed=10 + i) for i in range(3)}
    if layout == "hloc":
        _write_hloc_file(path, old)
    else:
        write_features(path, old)
        (shard,) = shards.shards_dir(path).glob("*.h5")
        shutil.copyfile(shard, shards.shards_dir(path) / "orphan-of-a-killed-commit.h5")
    for name, f in new.items():
        stage_features(path, name, f)
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    proc = subprocess.run([sys.executable, "-c", KILLER, str(path), kind, str(nth)], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr

    # Readable with all that was committed before, and the new items exactly when published.
    assert list_feature_names(path) == sorted(set(old) | set(new) if published else set(old))
    _assert_same(path, {**old, **new} if published else old)
    assert done_names(path) == set(old) | set(new)

    assert commit_features(path, {"visloc_extractor": "rec"}) in (0, 3)
    assert list_feature_names(path) == sorted(set(old) | set(new))
    _assert_same(path, {**old, **new})
    assert not parts.parts_dir(path).exists()
    assert [p.name for p in tmp_path.iterdir() if p.is_file()] == ["feats.h5"]  # no temporary left
    with h5py.File(path, "r") as fd:
        listed_shards = set(json.loads(fd.attrs[shards.SHARDS_ATTR]))
    on_disk = {f"feats.h5.shards/{p.name}" for p in shards.shards_dir(path).iterdir()}
    assert on_disk == listed_shards  # orphans and temporaries collected


def test_atomic_files_get_the_permissions_of_a_plain_open(tmp_path: Path) -> None:
    import os

    from visloc.io.atomic import atomic_write_text

    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    atomic = atomic_write_text(tmp_path / "atomic.txt", "x")
    assert os.stat(atomic).st_mode & 0o777 == os.stat(plain).st_mode & 0o777


def test_staged_among_checks_only_the_names_asked(tmp_path, monkeypatch):
    path = tmp_path / "feats.h5"
    for i in range(5):
        stage_features(path, f"{i}.jpg", _feats(3, seed=i))
    (part_3,) = [p for p in parts.parts_dir(path).glob("*/*.npz") if parts.load_part(p)[0] == "3.jpg"]
    part_3.write_bytes(part_3.read_bytes()[:100])  # cut short: not staged, so a retry redoes it
    read = _count_member_reads(monkeypatch)
    assert parts.staged_among(path, ["1.jpg", "3.jpg", "7.jpg"]) == {"1.jpg"}
    assert read == [parts.NAME_KEY]  # the part of 1.jpg only; no other part is opened
    assert parts.staged_among(tmp_path / "none.h5", ["1.jpg"]) == set()
