"""Localization parts on constructed scenes: keypoint convention, triangulation, covisibility, pose, CLI."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pycolmap
import pytest
import torch
from typer.testing import CliRunner

from visloc.cli import app
from visloc.io import features_h5, matches_h5
from visloc.io.poses import Camera, CameraPose, read_poses
from visloc.localization import colmap
from visloc.localization.covisibility import covisibility_clusters, pairs_from_poses, reconstruction_observations
from visloc.localization.localize import Localizer, LocalizerConf, QueryResult
from visloc.localization.pair_matching import DensePairs, Query, SparsePairs
from visloc.localization.triangulation import TriangulationConf, sampson_distance, triangulate, verify_with_poses
from visloc.matching.base import ImageMatcher, Matcher
from visloc.pipelines.localize import read_map_record
from visloc.pipelines.map_build import MapError
from visloc.retrieval.index import RetrievalIndex
from visloc.types import Features, Matches

K = np.array([[500.0, 0, 319.5], [0, 500.0, 239.5], [0, 0, 1]])  # OpenCV convention
CAMERA = Camera.from_opencv(K, 640, 480)


def test_keypoint_conversion_is_half_a_pixel_both_ways():
    kpts = np.array([[0.0, 0.0], [639.0, 479.0], [10.25, 3.5]])
    np.testing.assert_array_equal(colmap.to_colmap_keypoints(kpts), kpts + 0.5)
    np.testing.assert_array_equal(colmap.from_colmap_keypoints(colmap.to_colmap_keypoints(kpts)), kpts)
    with pytest.raises(ValueError, match=r"keypoints: expected \[N, 2\], got \[3\]"):
        colmap.to_colmap_keypoints(np.zeros(3))


def _pose(yaw_deg: float, tx: float) -> CameraPose:
    R = pycolmap.Rotation3d(np.array([0.0, np.deg2rad(yaw_deg), 0.0])).matrix()
    return CameraPose(R, np.array([tx, 0.0, 0.0]))


def _project(pose: CameraPose, X: np.ndarray) -> np.ndarray:
    x = pose.transform(X) @ K.T
    return x[:, :2] / x[:, 2:]


class Scene:
    """300 points seen by 4 posed cameras, features and matches written in visloc's files."""

    def __init__(self, tmp: Path, num_outliers: int = 40) -> None:
        rng = np.random.default_rng(0)
        self.X = rng.uniform([-1, -1, 4], [1, 1, 6], (300, 3))
        self.names = [f"im{i}.png" for i in range(4)]
        self.poses = {n: _pose(3.0 * i, -0.3 * i) for i, n in enumerate(self.names)}
        self.features, self.matches = tmp / "feats.h5", tmp / "matches.h5"
        desc = rng.standard_normal((300, 8)).astype(np.float32)
        for n in self.names:
            features_h5.stage_features(self.features, n, {
                "keypoints": _project(self.poses[n], self.X).astype(np.float32), "descriptors": desc,
                "scores": np.ones(300, np.float32), "image_size": np.array([640, 480])})
        features_h5.commit_features(self.features)
        self.pairs = [(a, b) for i, a in enumerate(self.names) for b in self.names[i + 1:]]
        self.num_outliers = num_outliers
        for a, b in self.pairs:
            m0 = np.arange(300)
            y = _project(self.poses[a], self.X)[:, 1]
            wrong = rng.choice(300, num_outliers, replace=False)
            m0[wrong] = np.argmax(np.abs(y[wrong, None] - y[None]), axis=1)  # far from the epipolar line
            matches_h5.stage_matches(self.matches, a, b, m0, np.ones(300))
        matches_h5.commit_matches(self.matches)


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> tuple[Scene, pycolmap.Reconstruction]:
    tmp = tmp_path_factory.mktemp("scene")
    s = Scene(tmp)
    cams = dict.fromkeys(s.names, CAMERA)
    reference = colmap.reference_reconstruction(s.names, s.poses, cams)
    ids = colmap.write_database(tmp / "db.db", reference, s.features)
    raw = colmap.read_pair_matches(s.matches, s.pairs, ids)
    verified = verify_with_poses(reference, s.features, raw, TriangulationConf())
    s.verified = verified  # type: ignore[attr-defined]
    colmap.write_matches(tmp / "db.db", raw, verified)
    rec = triangulate(reference, tmp / "db.db", tmp, tmp / "sfm")
    return s, rec


