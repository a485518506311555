"""VLAD: exact aggregation, seeded vocabularies, vocabulary files, and ``vlad-aliked`` on real photos."""

from __future__ import annotations

import re

import cv2
import h5py
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from visloc.cli import app
from visloc.data.homography import synthetic_pairs
from visloc.features import EXTRACTORS
from visloc.features.api import extract_image
from visloc.retrieval.vlad import VocabularyError, learn_vocabulary, load_vocabulary, save_vocabulary, vlad

PHOTOS = ("astronaut", "coffee", "chelsea", "camera")
SIZE = (240, 180)


def test_vlad_exact_on_constructed_descriptors():
    c = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]], np.float32)
    x = np.array([[1.0, 0.0], [0.0, 2.0], [11.0, 1.0], [9.0, 2.0]], np.float32)  # two in cluster 0, two in 1
    # residual sums: cluster 0 (1, 2), cluster 1 (1 - 1, 1 + 2) = (0, 3), cluster 2 empty
    v0, v1 = np.array([1.0, 2.0]) / np.sqrt(5), np.array([0.0, 1.0])
    expected = np.concatenate([v0, v1, [0.0, 0.0]]) / np.sqrt(2)
    np.testing.assert_allclose(vlad(x, c), expected, atol=1e-6)
    ssr = np.sign(np.concatenate([v0, v1, [0, 0]])) * np.sqrt(np.abs(np.concatenate([v0, v1, [0, 0]])))
    np.testing.assert_allclose(vlad(x, c, power_norm=True), ssr / np.linalg.norm(ssr), atol=1e-6)
    raw = np.array([1.0, 2.0, 0.0, 3.0, 0.0, 0.0])
    np.testing.assert_allclose(vlad(x, c, intra_norm=False), raw / np.linalg.norm(raw), atol=1e-6)
    assert vlad(x, c).dtype == np.float32
    np.testing.assert_array_equal(vlad(np.zeros((0, 2), np.float32), c), np.zeros(6))


def test_vlad_residuals_below_float_rounding_are_empty():
    # a point that is its own centroid leaves a residual of float32 rounding only: it must not be
    # normalised into a random unit vector (batched and single extraction would then disagree)
    c = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], np.float32)
    x = np.array([[1.0, 3e-7, 0.0], [0.6, 0.8, 0.0]], np.float32)  # cluster 0: noise; cluster 1: (0.6, -0.2, 0)
    v1 = np.array([0.6, -0.2, 0.0]) / np.linalg.norm([0.6, -0.2, 0.0])
    np.testing.assert_allclose(vlad(x, c), np.concatenate([[0.0, 0.0, 0.0], v1]), atol=1e-6)
    x_noisy = x + np.array([[0.0, -5e-7, 2e-7], [0.0, 0.0, 0.0]], np.float32)
    np.testing.assert_allclose(vlad(x_noisy, c), vlad(x, c), atol=1e-6)


def test_vlad_bad_shapes():
    c = np.zeros((4, 8), np.float32)
    with pytest.raises(ValueError, match=r"descriptors: expected \[N, 8\]"):
        vlad(np.zeros((5, 3), np.float32), c)
    with pytest.raises(ValueError, match=r"centroids: expected"):
        vlad(np.zeros((5, 8), np.float32), np.zeros(8, np.float32))


def test_learn_vocabulary_is_seeded():
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(3000, 16)) + 5 * rng.integers(0, 4, (3000, 1))).astype(np.float32)
    a, b = learn_vocabulary(x, 8, seed=1), learn_vocabulary(x, 8, seed=1)
    assert a.shape == (8, 16) and a.dtype == np.float32
    np.testing.assert_allclose(a, b, atol=1e-5)
    sub = learn_vocabulary(x, 8, seed=1, max_descriptors=500)  # a seeded subsample
    np.testing.assert_allclose(sub, learn_vocabulary(x, 8, seed=1, max_descriptors=500), atol=1e-5)
    with pytest.raises(ValueError, match=r"too few for 8 clusters"):
        learn_vocabulary(x[:5], 8)


