"""``visloc demo``: hierarchical localization end to end on the built-in scene, with nothing to download.

Steps, each the same call a user would make on their own data:

1. render the street scene of ``visloc.data.scene`` (database frames along a walk, query frames with
   viewpoint offsets and day / night / blur conditions, exact poses and intrinsics);
2. ``build_map``: extract the database images, pair them from their known poses, match, triangulate;
3. ``localize_queries``: retrieval, covisibility places, matching, PnP + refinement;
4. ``evaluate_poses``: recall at the thresholds, overall and per query condition, and time per stage;
5. ``plot_map``: a top view of the map points, the database trajectory and the localized queries.

Outputs in ``out``: ``scene/`` (images, ground truth), ``map/`` (the map), ``poses.txt`` and
``poses.log.jsonl`` (localization), ``report.json`` (metrics) and ``map.png`` (the picture). A re-run
reuses the rendered scene when its conf and the generator's version (``generator.yaml``, see
``visloc.data.scene.version``) are unchanged, and resumes extraction and matching.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from visloc.conf import conf_to_dict
from visloc.data.scene import version
from visloc.data.scene.config import SceneConf
from visloc.data.scene.generate import SceneFiles, generate_scene, read_conditions
from visloc.eval.localization import DEFAULT_THRESHOLDS, LocalizationReport, evaluate_poses, read_log, stage_times
from visloc.io.poses import read_poses
from visloc.localization.localize import LocalizerConf
from visloc.pipelines.localize import LocalizeSummary, localize_queries
from visloc.pipelines.map_build import MapSummary, build_map

logger = logging.getLogger(__name__)
#: the demo's localizer: 5 retrieved images (the map has 16 stops x 3 headings) instead of the default 10
DEMO_LOCALIZER = LocalizerConf(num_retrieved=5)


@dataclass
class DemoSummary:
    """What ``run_demo`` did: the map, the localization, the metrics and the wall time of each step."""

    out: Path
    map: MapSummary
    localization: LocalizeSummary
    report: LocalizationReport
    by_condition: dict[str, LocalizationReport]
    picture: Path
    seconds: dict[str, float] = field(default_factory=dict)

    def condition_table(self) -> str:
        """Markdown: recall per query condition (percent) at each threshold."""
        heads = [f"{p:g} m, {r:g}°" for p, r in self.report.thresholds]
        lines = ["| condition | queries | localized | " + " | ".join(heads) + " |", "|---" + "|---:" * (len(heads) + 2)
                 + "|"]
        for cond, rep in self.by_condition.items():
            lines.append(f"| {cond} | {len(rep.names)} | {int(rep.localized.sum())} | "
                         + " | ".join(f"{100 * v:.1f}" for v in rep.recall) + " |")
        return "\n".join(lines)

    def lines(self) -> list[str]:
        """Human-readable summary lines for the CLI."""
        steps = ", ".join(f"{k} {v:.1f} s" for k, v in self.seconds.items())
        return [*self.map.lines(), *self.localization.lines(), "", self.report.markdown(), "",
                self.condition_table(), "", f"time: {steps}", f"picture -> {self.picture}",
                f"report -> {self.out / 'report.json'}"]


def _scene(conf: SceneConf, root: Path) -> SceneFiles:
    """Render the scene unless ``root`` already holds a complete rendering of the same conf and generator."""
    record = root / "scene.yaml"
    if record.is_file():
        try:
            same = yaml.safe_load(record.read_text()) == yaml.safe_load(yaml.safe_dump(conf_to_dict(conf)))
        except yaml.YAMLError:
            same = False
        recorded = version.read_generator_version(root)
        if same and recorded != version.GENERATOR_VERSION:
            logger.info("scene: %s was rendered by generator version %s, this is %d: rendering again", root,
                        recorded, version.GENERATOR_VERSION)
            same = False
        files = _existing(conf, root) if same else None
        if files is not None:
            logger.info("scene: reusing %s", root)
            return files
    return generate_scene(conf, root)


def _existing(conf: SceneConf, root: Path) -> SceneFiles | None:
    """The files of a finished rendering of ``conf`` in ``root``, or None when anything is missing."""
    files = SceneFiles(root, tuple(f"db/{i:04d}.png" for i in range(conf.num_db)),
                       tuple(f"query/{i:04d}.png" for i in range(conf.num_queries)), root / "poses_db.txt",
                       root / "poses_query.txt", root / "cameras.txt", root / "conditions_query.txt",
                       root / "scene.yaml")
    paths = [files.poses_db, files.poses_query, files.cameras, files.conditions]
    paths += [root / n for n in files.db_names + files.query_names]
    return files if all(p.is_file() for p in paths) else None


def _by_condition(gt: Mapping[str, Any], pred: Mapping[str, Any], failed: Sequence[str],
                  conditions: Mapping[str, str], thresholds: Sequence[tuple[float, float]]
                  ) -> dict[str, LocalizationReport]:
    out = {}
    for cond in dict.fromkeys(conditions[n] for n in gt if n in conditions):
        names = [n for n in gt if conditions.get(n) == cond]
        out[cond] = evaluate_poses({n: gt[n] for n in names}, {n: pred[n] for n in names if n in pred},
                                   thresholds, [n for n in failed if n in names])
    return out


def run_demo(out: str | Path = "visloc-demo", *, scene: SceneConf | None = None, extractor: str | None = None,
             extractor_overrides: Mapping[str, Any] | Sequence[str] = (), matcher: str = "lightglue",
             matcher_overrides: Mapping[str, Any] | Sequence[str] = (),
             localizer: LocalizerConf = DEMO_LOCALIZER,
             thresholds: Sequence[tuple[float, float]] = DEFAULT_THRESHOLDS, device: str | None = None,
             progress: bool = True) -> DemoSummary:
    """Render the built-in scene, build its map, localize its queries, score them and draw the map.

    Args:
        out: output folder (layout in the module docstring).
        scene: the scene (default ``SceneConf()``: a 60 m street, 48 database and 21 query frames).
        extractor: local (+ global) extractor of the map and the queries; None: the map's default.
        extractor_overrides: conf overrides of the extractor.
        matcher: matcher name.
        matcher_overrides: conf overrides of the matcher.
        localizer: retrieval depth, places, RANSAC threshold and acceptance of the localizer.
        thresholds: ``(metres, degrees)`` recall thresholds.
        device: torch device; None picks CUDA when available.
        progress: show progress bars.
    """
    out = Path(out)
    scene = SceneConf() if scene is None else scene
    seconds: dict[str, float] = {}
    start = time.perf_counter()
    files = _scene(scene, out / "scene")
    seconds["render"] = time.perf_counter() - start

    start = time.perf_counter()
    map_summary = build_map(files.root, out / "map", poses=files.poses_db, cameras=files.cameras,
                            extractor=extractor, extractor_overrides=extractor_overrides, matcher=matcher,
                            matcher_overrides=matcher_overrides, device=device, progress=progress)
    seconds["map"] = time.perf_counter() - start

    start = time.perf_counter()
    loc = localize_queries(out / "map", files.root, out / "poses.txt", cameras=files.cameras, conf=localizer,
                           image_list=list(files.query_names), log=out / "poses.log.jsonl", device=device,
                           progress=progress)
    seconds["localize"] = time.perf_counter() - start

    gt, pred = read_poses(files.poses_query), read_poses(loc.out)
    records = read_log(loc.log)
    failed = [r["name"] for r in records if not r.get("success", False)]
    report = dataclasses.replace(evaluate_poses(gt, pred, thresholds, failed), timings=stage_times(records))
    report.write(out / "report.json")
    by_condition = _by_condition(gt, pred, failed, read_conditions(files.conditions), thresholds)

    start = time.perf_counter()
    picture = _picture(out, map_summary, gt, pred, failed, report)
    seconds["picture"] = time.perf_counter() - start
    return DemoSummary(out, map_summary, loc, report, by_condition, picture, seconds)


def _picture(out: Path, map_summary: MapSummary, gt: Mapping[str, Any], pred: Mapping[str, Any],
             failed: Sequence[str], report: LocalizationReport) -> Path:
    import pycolmap

    from visloc.viz.map_plot import plot_map

    rec = pycolmap.Reconstruction(str(out / "map" / "sfm"))
    p, r = report.thresholds[0]
    title = (f"visloc demo: {int(report.localized.sum())}/{len(report.names)} queries localized, "
             f"{100 * report.recall[0]:.0f}% within {p:g} m / {r:g}°")
    return plot_map(out / "map.png", points=rec, gt=gt, pred=pred, failed=failed, title=title).path