def test_database_keypoints_are_in_colmap_convention(scene, tmp_path):
    s, _ = scene
    rec = colmap.reference_reconstruction(s.names, s.poses, dict.fromkeys(s.names, CAMERA))
    ids = colmap.write_database(tmp_path / "db.db", rec, s.features)
    with pycolmap.Database.open(tmp_path / "db.db") as db:
        stored = db.read_keypoints(ids["im2.png"])[:, :2]
    np.testing.assert_allclose(stored, _project(s.poses["im2.png"], s.X) + 0.5, atol=1e-4)
    assert rec.num_cameras() == 1  # identical intrinsics share one camera


def test_known_pose_verification_drops_exactly_the_wrong_matches(scene):
    s, _ = scene
    assert len(s.verified) == 6
    for m in s.verified.values():
        assert len(m) == 300 - s.num_outliers
        np.testing.assert_array_equal(m[:, 0], m[:, 1])


def test_sampson_distance_of_a_known_offset():
    E = np.array([[0, 0, 0], [0, 0, -1], [0, 1, 0.0]])  # pure x translation: y0 == y1
    d = sampson_distance(np.array([[0.1, 0.2]]), np.array([[0.3, 0.25]]), E)
    np.testing.assert_allclose(d, [0.05 / np.sqrt(2)], rtol=1e-12)


def test_triangulated_points_match_the_scene(scene):
    s, rec = scene
    assert rec.num_points3D() >= 290  # a few points keep only two-view tracks after verification (ignored)
    xyz = np.array([p.xyz for p in rec.points3D.values()])
    err = np.min(np.linalg.norm(xyz[:, None] - s.X[None], axis=-1), axis=1)
    assert err.max() < 0.02  # metres at 4-6 m depth
    for image in rec.images.values():  # poses stayed fixed
        np.testing.assert_allclose(colmap.pose_from_rigid3d(image.cam_from_world()).t, s.poses[image.name].t,
                                   atol=1e-9)


def test_covisibility_clusters_constructed():
    obs = {1: {1, 2}, 2: {2, 3}, 3: {10}, 4: {10, 11}, 5: {3}, 6: set()}
    assert covisibility_clusters([3, 1, 6, 2, 4, 5], obs) == [[1, 2, 5], [3, 4], [6]]
    assert covisibility_clusters([6, 3, 4], obs) == [[3, 4], [6]]
    assert covisibility_clusters([1, 2, 5], obs, min_shared=2) == [[1], [2], [5]]
    with pytest.raises(ValueError, match="min_shared must be >= 1"):
        covisibility_clusters([1], obs, min_shared=0)


def _constructed_reconstruction() -> pycolmap.Reconstruction:
    """Images 1-2 see points of place A, images 3-5 of place B (5 through 4 only), image 6 nothing."""
    rec = pycolmap.Reconstruction()
    rec.add_camera_with_trivial_rig(CAMERA.to_pycolmap(camera_id=1))
    for i in range(1, 7):
        rec.add_image_with_trivial_frame(pycolmap.Image(name=f"im{i}", keypoints=np.zeros((4, 2)), camera_id=1,
                                                        image_id=i), pycolmap.Rigid3d())
    for images in ((1, 2), (1, 2), (3, 4), (4, 5)):
        track = pycolmap.Track()
        for image_id in images:
            used = sum(p.has_point3D() for p in rec.images[image_id].points2D)
            track.add_element(image_id, used)
        rec.add_point3D(np.zeros(3), track)
    return rec


def test_covisibility_on_a_constructed_reconstruction():
    rec = _constructed_reconstruction()
    obs = reconstruction_observations(rec, [1, 2, 3, 4, 5, 6])
    assert obs[1] == obs[2] and len(obs[1]) == 2 and not obs[3] & obs[5] and obs[6] == frozenset()
    assert covisibility_clusters([5, 1, 3, 6, 2, 4], obs) == [[5, 3, 4], [1, 2], [6]]
    assert covisibility_clusters([5, 3, 1], obs) == [[5], [3], [1]]  # 4 (the link) was not retrieved
    assert covisibility_clusters([1, 2, 3, 4], obs, min_shared=2) == [[1, 2], [3], [4]]


