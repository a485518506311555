"""Every registered feature matcher through the same checks, plus exact nearest-neighbour cases.

Parametrized over ``MATCHERS.names(kind="feature")``; image matchers have their own suite
(``test_image_matchers_contract.py``).
"""

from __future__ import annotations

import math
from dataclasses import replace

import cv2
import numpy as np
import pytest
import torch

from visloc.features.api import extract_image
from visloc.geometry.transforms import warp_points
from visloc.matching import MATCHERS
from visloc.matching.nearest_neighbor import NearestNeighbor, NNConf, nearest_neighbor_match
from visloc.types import Features, Matches

NAMES = MATCHERS.names(kind="feature")
H_0TO1 = np.array([[0.95, 0.08, 12.0], [-0.06, 0.97, 8.0], [1e-5, -2e-5, 1.0]])


#: descriptor family -> the extractor whose features test a matcher whose weights accept only that family
EXTRACTOR_FOR = {"xfeat-64": "xfeat"}


def _warped_pair(ex, image):
    warped = cv2.warpPerspective(image, H_0TO1, (320, 240), flags=cv2.INTER_LINEAR)
    return extract_image(ex, image), extract_image(ex, warped)


@pytest.fixture(scope="module")
def aliked_pair(build_extractor, astronaut_320):
    """ALIKED features of the astronaut and of a mildly warped copy."""
    return _warped_pair(build_extractor("aliked-n16"), astronaut_320)


@pytest.fixture(scope="module")
def pair_for(build_extractor, astronaut_320, aliked_pair):
    """``pair_for(matcher)``: the warped pair's features of a family the matcher accepts (ALIKED when any)."""
    cache: dict[str, tuple[Features, Features]] = {}

    def get(name: str) -> tuple[Features, Features]:
        accepts = MATCHERS.capabilities(name).accepts
        extractor = next((EXTRACTOR_FOR[f] for f in sorted(accepts) if f in EXTRACTOR_FOR), None)
        if extractor is None:
            return aliked_pair
        if extractor not in cache:
            cache[extractor] = _warped_pair(build_extractor(extractor), astronaut_320)
        return cache[extractor]

    return get


def check_matches(out: Matches, n0: int, n1: int) -> None:
    """The invariants of ``types.Matches`` for a feature matcher given ``n0`` and ``n1`` keypoints."""
    assert isinstance(out, Matches) and (out.num0, out.num1) == (n0, n1)
    assert out.keypoints0 is None and out.keypoints1 is None and not out.dense  # indices into the inputs
    matches, scores = out.matches, out.scores
    m = out.num_matches
    assert matches.shape == (m, 2) and matches.dtype == torch.int64
    assert scores.shape == (m,) and scores.dtype == torch.float32
    assert torch.isfinite(scores).all() and ((scores >= 0) & (scores <= 1)).all()
    assert ((matches[:, 0] >= 0) & (matches[:, 0] < n0) & (matches[:, 1] >= 0) & (matches[:, 1] < n1)).all()
    assert len(torch.unique(matches[:, 0])) == m  # each keypoint of image 0 at most once: matches0 holds them
    m0, s0 = out.matches0(), out.matching_scores0()
    assert m0.shape == (n0,) and m0.dtype == torch.int64 and s0.shape == (n0,)
    assert ((m0 >= -1) & (m0 < n1)).all() and int((m0 >= 0).sum()) == m
    assert torch.equal(m0[matches[:, 0]], matches[:, 1])
    assert torch.equal(s0[matches[:, 0]], scores)
    assert (s0[m0 < 0] == 0).all()
    # the round trip through hloc's layout gives the same matches
    back = Matches.from_matches0(m0, s0, n1)
    order = torch.argsort(matches[:, 0])
    assert torch.equal(back.matches, matches[order]) and torch.equal(back.scores, scores[order])


@pytest.mark.parametrize("name", NAMES)
def test_output_contract(name, build_matcher, pair_for):
    f0, f1 = pair_for(name)
    out = build_matcher(name)(f0, f1)
    check_matches(out, f0.num_keypoints, f1.num_keypoints)
    matches = out.matches.numpy()
    assert len(matches) > 30
    err = np.linalg.norm(warp_points(f0.keypoints.numpy()[matches[:, 0]].astype(np.float64), H_0TO1)
                         - f1.keypoints.numpy()[matches[:, 1]], axis=1)
    assert np.mean(err < 3.0) > 0.8


def _emptied(f: Features) -> Features:
    return replace(f, keypoints=f.keypoints[:0], descriptors=f.descriptors[:0], scores=f.scores[:0])


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("empty", ["feats0", "feats1", "both"])
def test_empty_keypoints(name, empty, build_matcher, pair_for):
    f0, f1 = pair_for(name)
    if empty in ("feats0", "both"):
        f0 = _emptied(f0)
    if empty in ("feats1", "both"):
        f1 = _emptied(f1)
    out = build_matcher(name)(f0, f1)
    check_matches(out, f0.num_keypoints, f1.num_keypoints)
    assert out.num_matches == 0
    assert (out.matches0() == -1).all()


