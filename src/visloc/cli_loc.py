"""``visloc map build`` and ``visloc localize``: hierarchical localization from the command line."""

from pathlib import Path
from typing import Annotated, Optional

import typer

from visloc.cli_common import DeviceOpt, above, at_least, fail, resolve_conf, run

map_app = typer.Typer(help="Build localization maps (features, matches, COLMAP model, retrieval index).",
                      no_args_is_help=True)

OptPath = Annotated[Optional[Path], typer.Option()]
Sets = Optional[list[str]]
SetExtractor = Annotated[Sets, typer.Option(help="Extractor override key=value (repeatable).")]
SetMatcher = Annotated[Sets, typer.Option(help="Matcher override key=value (repeatable).")]
SetRetrieval = Annotated[Sets, typer.Option(help="Retrieval extractor override key=value (repeatable).")]
SetModel = Annotated[Sets, typer.Option(help="Triangulation (with --poses) or SfM conf override key=value.")]
ImagesOpt = Annotated[Path, typer.Option(help="Database image folder (searched recursively).")]
MapOut = Annotated[Path, typer.Option(help="Map folder to write (MAP_DIR).")]
PosesOpt = Annotated[Optional[Path], typer.Option(help="Known poses, 'name qw qx qy qz tx ty tz' (world-to-camera).")]
CamerasOpt = Annotated[Optional[Path], typer.Option(help="Cameras, 'name MODEL WIDTH HEIGHT params...' (COLMAP).")]
ExtractorOpt = Annotated[Optional[str], typer.Option(help="Registered extractor or YAML file (default: the one "
                                                          "recorded in --features, else vlad-aliked).")]
MatcherOpt = Annotated[str, typer.Option(help="Registered matcher or YAML file.")]
RetrievalOpt = Annotated[str, typer.Option(help="Global-descriptor extractor, used when the local one has none.")]
FeaturesOpt = Annotated[Optional[Path], typer.Option(help="Existing local feature file to use (and extend).")]
MatchesOpt = Annotated[Optional[Path], typer.Option(help="Existing match file to use (and extend).")]
NumPairs = Annotated[int, typer.Option(help="Neighbours matched per image (by poses, or by retrieval).")]
VerboseColmap = Annotated[bool, typer.Option(help="Show COLMAP's log.")]
BatchSize = Annotated[int, typer.Option(help="Database images of equal size per extractor call (features equal "
                                             "one-by-one extraction's; benchmarks/bench_batch.py).")]


@map_app.command("build")
def map_build(images: ImagesOpt, out: MapOut, poses: PosesOpt = None, cameras: CamerasOpt = None,
              extractor: ExtractorOpt = None, set_extractor: SetExtractor = None, matcher: MatcherOpt = "lightglue",
              set_matcher: SetMatcher = None, retrieval: RetrievalOpt = "vlad-aliked",
              set_retrieval: SetRetrieval = None, features: FeaturesOpt = None, matches: MatchesOpt = None,
              num_pairs: NumPairs = 10, set_model: SetModel = None, device: DeviceOpt = None,
              verbose_colmap: VerboseColmap = False,
              cell_size: Annotated[float, typer.Option(help="With an image matcher: keypoints closer than this "
                                                            "many pixels merge.")] = 2.0,
              batch_size: BatchSize = 1) -> None:
    """Extract, pair, match and triangulate (with --poses --cameras) or run SfM; resumes."""
    from visloc.conf import apply_overrides, parse_overrides
    from visloc.localization.sfm import SfMConf
    from visloc.localization.triangulation import TriangulationConf
    from visloc.pipelines.map_build import build_map

    at_least({"--num-pairs": num_pairs, "--batch-size": batch_size})
    above({"--cell-size": cell_size})
    ext_name, ext_ov = (None, run(parse_overrides, list(set_extractor or ()))) if extractor is None \
        else resolve_conf(extractor, set_extractor)
    match_name, match_ov = resolve_conf(matcher, set_matcher)
    ret_name, ret_ov = resolve_conf(retrieval, set_retrieval)
    tri = run(apply_overrides, TriangulationConf(), list(set_model or ())) if poses is not None else None
    sfm = run(apply_overrides, SfMConf(), list(set_model or ())) if poses is None else None
    summary = run(build_map, images, out, poses=poses, cameras=cameras, extractor=ext_name, extractor_overrides=ext_ov,
                  matcher=match_name, matcher_overrides=match_ov, retrieval=ret_name, retrieval_overrides=ret_ov,
                  features=features, matches=matches, num_pairs=num_pairs, triangulation=tri, sfm=sfm, device=device,
                  verbose=verbose_colmap, cell_size=cell_size, batch_size=batch_size)
    for line in summary.lines():
        typer.echo(line)