def test_pairs_from_poses():
    poses = {"a": _pose(0, 0.0), "b": _pose(0, -0.1), "c": _pose(0, -0.3), "d": _pose(120, 0.0)}
    assert pairs_from_poses(poses, 1) == [("a", "b"), ("b", "c")]  # d looks away from everyone
    assert pairs_from_poses(poses, 2) == [("a", "b"), ("a", "c"), ("b", "c")]
    assert pairs_from_poses(poses, 2, max_angle=180) == [("a", "b"), ("a", "c"), ("a", "d"), ("b", "c"),
                                                         ("b", "d")]


class _IdentityMatcher(Matcher):
    """Matches keypoint i with keypoint i (the scene's features index the same 3D points)."""

    def __init__(self) -> None:
        super().__init__(None)

    def forward(self, f0: Features, f1: Features) -> Matches:
        n = min(f0.num_keypoints, f1.num_keypoints)
        idx = torch.arange(n)
        return Matches(torch.stack([idx, idx], 1), torch.ones(n), f0.num_keypoints, f1.num_keypoints)


def _index(s: Scene) -> RetrievalIndex:
    return RetrievalIndex.build(s.names, np.eye(4, dtype=np.float32))


def _localizer(s: Scene, rec: pycolmap.Reconstruction, conf: LocalizerConf | None = None) -> Localizer:
    pairs = SparsePairs(lambda n: features_h5.load_features(s.features, n), _IdentityMatcher())
    return Localizer(rec, pairs, _index(s), conf)


def _query(name: str, kpts: np.ndarray, place: int | None, image: np.ndarray | None = None) -> Query:
    n = len(kpts)
    g = None if place is None else np.eye(4, dtype=np.float32)[place]
    desc = torch.nn.functional.normalize(torch.ones(n, 8), dim=1)
    feats = Features(torch.from_numpy(kpts.astype(np.float32)), desc, torch.ones(n), (640, 480))
    return Query(name, feats if g is None else feats.with_global(g), image)


def test_localizer_recovers_a_query_pose(scene):
    s, rec = scene
    truth = _pose(4.5, -0.45)
    res = _localizer(s, rec).localize(_query("q", _project(truth, s.X), 1), CAMERA)
    assert res.ok and res.reason == "" and res.name == "q"
    assert res.retrieved[0] == "im1.png" and res.place == 0 and len(res.places) == 1
    observed = sum(len(colmap.image_points3d(rec, i)[0]) for i in rec.images)  # 2D-3D from each image
    assert res.num_inliers == res.num_matches == observed > 4 * 290
    np.testing.assert_allclose(res.pose.R, truth.R, atol=1e-6)
    np.testing.assert_allclose(res.pose.t, truth.t, atol=1e-5)
    rec_json = res.record()
    assert rec_json["success"] and set(rec_json["timings"]) == {"global", "matching", "pnp"}
    assert json.loads(json.dumps(rec_json))["qvec"] == pytest.approx(truth.qvec.tolist(), abs=1e-6)


def test_localizer_estimates_an_unknown_focal_length(scene):
    s, rec = scene
    truth = _pose(1.5, -0.15)
    guess = colmap.default_camera(640, 480)  # focal 768 instead of 500
    res = _localizer(s, rec).localize(_query("q", _project(truth, s.X), 0), guess, estimate_focal=True)
    assert res.ok and res.camera.model == "SIMPLE_RADIAL"
    assert res.camera.params[0] == pytest.approx(500.0, rel=1e-4)
    np.testing.assert_allclose(res.pose.t, truth.t, atol=1e-4)


def test_localizer_reports_failure_instead_of_a_wrong_pose(scene):
    s, rec = scene
    rng = np.random.default_rng(1)
    kpts = rng.uniform(0, 480, (300, 2))
    res = _localizer(s, rec, LocalizerConf(num_retrieved=2, covisibility=False)).localize(_query("noise", kpts, 0),
                                                                                           CAMERA)
    assert not res.ok and res.pose is None
    assert res.reason.startswith("no place gave an accepted pose (1 tried; best ")
    assert res.num_inliers < 30 and "qvec" not in res.record()
    assert _localizer(s, rec).localize(_query("x", kpts, None), CAMERA).reason == "no global descriptor"


