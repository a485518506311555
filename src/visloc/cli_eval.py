"""``visloc eval ...`` and ``visloc bench``: commands of the evaluation and benchmark pipelines."""

from pathlib import Path
from typing import Annotated, Optional

import typer

from visloc.cli_common import DeviceOpt, SetOpt, SetRerankMatcher, above, at_least, fail, rerank_conf, run

eval_app = typer.Typer(help="Evaluate a pipeline on real ground truth (two stages: cache, then metrics).",
                       no_args_is_help=True)


def _method(extractor: str, matcher: str, set_extractor: Optional[list[str]], set_matcher: Optional[list[str]],
            resize_max: int):  # noqa: ANN202
    from visloc.eval.predictions import Method
    from visloc.registry import MATCHERS

    at_least({"--resize-max": resize_max}, 0)
    image_matcher = run(MATCHERS.kind_of, matcher) == "image"  # takes images: no extractor slot
    return Method(None if image_matcher else extractor, matcher, tuple(set_extractor or ()),
                  tuple(set_matcher or ()), resize_max if resize_max > 0 else None)


Extr = Annotated[str, typer.Option(help="Registered extractor.")]
Match = Annotated[str, typer.Option(help="Registered matcher.")]
SetE = Annotated[Optional[list[str]], typer.Option(help="Extractor override key=value.")]
SetM = Annotated[Optional[list[str]], typer.Option(help="Matcher override key=value.")]
Resize = Annotated[int, typer.Option(help="Longest image edge for extraction (0: original size).")]
Out = Annotated[Optional[Path], typer.Option(help="Write the JSON report here.")]
Cache = Annotated[Optional[Path], typer.Option(help="Prediction cache (default $VISLOC_CACHE or ~/.cache/visloc).")]
Thr = Annotated[Optional[float], typer.Option(help="RANSAC inlier threshold in pixels.")]


def _check_report(ctx: typer.Context, out: Optional[Path]) -> None:
    """Before any work: a --out that exists is a text file (a JSON report), in a writable folder.

    The command then holds the report's writer lock (``io.locks``) until it ends (click's context closes it):
    a second job writing the same report fails at once.
    """
    if out is not None:
        from visloc.io.locks import output_lock
        from visloc.io.outputs import check_text_output

        run(check_text_output, out, "JSON report")
        run(ctx.with_resource, output_lock(out))


def _finish(report, columns, out: Optional[Path]) -> None:  # noqa: ANN001
    """Print the table and write the JSON report."""
    from visloc.pipelines.evaluate import format_table

    typer.echo(f"{report.protocol} on {report.dataset} ({report.summary['num_pairs']} pairs)")
    typer.echo(format_table([report], columns))
    if out is not None:
        report.write(out)
        typer.echo(f"report -> {out}")

@eval_app.command("homography")
def eval_homography(ctx: typer.Context,
                    dataset: Annotated[str, typer.Option(help="synthetic (built in) or graf (opencv-doc).")]
                    = "synthetic", extractor: Extr = "aliked-n16", matcher: Match = "lightglue",
                    set_extractor: SetE = None, set_matcher: SetM = None, resize_max: Resize = 640,
                    threshold: Thr = None, seed: Annotated[int, typer.Option(help="Synthetic pairs seed.")] = 0,
                    cache: Cache = None, out: Out = None, device: DeviceOpt = None) -> None:
    """Homography accuracy: corner-error AUC at 1/3/5 px, precision at 3 px."""
    _check_report(ctx, out)
    from visloc.pipelines.evaluate import HOMOGRAPHY_COLUMNS, evaluate_homography

    if dataset not in ("synthetic", "graf"):
        fail(f"--dataset: {dataset!r} is not one of synthetic, graf")
    above({"--threshold": threshold})
    method = _method(extractor, matcher, set_extractor, set_matcher, resize_max)
    report = run(evaluate_homography, method, dataset=dataset,
                 threshold=threshold if threshold is not None else 3.0, cache_dir=cache, device=device, seed=seed)
    _finish(report, HOMOGRAPHY_COLUMNS, out)

@eval_app.command("pose")
def eval_pose(ctx: typer.Context,
              extractor: Extr = "aliked-n16", matcher: Match = "lightglue", set_extractor: SetE = None,
              set_matcher: SetM = None, resize_max: Resize = 640,
              step: Annotated[int, typer.Option(help="Frames between the two images of a pair.")] = 5,
              threshold: Thr = None, cache: Cache = None, out: Out = None, device: DeviceOpt = None) -> None:
    """Relative pose on ViSP Castle-simu: AUC at 5/10/20 degrees (visp-images-data)."""
    _check_report(ctx, out)
    from visloc.pipelines.evaluate import POSE_COLUMNS, evaluate_pose

    above({"--threshold": threshold})
    at_least({"--step": step})
    method = _method(extractor, matcher, set_extractor, set_matcher, resize_max)
    report = run(evaluate_pose, method, dataset="castle", step=step,
                 threshold=threshold if threshold is not None else 1.0, cache_dir=cache, device=device)
    _finish(report, POSE_COLUMNS, out)

