"""HF-Net students beside their teacher on image pairs of the world's TEST split (Markdown table).

Usage: python benchmarks/hfnet_world_pairs.py [--weights [LABEL=]STUDENT.pt ...] [--pairs 30] [--seed 0]
                                              [--out outputs/hfnet_world_pairs] [--quick]

Pairs (rendered here from the built-in city, ``CityConf(seed, extra_photos=False)``, the distill set's city):
camera 0 stands on a street of the test split (``sample_street_pose``: +-2 m lateral, heading along the
street +-30 deg, pitch +-5 deg); camera 1 is moved 1-4 m in a direction within 30 deg of camera 0's heading
(+-0.3 m in height) and turned by up to 20 deg (pitch +-5 deg). A pair is kept when neither view shows a place
of another split and at least 30 % of camera 0's surface pixels (16-pixel grid) are visible in camera 1.
Two suites of the same pairs: ``day`` (both images summer day) and ``cond`` (image 1 under dusk, night,
fog, rain, winter or night+rain in turn; a winter image is rendered from the winter city).

Ground truth (``scene.flow.map_pixels``, depth and poses, occlusion test): a match's error is the distance
of its keypoint in image 1 to where its keypoint of image 0 lands; ``inf`` (wrong) when that point is
occluded or outside image 1, NaN (not counted) when it is sky. Columns: mean matches, precision@3px, mean
correct matches at 3 px, relative-pose AUC@5/10/20 deg (essential matrix, MAGSAC++ at 1 px, as for
Castle-simu). Methods: every student with mutual-NN matching (``hfnet_student.parse_student`` specs), the
teacher ALIKED-n16 with the same matcher, and ALIKED-n16 + LightGlue for reference. ``--quick``: 2 pairs
at 160x120, the shipped student and the teacher with mutual NN.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from hfnet_student import parse_student  # benchmarks/ is on sys.path

from visloc.data.scene.city import build_city
from visloc.data.scene.city_conf import CityConf
from visloc.data.scene.city_views import heading_pose, sample_street_pose
from visloc.data.scene.conditions import parse_condition
from visloc.data.scene.flow import map_pixels
from visloc.data.scene.render import Frame, intrinsics
from visloc.data.world.views import condition_image, render_clean
from visloc.eval import protocols
from visloc.eval.predictions import Method, predict, read_predictions

CONDITIONS = ("dusk", "night", "fog", "rain", "winter", "night+rain")


@dataclass(frozen=True, eq=False)
class Pair:
    """Two rendered views of the test split; ``image1_cond`` is image 1 under ``condition``."""

    frame0: Frame
    frame1: Frame
    image1_cond: np.ndarray
    condition: str


def _overlap(f0: Frame, f1: Frame) -> float:
    ys, xs = np.mgrid[8:f0.depth.shape[0]:16, 8:f0.depth.shape[1]:16]
    uv = np.stack([xs.ravel(), ys.ravel()], 1).astype(np.float64)
    surface = np.isfinite(f0.depth[uv[:, 1].astype(int), uv[:, 0].astype(int)])
    _, valid = map_pixels(uv, f0.depth, f0.K, f0.pose, f1.K, f1.pose, f1.depth)
    return float(valid[surface].mean()) if surface.any() else 0.0


def make_pairs(seed: int, n: int, size: tuple[int, int], focal: float) -> list[Pair]:
    """``n`` test-split pairs (module docstring), deterministic per ``seed``."""
    conf = CityConf(seed=seed, extra_photos=False)
    cities = {s: build_city(conf, s) for s in ("summer", "winter")}
    city, K = cities["summer"], intrinsics(focal, *size)
    rng = np.random.default_rng([seed, 10, 2])
    pairs: list[Pair] = []
    while len(pairs) < n:
        pose0, _ = sample_street_pose(city, rng, "test", lateral_m=2.0, yaw_deg=30.0, pitch_deg=5.0)
        fwd = pose0.R.T @ np.array([0.0, 0.0, 1.0])
        yaw0 = float(np.degrees(np.arctan2(fwd[1], fwd[0])))
        move = np.radians(yaw0 + rng.uniform(-30, 30))
        c1 = pose0.center + rng.uniform(1.0, 4.0) * np.array([np.cos(move), np.sin(move), 0.0])
        c1[2] = max(0.5, c1[2] + rng.uniform(-0.3, 0.3))
        pose1 = heading_pose(c1, yaw0 + rng.uniform(-20, 20), rng.uniform(-5, 5))
        f0 = render_clean(city, pose0, "test", K=K, size=size)
        f1 = render_clean(city, pose1, "test", K=K, size=size)
        if f0 is None or f1 is None or _overlap(f0, f1) < 0.3:
            continue
        cond = CONDITIONS[len(pairs) % len(CONDITIONS)]
        parsed = parse_condition(cond)
        f1c = f1 if parsed.season == "summer" else render_clean(cities[parsed.season], pose1, "test", K=K, size=size)
        if f1c is None:
            continue
        pairs.append(Pair(f0, f1, condition_image(f1c, parsed, np.random.default_rng([seed, 11, len(pairs)])), cond))
    return pairs


def match_errors(pair: Pair, k0: np.ndarray, k1: np.ndarray) -> np.ndarray:
    """Per-match error [M] in pixels: inf when the point is occluded or leaves image 1, NaN on the sky."""
    f0, f1 = pair.frame0, pair.frame1
    if not len(k0):
        return np.zeros(0)
    uv1, valid = map_pixels(k0, f0.depth, f0.K, f0.pose, f1.K, f1.pose, f1.depth, labels0=f0.plane_index,
                            labels1=f1.plane_index)
    err = np.linalg.norm(uv1 - k1, axis=1)
    return np.where(valid, err, np.where(np.isnan(uv1[:, 0]), np.nan, np.inf))


def evaluate(pairs: list[Pair], suite: str, method: Method, cache: Path, tag: str) -> dict[str, float]:
    """Summary of ``method`` on the ``suite`` (``day`` or ``cond``) images of ``pairs``."""
    keys = {f"{i:03d}a/{i:03d}{'b' if suite == 'day' else 'c'}": p for i, p in enumerate(pairs)}
    path = cache / f"world-{tag}-{suite}" / f"{method.label}-{method.key()}.h5"
    path.parent.mkdir(parents=True, exist_ok=True)
    predict([(k, lambda p=p: (p.frame0.image_float, p.frame1.image_float if suite == "day" else
                              p.image1_cond.astype(np.float32) / 255.0)) for k, p in keys.items()],
            method, path, "cpu", progress=False)
    est = protocols.default_estimator("essential", 1.0)
    results = []
    for key, pair in keys.items():
        pred = read_predictions(path, key)
        k0, k1 = protocols.matched_points(pred)
        errors = match_errors(pair, k0, k1)
        rel = pair.frame1.pose * pair.frame0.pose.inverse()  # cam1_from_cam0
        values = protocols.eval_pose_pair(pred, pair.frame0.K, pair.frame1.K, rel.R, rel.t, est, errors)
        values["correct@3px"] = float(np.sum(errors < 3.0))
        results.append(protocols.PairResult(key, values))
    return protocols.aggregate(results, "pose_error", (5.0, 10.0, 20.0))


def methods(specs: list[str] | None, quick: bool) -> list[tuple[str, Method]]:
    """(row name, method): each student with mutual NN, the teacher, and (not quick) ALIKED + LightGlue."""
    rows = []
    for label, path in map(parse_student, specs or ["default"]):
        name = f"hfnet-{label}+nn-mutual" if label else "hfnet+nn-mutual"
        rows.append((name, Method("hfnet", "nn-mutual", (f"weights={path}",) if path else (), resize_max=None)))
    rows.append(("aliked-n16+nn-mutual", Method("aliked-n16", "nn-mutual", resize_max=None)))
    if not quick:
        rows.append(("aliked-n16+lightglue", Method("aliked-n16", "lightglue", resize_max=None)))
    return rows


def table(rows: list[tuple[str, str, dict[str, float]]]) -> str:
    head = "| suite | method | matches | precision@3px | correct@3px | AUC@5 | AUC@10 | AUC@20 |"
    lines = [head, "|---|---|---:|---:|---:|---:|---:|---:|"]
    for suite, name, s in rows:
        lines.append(f"| {suite} | {name} | {s['mean_num_matches']:.0f} | {s['mean_precision@3px']:.3f} | "
                     f"{s['mean_correct@3px']:.0f} | {s['auc@5.0']:.3f} | {s['auc@10.0']:.3f} | {s['auc@20.0']:.3f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", action="append", default=None, help="[LABEL=]student checkpoint, repeatable")
    parser.add_argument("--pairs", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0, help="the world seed (the distill set's: 0)")
    parser.add_argument("--out", type=Path, default=None, help="default outputs/hfnet_world_pairs (quick: temporary)")
    parser.add_argument("--quick", action="store_true", help="2 pairs at 160x120, two methods")
    args = parser.parse_args()
    n, size, focal = (2, (160, 120), 125.0) if args.quick else (args.pairs, (640, 480), 500.0)
    pairs = make_pairs(args.seed, n, size, focal)
    tag = f"seed{args.seed}-n{n}-{size[0]}"
    with tempfile.TemporaryDirectory(prefix="visloc-world-pairs-") as tmp:
        out = args.out or (Path(tmp) if args.quick else Path("outputs/hfnet_world_pairs"))
        rows = []
        for suite in ("day", "cond"):
            for name, method in methods(args.weights, args.quick):
                summary = evaluate(pairs, suite, method, out / "cache", tag)
                rows.append((suite, name, summary))
                print(suite, name, json.dumps({k: summary[k] for k in ("mean_num_matches", "mean_precision@3px",
                                                                       "auc@5.0")}), file=sys.stderr, flush=True)
        (out / f"summary-{tag}.json").write_text(json.dumps([{"suite": s, "method": m, **v} for s, m, v in rows],
                                                            indent=1))
        print(table(rows))


if __name__ == "__main__":
    main()
