"""Provenance: cached predictions and rendered scenes are never reused once what produced them changed.

- the prediction cache key covers the weights' content: retraining a student in place (same path,
  new bytes) gives a new cache file, the same file gives the same key;
- evaluation reports carry ``Method.provenance()`` (confs, weights digests, visloc version), the
  cache key and the dataset key;
- ``visloc demo`` reuses a rendered scene only when its conf and the generator's version match.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil

import h5py
import pytest
import torch
import yaml

import visloc
from visloc.data.scene import version as scene_version
from visloc.data.scene.config import SceneConf
from visloc.eval.predictions import Method, cache_path
from visloc.models.hfnet import HFNet
from visloc.pipelines import demo
from visloc.weights.hfnet import DEFAULT_STUDENT_CONF, DEFAULT_WEIGHTS, save_hfnet


def _random_student(path, seed: int):
    torch.manual_seed(seed)
    return save_hfnet(path, HFNet(DEFAULT_STUDENT_CONF).eval())


def _sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_retraining_in_place_changes_the_cache_path(tmp_path):
    weights = _random_student(tmp_path / "student.pt", seed=0)
    backup = tmp_path / "backup.pt"
    shutil.copyfile(weights, backup)
    method = Method("hfnet", "nn-mutual", extractor_overrides=(f"weights={weights}",))
    first = cache_path(tmp_path, "motorcycle", method)
    # the same file: the same key, from this method or an equal one built again
    assert cache_path(tmp_path, "motorcycle", method) == first
    assert cache_path(tmp_path, "motorcycle", Method("hfnet", "nn-mutual", (f"weights={weights}",))) == first
    assert method.weights() == {str(weights): _sha256(weights)}
    assert method.provenance()["weights"] == [_sha256(weights)]

    _random_student(weights, seed=1)  # "retrained": same path, new weights
    retrained = cache_path(tmp_path, "motorcycle", method)
    assert retrained != first and retrained.parent == first.parent
    assert method.weights() == {str(weights): _sha256(weights)}

    # the key is the file's content, not its path or time: the first bytes back give the first key
    # (saving the same network again is not enough: torch.save writes a fresh serialization id)
    shutil.copyfile(backup, weights)
    assert cache_path(tmp_path, "motorcycle", method) == first


def test_cache_key_covers_the_visloc_version_and_the_confs(monkeypatch, tmp_path):
    method = Method("sift", "nn-ratio")
    key = method.key()
    assert Method("sift", "nn-ratio", matcher_overrides=("ratio_threshold=0.9",)).key() != key
    assert Method("sift", "nn-ratio", resize_max=320).key() != key
    monkeypatch.setattr(visloc, "__version__", visloc.__version__ + ".post1")
    assert method.key() != key and method.provenance()["visloc"].endswith(".post1")


def test_the_shipped_student_is_keyed_on_its_digest():
    if not DEFAULT_WEIGHTS.is_file():
        pytest.skip(f"{DEFAULT_WEIGHTS} not shipped in this checkout")
    method = Method("hfnet", "nn-mutual")  # weights=None: the shipped student
    assert method.weights() == {str(DEFAULT_WEIGHTS): _sha256(DEFAULT_WEIGHTS)}


def test_report_carries_provenance_and_stale_predictions_are_not_reused(tmp_path):
    from visloc.pipelines.evaluate import evaluate_stereo

    weights = _random_student(tmp_path / "student.pt", seed=0)
    method = Method("hfnet", "nn-mutual", extractor_overrides=(f"weights={weights}", "max_num_keypoints=256"),
                    resize_max=320)
    cache = tmp_path / "cache"
    first = evaluate_stereo(method, cache_dir=cache, progress=False)
    data = json.loads(first.write(tmp_path / "first.json").read_text())
    assert data["dataset"] == data["dataset_key"] == "motorcycle"
    assert data["provenance"] == json.loads(json.dumps(method.provenance()))
    assert data["provenance"]["visloc"] == visloc.__version__
    assert data["weights"] == {str(weights): _sha256(weights)}
    assert data["extractor"]["conf"]["weights"] == str(weights)
    first_file = cache / "predictions" / "motorcycle" / f"{method.label}-{data['cache_key']}.h5"
    with h5py.File(first_file, "r") as fd:  # the cache file records what its key covers
        assert json.loads(fd.attrs["method"])["weights"] == [_sha256(weights)]

    _random_student(weights, seed=1)  # retrained in place
    second = json.loads(evaluate_stereo(method, cache_dir=cache, progress=False).write(tmp_path / "2.json").read_text())
    assert second["cache_key"] != data["cache_key"] and second["weights"] == {str(weights): _sha256(weights)}
    files = sorted((cache / "predictions" / "motorcycle").glob("*.h5"))
    assert len(files) == 2 and first_file in files  # new predictions, the old ones untouched
    # the retrained network's predictions were computed, not read back: its keypoints differ
    (pair,) = data["pairs"]
    kpts = []
    for f in files:
        with h5py.File(f, "r") as fd:
            kpts.append(fd[pair]["keypoints0"][()])
    assert kpts[0].shape != kpts[1].shape or not (kpts[0] == kpts[1]).all()


TINY_SCENE = SceneConf(width=160, height=120, focal=125.0, num_db=3, num_queries=1)


def _age(path) -> None:
    os.utime(path, ns=(1_000_000_000, 1_000_000_000))


def test_demo_reuses_a_scene_only_from_the_same_generator(tmp_path, monkeypatch):
    root = tmp_path / "scene"
    demo._scene(TINY_SCENE, root)
    record = yaml.safe_load((root / scene_version.GENERATOR_RECORD).read_text())
    assert record == {"generator": "visloc.data.scene", "version": scene_version.GENERATOR_VERSION}
    image = root / "db" / "0000.png"

    _age(image)
    demo._scene(TINY_SCENE, root)  # same conf, same generator: reused
    assert image.stat().st_mtime_ns == 1_000_000_000

    monkeypatch.setattr(scene_version, "GENERATOR_VERSION", scene_version.GENERATOR_VERSION + 1)
    demo._scene(TINY_SCENE, root)  # the renderer changed: rendered again, and the new version recorded
    assert image.stat().st_mtime_ns != 1_000_000_000
    assert scene_version.read_generator_version(root) == scene_version.GENERATOR_VERSION

    for stale in ("", "version: [1]\n", None):  # unreadable record, wrong type, a rendering from before records
        _age(image)
        if stale is None:
            (root / scene_version.GENERATOR_RECORD).unlink()
        else:
            (root / scene_version.GENERATOR_RECORD).write_text(stale)
        demo._scene(TINY_SCENE, root)
        assert image.stat().st_mtime_ns != 1_000_000_000, f"reused a scene with generator record {stale!r}"
        assert scene_version.read_generator_version(root) == scene_version.GENERATOR_VERSION


def test_demo_rerenders_when_the_conf_changes(tmp_path):
    root = tmp_path / "scene"
    demo._scene(TINY_SCENE, root)
    image = root / "db" / "0000.png"
    _age(image)
    demo._scene(SceneConf(width=160, height=120, focal=125.0, num_db=3, num_queries=1, seed=1), root)
    assert image.stat().st_mtime_ns != 1_000_000_000
