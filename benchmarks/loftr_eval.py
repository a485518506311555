"""Held-out accuracy of Coarse LoFTR beside ALIKED + LightGlue and SIFT, time per pair beside it: ONE README table.

Usage: python benchmarks/loftr_eval.py --weights FILE [--pairs-dir /work/data/pairs_test] [--pairs N]
                                       [--rows default xfeat] [--out outputs/loftr_eval] [--cache DIR]
                                       [--quick] [--allow-random]

Rows, in groups chosen by ``--rows`` (default: ``default`` alone), all at ``resize_max`` 640
(``visloc.eval.predictions.Method``; predictions cached as ``visloc eval`` caches them):

- ``default``: ``loftr-coarse`` (torch, ``--weights``), ``loftr-coarse-onnx`` (the same weights exported at
  640x480 when the matcher is built), ``detector-pair`` with its defaults (ALIKED-n16 + LightGlue) and
  ``sift+nn-ratio``;
- ``xfeat``: the XFeat rows of the two-view suites (``configs/benchmarks/two_view.yaml``): ``xfeat+nn-mutual``,
  ``xfeat+lighterglue`` (sparse, XFeat's default 4096 keypoints) and ``xfeat-star`` (XFeat*, the semi-dense image
  matcher, like ``loftr-coarse`` a method without an extractor).
Columns:

- Castle-simu: relative-pose AUC@5/10/20 deg, the 35 pairs 5 frames apart (``pipelines.evaluate.evaluate_pose``,
  the ``castle-step5`` suite of ``benchmarks/eval_all.py``: essential matrix with K, MAGSAC++ at 1 px);
- graf1 -> graf3: corner error of the homography (px, ``evaluate_homography``) and whether it is below 5 px;
- the world's test-split pairs (``visloc data world pairs --split test``; ``--pairs N`` takes N spread evenly
  over the bins) per difficulty bin easy / medium / hard (overlap and rotation angle, docs/world.md section 6):
  relative-pose AUC@5/10/20 deg by the Castle protocol (``eval.protocols.eval_pose_pair``, K of each image) and
  match precision at 8 px (half a 16-px cell) / 3 px. A match's error is the distance from its image-1
  keypoint to where its image-0 keypoint lands through depth and poses (``data.world.pairs_gt.correspondences``,
  occlusion and round-trip checks): ``inf`` (wrong) when that point is not co-visible, not counted when it has
  no ground truth (sky, a plane edge);
- ms/pair: the median over the world pairs of extraction of both images plus matching (640x480, ``--threads``
  torch threads; onnxruntime takes as many). Cached predictions keep the timings of the run that made them,
  and on a busy machine torch's threads wait for each other (10x slower at 2 threads on 2 busy cores): the
  speed reference is ``benchmarks/bench_loftr.py``;
- matches: mean matches per world pair.

Without ``--weights`` (``--allow-random``, implied by ``--quick``) the Coarse LoFTR rows run a random network:
with the match threshold at 0 (mutual nearest neighbours, so that every number exists): the pipeline runs, its
accuracy means nothing. ``--quick``: 3 Castle pairs 37 frames apart, 3 world pairs, all
images at 160 px (the ONNX graph at 160x128), in a temporary folder.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from visloc.data.world.pairs_files import PairInfo, read_info, read_pair
from visloc.data.world.pairs_gt import correspondences
from visloc.eval import protocols
from visloc.eval.predictions import Method, cache_path, predict, read_predictions
from visloc.geometry import metrics
from visloc.io.images import read_image
from visloc.io.poses import read_cameras, read_poses
from visloc.pipelines.evaluate import evaluate_homography, evaluate_pose

PAIRS_DIR = Path("/work/data/pairs_test")
BINS = ("easy", "medium", "hard")
GRAF_OK_PX = 5.0


ROW_GROUPS = ("default", "xfeat")


def methods(weights: str | None, preset: str, resize_max: int, onnx_size: tuple[int, int] | None) -> list[
        tuple[str, Method]]:
    """(row name, method) of the ``default`` rows."""
    # a random network's confidences rarely pass 0.2: threshold 0 keeps its mutual nearest neighbours
    coarse = (f"weights={weights}",) if weights else ("allow_random=true", f"preset={preset}", "match.threshold=0.0")
    onnx = coarse + ((f"size=[{onnx_size[0]}, {onnx_size[1]}]",) if onnx_size else ())
    return [("loftr-coarse (torch)", Method(None, "loftr-coarse", (), coarse, resize_max)),
            ("loftr-coarse-onnx (onnxruntime)", Method(None, "loftr-coarse-onnx", (), onnx, resize_max)),
            ("aliked-n16+lightglue (detector-pair)", Method(None, "detector-pair", (), (), resize_max)),
            ("sift+nn-ratio", Method("sift", "nn-ratio", (), (), resize_max))]


def xfeat_methods(resize_max: int) -> list[tuple[str, Method]]:
    """(row name, method) of the ``xfeat`` rows: sparse XFeat with two matchers, and XFeat* (an image matcher)."""
    return [("xfeat+nn-mutual", Method("xfeat", "nn-mutual", (), (), resize_max)),
            ("xfeat+lighterglue", Method("xfeat", "lighterglue", (), (), resize_max)),
            ("xfeat-star", Method(None, "xfeat-star", (), (), resize_max))]


def selected_methods(groups: Sequence[str], weights: str | None, preset: str, resize_max: int,
                     onnx_size: tuple[int, int] | None) -> list[tuple[str, Method]]:
    """The rows of ``groups`` (names of ``ROW_GROUPS``), in the order given.

    Raises:
        ValueError: a group that is not in ``ROW_GROUPS``, or one given twice.
    """
    unknown = [g for g in groups if g not in ROW_GROUPS]
    if unknown or len(set(groups)) != len(groups) or not groups:
        raise ValueError(f"rows: expected distinct groups among {', '.join(ROW_GROUPS)}, got {list(groups)}")
    rows: list[tuple[str, Method]] = []
    for group in groups:
        rows += methods(weights, preset, resize_max, onnx_size) if group == "default" else xfeat_methods(resize_max)
    return rows


def select_pairs(rows: list[PairInfo], n: int | None) -> list[PairInfo]:
    """``n`` pairs taken in turn from each bin (file order inside a bin), all of them when ``n`` is None."""
    if n is None or n >= len(rows):
        return rows
    by_bin = {b: [r for r in rows if r.bin == b] for b in dict.fromkeys(r.bin for r in rows)}
    out: list[PairInfo] = []
    k = 0
    while len(out) < n:
        for group in by_bin.values():
            if k < len(group) and len(out) < n:
                out.append(group[k])
        k += 1
    return out


def _key(r: PairInfo) -> str:
    return f"{r.name0.replace('/', '-')}/{r.name1.replace('/', '-')}"


def match_errors(k0: np.ndarray, k1: np.ndarray, view0, view1) -> np.ndarray:  # noqa: ANN001
    """Per-match error ``[M]`` px: inf when not co-visible, NaN without ground truth (sky, plane edge)."""
    if not len(k0):
        return np.zeros(0)
    uv1, valid = correspondences(k0, view0, view1)
    err = np.linalg.norm(uv1 - k1, axis=1)
    return np.where(valid, err, np.where(np.isnan(uv1[:, 0]), np.nan, np.inf))


def evaluate_world(method: Method, root: Path, rows: list[PairInfo], cache: Path,
                   ransac_px: float = 1.0) -> dict[str, dict[str, float]]:
    """Per bin (and ``all``): pose AUCs, precision@8px / @3px, matches, time per pair (module docstring)."""
    digest = hashlib.sha1((root / "pairs_info.csv").read_bytes()).hexdigest()[:8]
    path = cache_path(cache, f"world-{root.name}-{digest}", method)
    predict([(_key(r), lambda r=r: (read_image(root / r.name0), read_image(root / r.name1))) for r in rows],
            method, path, "cpu", progress=False)
    cameras, poses = read_cameras(root / "cameras.txt"), read_poses(root / "poses.txt")
    est = protocols.default_estimator("essential", ransac_px)
    results: dict[str, list[protocols.PairResult]] = {}
    for r in rows:
        pred = read_predictions(path, _key(r))
        view0, view1 = read_pair(root, r.name0, r.name1, cameras=cameras, poses=poses)
        k0, k1 = protocols.matched_points(pred)
        errors = match_errors(k0, k1, view0, view1)
        rel = view1.pose * view0.pose.inverse()  # cam1_from_cam0
        values = protocols.eval_pose_pair(pred, view0.K, view1.K, rel.R, rel.t, est, errors)
        values["precision@8px"] = metrics.match_precision(errors, 8.0)
        values["time_pair"] = 2 * values["time_extract"] + values["time_match"]
        results.setdefault(r.bin, []).append(protocols.PairResult(_key(r), values))
    results["all"] = [p for b in list(results) for p in results[b]]
    out = {}
    for b, res in results.items():
        summary = protocols.aggregate(res, "pose_error", (5.0, 10.0, 20.0))
        summary["median_time_pair"] = float(np.median([p.values["time_pair"] for p in res]))
        out[b] = summary
    return out


def evaluate_method(method: Method, root: Path, rows: list[PairInfo], cache: Path, castle_step: int) -> dict:
    """Castle, graf and world summaries of one method."""
    castle = evaluate_pose(method, step=castle_step, cache_dir=cache, progress=False).summary
    graf = evaluate_homography(method, dataset="graf", cache_dir=cache, progress=False).summary
    return {"castle": castle, "graf": graf, "world": evaluate_world(method, root, rows, cache)}


def _f(v: float, digits: int = 3) -> str:
    return "nan" if v is None or not math.isfinite(v) else f"{v:.{digits}f}"


def _aucs(s: dict) -> str:
    return " / ".join(_f(s.get(f"auc@{t}", float("nan"))) for t in (5.0, 10.0, 20.0))


def table(rows: Sequence[tuple[str, dict]]) -> str:
    """The README table: one row per method."""
    head = ["method", "ms/pair", "Castle AUC@5/10/20"]
    head += ["graf corner px", f"graf < {GRAF_OK_PX:g} px"]
    for b in BINS:
        head += [f"{b} AUC@5/10/20", f"{b} P@8/3px"]
    head.append("matches")
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for name, res in rows:
        world, graf_err = res["world"], res["graf"].get("median_corner_error", float("nan"))
        cells = [name, _f(world["all"]["median_time_pair"] * 1000, 1), _aucs(res["castle"]), _f(graf_err, 2),
                 "yes" if graf_err < GRAF_OK_PX else "no"]
        for b in BINS:
            s = world.get(b, {})
            cells += [_aucs(s), f"{_f(s.get('mean_precision@8px', float('nan')))} / "
                                f"{_f(s.get('mean_precision@3px', float('nan')))}"]
        cells.append(_f(world["all"]["mean_num_matches"], 0))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", default=None, help="the loftr-coarse checkpoint (visloc train output)")
    parser.add_argument("--preset", default="s", help="architecture of a random network or of a LoFTR file")
    parser.add_argument("--allow-random", action="store_true", help="no weights: a random network (pipeline only)")
    parser.add_argument("--pairs-dir", type=Path, default=PAIRS_DIR, help="the world's test-split pairs folder")
    parser.add_argument("--pairs", type=int, default=None, help="subsample N world pairs (spread over the bins)")
    parser.add_argument("--out", type=Path, default=None, help="default outputs/loftr_eval (quick: temporary)")
    parser.add_argument("--cache", type=Path, default=None, help="prediction cache (default OUT/cache)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (the time column's)")
    parser.add_argument("--rows", nargs="+", default=["default"], choices=ROW_GROUPS,
                        help="row groups, in table order (module docstring)")
    parser.add_argument("--quick", action="store_true", help="3 + 3 pairs at 160 px, in seconds")
    args = parser.parse_args(argv)
    if len(set(args.rows)) != len(args.rows):
        parser.error(f"--rows: a group given twice: {' '.join(args.rows)}")
    torch.set_num_threads(args.threads)
    if args.weights is None and "default" in args.rows and not (args.allow_random or args.quick):
        parser.error("give --weights FILE (a loftr-coarse checkpoint), or --allow-random for a pipeline check")
    resize, onnx_size, step = (160, (160, 128), 37) if args.quick else (640, None, 5)
    rows = select_pairs(read_info(args.pairs_dir / "pairs_info.csv"), 3 if args.quick else args.pairs)
    with tempfile.TemporaryDirectory(prefix="visloc-loftr-eval-") as tmp:
        out = args.out or (Path(tmp) if args.quick else Path("outputs/loftr_eval"))
        cache = args.cache or out / "cache"
        results = []
        for name, method in selected_methods(args.rows, args.weights, args.preset, resize, onnx_size):
            results.append((name, evaluate_method(method, args.pairs_dir, rows, cache, step)))
            print(name, json.dumps({k: results[-1][1]["world"]["all"].get(k) for k in ("auc@5.0", "mean_num_matches")}),
                  file=sys.stderr, flush=True)
        counts = {b: sum(r.bin == b for r in rows) for b in BINS}
        weights = args.weights or (f"random {args.preset} network (accuracy meaningless)" if "default" in args.rows
                                   else "none (no loftr-coarse row)")
        text = (f"Coarse LoFTR weights: {weights}. World pairs: {args.pairs_dir} ({len(rows)}: "
                + ", ".join(f"{b} {c}" for b, c in counts.items()) + f"); Castle step {step}; resize_max {resize}.\n\n"
                + table(results))
        out.mkdir(parents=True, exist_ok=True)
        (out / "loftr_eval.md").write_text(text + "\n")
        (out / "loftr_eval.json").write_text(json.dumps({"weights": weights, "pairs": len(rows), "bins": counts,
                                                         "results": dict(results)}, indent=1, allow_nan=True))
        print(text)


if __name__ == "__main__":
    main()