class _SceneImageMatcher(ImageMatcher):
    """An image matcher on the constructed scene: the query's keypoints matched to the database image's
    projections of the same 3D points, 0.3 px off, and ``moved`` of them 6 px off (no map keypoint near).

    The database image is recognised by the value of its first pixel (its index / 10).
    """

    max_batch = 1

    def __init__(self, scene: Scene, query_kpts: np.ndarray, moved: np.ndarray) -> None:
        super().__init__(DenseConf())
        self.scene, self.query_kpts, self.moved = scene, query_kpts, moved

    def forward(self, image0: torch.Tensor, image1: torch.Tensor) -> list[Matches]:
        image0, image1 = self.check_images(image0, image1)
        name = self.scene.names[round(float(image1[0, 0, 0, 0]) * 10)]
        db = _project(self.scene.poses[name], self.scene.X) + 0.3
        db[self.moved] += 6.0
        n = len(db)
        idx = torch.arange(n)
        return [Matches(torch.stack([idx, idx], 1), torch.ones(n), n, n,
                        torch.from_numpy(self.query_kpts.astype(np.float32)), torch.from_numpy(db.astype(np.float32)))]


@dataclass(frozen=True)
class DenseConf:
    resize_max: int | None = None


def test_dense_pairs_assign_database_keypoints_within_max_error(scene):
    s, rec = scene
    truth = _pose(4.5, -0.45)
    kq = _project(truth, s.X)
    moved = np.arange(0, 300, 10)  # 30 matches whose database keypoint is 6 px from any map keypoint

    def db_image(name: str) -> np.ndarray:
        img = np.zeros((480, 640, 3), np.float32)
        img[0, 0] = s.names.index(name) / 10
        return img

    def db_keypoints(name: str) -> np.ndarray:
        return features_h5.load_features(s.features, name).keypoints.numpy()

    matcher = _SceneImageMatcher(s, kq, moved)
    pairs = DensePairs(db_image, db_keypoints, matcher, max_error=2.0)
    query = _query("q", kq, 1, image=np.zeros((480, 640, 3), np.float32))
    kpts, db_idx = pairs(query, "im2.png")
    # brute force: the nearest map keypoint within 2 px of each matched database keypoint
    sent = _project(s.poses["im2.png"], s.X) + 0.3
    sent[moved] += 6.0
    d = np.linalg.norm(sent[:, None] - db_keypoints("im2.png")[None], axis=-1)
    within = d.min(1) < 2.0
    np.testing.assert_array_equal(db_idx, d.argmin(1)[within])
    np.testing.assert_allclose(kpts, kq[within], atol=1e-4)
    keep = np.setdiff1d(np.arange(300), moved)
    # 0.3 px off: the same keypoint, but where two of the scene's projections nearly coincide
    assert within[keep].all() and np.mean(d.argmin(1)[keep] == keep) > 0.97
    assert within[moved].sum() <= 3  # 6 px off: dropped, unless another map keypoint happens to be near
    res = Localizer(rec, pairs, _index(s)).localize(query, CAMERA)
    assert res.ok and res.num_inliers >= 0.95 * res.num_matches
    np.testing.assert_allclose(res.pose.t, truth.t, atol=1e-3)
    with pytest.raises(ValueError, match=r"max_error: expected > 0"):
        DensePairs(db_image, db_keypoints, matcher, max_error=0.0)
    with pytest.raises(ValueError, match=r"q: an image matcher needs the query image"):
        pairs(_query("q", kq, 1), "im2.png")


def test_map_record_errors(tmp_path):
    with pytest.raises(MapError, match="map.json: not found; build the map with 'visloc map build'"):
        read_map_record(tmp_path)
    (tmp_path / "map.json").write_text('{"format": "other"}')
    with pytest.raises(MapError, match="not a visloc map record"):
        read_map_record(tmp_path)


runner = CliRunner()