MapOpt = Annotated[Path, typer.Option("--map", help="Map folder written by 'visloc map build'.")]
QueriesOpt = Annotated[Path, typer.Option(help="Query image folder (searched recursively).")]
PosesOut = Annotated[Path, typer.Option(help="Poses file to write, 'name qw qx qy qz tx ty tz'.")]
QueryCameras = Annotated[Optional[Path], typer.Option(help="Query cameras, 'name MODEL WIDTH HEIGHT params...' "
                                                            "(default: the map's camera, else estimate the focal).")]
TopK = Annotated[int, typer.Option("--top-k", "-k", help="Database images retrieved per query.")]
MaxPlaces = Annotated[int, typer.Option(help="Covisibility places tried per query.")]
Covis = Annotated[bool, typer.Option(help="Cluster the retrieved images into places by covisibility.")]
MinInliers = Annotated[int, typer.Option(help="Fewer pose inliers reject a place (then the query fails).")]
MaxError = Annotated[float, typer.Option(help="RANSAC inlier threshold of the absolute pose, pixels.")]
MinRatio = Annotated[float, typer.Option(help="A smaller ratio of pose inliers to 2D-3D matches rejects a place.")]
LogOpt = Annotated[Optional[Path], typer.Option(help="Per-query JSON-lines log (default: OUT with .log.jsonl).")]


def localize(map_dir: MapOpt, queries: QueriesOpt, out: PosesOut, cameras: QueryCameras = None, top_k: TopK = 10,
             max_places: MaxPlaces = 3, covisibility: Covis = True, min_inliers: MinInliers = 30,
             max_error: MaxError = 12.0, min_inlier_ratio: MinRatio = 0.2, log: LogOpt = None,
             device: DeviceOpt = None) -> None:
    """Localize every query image against a map; failed queries get no pose and are listed with a reason."""
    from visloc.localization.localize import LocalizerConf
    from visloc.pipelines.localize import localize_queries

    at_least({"--top-k": top_k, "--max-places": max_places, "--min-inliers": min_inliers})
    above({"--max-error": max_error})
    if not 0 <= min_inlier_ratio <= 1:
        fail(f"--min-inlier-ratio: expected a value in [0, 1], got {min_inlier_ratio}")
    conf = run(LocalizerConf, num_retrieved=top_k, max_places=max_places, covisibility=covisibility,
               min_inliers=min_inliers, max_error=max_error, min_inlier_ratio=min_inlier_ratio)
    summary = run(localize_queries, map_dir, queries, out, cameras=cameras, conf=conf, log=log, device=device)
    for line in summary.lines():
        typer.echo(line)
    if not summary.results and summary.skipped:
        fail("no query image could be read")


DemoOut = Annotated[Path, typer.Option(help="Output folder: scene/, one folder per method (map/, poses.txt, "
                                              "report.json, map.png), report.json.")]
SceneConfOpt = Annotated[Optional[Path], typer.Option(help="Scene conf YAML (visloc.data.scene.CitySceneConf fields; "
                                                           "configs/demo_default.yaml).")]
SetScene = Annotated[Sets, typer.Option(help="Scene override key=value, e.g. num_queries=24, db_spacing_m=10 or "
                                             "city.seed=3 (repeatable).")]
