"""The procedural city: conf checks, determinism, distinct textures, places and splits, seasons, street views."""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np
import pytest

from visloc.conf import ConfError, load_conf
from visloc.data.scene.city import City, build_city
from visloc.data.scene.city_conf import CityConf
from visloc.data.scene.city_views import (
    foreign_fraction,
    look_at,
    sample_street_pose,
    visible_places,
)
from visloc.data.scene.places import SPLITS, Split
from visloc.data.scene.render import intrinsics, render
from visloc.data.scene.texture_cache import TextureCache, opencv_photo_names, photo, photo_names

#: a small city: 2 x 3 blocks, 64 px images, skimage.data photos only
SMALL = CityConf(num_streets_x=3, num_streets_y=4, block_length_m=40.0, block_depth_m=30.0, px_per_m=8.0,
                 ground_px_per_m=6.0, split=(0.34, 0.33, 0.33), width=64, height=48, focal=50.0, extra_photos=False)


@pytest.fixture(scope="module")
def small() -> City:
    return build_city(SMALL)


def _thumb(city: City, k: int) -> np.ndarray:
    return cv2.resize(city.planes[k].texture, (8, 8), interpolation=cv2.INTER_AREA).astype(np.float32)


def test_same_seed_same_city_other_seed_differs(small: City):
    again = build_city(SMALL)
    assert [dataclasses.astuple(p) for p in again.places] == [dataclasses.astuple(p) for p in small.places]
    assert again.streets == small.streets and again.blocks == small.blocks
    for k in (0, 7, len(small.planes) // 2, len(small.planes) - 1):
        assert again.planes[k].texture.tobytes() == small.planes[k].texture.tobytes()
        np.testing.assert_array_equal(again.planes[k].origin, small.planes[k].origin)
    other = build_city(dataclasses.replace(SMALL, seed=1))
    assert [p.center for p in other.places] != [p.center for p in small.places]
    assert other.planes[0].texture.tobytes() != small.planes[0].texture.tobytes()


def test_facade_textures_are_distinct(small: City):
    facades = [p.id for p in small.places if p.kind == "facade"]
    thumbs = np.stack([_thumb(small, k).ravel() for k in facades])
    d = np.abs(thumbs[:, None] - thumbs[None]).mean(-1)
    d[np.arange(len(facades)), np.arange(len(facades))] = np.inf
    assert d.min() > 1.0  # mean absolute difference of 8x8 thumbnails, uint8 levels


def test_default_city_size():
    city = build_city(CityConf())
    assert len(city.places) >= 500
    assert city.street_length_m >= 2000.0
    assert len(city.planes) == len(city.places)
    assert all(pl.place_id == k for k, pl in enumerate(city.planes))
    assert all(p.id == k for k, p in enumerate(city.places))
    assert len(city.textures) == 0  # nothing made while building


def test_every_place_in_one_split_and_streets_of_a_split_touch_its_blocks(small: City):
    split = small.place_split()
    assert split.dtype == np.int8 and split.shape == (len(small.places),)
    sets = [{p.id for p in small.places_of(s)} for s in SPLITS]
    assert sum(len(s) for s in sets) == len(small.places)
    assert not (sets[0] & sets[1]) and not (sets[0] & sets[2]) and not (sets[1] & sets[2])
    for p in small.places:
        assert p.split == small.blocks[p.block_id].split == SPLITS[split[p.id]]
    for name in SPLITS:
        streets = small.streets_of(name)
        assert streets and small.blocks_of(name)
        assert all(small.blocks[b].split == name for s in streets for b in s.block_ids)


@pytest.mark.parametrize(("field", "value"), [
    ("seed", -1), ("num_streets_x", 0), ("num_streets_y", 1), ("block_length_m", 5.0), ("block_depth_m", 0.0),
    ("street_width_m", (12.0, 8.0)), ("facade_width_m", (0.5, 3.0)), ("facade_height_m", (9.0, 8.0)),
    ("setback_m", -1.0), ("px_per_m", 1.0), ("ground_px_per_m", 0.0), ("ground_piece_m", 1.0),
    ("boards_per_block", -1), ("split", (0.5, 0.5, 0.5)), ("split", (0.98, 0.01, 0.01)), ("width", 31),
    ("height", 16), ("focal", 0.0), ("near_m", 0.0), ("far_m", 0.01), ("eye_height_m", 0.0),
    ("texture_cache_mb", 1.0),
])
def test_bad_conf_field_is_named(field: str, value: object):
    with pytest.raises(ConfError, match=rf"^CityConf\.{field}: "):
        dataclasses.replace(SMALL, **{field: value})


def test_conf_loads_from_a_mapping():
    conf = load_conf(CityConf, {"seed": 3, "split": [0.5, 0.25, 0.25], "street_width_m": [9, 12]})
    assert conf.split == (0.5, 0.25, 0.25) and conf.street_width_m == (9.0, 12.0)


def test_season_swaps_ground_and_board_textures_not_geometry(small: City):
    winter = build_city(SMALL, "winter")
    assert [p.center for p in winter.places] == [p.center for p in small.places]
    for kind in ("ground", "board"):
        k = next(p.id for p in small.places if p.kind == kind)
        assert winter.planes[k].texture.tobytes() != small.planes[k].texture.tobytes()
    k = next(p.id for p in small.places if p.kind == "facade")
    assert winter.planes[k].texture.tobytes() == small.planes[k].texture.tobytes()
    g = next(p.id for p in small.places if p.kind == "ground")
    assert winter.planes[g].texture.mean() > small.planes[g].texture.mean() + 40  # snow
    with pytest.raises(ValueError, match="season"):
        build_city(SMALL, "spring")


def test_street_poses_stand_on_streets_of_the_split_at_eye_height(small: City):
    rng = np.random.default_rng(0)
    for name in SPLITS:
        for _ in range(20):
            pose, sid = sample_street_pose(small, rng, name, height_m=0.3)
            street = small.streets[sid]
            assert street.split == name
            c = -pose.R.T @ pose.t
            assert abs(c[2] - SMALL.eye_height_m) <= 0.3 + 1e-9
            a, b = np.array(street.start), np.array(street.end)
            d = (b - a) / np.linalg.norm(b - a)
            along, across = (c[:2] - a) @ d, (c[:2] - a) @ np.array([-d[1], d[0]])
            assert -1e-9 <= along <= np.linalg.norm(b - a) + 1e-9
            assert abs(across) <= street.width_m / 2
            assert abs(pose.R[0, 2]) < 1e-9  # level roll: the camera x axis is horizontal
    with pytest.raises(ValueError, match="street_id"):
        sample_street_pose(small, rng, "val", street_id=small.streets_of("train")[0].id)


def test_look_at_points_the_optical_axis_at_the_target():
    pose = look_at((1.0, 2.0, 1.5), (11.0, 2.0, 1.5))
    np.testing.assert_allclose(pose.transform(np.array([[11.0, 2.0, 1.5]]))[0], [0, 0, 10], atol=1e-9)
    np.testing.assert_allclose(pose.R[1], [0, 0, -1], atol=1e-12)  # image y points down
    with pytest.raises(ValueError):
        look_at((0, 0, 0), (0, 0, 5))


def test_foreign_fraction_and_visible_places_of_a_constructed_image(small: City):
    split = small.place_split()
    own = int(np.flatnonzero(split == 0)[0])
    foreign = int(np.flatnonzero(split == 2)[0])
    img = np.full((4, 5), -1, np.int32)
    img[0, :] = own  # 5 pixels
    img[1, :3] = foreign  # 3 pixels
    assert foreign_fraction(img, small, "train") == pytest.approx(3 / 8)
    assert foreign_fraction(img, small, "test") == pytest.approx(5 / 8)
    assert foreign_fraction(np.full((2, 2), -1), small, "val") == 0.0
    assert visible_places(img) == {own: 5, foreign: 3}


@pytest.mark.parametrize("split", SPLITS)
def test_street_views_of_a_split_show_only_its_places(small: City, split: Split):
    rng = np.random.default_rng(1)
    K = intrinsics(SMALL.focal, SMALL.width, SMALL.height)
    for _ in range(6):
        pose, _ = sample_street_pose(small, rng, split)
        frame = render(small, K, pose)
        ids = frame.place_id
        np.testing.assert_array_equal(ids, np.where(frame.plane_index >= 0,
                                                    small.plane_place_ids[frame.plane_index], -1))
        assert foreign_fraction(ids, small, split) == 0.0
    assert 0 < len(small.textures) < len(small.planes)


def test_places_face_the_streets_and_landmarks_label_buildings(small: City):
    for p in small.places:
        if p.kind in ("facade", "end", "board"):
            x, y, _ = np.add(p.center, np.multiply(p.normal, SMALL.setback_m + 0.5))
            assert not any(b.bounds[0] < x < b.bounds[2] and b.bounds[1] < y < b.bounds[3] for b in small.blocks)
            assert p.landmark_id >= 0
        else:
            assert p.landmark_id == -1
    groups: dict[int, set[tuple[int, int]]] = {}
    for p in small.places:
        if p.kind == "facade":
            groups.setdefault(p.landmark_id, set()).add((p.block_id, p.street_id))
    assert all(len(g) == 1 for g in groups.values())  # a landmark is one building row's neighbours
    assert len(groups) < sum(p.kind == "facade" for p in small.places)  # some landmarks group facades


def test_city_pickles_without_its_textures(small: City):
    import pickle

    small.planes[0].mips  # noqa: B018  # fill the cache
    again = pickle.loads(pickle.dumps(small))
    assert len(again.textures) == 0
    assert again.planes[0].texture.tobytes() == small.planes[0].texture.tobytes()


def test_opencv_doc_photos_join_when_installed():
    if not opencv_photo_names():
        pytest.skip("opencv-doc is not installed")
    assert set(photo_names(True)) > set(photo_names(False))
    assert photo(opencv_photo_names()[0]).dtype == np.uint8


def test_texture_cache_is_bounded():
    cache = TextureCache(1000)
    for k in range(10):
        cache.get(k, lambda: (np.zeros(300, np.uint8),))
    assert cache.bytes <= 1000 and len(cache) == 3
    assert cache.get(9, lambda: (np.ones(1, np.uint8),))[0].size == 300  # still cached