def test_map_build_flags_reach_the_code(fake_pipeline):
    import visloc.pipelines.map_build as mb

    calls = fake_pipeline(mb, "build_map", lambda a: mb.MapSummary(Path(a["out"]), 3, 3, 10, 2, "triangulation",
                                                                   {"extraction": 1.0}))
    res = runner.invoke(app, ["map", "build", "--images", "db", "--out", "m", "--poses", "p.txt", "--cameras", "c.txt",
                              "--extractor", "sift", "--set-extractor", "max_num_keypoints=99", "--matcher",
                              "nn-ratio", "--set-matcher", "ratio_threshold=0.7", "--retrieval", "vlad-aliked",
                              "--set-retrieval", "num_clusters=8", "--features", "f.h5", "--matches", "m.h5",
                              "--num-pairs", "3", "--set-model", "min_angle=2.5", "--device", "cpu",
                              "--verbose-colmap", "--cell-size", "3.5", "--batch-size", "4"])
    assert res.exit_code == 0, res.output
    assert calls == [{"images": Path("db"), "out": Path("m"), "poses": Path("p.txt"), "cameras": Path("c.txt"),
                      "extractor": "sift", "extractor_overrides": {"max_num_keypoints": 99}, "matcher": "nn-ratio",
                      "matcher_overrides": {"ratio_threshold": 0.7}, "retrieval": "vlad-aliked",
                      "retrieval_overrides": {"num_clusters": 8}, "features": Path("f.h5"), "matches": Path("m.h5"),
                      "num_pairs": 3, "triangulation": TriangulationConf(min_angle=2.5), "sfm": None,
                      "device": "cpu", "progress": True, "verbose": True, "cell_size": 3.5, "batch_size": 4}]
    assert "map (triangulation): 3/3 images, 10 3D points" in res.output


def test_map_build_without_poses_gets_sfm_conf(fake_pipeline):
    import visloc.pipelines.map_build as mb
    from visloc.localization.sfm import SfMConf

    calls = fake_pipeline(mb, "build_map", mb.MapSummary(Path("m"), 2, 2, 1, 1, "sfm"))
    res = runner.invoke(app, ["map", "build", "--images", "db", "--out", "m", "--set-model", "max_error=2",
                              "--set-extractor", "max_num_keypoints=64"])
    assert res.exit_code == 0, res.output
    (a,) = calls
    assert a["extractor"] is None and a["extractor_overrides"] == {"max_num_keypoints": 64}
    assert a["triangulation"] is None and a["sfm"] == SfMConf(max_error=2.0)
    assert (a["poses"], a["cameras"], a["device"], a["verbose"]) == (None, None, None, False)
    bad = runner.invoke(app, ["map", "build", "--images", "db", "--out", "m", "--set-model", "nope=1"])
    assert bad.exit_code == 2 and "nope" in bad.output and len(calls) == 1


def test_localize_flags_reach_the_code(fake_pipeline):
    import visloc.pipelines.localize as lp

    calls = fake_pipeline(lp, "localize_queries", lambda a: lp.LocalizeSummary(Path(a["out"]), Path("log"),
                                                                               [QueryResult("q", reason="why")]))
    res = runner.invoke(app, ["localize", "--map", "M", "--queries", "Q", "--out", "o.txt", "--cameras", "c.txt",
                              "-k", "7", "--max-places", "2", "--no-covisibility", "--min-inliers", "50",
                              "--max-error", "6", "--min-inlier-ratio", "0.3", "--log", "l.jsonl", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    assert calls == [{"map_dir": Path("M"), "queries": Path("Q"), "out": Path("o.txt"), "cameras": Path("c.txt"),
                      "conf": LocalizerConf(num_retrieved=7, max_places=2, covisibility=False, min_inliers=50,
                                            max_error=6.0, min_inlier_ratio=0.3),
                      "image_list": None, "log": Path("l.jsonl"), "device": "cpu", "progress": True}]
    assert "localize: 0/1 queries localized" in res.output and "failed q: why" in res.output
    bad = runner.invoke(app, ["localize", "--map", "M", "--queries", "Q", "--out", "o.txt", "--min-inliers", "0"])
    assert bad.exit_code == 2 and "--min-inliers: expected an integer >= 1, got 0" in bad.output


def test_pose_file_has_localized_queries_only(tmp_path, monkeypatch):
    from visloc.io.poses import write_poses

    results = [QueryResult("a", pose=_pose(1, 0.1)), QueryResult("b", reason="no")]
    write_poses(tmp_path / "p.txt", {r.name: r.pose for r in results if r.pose is not None})
    poses = read_poses(tmp_path / "p.txt")
    assert list(poses) == ["a"]
    np.testing.assert_allclose(poses["a"].R, results[0].pose.R, atol=1e-9)
