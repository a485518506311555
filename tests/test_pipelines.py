"""The batch pipelines on real photos: extract, match features, match an image pair."""

from __future__ import annotations

import io
import json
import shutil

import cv2
import h5py
import numpy as np
import pytest
from PIL import Image

from visloc.conf import conf_to_dict
from visloc.errors import InputError
from visloc.features import EXTRACTORS
from visloc.geometry import metrics
from visloc.io import features_h5, matches_h5
from visloc.io.images import read_image
from visloc.io.pairs import exhaustive_pairs, write_pairs
from visloc.io.parts import parts_dir
from visloc.matching import MATCHERS
from visloc.pipelines import extract as extract_module
from visloc.pipelines.common import conf_record
from visloc.pipelines.extract import ExtractError, extract_features
from visloc.pipelines.match_dense import match_dense
from visloc.pipelines.match_features import MatchError, match_features
from visloc.pipelines.match_pair import match_images


def _copy(photo_dir, tmp_path):
    return shutil.copytree(photo_dir, tmp_path / "images")


def _add_bad_images(root):
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buf, "JPEG")
    (root / "trunc.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    (root / "bad.jpg").write_text("this is not a JPEG\n")
    (root / "empty.png").write_bytes(b"")


# --- extract -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sift_features(photo_dir, tmp_path_factory, photo_names):
    """SIFT features of the photo folder (shared; do not modify)."""
    out = tmp_path_factory.mktemp("sift") / "feats.h5"
    summary = extract_features(photo_dir, out, extractor="sift", progress=False)
    assert summary.done == len(photo_names)
    return out


def test_extract_writes_every_image(photo_dir, sift_features, photo_names):
    assert features_h5.list_feature_names(sift_features) == list(photo_names)
    for name in photo_names:
        h, w = read_image(photo_dir / name).shape[:2]
        f = features_h5.read_features(sift_features, name)
        assert tuple(f["image_size"]) == (w, h)
        n = len(f["keypoints"])
        assert n > 100
        assert f["descriptors"].shape == (n, 128) and f["scores"].shape == (n,)
        assert (f["keypoints"] >= -0.5).all() and (f["keypoints"] <= np.array([w, h]) - 0.5).all()
    with h5py.File(sift_features, "r") as fd:
        assert fd["sub/chelsea.png/descriptors"].shape[0] == 128  # hloc's (D, N) layout
    record = json.loads(features_h5.read_attrs(sift_features)[extract_module.ATTR])
    assert record == {"name": "sift", "conf": conf_to_dict(EXTRACTORS.conf("sift"))}
    assert not parts_dir(sift_features).exists()


def test_extract_rerun_extracts_nothing(photo_dir, sift_features, photo_names):
    mtime = sift_features.stat().st_mtime_ns
    summary = extract_features(photo_dir, sift_features, extractor="sift", progress=False)
    assert (summary.done, summary.already_done, summary.failed) == (0, len(photo_names), [])
    assert summary.ok
    assert sift_features.stat().st_mtime_ns == mtime


def test_extract_image_list(photo_dir, tmp_path):
    out = tmp_path / "f.h5"
    summary = extract_features(photo_dir, out, extractor="sift", image_list=["sub/chelsea.png"], progress=False)
    assert summary.done == 1
    assert features_h5.list_feature_names(out) == ["sub/chelsea.png"]


def test_extract_as_half(photo_dir, tmp_path):
    out = tmp_path / "f.h5"
    extract_features(photo_dir, out, extractor="sift", image_list=["coffee.jpg"], as_half=True, progress=False)
    with h5py.File(out, "r") as fd:
        assert fd["coffee.jpg/descriptors"].dtype == np.float16
        assert fd["coffee.jpg/keypoints"].dtype == np.float32


def test_extract_skips_bad_images(photo_dir, tmp_path, photo_names):
    root = _copy(photo_dir, tmp_path)
    _add_bad_images(root)
    out = tmp_path / "f.h5"
    summary = extract_features(root, out, extractor="sift", progress=False)
    assert summary.done == len(photo_names)
    assert summary.ok
    reasons = dict(summary.failed)
    assert sorted(reasons) == ["bad.jpg", "empty.png", "trunc.jpg"]
    assert "truncated" in reasons["trunc.jpg"]
    assert "not an image" in reasons["bad.jpg"]
    assert "empty" in reasons["empty.png"]
    assert not any(str(root) in r for r in reasons.values())  # the name is listed once, not the path
    lines = summary.lines("extract")
    assert "3 new" in lines[0] and "3 skipped" in lines[0]
    for name, reason in summary.failed:
        assert f"  skipped {name}: {reason}" in lines
    assert features_h5.list_feature_names(out) == list(photo_names)


def test_extract_nothing_extractable(tmp_path):
    root = tmp_path / "images"
    root.mkdir()
    _add_bad_images(root)
    summary = extract_features(root, tmp_path / "f.h5", extractor="sift", progress=False)
    assert summary.done == 0 and len(summary.failed) == 3
    assert not summary.ok


def test_extract_no_images_or_no_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ExtractError, match=r"no images found"):
        extract_features(tmp_path / "empty", tmp_path / "f.h5", extractor="sift", progress=False)
    with pytest.raises(ExtractError, match=r"not a directory"):
        extract_features(tmp_path / "missing", tmp_path / "f.h5", extractor="sift", progress=False)


