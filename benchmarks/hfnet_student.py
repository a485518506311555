"""The HF-Net student beside its teacher on the real ground-truth suites (Markdown table).

Usage: python benchmarks/hfnet_student.py [--weights [LABEL=]STUDENT.pt ...] [--out outputs/hfnet_student] [--quick]

Rows: each student (``hfnet``; the shipped default unless ``--weights``, which may be repeated, ``default``
naming the shipped one and ``LABEL=`` naming the rows ``hfnet-LABEL+...``) with mutual nearest-neighbour
and ratio-test matching, its teacher ALIKED-n16 with the mutual matcher (a like-for-like comparison of the
features), and the teacher with LightGlue (visloc's best pipeline) for reference. Example, the default and
the world students side by side::

    python benchmarks/hfnet_student.py --weights default=default --weights world=src/visloc/weights/hfnet_world.pt
 Suites: those of
``configs/benchmarks/two_view.yaml`` (Castle-simu relative pose, graf homography, Middlebury motorcycle
stereo, the built-in synthetic homography pairs); ``--quick``: its quick suites at its quick image size,
in a temporary folder unless ``--out``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

from bench_config import TWO_VIEW, BenchmarkConf, MethodConf, load_benchmark  # benchmarks/ is on sys.path
from eval_all import run_suites


def parse_student(spec: str) -> tuple[str | None, str | None]:
    """``[LABEL=]PATH`` -> (label or None, path or None for ``default``, the shipped student)."""
    label, _, path = spec.rpartition("=")
    return label or None, None if path == "default" else path


def methods(weights: str | None | list[str]) -> tuple[MethodConf, ...]:
    """Each student's rows (``weights``: ``[LABEL=]PATH`` specs, None for the shipped one) and the teacher's."""
    specs = [weights] if isinstance(weights, str) else weights or ["default"]
    rows: list[MethodConf] = []
    for label, path in map(parse_student, specs):
        student = (f"weights={path}",) if path else ()
        name = f"hfnet-{label}" if label else None
        rows += [
            MethodConf(extractor="hfnet", matcher="nn-mutual", extractor_set=student,
                       label=f"{name}+nn-mutual" if name else None),
            MethodConf(extractor="hfnet", matcher="nn-ratio", extractor_set=student,
                       matcher_set=("ratio_threshold=0.9",), label=f"{name}+nn-ratio" if name else None),
        ]
    return (*rows, MethodConf(extractor="aliked-n16", matcher="nn-mutual"),
            MethodConf(extractor="aliked-n16", matcher="lightglue"))


def benchmark(weights: str | None | list[str], quick: bool, config: Path = TWO_VIEW) -> BenchmarkConf:
    """The two-view config's suites with the students' methods (its quick suites and size when ``quick``)."""
    rows = methods(weights)
    conf = load_benchmark(config)
    conf = replace(conf, methods=rows, quick=replace(conf.quick, methods=tuple(m.name for m in rows)))
    return conf.quick_subset() if quick else conf


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", action="append", default=None,
                        help="[LABEL=]student checkpoint, repeatable ('default': the shipped one; default: it alone)")
    parser.add_argument("--out", type=Path, default=None, help="default outputs/hfnet_student (quick: temporary)")
    parser.add_argument("--cache", type=Path, default=None, help="default the user cache (quick: inside --out)")
    parser.add_argument("--quick", action="store_true", help="the quick suites at small size, in seconds")
    args = parser.parse_args()
    conf = benchmark(args.weights, args.quick)
    with tempfile.TemporaryDirectory(prefix="visloc-hfnet-student-") as tmp:
        out = args.out or (Path(tmp) if args.quick else Path("outputs/hfnet_student"))
        cache = args.cache or (out / "cache" if args.quick else None)
        print(run_suites(conf, out, cache))
        print(f"reports -> {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
