"""``visloc demo``: hierarchical localization end to end on the built-in city, two methods side by side.

Steps, each the same call a user would make on their own data:

1. render the demo's world (``visloc.data.scene.city_scene``: the test split of the default city, its six
   street segments walked both ways, about 200 database frames; 48 query frames with viewpoint offsets, a
   quarter each by day, night, fog and motion blur; exact poses and intrinsics);
2. for each method (default: the shipped HF-Net student + mutual nearest neighbours, and SIFT + Lowe's ratio
   with HF-Net's global descriptor for retrieval): ``build_map`` (extract the database images, pair them from
   their known poses, match, triangulate), ``localize_queries`` (retrieval, covisibility places, matching, PnP
   + refinement), ``evaluate_poses`` (recall at the thresholds, overall and per query condition) and
   ``plot_map`` (a top view of the map points and the localized queries);
3. the table: recall per method and query condition.

Outputs in ``out``: ``scene/`` (images, ground truth; the layout of ``visloc.data.scene.generate``), one folder
per method (``hfnet+nn-mutual/``...: ``map/``, ``poses.txt``, ``poses.log.jsonl``, ``report.json``,
``map.png``) and ``report.json`` (every method's recall, overall and per condition, and the times). A re-run
reuses the rendered scene when its conf and the generator's version (``generator.yaml``, see
``visloc.data.scene.version``) are unchanged, and resumes extraction and matching.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from visloc.conf import conf_to_dict
from visloc.data.scene import version
from visloc.data.scene.city_scene import CitySceneConf
from visloc.data.scene.config import SceneConf
from visloc.data.scene.generate import SceneFiles, generate_city_scene, generate_scene, read_conditions
from visloc.errors import InputError
from visloc.eval.localization import DEFAULT_THRESHOLDS, LocalizationReport, evaluate_poses, read_log, stage_times
from visloc.io.atomic import atomic_write_text
from visloc.io.locks import output_lock
from visloc.io.outputs import check_folder_output
from visloc.io.poses import read_poses
from visloc.localization.localize import LocalizerConf
from visloc.pipelines.localize import LocalizeSummary, localize_queries
from visloc.pipelines.map_build import MapSummary, build_map

logger = logging.getLogger(__name__)
#: the demo's localizer: 10 retrieved images, 3 covisibility places tried (the default's)
DEMO_LOCALIZER = LocalizerConf(num_retrieved=10)


@dataclass(frozen=True)
class DemoMethod:
    """One localization method of the demo: local features, matcher, and retrieval when the features have none.

    Attributes:
        extractor: registered local (+ global) extractor, or a YAML conf file.
        matcher: registered feature matcher, or a YAML conf file.
        extractor_overrides: its conf overrides.
        matcher_overrides: its conf overrides.
        retrieval: global-descriptor extractor used when ``extractor`` gives none.
        num_pairs: database neighbours (from the known poses) matched per database image.
        num_retrieved: database images retrieved per query, for this method only (None: the demo localizer's,
            ``--top-k``); the images of the places tried are what a query is matched with, so fewer is faster.
        label: the method's name instead of ``extractor+matcher`` (a known variant with its own settings,
            e.g. ``xfeat-sub1024``), without ``+``.
    """

    extractor: str
    matcher: str
    extractor_overrides: Mapping[str, Any] = field(default_factory=dict)
    matcher_overrides: Mapping[str, Any] = field(default_factory=dict)
    retrieval: str = "hfnet-global"
    num_pairs: int = 5
    num_retrieved: int | None = None
    label: str | None = None

    def __post_init__(self) -> None:
        if self.num_retrieved is not None and self.num_retrieved < 1:
            raise InputError(f"num_retrieved: expected >= 1 (or none), got {self.num_retrieved}")
        if self.label is not None and (not self.label.strip() or any(c in self.label for c in "+@/ ")):
            raise InputError(f"label: expected a name without '+', '@', '/' or spaces, got {self.label!r}")

    @property
    def name(self) -> str:
        """``extractor+matcher`` or ``label`` (YAML files by stem; ``@kN``: own ``num_retrieved``): folder, label."""
        def stem(s: str) -> str:
            return Path(s).stem if s.endswith((".yaml", ".yml")) else s

        top = "" if self.num_retrieved is None else f"@k{self.num_retrieved}"
        return f"{self.label or f'{stem(self.extractor)}+{stem(self.matcher)}'}{top}"

    def localizer(self, default: LocalizerConf) -> LocalizerConf:
        """``default`` with this method's ``num_retrieved``."""
        if self.num_retrieved is None:
            return default
        return dataclasses.replace(default, num_retrieved=self.num_retrieved)


