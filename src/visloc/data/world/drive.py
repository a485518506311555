"""The ``drive`` generator: several traversals of one vehicle route through a split, poses at up to 1000 Hz.

Layout of ``out`` (every image name is relative to ``out``, the image root)::

    route.yaml                        the route (streets, nodes, length), the GPS origin, each traversal's
                                      condition, offsets, duration, stops and counts
    <traversal>/frames/<t_us>.png     rendered frames (``t_us`` zero-padded to 10 digits), at ``render_hz``
    <traversal>/poses.csv             every pose at ``pose_hz`` (see :mod:`visloc.data.world.drive_io`)
    <traversal>/frames.txt            ``t_us name`` of each frame written
    <traversal>/cameras.txt, poses.txt    COLMAP-style camera and ``cam_from_world`` of each frame written
    world.yaml                        the completion record (written last)

Rendering every pose at 1000 Hz would be far too slow, so frames are rendered at ``render_hz`` (a frame every
``pose_hz / render_hz`` poses, at the same timestamps) while the poses are written at the full rate: the event
simulator interpolates its own views between them.

The route is a walk through the streets of the split (:mod:`visloc.data.world.route`); each traversal drives
it in its own condition, lateral offset and speed, with its own stops and lane changes
(:mod:`visloc.data.world.trajectory`). A frame that would show a place of another split is not written (it
is listed as skipped in ``world.yaml``); among ``route_tries`` candidate routes the first whose views (two per second
of drive, at a quarter of the resolution, at least 64 px wide) show none is taken, else the one with the fewest.
Deterministic per seed; resumable (finished frames are skipped, the text files are written last).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import yaml

from visloc.conf import ConfError
from visloc.data.scene.places import Split
from visloc.data.scene.render import intrinsics
from visloc.data.world.base import (
    RECORD,
    ItemWriter,
    WorldJob,
    check_frame_budget,
    check_split,
    finish,
    job_rng,
    progress,
    start,
)
from visloc.data.world.drive_conf import DriveConf, TraversalConf
from visloc.data.world.drive_io import poses_csv_text, read_frames_txt
from visloc.data.world.geodesy import GeoOrigin, enu_to_geodetic, geodetic_to_utm
from visloc.data.world.route import Centreline, Route, StreetGraph, centreline, plan_route, street_graph
from visloc.data.world.trajectory import Trajectory, drive, vehicle_path
from visloc.io.jobs import JobSummary
from visloc.io.poses import Camera, CameraPose, write_cameras, write_poses

if TYPE_CHECKING:
    from visloc.data.scene.city import City

KIND = "drive"


@dataclass(frozen=True)
class TraversalPlan:
    """One traversal, planned: its trajectory at ``pose_hz`` and the poses rendered (``render_index`` [F])."""

    conf: TraversalConf
    traj: Trajectory
    stops: tuple[tuple[float, float], ...]
    render_index: np.ndarray

    def frame_name(self, i: int) -> str:
        """Image name of rendered pose ``i`` (an index into the trajectory)."""
        return f"{self.conf.name}/frames/{int(self.traj.t_us[i]):010d}.png"

    def pose(self, i: int) -> CameraPose:
        """``cam_from_world`` of pose ``i``."""
        R = self.traj.R[i]
        return CameraPose(R, -R @ self.traj.cam_center[i])


@dataclass(frozen=True)
class DrivePlan:
    """The route and every traversal.

    ``foreign_views`` counts the frames of the low-resolution check that show another split (their
    full-resolution frames are checked again, and not written when they still do).
    """

    route: Route
    line: Centreline
    traversals: tuple[TraversalPlan, ...]
    foreign_views: int


@dataclass(frozen=True)
class TraversalFiles:
    """The files of one traversal; ``frames``: ``(t_us, name)`` of the frames written."""

    name: str
    poses_csv: Path
    frames_txt: Path
    cameras: Path
    poses: Path
    frames: tuple[tuple[int, str], ...]


@dataclass(frozen=True)
class DriveFiles:
    """What :func:`generate_drive` wrote: the root (the image root), ``route.yaml``, each traversal's files."""

    root: Path
    route: Path
    traversals: tuple[TraversalFiles, ...]
    summary: JobSummary


