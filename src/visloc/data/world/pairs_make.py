"""The work of :func:`visloc.data.world.pairs.generate_pairs`: search, render and write one pair; the index files."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from visloc.data.scene.condition_conf import ConditionConf, condition_name
from visloc.data.scene.render import Frame, intrinsics
from visloc.data.world.base import ItemWriter, WorldJob, finish, job_rng
from visloc.data.world.pairs import KIND, PairsConf, PairsFiles, _Context, as_written, on_street, second_pose
from visloc.data.world.pairs_files import (
    PairInfo,
    depth_name,
    image_names,
    info_from_json,
    info_to_json,
    meta_name,
    write_depth,
    write_info,
)
from visloc.data.world.pairs_gt import View, pair_overlap, rotation_angle_deg
from visloc.io.pairs import read_pairs, write_pairs
from visloc.io.poses import Camera, CameraPose, write_cameras, write_poses

if TYPE_CHECKING:
    from visloc.data.scene.city import City


@dataclass(frozen=True)
class _Found:
    """An accepted candidate pair."""

    frames: tuple[Frame, Frame]
    overlaps: tuple[float, float, float]
    angle_deg: float
    levels: tuple[int, int, int]
    tries: int


def _render(ctx: _Context, city: City, pose: CameraPose) -> Frame | None:
    from visloc.data.world.views import render_clean

    return render_clean(city, pose, ctx.split, K=ctx.K, max_foreign=ctx.conf.max_foreign)


def _first_view(ctx: _Context, rng: np.random.Generator) -> Frame | None:
    from visloc.data.scene.city_views import sample_street_pose

    city = ctx.city()
    pose, _ = sample_street_pose(city, rng, ctx.split)
    return _render(ctx, city, as_written(pose))


def _search(ctx: _Context, rng: np.random.Generator, target: int | None) -> _Found | None:
    """Draw candidates until one is accepted (module docstring of ``pairs``), or None after ``max_tries``."""
    conf = ctx.conf
    frame0: Frame | None = None
    for t in range(conf.max_tries):
        if frame0 is None or t % conf.tries_per_view == 0:
            frame0 = _first_view(ctx, rng)
            if frame0 is None:
                continue
        pose1 = as_written(second_pose(frame0.pose, rng, conf))
        angle = rotation_angle_deg(frame0.pose, pose1)
        if target is not None and conf.levels(conf.max_overlap, angle)[2] > target:
            continue  # the angle alone makes the pair harder than its due level: no need to render it
        if not on_street(ctx.city(), pose1.center, ctx.split, conf.street_margin_m):
            continue
        frame1 = _render(ctx, ctx.city(), pose1)
        if frame1 is None:
            continue
        overlaps = pair_overlap(_view(frame0), _view(frame1), stride=conf.overlap_stride,
                                rel_tol=conf.depth_rel_tol)
        if not conf.min_overlap < overlaps[2] <= conf.max_overlap:
            continue
        levels = conf.levels(overlaps[2], angle)
        if target is not None and levels[2] != target:
            continue
        return _Found((frame0, frame1), overlaps, angle, levels, t + 1)
    return None


def _view(frame: Frame) -> View:
    return View(frame.depth, frame.K, frame.pose, frame.plane_index)


def _image(ctx: _Context, frame: Frame, cond: ConditionConf, rng: np.random.Generator) -> np.ndarray:
    """uint8 RGB of ``frame`` under ``cond`` (rendered again from the city of its season when that differs)."""
    from visloc.data.scene.render import render
    from visloc.data.world.views import condition_image

    if cond.season != ctx.city().season:
        city = ctx.city(cond.season)
        frame = render(city, ctx.K, frame.pose, size=frame.depth.shape[::-1])
    return frame.image if cond.is_identity else condition_image(frame, cond, rng)


def _visible(frame: Frame) -> list[int]:
    from visloc.data.scene.city_views import visible_places

    return sorted(int(p) for p in visible_places(frame.place_id))


def make_pair(ctx: _Context, writer: ItemWriter, index: int) -> None:
    """Search, render and write pair ``index`` (images, depth, then its record); skip it when already done."""
    conf = ctx.conf
    if writer.has(meta_name(index)):
        return
    target = index % conf.num_levels if conf.balance_bins else None
    found = _search(ctx, job_rng(conf.city.seed, KIND, ctx.split, index), target)
    if found is None:
        level = f" of level {conf.level_name(target)}" if target is not None else ""
        writer.skip(meta_name(index), f"no pair{level} in {conf.max_tries} tries (PairsConf.max_tries)")
        return
    pick = job_rng(conf.city.seed, KIND, ctx.split, index, 1)
    conds = (conf.condition(0, int(pick.integers(len(conf.conditions0)))),
             conf.condition(1, int(pick.integers(len(conf.conditions1)))))
    names = image_names(index)
    for k, (name, frame, cond) in enumerate(zip(names, found.frames, conds, strict=True)):
        image = _image(ctx, frame, cond, job_rng(conf.city.seed, KIND, ctx.split, index, 2 + k))
        writer.write_image(name, image, count=False)
        write_depth(writer.path(depth_name(name)), frame)
    f0, f1 = found.frames
    o01, o10, o = found.overlaps
    info = PairInfo(names[0], names[1], o, o01, o10, found.angle_deg, float(np.linalg.norm(f1.pose.center
                    - f0.pose.center)), *found.levels, conf.level_name(found.levels[2]), condition_name(conds[0]),
                    condition_name(conds[1]))
    views = list(zip(names, found.frames, strict=True))
    extra = {"index": index, "tries": found.tries,
             "poses": {n: [*f.pose.qvec.tolist(), *f.pose.t.tolist()] for n, f in views},
             "places": {n: _visible(f) for n, f in views}}
    writer.write_bytes(meta_name(index), info_to_json(info, extra).encode())


def _files(job: WorldJob, writer: ItemWriter, names: tuple[tuple[str, str], ...]) -> PairsFiles:
    root = job.out
    return PairsFiles(root, root / "pairs.txt", root / "pairs_info.csv", root / "cameras.txt", root / "poses.txt",
                      names, writer.summary)


def finish_pairs(job: WorldJob, writer: ItemWriter, *, done: bool) -> PairsFiles:
    """Write the index files from the pair records and the completion record (or read a finished job's names)."""
    if done:
        return _files(job, writer, tuple(read_pairs(job.out / "pairs.txt")))
    conf: PairsConf = job.conf
    c = conf.city
    camera = Camera.from_opencv(intrinsics(c.focal, c.width, c.height), c.width, c.height)
    rows: list[PairInfo] = []
    poses: dict[str, CameraPose] = {}
    for i in range(conf.num_pairs):
        path = writer.path(meta_name(i))
        if not path.is_file():
            continue  # skipped (reported in the summary)
        info, extra = info_from_json(path.read_text())
        rows.append(info)
        for name in (info.name0, info.name1):
            v = extra["poses"][name]
            poses[name] = CameraPose.from_qvec(v[:4], v[4:])
    files = _files(job, writer, tuple((r.name0, r.name1) for r in rows))
    write_cameras(files.cameras, dict.fromkeys(poses, camera))
    write_poses(files.poses, poses)
    write_info(files.info, rows)
    write_pairs(files.pairs, list(files.names))
    levels = Counter(r.bin for r in rows)
    finish(job, writer.summary, {"pairs": len(rows), "bins": dict(sorted(levels.items()))})
    return files
