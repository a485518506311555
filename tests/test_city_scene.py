"""The demo's world: database walks and offset queries on one split's streets of the city, written to disk."""

import numpy as np
import pytest

from visloc.conf import ConfError
from visloc.data.scene.city import build_city
from visloc.data.scene.city_conf import CityConf
from visloc.data.scene.city_scene import CitySceneConf, ViewOffsetConf, db_views, query_view, walked_streets
from visloc.data.scene.city_views import foreign_fraction
from visloc.data.scene.generate import generate_city_scene, read_conditions
from visloc.data.scene.render import intrinsics, render
from visloc.io.poses import read_cameras, read_poses
from visloc.pipelines import demo

TINY = CitySceneConf(city=CityConf(width=160, height=120, focal=125.0), streets=(3,), db_spacing_m=45.0,
                     db_yaws_deg=(30.0, -30.0), num_queries=4)


@pytest.fixture(scope="module")
def city():
    return build_city(TINY.city)


def test_default_world_is_the_test_split_of_the_default_city(city):
    conf = CitySceneConf()
    streets = walked_streets(city, conf)
    assert conf.city == CityConf() and conf.split == "test"
    assert len(streets) >= 3 and all(s.split == "test" for s in streets)
    assert len(list(db_views(city, conf))) >= 150  # >= 100 frames once blank and foreign views are left out


def test_db_views_walk_each_street_both_ways_at_eye_height(city):
    views = list(db_views(city, TINY))
    (street,) = walked_streets(city, TINY)
    assert len(views) == 3 * 2 * 2  # 3 stops (45 m apart on ~90 m), both ways, 2 headings
    assert {sid for _, sid in views} == {street.id}
    centers = np.stack([p.center for p, _ in views])
    np.testing.assert_allclose(centers[:, 2], TINY.city.eye_height_m)
    d = np.subtract(street.end, street.start) / np.linalg.norm(np.subtract(street.end, street.start))
    axes = np.stack([p.R[2][:2] for p, _ in views])
    along = axes @ d
    np.testing.assert_allclose(np.abs(along), np.cos(np.radians(30.0)), atol=1e-9)  # 30 deg off the street
    assert (along > 0).sum() == (along < 0).sum() == 6  # both ways


def test_query_views_stay_within_the_offsets(city):
    rng = np.random.default_rng(0)
    (street,) = walked_streets(city, TINY)
    for _ in range(20):
        pose, sid = query_view(city, TINY, rng)
        assert sid == street.id
        c = pose.center
        assert abs(c[2] - TINY.city.eye_height_m) <= TINY.offsets.height_m + 1e-9
        assert abs(c[1] - street.start[1]) <= TINY.offsets.lateral_m + 1e-9  # an east-west street
        pitch = np.degrees(np.arcsin(pose.R[2][2]))  # the optical axis, world z up
        assert abs(pitch) <= TINY.offsets.pitch_deg + 1e-6


def test_generate_city_scene_writes_the_demo_layout(tmp_path, city):
    files = generate_city_scene(TINY, tmp_path / "scene", write_depth=True, city=city)
    assert 1 <= len(files.db_names) <= 12 and len(files.query_names) == 4
    assert read_conditions(files.conditions) == {"query/0000.png": "day", "query/0001.png": "night",
                                                 "query/0002.png": "fog", "query/0003.png": "blur"}
    poses = {**read_poses(files.poses_db), **read_poses(files.poses_query)}
    assert set(read_cameras(files.cameras)) == set(poses) == set(files.db_names + files.query_names)
    assert all((files.root / n).is_file() and (files.root / "depth" / n).with_suffix(".npy").is_file()
               for n in poses)
    K = intrinsics(125.0, 160, 120)
    for name in files.query_names[:2]:  # every written view shows the test split only
        assert foreign_fraction(render(city, K, poses[name]).place_id, city, "test") == 0.0
    again = generate_city_scene(TINY, tmp_path / "again", city=city)
    assert again.db_names == files.db_names
    for name, pose in read_poses(again.poses_query).items():
        np.testing.assert_allclose(pose.t, poses[name].t)


def test_demo_reuses_a_city_scene_of_the_same_conf(tmp_path):
    root = tmp_path / "scene"
    files = demo._scene(TINY, root)
    image = root / files.db_names[0]
    stamp = image.stat().st_mtime_ns
    assert demo._scene(TINY, root).query_names == files.query_names and image.stat().st_mtime_ns == stamp
    (root / files.query_names[-1]).unlink()  # an incomplete folder is rendered again
    demo._scene(TINY, root)
    assert (root / files.query_names[-1]).is_file()


@pytest.mark.parametrize("make, field", [
    (lambda: CitySceneConf(split="dev"), "CitySceneConf.split"),  # type: ignore[arg-type]
    (lambda: CitySceneConf(db_spacing_m=0.5), "CitySceneConf.db_spacing_m"),
    (lambda: CitySceneConf(db_yaws_deg=()), "CitySceneConf.db_yaws_deg"),
    (lambda: CitySceneConf(query_conditions=("day", "smog")), "CitySceneConf.query_conditions"),
    (lambda: CitySceneConf(max_place_share=0.0), "CitySceneConf.max_place_share"),
    (lambda: ViewOffsetConf(yaw_deg=-1.0), "CitySceneConf.offsets.yaw_deg"),
])
def test_bad_conf_names_the_field(make, field):
    with pytest.raises(ConfError, match=field.replace(".", r"\.")):
        make()


def test_a_street_of_another_split_is_refused(city):
    train_street = city.streets_of("train")[0].id
    with pytest.raises(ConfError, match="CitySceneConf.streets"):
        walked_streets(city, CitySceneConf(city=TINY.city, streets=(train_street,)))