@eval_app.command("stereo")
def eval_stereo(ctx: typer.Context,
                extractor: Extr = "aliked-n16", matcher: Match = "lightglue", set_extractor: SetE = None,
                set_matcher: SetM = None, resize_max: Resize = 640, cache: Cache = None,
                out: Out = None, device: DeviceOpt = None) -> None:
    """Stereo end-point error on skimage's Middlebury motorcycle pair."""
    _check_report(ctx, out)
    from visloc.pipelines.evaluate import STEREO_COLUMNS, evaluate_stereo

    method = _method(extractor, matcher, set_extractor, set_matcher, resize_max)
    _finish(run(evaluate_stereo, method, cache_dir=cache, device=device), STEREO_COLUMNS, out)

def bench(ctx: typer.Context,
          extractors: Annotated[Optional[list[str]], typer.Option("--extractor", help="Extractors to time.")] = None,
          matchers: Annotated[Optional[list[str]], typer.Option("--matcher", help="name:extractor to time, "
                                                                 "e.g. lightglue:aliked-n16.")] = None,
          threads: Annotated[int, typer.Option(help="torch CPU threads.")] = 2,
          runs: Annotated[int, typer.Option(help="Timed runs (median reported).")] = 10,
          warmup: Annotated[int, typer.Option(help="Untimed warm-up runs.")] = 2,
          width: Annotated[int, typer.Option(help="Image width.")] = 640,
          height: Annotated[int, typer.Option(help="Image height.")] = 480,
          out: Out = None) -> None:
    """Time extraction per image and matching per pair (median of N after warm-up), peak memory."""
    import json

    from visloc.io.atomic import atomic_write_text
    from visloc.pipelines.bench import check_bench_args, format_results, machine_line, results_json, run_one

    run(check_bench_args, threads, runs, warmup, (width, height))
    _check_report(ctx, out)
    extractors = extractors or ["sift", "orb", "aliked-n16", "disk"]
    matchers = matchers or ["nn-ratio:sift", "nn-mutual:orb", "lightglue:aliked-n16", "lightglue:disk"]
    results = []
    for name in extractors:
        results.append(run(run_one, "extract", name, extractor=name, size=(width, height), threads=threads,
                           warmup=warmup, runs=runs))
        typer.echo(f"extract {name}: {results[-1].median_ms:.1f} ms")
    for spec in matchers:
        name, _, extractor = spec.partition(":")
        results.append(run(run_one, "match", name, extractor=extractor or "aliked-n16", size=(width, height),
                           threads=threads, warmup=warmup, runs=runs))
        typer.echo(f"match {spec}: {results[-1].median_ms:.1f} ms")
    typer.echo(machine_line(threads))
    typer.echo(format_results(results))
    if out is not None:
        atomic_write_text(out, json.dumps({"machine": machine_line(threads), "results": results_json(results)},
                                          indent=1))
        typer.echo(f"results -> {out}")


GndOpt = Annotated[Optional[Path], typer.Option(help="gnd_roxford5k.pkl / gnd_rparis6k.pkl (or original "
                                                     "gnd_oxford5k.pkl), with --ranks, --scores or --index.")]
RanksOpt = Annotated[Optional[Path], typer.Option(help="ranks.npy (n_ranked, nq): database indices, best first, "
                                                       "one column per query (revisitop layout).")]
ScoresOpt = Annotated[Optional[Path], typer.Option(help="Or scores.npy (nq, db) similarities "
                                                        "(ties: lower index first).")]
ProtocolOpt = Annotated[str, typer.Option(help="revisited (Easy/Medium/Hard) or classic (good+ok vs junk).")]
KappaOpt = Annotated[Optional[list[int]], typer.Option("--k", help="Cut-off of mP@k and mR@k (repeatable; "
                                                                   "default 1 5 10).")]
