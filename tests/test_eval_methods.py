"""Evaluation methods: named slots (extractor + feature matcher, or an image matcher alone), cache keys
on weights digests, and predictions of an image matcher equal to those of its sparse parts."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from visloc.eval.predictions import Method, cache_path, file_digest, predict, read_predictions
from visloc.models.hfnet import HFNet
from visloc.weights.hfnet import DEFAULT_STUDENT_CONF, save_hfnet

H_0TO1 = np.array([[0.95, 0.08, 12.0], [-0.06, 0.97, 8.0], [1e-5, -2e-5, 1.0]])


def test_method_slots():
    sparse, dense = Method("sift", "nn-ratio"), Method(None, "detector-pair")
    assert not sparse.image_matcher and dense.image_matcher
    assert sparse.label == "sift+nn-ratio" and dense.label == "detector-pair"
    econf, mconf = dense.confs()
    assert econf is None and mconf.resize_max == 640  # the method's resize reaches the image matcher
    assert Method(None, "detector-pair", resize_max=None).confs()[1].resize_max is None
    econf, mconf = sparse.confs()
    assert econf.resize_max == 640 and mconf.ratio_threshold == 0.8
    assert sparse.records()[0] is not None and dense.records()[0] is None
    with pytest.raises(ValueError, match=r"detector-pair is an image matcher: the method takes no extractor"):
        Method("sift", "detector-pair").confs()
    with pytest.raises(ValueError, match=r"nn-ratio is a feature matcher: the method needs an extractor"):
        Method(None, "nn-ratio").confs()


def test_cache_key_follows_the_weights_content(tmp_path):
    ckpt = tmp_path / "student.pt"
    torch.manual_seed(0)
    save_hfnet(ckpt, HFNet(DEFAULT_STUDENT_CONF))
    method = Method("hfnet", "nn-mutual", (f"weights={ckpt}",))
    first, digest = method.key(), file_digest(ckpt)
    assert method.weights() == {str(ckpt): digest} and digest in method.provenance()["weights"]
    assert method.key() == first  # deterministic
    torch.manual_seed(1)
    save_hfnet(ckpt, HFNet(DEFAULT_STUDENT_CONF))  # retrained: same path and conf, new content
    assert file_digest(ckpt) != digest and method.key() != first
    assert Method("hfnet", "nn-mutual", (f"weights={ckpt}",), resize_max=320).key() != method.key()
    assert file_digest(tmp_path / "none.pt") == "missing"
    lg = Method("aliked-n16", "lightglue")
    assert len(lg.weights()) == 2 and all(len(d) == 64 for d in lg.weights().values())  # ALIKED + LightGlue


def test_image_matcher_predictions_equal_its_sparse_parts(astronaut_320, tmp_path):
    warped = cv2.warpPerspective(astronaut_320, H_0TO1, (320, 240), flags=cv2.INTER_LINEAR)
    pairs = [("astronaut.png/warped.png", lambda: (astronaut_320, warped))]
    sparse = Method("sift", "nn-ratio")
    dense = Method(None, "detector-pair", matcher_overrides=("extractor=sift", "matcher=nn-ratio"))
    assert cache_path(tmp_path, "d", sparse) != cache_path(tmp_path, "d", dense)
    got = {}
    for method in (sparse, dense):
        path = predict(pairs, method, cache_path(tmp_path, "d", method), progress=False)
        got[method.label] = read_predictions(path, "astronaut.png/warped.png")
    a, b = got["sift+nn-ratio"], got["detector-pair"]
    assert len(a["matches"]) > 50 and a["matches"].dtype == np.int32
    for key in ("keypoints0", "keypoints1", "matches"):
        np.testing.assert_array_equal(a[key], b[key])
    np.testing.assert_allclose(a["scores"], b["scores"], atol=1e-6)
    assert b["time_extract"] == 0 and b["time_match"] > 0 and a["time_extract"] > 0