def test_vocabulary_round_trip_and_errors(tmp_path):
    c = np.random.default_rng(0).normal(size=(8, 128)).astype(np.float32)
    path = save_vocabulary(tmp_path / "v.pt", c, {"num_clusters": 8}, {"extractor": "aliked-n16", "images": 3})
    vocab = load_vocabulary(path, num_clusters=8, dim=128)
    np.testing.assert_array_equal(vocab.centroids, c)
    assert vocab.source == {"extractor": "aliked-n16", "images": 3} and vocab.num_clusters == 8
    assert [p.name for p in tmp_path.iterdir()] == ["v.pt"]  # no temporary file left
    for kwargs, msg in (({"num_clusters": 16}, "holds 8 clusters, but num_clusters=16"),
                        ({"dim": 64}, "centroids of dimension 128, but the descriptors have 64")):
        with pytest.raises(VocabularyError, match=re.escape(f"{path}: {msg}")):
            load_vocabulary(path, **kwargs)
    with pytest.raises(VocabularyError, match=re.escape(f"{tmp_path / 'none.pt'}: vocabulary file not found")):
        load_vocabulary(tmp_path / "none.pt")
    (tmp_path / "bad.pt").write_bytes(b"not a torch file")
    with pytest.raises(VocabularyError, match=re.escape(f"{tmp_path / 'bad.pt'}: cannot load")):
        load_vocabulary(tmp_path / "bad.pt")
    torch.save({"weights": torch.zeros(3)}, tmp_path / "other.pt")
    with pytest.raises(VocabularyError, match=r"not a visloc vocabulary"):
        load_vocabulary(tmp_path / "other.pt")


@pytest.fixture(scope="module")
def photo_pairs():
    """Four real photos and a warped, photometrically changed copy of each."""
    return synthetic_pairs(seed=0, pairs_per_photo=1, size=SIZE, photos=PHOTOS)


@pytest.fixture(scope="module")
def small_photos(photo_pairs, tmp_path_factory):
    root = tmp_path_factory.mktemp("small_photos")
    for p in photo_pairs:
        cv2.imwrite(str(root / p.name0), cv2.cvtColor((p.image0 * 255).round().astype(np.uint8), cv2.COLOR_RGB2BGR))
    (root / "broken.png").write_bytes(b"not an image")
    return root


@pytest.fixture(scope="module")
def vocab_file(small_photos, tmp_path_factory):
    """``visloc vocab`` on the photo folder, 8 clusters (the CLI test of the command)."""
    out = tmp_path_factory.mktemp("vocab") / "vocab.pt"
    result = CliRunner().invoke(app, ["vocab", str(small_photos), "--out", str(out), "--clusters", "8",
                                      "--set", "max_num_keypoints=512"])
    assert result.exit_code == 0, result.output
    assert "8 clusters x 128-d" in result.output and "from" in result.output
    assert "skipped broken.png" in result.output
    return out


def test_vocab_cli_writes_a_vocabulary(vocab_file, tmp_path, small_photos):
    vocab = load_vocabulary(vocab_file, num_clusters=8, dim=128)
    assert vocab.source == {"extractor": "aliked-n16", "images": 4}
    assert vocab.conf["num_clusters"] == 8 and vocab.conf["extractor_conf"]["max_num_keypoints"] == 512
    result = CliRunner().invoke(app, ["vocab", str(small_photos), "--out", str(tmp_path / "v.pt"),
                                      "--max-images", "0"])
    assert result.exit_code == 2 and "--max-images: expected an integer >= 1, got 0" in result.output


def test_vlad_aliked_retrieves_warped_copies(vocab_file, photo_pairs):
    ex = EXTRACTORS.build("vlad-aliked", [f"vocabulary={vocab_file}", "num_clusters=8"])
    g0 = np.stack([extract_image(ex, p.image0).global_descriptor.numpy() for p in photo_pairs])
    g1 = np.stack([extract_image(ex, p.image1).global_descriptor.numpy() for p in photo_pairs])
    assert g0.shape == (4, 8 * 128) and g0.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(g0, axis=1), 1.0, atol=1e-5)
    sim = g0 @ g1.T
    np.testing.assert_array_equal(sim.argmax(1), np.arange(4))  # each photo's nearest warp is its own


def test_vlad_aliked_needs_a_vocabulary(vocab_file, astronaut_320):
    ex = EXTRACTORS.build("vlad-aliked")  # builds without one, so that it can be listed and configured
    with pytest.raises(VocabularyError, match=r"visloc vocab"):
        extract_image(ex, astronaut_320)
    with pytest.raises(VocabularyError, match=r"holds 8 clusters, but num_clusters=64"):
        EXTRACTORS.build("vlad-aliked", [f"vocabulary={vocab_file}"])


def test_extract_cli_writes_global_descriptor(vocab_file, small_photos, tmp_path):
    out = tmp_path / "feats.h5"
    result = CliRunner().invoke(app, ["extract", str(small_photos), "--out", str(out), "--conf", "vlad-aliked",
                                      "--set", f"vocabulary={vocab_file}", "--set", "num_clusters=8"])
    assert result.exit_code == 0, result.output
    with h5py.File(out) as fd:
        g = fd["astronaut.png/global_descriptor"][()]
        assert g.shape == (8 * 128,) and fd["astronaut.png/descriptors"].shape[0] == 128
    assert abs(np.linalg.norm(g) - 1) < 1e-5
