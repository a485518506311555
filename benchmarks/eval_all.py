"""Evaluate every method on every ground-truth suite of a benchmark config; JSON reports + Markdown tables.

Usage: python benchmarks/eval_all.py [--config configs/benchmarks/two_view.yaml] [--out outputs/results]
                                     [--cache DIR] [--quick] [--tables-only] [--methods NAME ...]

Methods and suites are rows of the YAML config (``bench_config``). Each (suite, method) writes
``OUT/SUITE/METHOD.json`` (summary, per-pair metrics, resolved confs, weights digests, visloc version,
dataset key); the README's tables are then generated from those JSON files (``OUT/results.md``, also
printed), never edited by hand. ``--tables-only`` regenerates them from existing reports; ``--methods`` runs
(and tabulates) only the named rows (``MethodConf.name``, e.g. ``xfeat+lighterglue``).
``--quick`` runs the config's quick subset (one small suite, a few methods, small images) in a
temporary folder (unless ``--out``) with a cache inside it, so nothing user-wide is read or written.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

from bench_config import TWO_VIEW, BenchmarkConf, MethodConf, SuiteConf, load_benchmark

from visloc.eval.predictions import Method
from visloc.pipelines.evaluate import (
    HOMOGRAPHY_COLUMNS,
    POSE_COLUMNS,
    STEREO_COLUMNS,
    EvalReport,
    evaluate_homography,
    evaluate_pose,
    evaluate_stereo,
)

COLUMNS = {"pose": POSE_COLUMNS, "stereo": STEREO_COLUMNS, "homography": HOMOGRAPHY_COLUMNS}


def evaluate(suite: SuiteConf, method: Method, cache: Path | None) -> EvalReport:
    """One suite on one method (predictions cached in ``cache``, default the user cache)."""
    if suite.protocol == "pose":
        return evaluate_pose(method, step=suite.step, cache_dir=cache, progress=False)
    if suite.protocol == "stereo":
        return evaluate_stereo(method, cache_dir=cache, progress=False)
    return evaluate_homography(method, dataset=suite.dataset, cache_dir=cache, progress=False)  # type: ignore[arg-type]


def report_path(out: Path, suite: SuiteConf, method: MethodConf) -> Path:
    """Where the JSON report of ``method`` on ``suite`` goes."""
    return out / suite.name / f"{method.name}.json"


def _cell(v: object) -> str:
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.3f}" if abs(v) < 100 else f"{v:.1f}"
    return "" if v is None else str(v)


def suite_table(out: Path, suite: SuiteConf, methods: tuple[MethodConf, ...]) -> str:
    """The Markdown table of ``suite`` from the JSON reports under ``out`` (rows in config order)."""
    columns = COLUMNS[suite.protocol]
    lines = ["| method | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
    for m in methods:
        path = report_path(out, suite, m)
        if not path.is_file():
            continue
        summary = json.loads(path.read_text())["summary"]
        lines.append(f"| {m.name} | " + " | ".join(_cell(summary.get(c)) for c in columns) + " |")
    return "\n".join(lines)


def tables(out: Path, conf: BenchmarkConf) -> str:
    """Every suite's heading and table, from the reports under ``out``; written to ``out/results.md``."""
    parts = [f"### {s.title or s.name}\n\n{suite_table(out, s, conf.methods)}\n" for s in conf.suites]
    text = "\n".join(parts)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.md").write_text(text)
    return text


def run_suites(conf: BenchmarkConf, out: Path, cache: Path | None) -> str:
    """Evaluate every method of ``conf`` on every suite; write the JSON reports and return the tables."""
    for suite in conf.suites:
        for m in conf.methods:
            report = evaluate(suite, m.method(), cache)
            report.write(report_path(out, suite, m))
            row = {c: report.summary.get(c) for c in COLUMNS[suite.protocol]}
            print(suite.name, m.name, json.dumps(row), flush=True)
    return tables(out, conf)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=TWO_VIEW)
    parser.add_argument("--out", type=Path, default=None, help="default outputs/results (quick: temporary)")
    parser.add_argument("--cache", type=Path, default=None, help="default the user cache (quick: inside --out)")
    parser.add_argument("--quick", action="store_true", help="the config's quick subset, in seconds")
    parser.add_argument("--tables-only", action="store_true", help="regenerate the tables from existing reports")
    parser.add_argument("--methods", nargs="+", default=None, help="only these rows (e.g. xfeat+lighterglue)")
    args = parser.parse_args(argv)
    conf = load_benchmark(args.config)
    if args.quick:
        conf = conf.quick_subset()
    if args.methods:
        unknown = sorted(set(args.methods) - {m.name for m in conf.methods})
        if unknown:
            parser.error(f"--methods: no rows {unknown} in {args.config}")
        conf = replace(conf, methods=tuple(m for m in conf.methods if m.name in args.methods))
    with tempfile.TemporaryDirectory(prefix="visloc-eval-all-") as tmp:
        out = args.out or (Path(tmp) if args.quick else Path("outputs/results"))
        cache = args.cache or (out / "cache" if args.quick else None)
        text = tables(out, conf) if args.tables_only else run_suites(conf, out, cache)
        print(text)
        print(f"reports -> {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
