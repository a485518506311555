"""Image retrieval reports of the Oxford / Paris benchmarks; the metrics are ``visloc.retrieval.metrics``.

The revisitop-exact metrics (``compute_ap``, ``compute_map``, the revisited protocols, ``ranks_from_scores``)
moved to ``visloc.retrieval.metrics`` so that training (which may not import ``eval``) validates with the
same code; they are re-exported here unchanged. This module adds the text and JSON reports.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from visloc.retrieval.metrics import (
    KAPPAS,
    REVISITED_PROTOCOLS,
    RetrievalResult,
    RevisitedProtocol,
    check_ranks,
    classic_gnd,
    compute_ap,
    compute_map,
    evaluate_classic,
    evaluate_revisited,
    positive_ranks,
    precision_recall_at,
    ranks_from_scores,
    revisited_gnd,
)

__all__ = ["KAPPAS", "REVISITED_PROTOCOLS", "RetrievalResult", "RevisitedProtocol", "check_ranks", "classic_gnd",
           "compute_ap", "compute_map", "evaluate_classic", "evaluate_revisited", "format_report",
           "positive_ranks", "precision_recall_at", "ranks_from_scores", "report_json", "revisited_gnd"]


def _row(values: np.ndarray) -> str:
    return "[" + " ".join(f"{100 * v:.2f}" for v in values) + "]"


def format_report(results: Mapping[str, RetrievalResult]) -> str:
    """Text report in the spirit of DELF's ``mAP.txt``, in percent with 2 decimals.

    One block per protocol::

        easy (70 queries, 0 skipped without positives)
          mAP=84.81
          mP@k[1 5 10] [97.06 92.65 86.32]
          mR@k[1 5 10] [...]
    """
    lines = []
    for name, res in results.items():
        ks = "[" + " ".join(str(k) for k in res.kappas) + "]"
        lines += [f"{name} ({len(res.aps)} queries, {len(res.skipped)} skipped without positives)",
                  f"  mAP={100 * res.mean_ap:.2f}", f"  mP@k{ks} {_row(res.mean_precision)}",
                  f"  mR@k{ks} {_row(res.mean_recall)}"]
    return "\n".join(lines)


def report_json(results: Mapping[str, RetrievalResult]) -> dict[str, Any]:
    """``{protocol: RetrievalResult.to_json()}``."""
    return {name: res.to_json() for name, res in results.items()}