def origin_of(conf: DriveConf) -> GeoOrigin:
    """The geodetic origin of the world frame."""
    return GeoOrigin(conf.origin_lat_deg, conf.origin_lon_deg, conf.origin_height_m)


def _check_lanes(conf: DriveConf, route: Route) -> None:
    """The home lane of every traversal must fit on every street of the route."""
    v = conf.vehicle
    for i, t in enumerate(conf.traversals):
        home = abs(-v.lane_width_m / 2 + t.lateral_offset_m)
        width = min(route.widths)
        if home > width / 2 - v.curb_margin_m:
            raise ConfError(f"DriveConf.traversals[{i}].lateral_offset_m: the lane centre {home:.2f} m from the "
                            f"centre line leaves less than curb_margin_m on a {width:.1f} m street, "
                            f"got {t.lateral_offset_m}")


def _plan_candidate(conf: DriveConf, graph: StreetGraph, split: Split, r: int) -> DrivePlan:
    route = plan_route(graph, conf.route_length_m, job_rng(conf.city.seed, KIND, split, 0, r))
    _check_lanes(conf, route)
    try:
        line = centreline(route, conf.turn_radius_m)
    except ValueError as e:
        raise ConfError(f"DriveConf.turn_radius_m: {e}, got {conf.turn_radius_m}") from None
    step = conf.pose_hz // conf.render_hz
    plans = []
    for i, t in enumerate(conf.traversals):
        rng = job_rng(conf.city.seed, KIND, split, 1, r, i)
        path = vehicle_path(line, route, conf.vehicle, t.lateral_offset_m, t.speed_scale, rng)
        traj, _ = drive(path, conf.vehicle, t.speed_scale, conf.pose_hz)
        plans.append(TraversalPlan(t, traj, tuple(path.stops), np.arange(0, len(traj.t_us), step)))
    return DrivePlan(route, line, tuple(plans), 0)