PredOpt = Annotated[Path, typer.Option(help="pred.npy (nq, K): predicted database indices, best first (-1: none).")]
UtmOpt = Annotated[Optional[Path], typer.Option(help="UTM positions .npy (N, 2) (east, north in metres).")]
NamesOpt = Annotated[Optional[Path], typer.Option(help="Or a text file of '@east@north@...' names, one per line.")]
RadiusOpt = Annotated[float, typer.Option(help="Positives lie within this many metres.")]
NOpt = Annotated[Optional[list[int]], typer.Option("--n", help="N of recall@N (repeatable; default 1 5 10 20).")]


IndexOpt = Annotated[Optional[Path], typer.Option(help="Or an index of the database images ('visloc index build'), "
                                                       "searched with the queries of --features.")]
QFeatOpt = Annotated[Optional[Path], typer.Option(help="With --index: feature file of the queries (global "
                                                       "descriptors).")]
RerankOpt = Annotated[int, typer.Option(help="With --index or --dataset: re-rank each query's top N by inliers "
                                             "(0: off; DELG uses 100).")]
DbFeatOpt = Annotated[Optional[Path], typer.Option(help="Database feature file (local features, to re-rank).")]
RerankModelOpt = Annotated[str, typer.Option(help="homography, fundamental or affine.")]
RerankMatcherOpt = Annotated[str, typer.Option(help="Registered matcher for re-ranking.")]
RerankThrOpt = Annotated[Optional[float], typer.Option(help="Re-ranking inlier threshold in pixels "
                                                            "(default: the model's; 20 with --dataset).")]


DatasetOpt = Annotated[Optional[str], typer.Option(help="Or end to end: roxford5k, rparis6k, rworld or NAME "
                                                         "(--root DIR holds jpg/ and gnd_NAME.pkl).")]
RootOpt = Annotated[Optional[Path], typer.Option(help="With --dataset: the revisitop folder (jpg/, gnd_*.pkl).")]
ExtrOpt = Annotated[Optional[str], typer.Option(help="With --dataset: registered extractor with a global "
                                                     "descriptor (hfnet, vlad-aliked...).")]
RuleOpt = Annotated[Optional[str], typer.Option(help="delg (by inliers, then global score; default with --dataset) "
                                                     "or min-inliers (default with --index).")]
RerankExtrOpt = Annotated[Optional[str], typer.Option(help="With --dataset: extractor of the local features to "
                                                           "verify (default: --extractor).")]
SetRerankExtr = Annotated[Optional[list[str]], typer.Option(help="Re-ranking extractor override key=value.")]
DistOpt = Annotated[float, typer.Option(help="With --dataset: L2 descriptor distance of a putative match "
                                             "(DELG 1.0, DELF 0.9).")]
RatioOpt = Annotated[Optional[float], typer.Option(help="With --dataset: ratio test of putative matches.")]


def _check_retrieval_sources(gnd: Optional[Path], ranks: Optional[Path], scores: Optional[Path],
                             index: Optional[Path], features: Optional[Path], rerank: int,
                             db_features: Optional[Path]) -> None:
    """Exactly one ranking source; the index options only with --index. Exit 2 with one line otherwise."""
    if gnd is None:
        fail("give --gnd with --ranks, --scores or --index, or --dataset with --root and --extractor")
    if sum(x is not None for x in (ranks, scores, index)) != 1:
        fail("give exactly one of --ranks or --scores or --index (with --features)")
    if (index is None) != (features is None):
        fail("--index and --features go together (the queries' global descriptors search the index)")
    if index is None and (rerank or db_features is not None):
        fail("--rerank and --db-features need --index")