def test_extract_global_only_writes_descriptors_without_keypoints(photo_dir, tmp_path, photo_names):
    out = tmp_path / "g.h5"
    summary = extract_features(photo_dir, out, extractor="hfnet-global", overrides=["resize_max=256"], progress=False)
    assert summary.done == len(photo_names) and not summary.failed
    names, g = features_h5.read_global_descriptors(out)
    assert names == list(photo_names) and g.shape == (len(photo_names), 4096)
    np.testing.assert_allclose(np.linalg.norm(g, axis=1), 1.0, atol=1e-5)
    for name in photo_names:
        f = features_h5.load_features(out, name)
        assert not f.has_local and f.num_keypoints == 0
        assert f.image_size == tuple(read_image(photo_dir / name).shape[1::-1])  # the original (W, H)
        assert "keypoints" not in features_h5.read_features(out, name)


def test_extract_conflicting_conf(photo_dir, tmp_path, photo_names):
    out = tmp_path / "f.h5"
    extract_features(photo_dir, out, extractor="sift", image_list=["coffee.jpg"], progress=False)
    for name, overrides in (("sift", ["max_num_keypoints=100"]), ("orb", [])):
        with pytest.raises(ExtractError, match=r"another extractor or conf"):
            extract_features(photo_dir, out, extractor=name, overrides=overrides, progress=False)
    summary = extract_features(photo_dir, out, extractor="sift", overrides=["max_num_keypoints=100"], overwrite=True,
                               progress=False)
    assert summary.done == len(photo_names) and summary.already_done == 0
    record = json.loads(features_h5.read_attrs(out)[extract_module.ATTR])
    assert record["conf"]["max_num_keypoints"] == 100
    assert all(len(features_h5.read_features(out, n)["keypoints"]) <= 100 for n in photo_names)