def _foreign_views(city: City, plan: DrivePlan, conf: DriveConf, split: Split, limit: int, show: bool) -> int:
    """Frames of ``plan`` (at low resolution) showing another split; stops counting past ``limit``."""
    from visloc.data.scene.city_views import foreign_fraction
    from visloc.data.scene.render import render

    scale = max(0.25, min(1.0, 64 / conf.width))  # a quarter of the resolution, at least 64 px wide
    size = (round(conf.width * scale), round(conf.height * scale))
    K = intrinsics(conf.focal * scale, *size)
    count = 0
    every = max(1, conf.render_hz // 2)  # two views per second of each drive are enough to choose a route
    items = [(tp, int(i)) for tp in plan.traversals for i in tp.render_index[::every]]
    for tp, i in progress(items, total=len(items), desc="drive: checking the route's views", enabled=show):
        frame = render(city, K, tp.pose(i), size=size)
        count += foreign_fraction(frame.place_id, city, split) > 0
        if count > limit:
            break
    return count


def closed_ends(city: City) -> set[tuple[int, int]]:
    """``(street id, 0 | 1)`` of the street starts (0) and ends (1) closed by a wall.

    The walls are the city's ``end`` places that stand across a street (at a split border).
    """
    out = set()
    for p in city.places:
        if p.kind == "end" and p.street_id >= 0:
            st = city.streets[p.street_id]
            c = np.asarray(p.center[:2])
            out.add((st.id, int(np.linalg.norm(c - st.end) < np.linalg.norm(c - st.start))))
    return out


def plan_drive(conf: DriveConf, city: City, split: Split, show: bool = False) -> DrivePlan:
    """The route and traversals of ``conf`` in ``split`` (deterministic per seed; see the module docstring).

    Raises:
        ConfError: the split has no street, a traversal's lane does not fit, the turn radius does not fit, a
            candidate route would write more frames or poses than the budgets (checked before rendering).
    """
    streets = city.streets_of(split)
    if not streets:
        raise ConfError(f"DriveConf.city: the {split} split has no street entirely inside it")
    graph = street_graph(city.streets, {s.id for s in streets}, closed_ends(city))
    best: DrivePlan | None = None
    for r in range(conf.route_tries):
        plan = _plan_candidate(conf, graph, split, r)
        _check_budget(conf, plan)  # before any view is rendered
        limit = best.foreign_views if best is not None else sum(len(t.render_index) for t in plan.traversals)
        n = _foreign_views(city, plan, conf, split, limit, show)
        if best is None or n < best.foreign_views:
            best = DrivePlan(plan.route, plan.line, plan.traversals, n)
        if n == 0:
            break
    if best is None:
        raise ConfError(f"DriveConf.route_tries: must be >= 1, got {conf.route_tries}")
    return best


def _check_budget(conf: DriveConf, plan: DrivePlan) -> None:
    frames = sum(len(t.render_index) for t in plan.traversals)
    check_frame_budget(frames, conf.max_frames, "DriveConf.render_hz")
    poses = sum(len(t.traj.t_us) for t in plan.traversals)
    if poses > conf.max_poses:
        raise ConfError(f"DriveConf.pose_hz: would write {poses} poses, more than max_poses = {conf.max_poses}")


def _render_traversal(conf: DriveConf, tp: TraversalPlan, index: int, cities: dict[str, City], split: Split,
                      writer: ItemWriter, show: bool) -> list[tuple[int, str]]:
    """Render the frames of one traversal (skipping those already written); ``(t_us, name)`` of those on disk."""
    from visloc.data.scene.city import build_city
    from visloc.data.scene.conditions import parse_condition
    from visloc.data.world.views import condition_image, render_clean

    cond = parse_condition(tp.conf.condition)
    if cond.season not in cities:
        cities[cond.season] = build_city(conf.city, season=cond.season)
    city = cities[cond.season]
    K = intrinsics(conf.focal, conf.width, conf.height)
    written = []
    for i in progress(tp.render_index.tolist(), total=len(tp.render_index), desc=f"drive: {tp.conf.name}",
                      enabled=show):
        name, t_us = tp.frame_name(i), int(tp.traj.t_us[i])
        if not writer.has(name):
            frame = render_clean(city, tp.pose(i), split, K=K, size=(conf.width, conf.height))
            if frame is None:
                writer.skip(name, "shows a place of another split")
                continue
            writer.write_image(name, condition_image(frame, cond, job_rng(conf.city.seed, KIND, split, 2, index, i)))
        written.append((t_us, name))
    return written


def _write_traversal(conf: DriveConf, tp: TraversalPlan, frames: list[tuple[int, str]],
                     writer: ItemWriter) -> TraversalFiles:
    """Write the text files of one traversal (after its frames)."""
    name = tp.conf.name
    camera = Camera.from_opencv(intrinsics(conf.focal, conf.width, conf.height), conf.width, conf.height)
    index = {n: i for i, n in ((int(i), tp.frame_name(int(i))) for i in tp.render_index)}
    files = TraversalFiles(name, writer.path(f"{name}/poses.csv"), writer.path(f"{name}/frames.txt"),
                           writer.path(f"{name}/cameras.txt"), writer.path(f"{name}/poses.txt"), tuple(frames))
    write_cameras(files.cameras, {n: camera for _, n in frames})
    write_poses(files.poses, {n: tp.pose(index[n]) for _, n in frames})
    writer.write_text(f"{name}/frames.txt", "# t_us name\n" + "".join(f"{t} {n}\n" for t, n in frames))
    writer.write_text(f"{name}/poses.csv", poses_csv_text(tp.traj, origin_of(conf)))
    return files


def _route_record(conf: DriveConf, plan: DrivePlan, split: Split, frames: list[list[tuple[int, str]]]) -> dict:
    """The contents of ``route.yaml``."""
    from visloc.data.scene.conditions import condition_name, parse_condition

    o = origin_of(conf)
    lat, lon, _ = enu_to_geodetic(np.zeros((1, 3)), o)
    e, n, zone = geodetic_to_utm(lat, lon)
    traversals = []
    for tp, written in zip(plan.traversals, frames, strict=True):
        traversals.append({
            "name": tp.conf.name, "condition": condition_name(parse_condition(tp.conf.condition)),
            "lateral_offset_m": tp.conf.lateral_offset_m, "speed_scale": tp.conf.speed_scale,
            "duration_s": round(float(tp.traj.t_us[-1]) / 1e6, 6), "path_length_m": round(float(tp.traj.s[-1]), 4),
            "max_speed_mps": round(float(tp.traj.speed.max()), 4), "poses": len(tp.traj.t_us),
            "frames": len(written), "frames_skipped": len(tp.render_index) - len(written),
            "stops": [[round(s, 3), d] for s, d in tp.stops]})
    return {
        "split": split, "street_ids": list(plan.route.street_ids),
        "nodes": [[round(float(x), 4), round(float(y), 4)] for x, y in plan.route.nodes],
        "length_m": round(plan.route.length_m, 4), "turn_radius_m": conf.turn_radius_m,
        "pose_hz": conf.pose_hz, "render_hz": conf.render_hz,
        "camera": {"width": conf.width, "height": conf.height, "focal": conf.focal},
        "frame": "ENU metres: x east, y north, z up, ground z = 0; poses cam_from_world, OpenCV camera axes",
        "origin": {"lat_deg": o.lat_deg, "lon_deg": o.lon_deg, "height_m": o.height_m, "ellipsoid": "WGS84",
                   "utm_zone": str(zone[0]), "utm_e": round(float(e[0]), 4), "utm_n": round(float(n[0]), 4)},
        "traversals": traversals}


def _files_on_disk(conf: DriveConf, out: Path, summary: JobSummary) -> DriveFiles:
    trav = []
    for t in conf.traversals:
        d = out / t.name
        frames = tuple(read_frames_txt(d / "frames.txt"))
        trav.append(TraversalFiles(t.name, d / "poses.csv", d / "frames.txt", d / "cameras.txt", d / "poses.txt",
                                   frames))
    summary.already_done = sum(len(t.frames) for t in trav)
    return DriveFiles(out, out / "route.yaml", tuple(trav), summary)


def generate_drive(conf: DriveConf, out: str | Path, *, split: str, progress: bool = True) -> DriveFiles:
    """Generate the drive dataset of ``conf`` for ``split`` into ``out`` (see the module docstring).

    Args:
        conf: the drive's conf (city, route, traversals, rates, camera, budgets, GPS origin).
        out: the dataset folder (resumed when it holds the same job, refused when it holds another).
        split: ``train``, ``val`` or ``test``: the route's streets and every frame belong to it.
        progress: progress bars on stderr.

    Raises:
        ConfError: a conf that cannot make this drive (the field is named): e.g. more frames than
            ``max_frames`` (``DriveConf.render_hz``) or poses than ``max_poses`` (``DriveConf.pose_hz``), checked
            before anything is written.
    """
    from visloc.data.scene.city import build_city

    out = Path(out)
    split_ = check_split(split)
    job = WorldJob(KIND, split_, conf.city.seed, conf, out)
    writer = ItemWriter(out)
    if (out / RECORD).is_file() and start(job):
        return _files_on_disk(conf, out, writer.summary)
    city = build_city(conf.city)
    plan = plan_drive(conf, city, split_, progress)
    start(job)
    cities: dict[str, City] = {city.season: city}
    frames = [_render_traversal(conf, tp, i, cities, split_, writer, progress) for i, tp in enumerate(plan.traversals)]
    files = tuple(_write_traversal(conf, tp, f, writer) for tp, f in zip(plan.traversals, frames, strict=True))
    route = writer.write_text("route.yaml", yaml.safe_dump(_route_record(conf, plan, split_, frames),
                                                           sort_keys=False))
    finish(job, writer.summary, {"route_length_m": round(plan.route.length_m, 4),
                                 "frames": sum(len(f) for f in frames),
                                 "poses": sum(len(t.traj.t_us) for t in plan.traversals)})
    return DriveFiles(out, route, files, writer.summary)