#: the demo's default methods: the shipped HF-Net student (1024 keypoints: a quarter of the matching time of
#: 2048, the same recall on the demo), and SIFT (2048) with HF-Net's global descriptor for retrieval
DEFAULT_METHODS: tuple[DemoMethod, ...] = (
    DemoMethod("hfnet", "nn-mutual", {"max_num_keypoints": 1024}),
    DemoMethod("sift", "nn-ratio", {"max_num_keypoints": 2048}),
)
#: other methods ``--method`` names with their own settings: the project's default pipeline (ALIKED + LightGlue,
#: VLAD of ALIKED retrieving), XFeat (1024 keypoints) + LighterGlue with the same retrieval, and XFeat (1024)
#: retrieving by the VLAD of its own descriptors (``vlad-xfeat``: one network per query) + LighterGlue or mutual NN;
#: ``xfeat-subN``: ``vlad-xfeat`` + LighterGlue with N keypoints refined to sub-pixel (``XFeatConf.subpixel``)
KNOWN_METHODS: tuple[DemoMethod, ...] = (
    *DEFAULT_METHODS,
    DemoMethod("vlad-aliked", "lightglue"),
    DemoMethod("xfeat", "lighterglue", {"max_num_keypoints": 1024}, retrieval="vlad-aliked"),
    DemoMethod("vlad-xfeat", "lighterglue", {"max_num_keypoints": 1024}),
    DemoMethod("vlad-xfeat", "nn-mutual", {"max_num_keypoints": 1024}),
    *(DemoMethod("vlad-xfeat", "lighterglue", {"max_num_keypoints": n, "subpixel": True}, label=f"xfeat-sub{n}")
      for n in (1024, 1536, 2048)),
)


def parse_method(text: str) -> DemoMethod:
    """``"EXTRACTOR+MATCHER[@kN]"`` or a known ``"LABEL[@kN]"`` (``xfeat-sub1024@k3``) as a :class:`DemoMethod`.

    E.g. ``hfnet+nn-mutual``, ``vlad-xfeat+lighterglue@k3``.

    A known method's own settings (:data:`KNOWN_METHODS`: its number of keypoints, its retrieval) come with its
    name; ``@kN`` retrieves ``N`` database images per query for this method (its ``num_retrieved``).
    """
    body, at, top = text.partition("@")
    labelled = next((m for m in KNOWN_METHODS if m.label is not None and m.label == body.strip()), None)
    extractor, sep, matcher = body.partition("+")
    if labelled is None and (not sep or not extractor.strip() or not matcher.strip() or "+" in matcher):
        raise InputError(f"method: expected EXTRACTOR+MATCHER (e.g. hfnet+nn-mutual) or one of "
                         f"{', '.join(m.label for m in KNOWN_METHODS if m.label)}, got {text!r}")
    num_retrieved = None
    if at:
        digits = top.strip()[1:] if top.strip().startswith("k") else ""
        if not digits.isdigit() or int(digits) < 1:
            raise InputError(f"method: expected EXTRACTOR+MATCHER@kN with N >= 1 (e.g. xfeat+nn-mutual@k3), "
                             f"got {text!r}")
        num_retrieved = int(digits)
    method = labelled or DemoMethod(extractor.strip(), matcher.strip())
    known = method if labelled else next((m for m in KNOWN_METHODS if m.name == method.name), method)
    return dataclasses.replace(known, num_retrieved=num_retrieved) if at else known


@dataclass
class MethodResult:
    """One method's map, localization, metrics (overall and per condition), picture and wall time per step."""

    method: DemoMethod
    out: Path
    map: MapSummary
    localization: LocalizeSummary
    report: LocalizationReport
    by_condition: dict[str, LocalizationReport]
    picture: Path
    seconds: dict[str, float] = field(default_factory=dict)

    def lines(self) -> list[str]:
        """Human-readable summary lines: map, localization (failures are in the log), times."""
        loc = self.localization.lines()
        failed = len(self.localization.results) - self.localization.num_localized
        steps = ", ".join(f"{k} {v:.1f} s" for k, v in self.seconds.items())
        return [f"== {self.method.name} ==", *self.map.lines(), *loc[:2],
                *([f"  {failed} failed: reasons in {self.localization.log}"] if failed else []), f"  time: {steps}"]


