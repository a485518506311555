"""One query against several database images in one matcher call: the matches of pair-by-pair matching."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from visloc.io import features_h5
from visloc.localization.pair_matching import Query, SparsePairs
from visloc.matching import MATCHERS
from visloc.pipelines.extract import extract_features
from visloc.types import Features


@pytest.fixture(scope="module")
def photo_features(photo_dir, photo_names, tmp_path_factory) -> list[Features]:
    """XFeat features of the three real photos at two sizes (six images of 300 to 512 keypoints)."""
    out = []
    for size in (320, 480):
        path = tmp_path_factory.mktemp("many") / "f.h5"
        extract_features(photo_dir, path, extractor="xfeat", overrides={"resize_max": size, "max_num_keypoints": 512},
                         progress=False)
        out += [features_h5.load_features(path, n) for n in photo_names]
    return out


def _few(f: Features, n: int) -> Features:
    return Features(f.keypoints[:n], f.descriptors[:n], f.scores[:n], f.image_size)


@pytest.mark.parametrize("name", ["nn-mutual", "nn-ratio"])
def test_nearest_neighbour_batch_equals_pairs(name, photo_features):
    matcher = MATCHERS.build(name)
    query, *db = photo_features
    others = [*db, _few(db[0], 1), _few(db[1], 0), _few(db[2], 7)]  # padding, one keypoint, none
    assert len({f.num_keypoints for f in others}) > 3
    many = matcher.match_padded(query, others)  # what match_many runs off the CPU
    assert [m.matches.tolist() for m in matcher.match_many(query, others)] == [m.matches.tolist() for m in many]
    assert len(many) == len(others)
    for i, (got, f) in enumerate(zip(many, others, strict=True)):
        ref = matcher(query, f)
        assert torch.equal(got.matches, ref.matches), f"{name} pair {i}"
        torch.testing.assert_close(got.scores, ref.scores)
        assert (got.num0, got.num1) == (ref.num0, ref.num1)
    assert sum(len(m.matches) for m in many) > 50  # the same photo at 480 px is among them


def test_lightglue_match_many_is_pair_by_pair(photo_features):
    matcher = MATCHERS.build("lighterglue")
    query, *db = photo_features
    for got, f in zip(matcher.match_many(query, db[:2]), db[:2], strict=True):
        assert torch.equal(got.matches, matcher(query, f).matches)


def test_sparse_pairs_place_equals_one_call_per_image(photo_features):
    db = dict(zip("abcde", photo_features[1:], strict=True))
    pairs = SparsePairs(db.__getitem__, MATCHERS.build("nn-mutual"))
    query = Query("q", photo_features[0])
    for name, (kq, idx) in zip(db, pairs.place(query, list(db)), strict=True):
        ref_kq, ref_idx = pairs(query, name)
        np.testing.assert_array_equal(kq, ref_kq)
        np.testing.assert_array_equal(idx, ref_idx)
