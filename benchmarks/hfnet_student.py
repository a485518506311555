"""The HF-Net student beside its teacher on the real ground-truth suites (Markdown table).

Usage: python benchmarks/hfnet_student.py [--weights STUDENT.pt] [--out outputs/hfnet_student]

Rows: the student (``hfnet``, default shipped weights unless ``--weights``) with mutual nearest-neighbour
matching, its teacher ALIKED-n16 with the same matcher (a like-for-like comparison of the features), and
the teacher with LightGlue (visloc's best pipeline) for reference. Suites: Castle-simu relative pose
(step 5), graf homography, Middlebury motorcycle stereo, the built-in synthetic homography pairs.
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


def methods(weights: str | None) -> list[Method]:
    student = (f"weights={weights}",) if weights else ()
    return [
        Method("hfnet", "nn-mutual", student),
        Method("hfnet", "nn-ratio", student, ("ratio_threshold=0.9",)),
        Method("aliked-n16", "nn-mutual"),
        Method("aliked-n16", "lightglue"),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--weights", default=None, help="student checkpoint (default: the shipped one)")
    parser.add_argument("--out", type=Path, default=Path("outputs/hfnet_student"))
    parser.add_argument("--cache", type=Path, default=None)
    args = parser.parse_args()
    suites = {
        "castle-step5": (lambda m: evaluate_pose(m, step=5, cache_dir=args.cache, progress=False), POSE_COLUMNS),
        "graf": (lambda m: evaluate_homography(m, "graf", cache_dir=args.cache, progress=False), HOMOGRAPHY_COLUMNS),
        "motorcycle": (lambda m: evaluate_stereo(m, cache_dir=args.cache, progress=False), STEREO_COLUMNS),
        "synthetic": (lambda m: evaluate_homography(m, "synthetic", cache_dir=args.cache, progress=False),
                      HOMOGRAPHY_COLUMNS),
    }
    tables = []
    for suite, (fn, columns) in suites.items():
        reports = []
        for m in methods(args.weights):
            report = fn(m)
            report.write(args.out / suite / f"{m.label}.json")
            reports.append(report)
            print(suite, m.label, json.dumps({c: report.summary.get(c) for c in columns}), flush=True)
        tables.append(f"### {suite}\n\n{format_table(reports, columns)}\n")
    (args.out / "results.md").write_text("\n".join(tables))
    print("\n".join(tables))


if __name__ == "__main__":
    main()