@eval_app.command("retrieval")
def eval_retrieval(ctx: typer.Context, gnd: GndOpt = None, ranks: RanksOpt = None, scores: ScoresOpt = None,
                   protocol: ProtocolOpt = "revisited", k: KappaOpt = None, out: Out = None, index: IndexOpt = None,
                   features: QFeatOpt = None, rerank: RerankOpt = 0, db_features: DbFeatOpt = None,
                   rerank_model: RerankModelOpt = "homography", rerank_matcher: RerankMatcherOpt = "nn-mutual",
                   set_rerank_matcher: SetRerankMatcher = None, rerank_threshold: RerankThrOpt = None,
                   rerank_min_inliers: Annotated[int, typer.Option(help="Fewer inliers do not promote an image "
                                                                        "(min-inliers rule).")] = 15,
                   rerank_rule: RuleOpt = None, dataset: DatasetOpt = None, root: RootOpt = None,
                   extractor: ExtrOpt = None, set_: SetOpt = None, rerank_extractor: RerankExtrOpt = None,
                   set_rerank_extractor: SetRerankExtr = None, rerank_distance: DistOpt = 1.0,
                   rerank_ratio: RatioOpt = None, cache: Cache = None, device: DeviceOpt = None) -> None:
    """Oxford / Paris retrieval: mAP, mP@k, mR@k as revisitop (Easy / Medium / Hard) or the classic protocol.

    The ranking comes from --ranks, --scores, or a search of --index with the queries of --features; or,
    end to end, --dataset: images of --root extracted with --extractor (queries cropped), searched, and
    with --rerank N re-ranked by DELG's geometric verification (Medium and Hard each without their junk).
    """
    _check_report(ctx, out)
    from visloc.eval.retrieval import KAPPAS

    kappas = tuple(k) if k else KAPPAS
    if rerank_rule not in (None, "min-inliers", "delg"):
        fail(f"--rerank-rule: expected one of min-inliers, delg, got {rerank_rule!r}")
    if dataset is not None:
        bad = [f for f, v in (("--gnd", gnd), ("--ranks", ranks), ("--scores", scores), ("--index", index),
                              ("--features", features), ("--db-features", db_features)) if v is not None]
        if bad or root is None or extractor is None:
            fail("--dataset takes --root and --extractor" + (f", not {bad[0]}" if bad else ""))
        if protocol != "revisited":
            fail("--dataset evaluates the revisited protocol only")
        from visloc.pipelines.eval_landmarks import evaluate_landmarks

        report = run(evaluate_landmarks, dataset, root, extractor=extractor, overrides=tuple(set_ or ()),
                     rerank=rerank, rerank_rule=rerank_rule or "delg", rerank_extractor=rerank_extractor,
                     rerank_overrides=tuple(set_rerank_extractor or ()), rerank_distance=rerank_distance,
                     rerank_ratio=rerank_ratio, rerank_residual=20.0 if rerank_threshold is None else rerank_threshold,
                     rerank_min_inliers=rerank_min_inliers, kappas=kappas, cache_dir=cache, device=device)
    else:
        report = _eval_ranking(gnd, ranks, scores, protocol, kappas, index, features, rerank, db_features,
                               rerank_model, rerank_matcher, set_rerank_matcher, rerank_threshold,
                               rerank_min_inliers, rerank_rule or "min-inliers")
    typer.echo(report.text())
    if out is not None:
        report.write(out)
        typer.echo(f"report -> {out}")


def _eval_ranking(gnd, ranks, scores, protocol, kappas, index, features, rerank, db_features,  # noqa: ANN001, ANN202
                  rerank_model, rerank_matcher, set_rerank_matcher, rerank_threshold, rerank_min_inliers, rule):
    """The --ranks / --scores / --index forms of ``eval retrieval``."""
    from visloc.pipelines.evaluate_retrieval import evaluate_index, evaluate_retrieval

    _check_retrieval_sources(gnd, ranks, scores, index, features, rerank, db_features)
    if protocol not in ("revisited", "classic"):
        fail(f"--protocol: {protocol!r} is not one of revisited, classic")
    if index is not None:
        conf = rerank_conf(rerank, db_features, rerank_model, rerank_threshold, rerank_matcher, set_rerank_matcher,
                           rerank_min_inliers, rule)
        return run(evaluate_index, gnd, index, features, protocol=protocol, kappas=kappas, rerank=conf)
    return run(evaluate_retrieval, gnd, ranks_path=ranks, scores_path=scores, protocol=protocol, kappas=kappas)


@eval_app.command("recall")
def eval_recall(ctx: typer.Context,
                pred: PredOpt, db_utm: UtmOpt = None, query_utm: UtmOpt = None, db_names: NamesOpt = None,
                query_names: NamesOpt = None, radius: RadiusOpt = 25.0, n: NOpt = None, out: Out = None) -> None:
    """Place recognition recall@N, positives within --radius metres; queries without one are left out."""
    _check_report(ctx, out)
    from visloc.eval.place_recognition import RECALL_NS
    from visloc.pipelines.evaluate_retrieval import evaluate_recall

    for side, utm, names in (("db", db_utm, db_names), ("query", query_utm, query_names)):
        if (utm is None) == (names is None):
            fail(f"give exactly one of --{side}-utm or --{side}-names")
    report = run(evaluate_recall, pred, db_utm_path=db_utm, query_utm_path=query_utm, db_names_path=db_names,
                 query_names_path=query_names, radius=radius, ns=tuple(n) if n else RECALL_NS)
    typer.echo(report.text())
    if out is not None:
        report.write(out)
        typer.echo(f"report -> {out}")


GtPosesOpt = Annotated[Path, typer.Option("--gt", help="Ground-truth poses 'name qw qx qy qz tx ty tz' "
                                                       "(cam_from_world, as COLMAP).")]