MethodOpt = Annotated[Optional[list[str]], typer.Option("--method", help="EXTRACTOR+MATCHER compared (repeatable; "
                                                                         "default hfnet+nn-mutual and "
                                                                         "sift+nn-ratio); EXTRACTOR+MATCHER@kN "
                                                                         "retrieves N images per query for that "
                                                                         "method (else --top-k); or a known "
                                                                         "variant: xfeat-sub1024, xfeat-sub1536, "
                                                                         "xfeat-sub2048 (vlad-xfeat + LighterGlue, "
                                                                         "N sub-pixel keypoints).")]
DemoExtractor = Annotated[Optional[str], typer.Option(help="One method's extractor (registered or YAML; with "
                                                           "--matcher, instead of --method).")]
DemoMatcher = Annotated[Optional[str], typer.Option(help="One method's matcher (default nn-mutual with --extractor).")]
SetDemoExtractor = Annotated[Sets, typer.Option(help="Override key=value of every method's extractor (repeatable).")]
SetDemoMatcher = Annotated[Sets, typer.Option(help="Override key=value of every method's matcher (repeatable).")]
Thresholds = Annotated[Optional[str], typer.Option(help="Recall thresholds 'metres,degrees;...' "
                                                        "(default 0.25,2;0.5,5;5,10).")]
ThreadsOpt = Annotated[Optional[int], typer.Option(help="torch CPU threads (default torch's, one per core; 1 is "
                                                        "faster on a machine shared with other jobs).")]


def demo(out: DemoOut = Path("visloc-demo"), scene_conf: SceneConfOpt = None, set_scene: SetScene = None,
         method: MethodOpt = None, extractor: DemoExtractor = None, matcher: DemoMatcher = None,
         set_extractor: SetDemoExtractor = None, set_matcher: SetDemoMatcher = None, top_k: TopK = 10,
         thresholds: Thresholds = None, device: DeviceOpt = None, threads: ThreadsOpt = None,
         batch_size: BatchSize = 1) -> None:
    """Render the built-in city, map and localize its day/night/fog/blur queries with each method, print recall."""
    import dataclasses
    import os
    import time

    # before torch loads: idle OpenMP threads sleep instead of spinning; on a CPU shared with other jobs spinning
    # made the demo 5-10x slower (benchmarks/bench_demo.py); an OMP_WAIT_POLICY already set wins
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

    from visloc.conf import parse_overrides
    from visloc.data.scene.city_scene import load_city_scene_conf
    from visloc.eval.localization import DEFAULT_THRESHOLDS, parse_thresholds
    from visloc.pipelines.demo import DEFAULT_METHODS, DEMO_LOCALIZER, DemoMethod, parse_method, run_demo

    start = time.perf_counter()
    if threads is not None:
        if threads < 1:
            fail(f"--threads: expected >= 1, got {threads}")
        import torch

        torch.set_num_threads(threads)
    scene = run(load_city_scene_conf, scene_conf, list(set_scene or ()))
    if (extractor or matcher) and method:
        fail("give --method, or --extractor / --matcher for one method, not both")
    if extractor or matcher:
        ext_name, ext_ov = resolve_conf(extractor or "hfnet", None)
        match_name, match_ov = resolve_conf(matcher or "nn-mutual", None)
        methods = [DemoMethod(ext_name, match_name, ext_ov, match_ov)]
    else:
        methods = [run(parse_method, m) for m in method] if method else list(DEFAULT_METHODS)
    thr = run(parse_thresholds, thresholds) if thresholds is not None else DEFAULT_THRESHOLDS
    at_least({"--top-k": top_k, "--batch-size": batch_size})
    localizer = run(dataclasses.replace, DEMO_LOCALIZER, num_retrieved=top_k)
    summary = run(run_demo, out, scene=scene, methods=methods,
                  extractor_overrides=run(parse_overrides, list(set_extractor or ())),
                  matcher_overrides=run(parse_overrides, list(set_matcher or ())), localizer=localizer,
                  thresholds=thr, device=device, batch_size=batch_size)
    for line in summary.lines():
        typer.echo(line)
    typer.echo(f"demo finished in {time.perf_counter() - start:.0f} s")