def _broken(f: Features, breakage: str) -> object:
    if breakage == "no_descriptors":  # keypoints without descriptors (a dense matcher's merged file)
        return replace(f, descriptors=torch.zeros(f.num_keypoints, 0))
    if breakage == "other_dim":  # unit descriptors of another dimension than the other image's
        return replace(f, descriptors=torch.nn.functional.normalize(f.descriptors[:, :f.descriptor_dim // 2], dim=1))
    return f.numpy()  # the old dict contract


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("which", ["feats0", "feats1"])
@pytest.mark.parametrize("breakage", ["no_descriptors", "other_dim", "dict"])
def test_bad_inputs_name_the_argument(name, which, breakage, build_matcher, pair_for):
    feats = dict(zip(("feats0", "feats1"), pair_for(name), strict=True))
    feats[which] = _broken(feats[which], breakage)
    with pytest.raises(ValueError, match=which):
        build_matcher(name)(feats["feats0"], feats["feats1"])


@pytest.mark.parametrize(("field", "change"), [("keypoints", lambda f: {"keypoints": torch.zeros(f.num_keypoints, 3)}),
                                               ("descriptors", lambda f: {"descriptors": f.descriptors[:-1]}),
                                               ("scores", lambda f: {"scores": f.scores[:-1]})])
def test_features_with_bad_shapes_cannot_be_made(field, change, aliked_pair):
    f0, _ = aliked_pair
    with pytest.raises(ValueError, match=rf"Features\.{field}: expected"):
        replace(f0, **change(f0))


def test_self_match_is_identity(build_matcher, aliked_pair):
    f0, _ = aliked_pair
    out = build_matcher("nn-mutual")(f0, f0)
    n = f0.num_keypoints
    assert torch.equal(out.matches0(), torch.arange(n))
    assert torch.allclose(out.matching_scores0(), torch.ones(n), atol=1e-5)


# --- nearest neighbour: exact cases on hand-built unit descriptors ---------------------------------


def _unit(deg: float) -> list[float]:
    a = math.radians(deg)
    return [math.cos(a), math.sin(a), 0.0]


def _feats(desc: list[list[float]]) -> Features:
    d = torch.tensor(desc, dtype=torch.float32)
    return Features(torch.zeros(len(d), 2), d, torch.ones(len(d)), (64, 48))


def _nn(f0, f1, **conf) -> list[int]:
    return NearestNeighbor(NNConf(**conf))(f0, f1).matches0().tolist()


def test_mutual_check():
    # both 0 and 1 are nearest to the single descriptor, which is nearest to 0
    f0, f1 = _feats([_unit(0), _unit(20)]), _feats([_unit(5)])
    assert _nn(f0, f1, mutual=True) == [0, -1]
    assert _nn(f0, f1, mutual=False) == [0, 0]


def test_ratio_test_rejects_and_accepts():
    x = _feats([_unit(0)])
    ambiguous = _feats([_unit(50), _unit(60)])  # d1 / d2 = sin(25) / sin(30) = 0.845
    assert _nn(x, ambiguous, ratio_threshold=0.8) == [-1]
    assert _nn(x, ambiguous, ratio_threshold=0.9) == [0]
    distinct = _feats([_unit(60), _unit(30)])  # d1 / d2 = sin(15) / sin(30) = 0.518
    assert _nn(x, distinct, ratio_threshold=0.8) == [1]
    assert _nn(x, distinct, ratio_threshold=0.5) == [-1]


def test_distance_threshold():
    x, y = _feats([_unit(0)]), _feats([_unit(30)])  # L2 distance 2 sin(15) = 0.5176
    assert _nn(x, y, distance_threshold=0.5) == [-1]
    assert _nn(x, y, distance_threshold=0.55) == [0]


def test_scores_are_cosine_mapped():
    x, y = _feats([_unit(0)]), _feats([_unit(60)])
    out = NearestNeighbor(NNConf())(x, y)
    assert out.scores.tolist() == pytest.approx([(1 + math.cos(math.radians(60))) / 2])


def test_registered_ratio_conf():
    assert MATCHERS.conf("nn-ratio").ratio_threshold == 0.8
    assert MATCHERS.conf("nn-mutual").ratio_threshold is None


def test_batched_equals_per_item():
    g = torch.Generator().manual_seed(0)
    d0 = torch.nn.functional.normalize(torch.randn(3, 40, 16, generator=g), dim=-1)
    perm = torch.randperm(50, generator=g)
    d1 = torch.cat([d0, torch.randn(3, 10, 16, generator=g)], 1)[:, perm]
    d1 = torch.nn.functional.normalize(d1 + 0.05 * torch.randn(d1.shape, generator=g), dim=-1)
    for conf in ({}, {"ratio_threshold": 0.9}, {"distance_threshold": 0.7}, {"mutual": False}):
        m, s = nearest_neighbor_match(d0, d1, **conf)
        assert m.shape == (3, 40) and s.shape == (3, 40)
        for b in range(3):
            mb, sb = nearest_neighbor_match(d0[b:b + 1], d1[b:b + 1], **conf)
            assert torch.equal(m[b], mb[0])
            assert torch.allclose(s[b], sb[0])
    m, _ = nearest_neighbor_match(d0, d1)
    inverse = torch.argsort(perm)
    assert (m[m >= 0] == inverse[:40].expand(3, -1)[m >= 0]).all()
    assert (m >= 0).float().mean() > 0.9


def test_batched_shape_errors():
    with pytest.raises(ValueError, match=r"descriptors"):
        nearest_neighbor_match(torch.zeros(2, 5, 8), torch.zeros(3, 5, 8))
    with pytest.raises(ValueError, match=r"descriptors"):
        nearest_neighbor_match(torch.zeros(1, 5, 8), torch.zeros(1, 5, 4))
    with pytest.raises(ValueError, match=r"descriptors"):
        nearest_neighbor_match(torch.zeros(5, 8), torch.zeros(5, 8))