PredPosesOpt = Annotated[Path, typer.Option("--pred", help="Localized poses, same format; failed queries absent.")]
LocLogOpt = Annotated[Optional[Path], typer.Option("--log", help="The localizer's JSON-lines log: stage timings; "
                                                                 "its 'success: false' queries count as failures.")]
LocThrOpt = Annotated[Optional[str], typer.Option(help="Recall thresholds 'position,degrees;...' (position in map "
                                                       "units; default 0.25,2;0.5,5;5,10).")]


@eval_app.command("localization")
def eval_localization(ctx: typer.Context,
                      gt: GtPosesOpt, pred: PredPosesOpt, log: LocLogOpt = None, thresholds: LocThrOpt = None,
                      out: Out = None) -> None:
    """Localization accuracy: position / rotation errors, recall at thresholds, time per stage."""
    _check_report(ctx, out)
    from visloc.eval.localization import DEFAULT_THRESHOLDS, evaluate_localization, parse_thresholds

    thr = run(parse_thresholds, thresholds) if thresholds is not None else DEFAULT_THRESHOLDS
    report = run(evaluate_localization, gt, pred, log_path=log, thresholds=thr)
    typer.echo(f"localization of {pred.name} against {gt.name}")
    typer.echo(report.markdown())
    if out is not None:
        report.write(out)
        typer.echo(f"report -> {out}")


EvModelOpt = Annotated[Optional[Path], typer.Option("--model", help="A visloc event-vpr checkpoint (default: the "
                                                                   "shipped event-vpr-world).")]
EvDbOpt = Annotated[Path, typer.Option("--database", help="The database traversal: its folder ROOT/NAME in an "
                                                          "event drive (visloc data world event-drive).")]
EvQueriesOpt = Annotated[list[Path], typer.Option("--queries", help="A query traversal ROOT/NAME2 of the same drive "
                                                                    "(repeatable; not the database).")]
FramesOpt = Annotated[Optional[str], typer.Option("--frames", help="Frame baselines on the same places, comma "
                                                                   "separated extractors (hfnet-global,vlad-aliked,"
                                                                   "netvlad); none by default.")]
FrameSetOpt = Annotated[Optional[list[str]], typer.Option("--frame-set", help="Frame baseline override "
                                                                              "EXTRACTOR:key=value (repeatable).")]


@eval_app.command("event-vpr")
def eval_event_vpr(ctx: typer.Context,
                   database: EvDbOpt, queries: EvQueriesOpt, model: EvModelOpt = None, set_: SetOpt = None,
                   radius: RadiusOpt = 25.0, n: NOpt = None, frames: FramesOpt = None, frame_set: FrameSetOpt = None,
                   vocab_images: Annotated[int, typer.Option(help="Most database frames a vlad-aliked vocabulary "
                                                                  "is learned from.")] = 100,
                   work: Annotated[Optional[Path], typer.Option(help="Keep learned vocabularies here (default: a "
                                                                     "temporary folder).")] = None,
                   batch_size: Annotated[int, typer.Option(help="Windows or frames per forward pass.")] = 8,
                   out: Out = None, device: DeviceOpt = None) -> None:
    """Event place recognition across traversals: recall@1/5/10/20 within --radius m, per traversal and condition.

    Places every stride_m metres of each traversal (--set stride_m=2 kind=count count=30000 duration_us=50000),
    the model's descriptor of each place's window, exact L2 neighbours among the database places. --frames scores
    the rendered frame nearest each place through global extractors on the same places (a vlad-aliked vocabulary
    is learned from the database traversal's frames only; a method without its weights is skipped with a line).
    """
    _check_report(ctx, out)
    from visloc.conf import apply_overrides
    from visloc.eval.event_vpr import RecallProtocol
    from visloc.eval.place_recognition import RECALL_NS
    from visloc.events.drive_dataset import PlaceWindows
    from visloc.pipelines.evaluate_event_vpr import evaluate_event_vpr
    from visloc.pipelines.frame_vpr import FrameMethod

    windows = run(apply_overrides, PlaceWindows(), list(set_ or ()))
    protocol = run(RecallProtocol, float(radius), tuple(n) if n else RECALL_NS)
    methods = run(FrameMethod.parse, (frames or "").split(","), list(frame_set or ()))
    report = run(evaluate_event_vpr, model, database, queries, windows=windows, protocol=protocol, frames=methods,
                 batch_size=batch_size, vocab_images=vocab_images, work_dir=work, device=device, progress=True)
    typer.echo(report.text())
    if out is not None:
        report.write(out)
        typer.echo(f"report -> {out}")