@dataclass
class DemoSummary:
    """What ``run_demo`` did: the scene, every method's results, and the wall time of each step (seconds)."""

    out: Path
    scene: SceneFiles
    methods: list[MethodResult]
    seconds: dict[str, float] = field(default_factory=dict)

    def condition_table(self) -> str:
        """Markdown: recall (percent) at each threshold per method and query condition, then ``all``."""
        thresholds = self.methods[0].report.thresholds if self.methods else ()
        heads = [f"{p:g} m, {r:g}°" for p, r in thresholds]
        lines = ["| method | condition | queries | localized | " + " | ".join(heads) + " |",
                 "|---|---" + "|---:" * (len(heads) + 2) + "|"]
        for res in self.methods:
            for cond, rep in [*res.by_condition.items(), ("all", res.report)]:
                lines.append(f"| {res.method.name} | {cond} | {len(rep.names)} | {int(rep.localized.sum())} | "
                             + " | ".join(f"{100 * v:.1f}" for v in rep.recall) + " |")
        return "\n".join(lines)

    def lines(self) -> list[str]:
        """Human-readable summary lines for the CLI."""
        steps = ", ".join(f"{k} {v:.1f} s" for k, v in self.seconds.items())
        return [f"scene: {len(self.scene.db_names)} database and {len(self.scene.query_names)} query frames "
                f"-> {self.scene.root}", "", *(line for r in self.methods for line in [*r.lines(), ""]),
                self.condition_table(), "", f"time: {steps}",
                *(f"picture -> {r.picture}" for r in self.methods), f"report -> {self.out / 'report.json'}"]

    def to_json(self) -> dict[str, Any]:
        """JSON-ready: the scene's counts, every method's recall overall and per condition, the times."""
        def brief(rep: LocalizationReport) -> dict[str, Any]:
            return {k: v for k, v in rep.to_json().items() if k != "queries"}

        return {"scene": {"root": str(self.scene.root), "num_db": len(self.scene.db_names),
                          "num_queries": len(self.scene.query_names)},
                "methods": {r.method.name: {"extractor": r.method.extractor, "matcher": r.method.matcher,
                                            "overall": brief(r.report),
                                            "by_condition": {c: brief(v) for c, v in r.by_condition.items()},
                                            "seconds": {k: round(v, 3) for k, v in r.seconds.items()}}
                            for r in self.methods},
                "seconds": {k: round(v, 3) for k, v in self.seconds.items()}}


def _same_record(conf: CitySceneConf | SceneConf, root: Path) -> bool:
    """``root`` holds a rendering of ``conf`` by this generator version (``scene.yaml`` + ``generator.yaml``)."""
    try:
        same = yaml.safe_load((root / "scene.yaml").read_text()) == yaml.safe_load(yaml.safe_dump(conf_to_dict(conf)))
    except (OSError, yaml.YAMLError):
        return False
    recorded = version.read_generator_version(root)
    if same and recorded != version.GENERATOR_VERSION:
        logger.info("scene: %s was rendered by generator version %s, this is %d: rendering again", root, recorded,
                    version.GENERATOR_VERSION)
        return False
    return same


def _scene(conf: CitySceneConf | SceneConf, root: Path) -> SceneFiles:
    """Render the scene unless ``root`` already holds a complete rendering of the same conf and generator."""
    files = _existing(root) if (root / "scene.yaml").is_file() and _same_record(conf, root) else None
    if files is not None:
        logger.info("scene: reusing %s", root)
        return files
    if isinstance(conf, SceneConf):
        return generate_scene(conf, root)
    return generate_city_scene(conf, root)


def _existing(root: Path) -> SceneFiles | None:
    """The files of a finished rendering in ``root`` (names from its poses files), or None when any is missing."""
    poses_db, poses_query = root / "poses_db.txt", root / "poses_query.txt"
    if not (poses_db.is_file() and poses_query.is_file()):
        return None
    files = SceneFiles(root, tuple(read_poses(poses_db)), tuple(read_poses(poses_query)), poses_db, poses_query,
                       root / "cameras.txt", root / "conditions_query.txt", root / "scene.yaml")
    paths = [files.cameras, files.conditions, *(root / n for n in files.db_names + files.query_names)]
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


