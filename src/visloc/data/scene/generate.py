"""Write a built-in scene to disk: database and query images, ground-truth poses, cameras, depth.

Two scenes share one layout: :func:`generate_city_scene` (the demo's world: streets of one split of the
procedural city, :mod:`visloc.data.scene.city_scene`) and :func:`generate_scene` (the old single street of
``SceneConf``, kept for tests and benchmarks). Layout of ``out_dir`` (image names are relative to ``out_dir``,
which is the image root)::

    db/0000.png ...              database frames (day), PNG RGB 8 bit
    query/0000.png ...           query frames with their condition applied
    depth/db/0000.npy ...        optional float32 [H, W] depth (z along the optical axis, metres, inf = sky)
    poses_db.txt, poses_query.txt    name qw qx qy qz tx ty tz (cam_from_world, as COLMAP)
    cameras.txt                  name PINHOLE W H fx fy cx cy (COLMAP convention: pixel centre at 0.5)
    conditions_query.txt         name condition (day | night | blur; the city: a ``condition_name``,
                                 e.g. day, night, fog, blur, night+fog)
    scene.yaml                   the resolved SceneConf or CitySceneConf
    generator.yaml               the generator's version (``version.GENERATOR_VERSION``)

Everything is reproducible from the conf's seed; files are written atomically, ``scene.yaml`` last (a folder
without it holds no finished rendering).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np
import yaml

from visloc.conf import conf_to_dict
from visloc.data.scene.conditions import apply_condition
from visloc.data.scene.config import SceneConf
from visloc.data.scene.render import Frame, intrinsics, render
from visloc.data.scene.trajectory import db_poses, query_poses
from visloc.data.scene.version import GENERATOR_RECORD, generator_record
from visloc.data.scene.world import World, build_world
from visloc.io.atomic import atomic_path, atomic_write_text
from visloc.io.poses import Camera, CameraPose, write_cameras, write_poses

if TYPE_CHECKING:
    from visloc.data.scene.city import City
    from visloc.data.scene.city_scene import CitySceneConf

#: redraws of a query pose whose view shows another split before ``generate_city_scene`` gives up
QUERY_TRIES = 50


@dataclass(frozen=True)
class SceneFiles:
    """Paths and names written by :func:`generate_scene`.

    Attributes:
        root: the image root (``out_dir``); image names are relative to it.
        db_names: database image names (``db/0000.png``...).
        query_names: query image names (``query/0000.png``...).
        poses_db: ground-truth database poses file.
        poses_query: ground-truth query poses file.
        cameras: cameras file (every image).
        conditions: ``conditions_query.txt`` (``name condition`` per line).
        conf: ``scene.yaml``.
    """

    root: Path
    db_names: tuple[str, ...]
    query_names: tuple[str, ...]
    poses_db: Path
    poses_query: Path
    cameras: Path
    conditions: Path
    conf: Path


def write_png(path: Path, image: np.ndarray) -> None:
    """Write an RGB image (uint8, or float in [0, 1]) as an 8-bit PNG, atomically."""
    if image.dtype != np.uint8:
        image = np.round(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(image[..., ::-1]))
    if not ok:
        raise ValueError(f"{path}: PNG encoding failed")
    with atomic_path(path) as tmp:
        tmp.write_bytes(buf.tobytes())


def _write_depth(path: Path, depth: np.ndarray) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, depth.astype(np.float32), allow_pickle=False)


def _write_frame(root: Path, name: str, frame: Frame, image: np.ndarray, write_depth: bool) -> None:
    write_png(root / name, image)
    if write_depth:
        _write_depth((root / "depth" / name).with_suffix(".npy"), frame.depth)


def generate_scene(conf: SceneConf, out_dir: str | Path, write_depth: bool = False,
                   world: World | None = None) -> SceneFiles:
    """Render the database and query frames of ``conf`` and write them with their ground truth.

    Args:
        conf: scene configuration (seed, camera, trajectories, conditions).
        out_dir: output folder, created if needed; the image root of the written names.
        write_depth: also write ``depth/<name>.npy`` for every image.
        world: a world already built from ``conf`` (built here when None).

    Returns:
        The written paths and image names.
    """
    root = Path(out_dir)
    world = build_world(conf) if world is None else world
    K = intrinsics(conf.focal, conf.width, conf.height)
    camera = Camera.from_opencv(K, conf.width, conf.height)
    cameras: dict[str, Camera] = {}
    poses_db: dict[str, CameraPose] = {}
    for i, pose in enumerate(db_poses(conf)):
        name = f"db/{i:04d}.png"
        frame = render(world, K, pose)
        _write_frame(root, name, frame, frame.image, write_depth)
        poses_db[name], cameras[name] = pose, camera
    poses_q: dict[str, CameraPose] = {}
    conditions: dict[str, str] = {}
    q_poses, q_conditions = query_poses(conf)
    for i, (pose, condition) in enumerate(zip(q_poses, q_conditions, strict=True)):
        name = f"query/{i:04d}.png"
        frame = render(world, K, pose)
        rng = np.random.default_rng([conf.seed, 3, i])
        _write_frame(root, name, frame, apply_condition(frame.image_float, condition, conf, rng, frame.depth),
                     write_depth)
        poses_q[name], cameras[name], conditions[name] = pose, camera, condition
    return _write_records(root, conf, poses_db, poses_q, cameras, conditions)


def _write_records(root: Path, conf: object, poses_db: dict[str, CameraPose], poses_q: dict[str, CameraPose],
                   cameras: dict[str, Camera], conditions: dict[str, str]) -> SceneFiles:
    """Write the ground truth, the generator record and (last, marking completion) ``scene.yaml``."""
    files = SceneFiles(root, tuple(poses_db), tuple(poses_q), root / "poses_db.txt", root / "poses_query.txt",
                       root / "cameras.txt", root / "conditions_query.txt", root / "scene.yaml")
    write_poses(files.poses_db, poses_db)
    write_poses(files.poses_query, poses_q)
    write_cameras(files.cameras, cameras)
    atomic_write_text(files.conditions, "".join(f"{n} {c}\n" for n, c in conditions.items()))
    atomic_write_text(root / GENERATOR_RECORD, yaml.safe_dump(generator_record(), sort_keys=False))
    atomic_write_text(files.conf, yaml.safe_dump(conf_to_dict(conf), sort_keys=False))  # last: marks completion
    return files


def generate_city_scene(conf: CitySceneConf, out_dir: str | Path, write_depth: bool = False,
                        city: City | None = None) -> SceneFiles:
    """Render the database walk and the queries of ``conf`` in the city and write them with their ground truth.

    A database view that shows another split or one place only (``city_scene.usable_view``) is left out; such
    a query view is drawn again (up to ``QUERY_TRIES`` times, then ``ValueError``). Conditions are applied with
    :func:`~visloc.data.scene.conditions.apply_conditions` and the frame's depth.

    Args:
        conf: the city, the walked streets, the queries.
        out_dir: output folder, created if needed; the image root of the written names.
        write_depth: also write ``depth/<name>.npy`` for every image.
        city: the city already built from ``conf.city`` (built here when None).

    Returns:
        The written paths and image names.
    """
    from visloc.data.scene.city import build_city
    from visloc.data.scene.city_scene import db_views, usable_view
    from visloc.data.scene.condition_conf import condition_name, parse_condition
    from visloc.data.scene.conditions import apply_conditions

    root = Path(out_dir)
    city = build_city(conf.city) if city is None else city
    c = conf.city
    K = intrinsics(c.focal, c.width, c.height)
    camera = Camera.from_opencv(K, c.width, c.height)
    cameras: dict[str, Camera] = {}
    poses_db: dict[str, CameraPose] = {}
    for pose, _ in db_views(city, conf):
        frame = render(city, K, pose)
        if not usable_view(frame.place_id, city, conf):
            continue
        name = f"db/{len(poses_db):04d}.png"
        _write_frame(root, name, frame, frame.image, write_depth)
        poses_db[name], cameras[name] = pose, camera
    poses_q: dict[str, CameraPose] = {}
    conditions: dict[str, str] = {}
    rng = np.random.default_rng([c.seed, 10])
    for i in range(conf.num_queries):
        cond = parse_condition(conf.query_conditions[i % len(conf.query_conditions)])
        pose, frame = _query_frame(city, conf, K, rng)
        name = f"query/{i:04d}.png"
        image = apply_conditions(frame.image_float, cond, np.random.default_rng([c.seed, 11, i]), frame.depth)
        _write_frame(root, name, frame, image, write_depth)
        poses_q[name], cameras[name], conditions[name] = pose, camera, condition_name(cond)
    return _write_records(root, conf, poses_db, poses_q, cameras, conditions)


def _query_frame(city: City, conf: CitySceneConf, K: np.ndarray,
                 rng: np.random.Generator) -> tuple[CameraPose, Frame]:
    """A query pose whose rendered view shows at most ``conf.max_foreign`` of another split, and its frame."""
    from visloc.data.scene.city_scene import query_view, usable_view

    for _ in range(QUERY_TRIES):
        pose, _ = query_view(city, conf, rng)
        frame = render(city, K, pose)
        if usable_view(frame.place_id, city, conf):
            return pose, frame
    raise ValueError(f"CitySceneConf: {QUERY_TRIES} query views in a row showed another split than "
                     f"{conf.split!r} or one place only (max_foreign={conf.max_foreign}, max_place_share="
                     f"{conf.max_place_share}); walk other streets or allow more")


def read_conditions(path: str | Path) -> dict[str, str]:
    """Read ``conditions_query.txt`` into ``{name: condition}``."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: file not found")
    out = {}
    for i, line in enumerate(path.read_text().splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 2:
            raise ValueError(f"{path}:{i}: expected 'name condition', got {line!r}")
        out[fields[0]] = fields[1]
    return out
