"""Evaluate every extractor x matcher on every ground-truth suite; writes JSON reports + Markdown tables.

Usage: python benchmarks/eval_all.py --out outputs/results [--quick]
The README's results tables are this script's output (``results.md``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from visloc.eval.predictions import Method
from visloc.pipelines.evaluate import (
    HOMOGRAPHY_COLUMNS,
    POSE_COLUMNS,
    STEREO_COLUMNS,
    evaluate_homography,
    evaluate_pose,
    evaluate_stereo,
    format_table,
)

METHODS = [
    Method("aliked-n16", "lightglue"),
    Method("disk", "lightglue"),
    Method("sift", "nn-ratio"),
    Method("rootsift", "nn-ratio"),
    Method("aliked-n16", "nn-mutual"),
    Method("aliked-n32", "lightglue"),
    Method("aliked-n16rot", "lightglue"),
    Method("aliked-t16", "nn-mutual"),
    Method("disk", "nn-mutual"),
    Method("orb", "nn-mutual"),
]


def run_suites(methods: list[Method], out: Path, cache: Path | None) -> str:
    """Evaluate ``methods`` on every suite; write JSON reports under ``out`` and return the Markdown tables."""
    suites = {
        "castle-step5": (lambda m: evaluate_pose(m, step=5, cache_dir=cache, progress=False), POSE_COLUMNS),
        "motorcycle": (lambda m: evaluate_stereo(m, cache_dir=cache, progress=False), STEREO_COLUMNS),
        "graf": (lambda m: evaluate_homography(m, dataset="graf", cache_dir=cache, progress=False), HOMOGRAPHY_COLUMNS),
        "synthetic": (lambda m: evaluate_homography(m, dataset="synthetic", cache_dir=cache, progress=False),
                      HOMOGRAPHY_COLUMNS),
    }
    tables = []
    for suite, (fn, columns) in suites.items():
        reports = []
        for m in methods:
            report = fn(m)
            report.write(out / suite / f"{m.label}.json")
            reports.append(report)
            print(suite, m.label, json.dumps({c: report.summary.get(c) for c in columns}), flush=True)
        tables.append(f"### {suite}\n\n{format_table(reports, columns)}\n")
    text = "\n".join(tables)
    (out / "results.md").write_text(text)
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("outputs/results"))
    parser.add_argument("--quick", action="store_true", help="only the first four methods")
    parser.add_argument("--cache", type=Path, default=None)
    args = parser.parse_args()
    print(run_suites(METHODS[:4] if args.quick else METHODS, args.out, args.cache))


if __name__ == "__main__":
    main()