def run_demo(out: str | Path = "visloc-demo", *, scene: CitySceneConf | SceneConf | None = None,
             methods: Sequence[DemoMethod] = DEFAULT_METHODS, extractor_overrides: Mapping[str, Any] | None = None,
             matcher_overrides: Mapping[str, Any] | None = None, localizer: LocalizerConf = DEMO_LOCALIZER,
             thresholds: Sequence[tuple[float, float]] = DEFAULT_THRESHOLDS, device: str | None = None,
             progress: bool = True, batch_size: int = 1) -> DemoSummary:
    """Render the demo's world, then map, localize, score and draw it with every method.

    Args:
        out: output folder (layout in the module docstring).
        scene: the world (default ``CitySceneConf()``, the test split of the default city); a ``SceneConf``
            renders the old single street instead.
        methods: the methods compared (default :data:`DEFAULT_METHODS`).
        extractor_overrides: conf overrides given to every method's extractor (on top of its own).
        matcher_overrides: conf overrides given to every method's matcher (on top of its own).
        localizer: retrieval depth, places, RANSAC threshold and acceptance of the localizer.
        thresholds: ``(metres, degrees)`` recall thresholds.
        device: torch device; None picks CUDA when available.
        progress: show progress bars.
        batch_size: database images per extractor call (``build_map``'s).
    """
    if not methods:
        raise InputError("methods: give at least one EXTRACTOR+MATCHER")
    names = [m.name for m in methods]
    if len(set(names)) != len(names):
        raise InputError(f"methods: each method once, got {names}")
    out = Path(out)
    scene = CitySceneConf() if scene is None else scene
    check_folder_output(out)  # before rendering: a file in the way was found at the first rendered image
    with output_lock(out):
        start = time.perf_counter()
        files = _scene(scene, out / "scene")
        seconds = {"render": time.perf_counter() - start}
        conditions = read_conditions(files.conditions)
        results = []
        for m in methods:
            m = dataclasses.replace(m, extractor_overrides={**m.extractor_overrides, **(extractor_overrides or {})},
                                    matcher_overrides={**m.matcher_overrides, **(matcher_overrides or {})})
            results.append(_run_method(m, files, out / m.name, conditions, m.localizer(localizer), thresholds,
                                       device, progress, batch_size))
            seconds[m.name] = sum(results[-1].seconds.values())
        summary = DemoSummary(out, files, results, seconds)
        atomic_write_text(out / "report.json", json.dumps(summary.to_json(), indent=2) + "\n")
    return summary


def _run_method(method: DemoMethod, files: SceneFiles, out: Path, conditions: Mapping[str, str],
                localizer: LocalizerConf, thresholds: Sequence[tuple[float, float]], device: str | None,
                progress: bool, batch_size: int = 1) -> MethodResult:
    """Map, localize, score and draw the scene with one method, in ``out``."""
    seconds: dict[str, float] = {}
    start = time.perf_counter()
    map_summary = build_map(files.root, out / "map", poses=files.poses_db, cameras=files.cameras,
                            extractor=method.extractor, extractor_overrides=method.extractor_overrides,
                            matcher=method.matcher, matcher_overrides=method.matcher_overrides,
                            retrieval=method.retrieval, num_pairs=method.num_pairs, device=device, progress=progress,
                            batch_size=batch_size)
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
    by_condition = _by_condition(gt, pred, failed, conditions, thresholds)

    start = time.perf_counter()
    picture = _picture(out, method, map_summary, gt, pred, failed, report)
    seconds["picture"] = time.perf_counter() - start
    return MethodResult(method, out, map_summary, loc, report, by_condition, picture, seconds)


def _picture(out: Path, method: DemoMethod, map_summary: MapSummary, gt: Mapping[str, Any], pred: Mapping[str, Any],
             failed: Sequence[str], report: LocalizationReport) -> Path:
    import pycolmap

    from visloc.viz.map_plot import plot_map

    rec = pycolmap.Reconstruction(str(map_summary.out / "sfm"))
    p, r = report.thresholds[0]
    title = (f"visloc demo, {method.name}: {int(report.localized.sum())}/{len(report.names)} queries localized, "
             f"{100 * report.recall[0]:.0f}% within {p:g} m / {r:g}°")
    return plot_map(out / "map.png", points=rec, gt=gt, pred=pred, failed=failed, title=title).path
