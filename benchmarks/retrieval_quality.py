"""Retrieval quality on the offline landmark benchmark (``visloc.data.landmarks``): VLAD-ALIKED, then re-ranked.

Usage: python benchmarks/retrieval_quality.py [--work DIR] [--seed 0] [--views 5] [--clusters 64]
                                              [--rerank 10] [--matchers nn-mutual lightglue]
                                              [--device cpu] [--out outputs/retrieval_quality.json] [--quick]

Stages (each timed): build the dataset (real photos -> query / database views + ``gnd.json``);
learn a VLAD vocabulary on the DATABASE images only; extract ``vlad-aliked`` features of database
and queries; build a flat index; search every database image for each query and score the ranking
with the revisitop protocols (Easy / Medium / Hard: mAP, mP@k); then re-rank each query's top
``--rerank`` by homography inliers with each matcher and score again. Prints a Markdown table and
writes the JSON results. Matchers whose weights are missing are reported as skipped.
``--quick``: the 12 ``skimage`` photos only, 2 views each at 160x120, K=8, re-rank the top 3 with
``nn-mutual``, the JSON in a temporary folder unless ``--out`` (the whole code path in seconds).
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

from visloc.data.landmarks import DEFAULT_SOURCES, SKIMAGE_PHOTOS, build_landmarks
from visloc.io.atomic import atomic_write_text
from visloc.pipelines.evaluate_retrieval import RetrievalReport, evaluate_index
from visloc.pipelines.extract import extract_features
from visloc.pipelines.retrieve import build_index
from visloc.pipelines.vocab import build_vocabulary
from visloc.retrieval.rerank import RerankConf
from visloc.weights.load import WeightsError

KAPPAS = (1, 5, 10)
PROTOCOLS = ("easy", "medium", "hard")


def timed(timings: dict[str, float], stage: str, fn, *args, **kwargs):  # noqa: ANN001, ANN201
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    timings[stage] = time.perf_counter() - start
    print(f"{stage}: {timings[stage]:.1f} s", flush=True)
    return out


def row(method: str, report: RetrievalReport) -> dict:
    out: dict = {"method": method}
    for p in PROTOCOLS:
        res = report.results[p]
        out[f"{p}_mAP"] = res.mean_ap
        out.update({f"{p}_mP@{k}": float(v) for k, v in zip(res.kappas, res.mean_precision, strict=True)})
    return out


def markdown(rows: list[dict], k: int) -> str:
    head = ["method"] + [f"{p[0].upper()} {m}" for p in PROTOCOLS for m in ("mAP", f"mP@{k}")]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        vals = [f"{100 * r[f'{p}_{m}']:.1f}" for p in PROTOCOLS for m in ("mAP", f"mP@{k}")]
        lines.append("| " + " | ".join([r["method"], *vals]) + " |")
    return "\n".join(lines)


def run(work: Path, args: argparse.Namespace) -> dict:
    timings: dict[str, float] = {}
    data = work / "data"
    gnd = timed(timings, "dataset", build_landmarks, data, seed=args.seed, views_per_landmark=args.views,
                size=(args.width, args.height), sources=args.sources)
    gt = json.loads(gnd.read_text())
    print(f"dataset: {len(gt['imlist'])} database images, {len(gt['qimlist'])} queries -> {data}")
    vocab = work / f"vocab_k{args.clusters}.pt"
    timed(timings, "vocabulary (db only)", build_vocabulary, data / "db", vocab, num_clusters=args.clusters,
          seed=args.seed, device=args.device, progress=False)
    sets = [f"vocabulary={vocab}", f"num_clusters={args.clusters}"]
    for part in ("db", "queries"):
        timed(timings, f"extract {part}", extract_features, data / part, work / f"{part}.h5", extractor="vlad-aliked",
              overrides=sets, overwrite=True, device=args.device, progress=False)
    timed(timings, "index", build_index, work / "db.h5", work / "db.index")
    common = (gnd, work / "db.index", work / "queries.h5")
    report = timed(timings, "search + eval", evaluate_index, *common, protocol="revisited", kappas=KAPPAS)
    rows = [row(f"VLAD-ALIKED K={args.clusters}", report)]
    skipped = {}
    for matcher in args.matchers:
        stage = f"rerank top {args.rerank} {matcher}"
        try:
            rerank = RerankConf(top=args.rerank, db_features=work / "db.h5", model="homography", matcher=matcher)
            report = timed(timings, stage, evaluate_index, *common, protocol="revisited", kappas=KAPPAS,
                           rerank=rerank)
        except WeightsError as e:
            skipped[matcher] = str(e).splitlines()[0]
            print(f"{stage}: skipped ({skipped[matcher]})")
            continue
        rows.append(row(f"+ re-rank top {args.rerank} ({matcher}, homography)", report))
    return {"machine": f"{platform.machine()} {platform.processor() or ''}".strip(), "device": args.device or "auto",
            "num_database": len(gt["imlist"]), "num_queries": len(gt["qimlist"]), "conf": vars(args) | {
                "work": str(work), "out": str(args.out)}, "rows": rows, "timings_s": timings, "skipped": skipped}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, help="Folder for the dataset, features and index (default: temporary).")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--views", type=int, default=5, help="Database views per landmark.")
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--clusters", type=int, default=64, help="VLAD vocabulary size K.")
    parser.add_argument("--rerank", type=int, default=10, help="Re-rank each query's top N.")
    parser.add_argument("--matchers", nargs="*", default=["nn-mutual", "lightglue"],
                        help="Re-ranking matchers (LightGlue: ~0.35 s a pair on 2 CPU cores).")
    parser.add_argument("--device", default=None, help="cpu, cuda, or automatic.")
    parser.add_argument("--out", type=Path, default=None, help="default outputs/retrieval_quality.json "
                        "(quick: in the temporary work folder)")
    parser.add_argument("--quick", action="store_true", help="skimage photos, 2 views at 160x120, K=8, nn-mutual")
    args = parser.parse_args()
    args.sources = DEFAULT_SOURCES
    if args.quick:
        args.sources = tuple(f"skimage:{n}" for n in SKIMAGE_PHOTOS)
        args.views, args.width, args.height, args.clusters, args.rerank = 2, 160, 120, 8, 3
        args.matchers = ["nn-mutual"]
    with tempfile.TemporaryDirectory(prefix="visloc-landmarks-") as tmp:
        if args.out is None:
            args.out = Path(tmp) / "retrieval_quality.json" if args.quick else Path("outputs/retrieval_quality.json")
        result = run(args.work or Path(tmp), args)
        report(result, args.out)


def report(result: dict, out: Path) -> None:
    """Print the tables of ``result`` and write it as JSON to ``out``."""
    print(f"\n{result['num_queries']} queries, {result['num_database']} database images "
          f"(revisitop protocols, percent)\n")
    print(markdown(result["rows"], 5))
    print("\n| stage | seconds |\n|---|---|")
    for stage, seconds in result["timings_s"].items():
        print(f"| {stage} | {seconds:.1f} |")
    atomic_write_text(out, json.dumps(result, indent=1) + "\n")
    print(f"\nresults -> {out}")


if __name__ == "__main__":
    main()
