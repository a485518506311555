"""The HF-Net student beside its teacher on the real ground-truth suites (Markdown table).

Usage: python benchmarks/hfnet_student.py [--weights STUDENT.pt] [--out outputs/hfnet_student]

Rows: the student (``hfnet``, default shipped weights unless ``--weights``) with mutual nearest-neighbour
matching, its teacher ALIKED-n16 with the same matcher (a like-for-like comparison of the features), and
the teacher with LightGlue (visloc's best pipeline) for reference. Suites: Castle-simu relative pose
(step 5), graf homography, Middlebury motorcycle stereo, the built-in synthetic homography pairs.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from eval_all import run_suites  # benchmarks/ is on sys.path when this script runs

from visloc.eval.predictions import Method


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
    print(run_suites(methods(args.weights), args.out, args.cache))


if __name__ == "__main__":
    main()