def test_extract_resumes_after_interrupt(photo_dir, tmp_path, monkeypatch, photo_names):
    from visloc.pipelines import item_failures  # where extract calls the network, image group by image group

    out = tmp_path / "f.h5"
    original = item_failures.extract_tensor
    calls = []

    def crash_on_third(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(item_failures, "extract_tensor", crash_on_third)
    with pytest.raises(KeyboardInterrupt):
        extract_features(photo_dir, out, extractor="sift", progress=False)
    assert features_h5.list_feature_names(out) == list(photo_names[:2])  # committed in `finally`
    assert extract_module.ATTR in features_h5.read_attrs(out)
    monkeypatch.setattr(item_failures, "extract_tensor", original)
    summary = extract_features(photo_dir, out, extractor="sift", progress=False)
    assert (summary.done, summary.already_done) == (1, 2)
    assert features_h5.list_feature_names(out) == list(photo_names)


def test_extract_merges_what_a_killed_run_staged_last(photo_dir, sift_features, tmp_path, photo_names):
    """A run killed after staging its last image but before its merge: the re-run has nothing to extract
    and still merges the staged images."""
    out = tmp_path / "f.h5"
    for name in photo_names:
        features_h5.stage_features(out, name, features_h5.read_features(sift_features, name))
    summary = extract_features(photo_dir, out, extractor="sift", progress=False)
    assert (summary.done, summary.already_done) == (0, len(photo_names))
    assert features_h5.list_feature_names(out) == list(photo_names) and not parts_dir(out).exists()
    attr = extract_module.ATTR
    assert features_h5.read_attrs(out)[attr] == features_h5.read_attrs(sift_features)[attr]


# --- match_features ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory, photo_names):
    path = tmp_path_factory.mktemp("pairs") / "pairs.txt"
    write_pairs(path, exhaustive_pairs(photo_names))
    return path


def test_match_features_exhaustive(pairs_file, sift_features, tmp_path, photo_names):
    out = tmp_path / "m.h5"
    summary = match_features(pairs_file, sift_features, out, matcher="nn-ratio", progress=False)
    assert (summary.done, summary.already_done, summary.failed) == (3, 0, [])
    assert matches_h5.done_pairs(out) == {matches_h5.names_to_pair(a, b) for a, b in exhaustive_pairs(photo_names)}
    for a, b in exhaustive_pairs(photo_names):
        m, s = matches_h5.read_matches(out, a, b)
        n0 = len(features_h5.read_features(sift_features, a)["keypoints"])
        n1 = len(features_h5.read_features(sift_features, b)["keypoints"])
        assert m.shape[1] == 2 and len(s) == len(m)
        assert ((m[:, 0] >= 0) & (m[:, 0] < n0) & (m[:, 1] >= 0) & (m[:, 1] < n1)).all()
        assert len(np.unique(m[:, 1])) == len(m)  # mutual: one-to-one
    record = json.loads(features_h5.read_attrs(out)["visloc_matcher"])
    assert record == json.loads(conf_record("nn-ratio", MATCHERS.conf("nn-ratio")))


def test_match_features_self_pair_is_identity(sift_features, tmp_path):
    pairs = write_pairs(tmp_path / "p.txt", [("coffee.jpg", "coffee.jpg")])
    match_features(pairs, sift_features, tmp_path / "m.h5", matcher="nn-mutual", progress=False)
    m, _ = matches_h5.read_matches(tmp_path / "m.h5", "coffee.jpg", "coffee.jpg")
    n = len(features_h5.read_features(sift_features, "coffee.jpg")["keypoints"])
    np.testing.assert_array_equal(m, np.stack([np.arange(n), np.arange(n)], -1))


def test_match_features_resumes(pairs_file, sift_features, tmp_path, photo_names):
    out = tmp_path / "m.h5"
    first = write_pairs(tmp_path / "first.txt", exhaustive_pairs(photo_names)[:1])
    assert match_features(first, sift_features, out, matcher="nn-ratio", progress=False).done == 1
    summary = match_features(pairs_file, sift_features, out, matcher="nn-ratio", progress=False)
    assert (summary.done, summary.already_done) == (2, 1)
    mtime = out.stat().st_mtime_ns
    reversed_pairs = write_pairs(tmp_path / "rev.txt", [(b, a) for a, b in exhaustive_pairs(photo_names)])
    summary = match_features(reversed_pairs, sift_features, out, matcher="nn-ratio", progress=False)
    assert (summary.done, summary.already_done) == (0, 3)
    assert out.stat().st_mtime_ns == mtime


def test_match_features_missing_image(sift_features, tmp_path):
    pairs = write_pairs(tmp_path / "p.txt", [("coffee.jpg", "missing.png"), ("coffee.jpg", "astronaut.png")])
    summary = match_features(pairs, sift_features, tmp_path / "m.h5", matcher="nn-ratio", progress=False)
    assert summary.done == 1 and summary.ok
    [(name, reason)] = summary.failed
    assert name == "coffee.jpg missing.png"
    assert "missing.png" in reason and "no features" in reason
    assert not matches_h5.has_pair(tmp_path / "m.h5", "coffee.jpg", "missing.png")


def test_match_features_conflicting_conf(pairs_file, sift_features, tmp_path):
    out = tmp_path / "m.h5"
    match_features(pairs_file, sift_features, out, matcher="nn-ratio", progress=False)
    with pytest.raises(MatchError, match=r"another matcher or conf"):
        match_features(pairs_file, sift_features, out, matcher="nn-ratio", overrides=["ratio_threshold=0.5"],
                       progress=False)


def test_lightglue_on_sift_features_is_refused(pairs_file, sift_features, tmp_path):
    # the family comes from the file's extractor record (sift -> sift-128), not from names
    with pytest.raises(InputError, match=r"lightglue: no pretrained weights for sift-128 descriptors"):
        match_features(pairs_file, sift_features, tmp_path / "m.h5", matcher="lightglue", progress=False)
    with pytest.raises(InputError, match=r"lightglue: its weights take aliked-128 descriptors, not sift-128"):
        match_features(pairs_file, sift_features, tmp_path / "m.h5", matcher="lightglue",
                       overrides=["features=aliked"], progress=False)
    assert not (tmp_path / "m.h5").exists()


def test_feature_and_image_matchers_go_to_their_pipelines(pairs_file, sift_features, photo_dir, tmp_path):
    with pytest.raises(InputError, match=r"detector-pair: an image matcher .*visloc match-dense"):
        match_features(pairs_file, sift_features, tmp_path / "m.h5", matcher="detector-pair", progress=False)
    with pytest.raises(InputError, match=r"nn-mutual: a feature matcher .*visloc match-features"):
        match_dense(pairs_file, photo_dir, tmp_path / "f.h5", tmp_path / "m.h5", matcher="nn-mutual", progress=False)


@pytest.mark.slow
def test_lightglue_features_inferred_from_aliked(photo_dir, pairs_file, tmp_path):
    feats, out = tmp_path / "f.h5", tmp_path / "m.h5"
    extract_features(photo_dir, feats, extractor="aliked-n16", overrides=["resize_max=320"], progress=False)
    summary = match_features(pairs_file, feats, out, matcher="lightglue", progress=False)
    assert summary.done == 3 and not summary.failed
    assert json.loads(features_h5.read_attrs(out)["visloc_matcher"])["conf"]["features"] == "aliked"


# --- match_images --------------------------------------------------------------------------------


def test_match_images_graf(graf_pair, tmp_path):
    out = tmp_path / "pic.png"
    res = match_images(graf_pair.path0, graf_pair.path1, extractor="sift", matcher="nn-ratio", model="homography",
                       out=out)
    assert res.estimate.num_inliers > 100
    assert len(res.matches) == len(res.scores) >= res.estimate.num_inliers
    assert metrics.homography_corner_error(res.estimate.model, graf_pair.H_0to1, 800, 640) < 10.0
    pic = cv2.imread(str(out))
    h0, w0 = read_image(graf_pair.path0).shape[:2]
    h1, w1 = read_image(graf_pair.path1).shape[:2]
    assert pic.shape == (max(h0, h1), w0 + 10 + w1, 3)


def test_extract_batched_with_workers_equals_single(photo_dir, tmp_path, photo_names):
    """Equal-size batches from prefetching workers give the features of one-by-one extraction."""
    from visloc.io.images import read_image

    root = tmp_path / "same"
    root.mkdir()
    import shutil

    for i, name in enumerate(photo_names):  # three photos at one size: one batch of 3
        img = read_image(photo_dir / name)
        cv2.imwrite(str(root / f"img{i}.png"), cv2.cvtColor((cv2.resize(img, (320, 240)) * 255).astype(np.uint8),
                                                           cv2.COLOR_RGB2BGR))
    shutil.copy(photo_dir / photo_names[0], root / "other_size.jpg")
    (root / "broken.jpg").write_bytes(b"not an image")
    single = extract_features(root, tmp_path / "single.h5", extractor="aliked-n16", progress=False, num_workers=0)
    batched = extract_features(root, tmp_path / "batched.h5", extractor="aliked-n16", progress=False, batch_size=4,
                               num_workers=2)
    assert (single.done, batched.done) == (4, 4)
    assert [n for n, _ in batched.failed] == ["broken.jpg"] == [n for n, _ in single.failed]
    for name in features_h5.list_feature_names(tmp_path / "single.h5"):
        a = features_h5.read_features(tmp_path / "single.h5", name)
        b = features_h5.read_features(tmp_path / "batched.h5", name)
        assert np.array_equal(a["image_size"], b["image_size"])
        assert len(a["keypoints"]) == len(b["keypoints"]) > 50
        assert np.abs(a["keypoints"] - b["keypoints"]).max() < 1e-3
        assert np.abs(a["descriptors"] - b["descriptors"]).max() < 1e-3
