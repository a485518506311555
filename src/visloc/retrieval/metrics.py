"""Image retrieval metrics of the Oxford / Paris benchmarks, exactly as their reference code.

mAP and mP@k follow ``compute_ap`` / ``compute_map`` of ``revisitop`` (Radenovic et al., "Revisiting
Oxford and Paris", CVPR 2018), the code behind every published ROxford5k / RParis6k number; mR@k is
the recall that DELF's ``ComputeMetrics`` adds to its ``mAP.txt`` report.

Conventions (revisitop's):

- ``ranks [n_ranked, nq]``: column ``q`` holds database indices sorted by decreasing similarity to
  query ``q``; ``n_ranked`` may be smaller than the database (a truncated short list), and positives
  that are not ranked then count as never retrieved.
- ``gnd``: one dict per query with ``"ok"`` (positive database indices) and optionally ``"junk"``
  (indices ignored: removed from the ranking before scoring, e.g. the query image itself).
- A query without positives is skipped: its values are ``nan`` and it is left out of the means.
- Positions of positives are 0-based; junk is removed by shifting each positive up by the number of
  junk images ranked before it.

Two deliberate differences from revisitop, both outside what its published numbers exercise: a
query whose positives are all unranked gets AP = P@k = R@k = 0 (revisitop raises on ``max([])``,
DELF returns 0), and the mean over zero evaluated queries is ``nan`` (revisitop divides by zero).
Sums accumulate in query order, as revisitop's loop does, so the values are bit-identical.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

KAPPAS = (1, 5, 10)
RevisitedProtocol = Literal["easy", "medium", "hard"]
REVISITED_PROTOCOLS: tuple[RevisitedProtocol, ...] = ("easy", "medium", "hard")


@dataclass(frozen=True)
class RetrievalResult:
    """Metrics of one protocol, as fractions in ``[0, 1]``.

    Attributes:
        mean_ap: mAP over the evaluated queries (``nan`` when none).
        aps: AP per query ``[nq]``, ``nan`` for skipped queries.
        mean_precision: mP@k ``[K]``, one per kappa.
        precisions: P@k per query ``[nq, K]`` with revisitop's ``min(last positive, k)`` denominator.
        mean_recall: mR@k ``[K]``.
        recalls: R@k per query ``[nq, K]``: positives in the top k (junk removed) / positives.
        kappas: The ``K`` cut-offs.
        skipped: Indices of the queries without positives.
    """

    mean_ap: float
    aps: np.ndarray
    mean_precision: np.ndarray
    precisions: np.ndarray
    mean_recall: np.ndarray
    recalls: np.ndarray
    kappas: tuple[int, ...]
    skipped: tuple[int, ...]

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict of fractions; ``nan`` becomes ``None``."""
        out: dict[str, Any] = {"mAP": _json_float(self.mean_ap)}
        out.update({f"mP@{k}": _json_float(v) for k, v in zip(self.kappas, self.mean_precision, strict=True)})
        out.update({f"mR@{k}": _json_float(v) for k, v in zip(self.kappas, self.mean_recall, strict=True)})
        out.update({"kappas": list(self.kappas), "num_queries": len(self.aps),
                    "num_evaluated": len(self.aps) - len(self.skipped), "skipped_queries": list(self.skipped),
                    "ap": [_json_float(v) for v in self.aps]})
        return out


def _json_float(x: float) -> float | None:
    return None if np.isnan(x) else float(x)


def _index_vector(x: object, name: str) -> np.ndarray:
    """``x`` as an int64 vector ``[n]`` of non-negative indices; integral floats are accepted."""
    arr = np.atleast_1d(np.asarray(x))
    if arr.ndim != 1:
        raise ValueError(f"{name} must be a vector of indices, got shape {list(arr.shape)}")
    if arr.size == 0:
        return np.zeros(0, dtype=np.int64)
    if arr.dtype.kind == "f" and np.all(np.isfinite(arr)) and np.all(arr == np.round(arr)):
        arr = arr.astype(np.int64)
    if arr.dtype.kind not in "iu":
        raise ValueError(f"{name} must hold integer indices, got dtype {arr.dtype}")
    if np.any(arr < 0):
        raise ValueError(f"{name} must hold non-negative indices")
    return arr.astype(np.int64)


def _kappas(kappas: Sequence[int]) -> tuple[int, ...]:
    ks = tuple(int(k) for k in kappas)
    if any(k < 1 for k in ks) or any(k != k0 for k, k0 in zip(ks, kappas, strict=True)):
        raise ValueError(f"kappas must be positive integers, got {list(kappas)}")
    return ks


def check_ranks(ranks: object, num_queries: int, num_database: int | None = None) -> np.ndarray:
    """Validate revisitop ranks ``[n_ranked, nq]``: integer, one column per query, no repeats.

    Args:
        ranks: Database indices per query, best first, one column per query.
        num_queries: ``nq``, the number of queries of the ground truth.
        num_database: Database size; indices must lie in ``[0, num_database)`` when given.

    Returns:
        The ranks as an int64 array ``[n_ranked, nq]``.
    """
    arr = np.asarray(ranks)
    if arr.ndim != 2 or arr.shape[1] != num_queries:
        hint = " (it looks like [nq, n_ranked]: transpose it)" if arr.ndim == 2 and arr.shape[0] == num_queries else ""
        raise ValueError(f"ranks must have shape [n_ranked, nq={num_queries}] (one column per query, revisitop "
                         f"layout), got {list(arr.shape)}{hint}")
    if arr.dtype.kind not in "iu":
        raise ValueError(f"ranks must hold integer database indices, got dtype {arr.dtype}")
    arr = arr.astype(np.int64, copy=False)
    if arr.size and arr.min() < 0:
        raise ValueError("ranks must hold non-negative database indices")
    if num_database is not None and arr.size and arr.max() >= num_database:
        raise ValueError(f"ranks hold database index {int(arr.max())}, but the database has {num_database} images")
    srt = np.sort(arr, axis=0)
    repeated = np.flatnonzero(np.any(srt[1:] == srt[:-1], axis=0))
    if len(repeated):
        raise ValueError(f"ranks[:, {int(repeated[0])}] lists a database index twice")
    return arr


def compute_ap(ranks: Sequence[int] | np.ndarray, nres: int) -> float:
    """Average precision from the 0-based ranks of the retrieved positives (revisitop's trapezoid).

    Each retrieved positive ``j`` (0-based, at rank ``r_j``) adds a trapezoid of width ``1 / nres`` on
    the precision-recall curve between the precisions ``j / r_j`` (1 when ``r_j = 0``) just before it
    and ``(j + 1) / (r_j + 1)`` at it. Unretrieved positives add nothing.

    Args:
        ranks: Strictly increasing 0-based ranks ``[n]`` of the retrieved positives, junk removed.
        nres: Number of positives ``>= n``, retrieved or not.
    """
    r = _index_vector(ranks, "ranks")
    if nres < max(len(r), 1):
        raise ValueError(f"nres must be >= 1 and >= the {len(r)} ranked positives, got {nres}")
    if np.any(np.diff(r) <= 0):
        raise ValueError("ranks of positives must be strictly increasing")
    if len(r) == 0:
        return 0.0
    j = np.arange(len(r), dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        before = np.where(r == 0, 1.0, j / r)
    at = (j + 1) / (r + 1)
    recall_step = 1.0 / nres
    return float(np.cumsum((before + at) * recall_step / 2.0)[-1])  # cumsum: revisitop's summation order


def positive_ranks(ranked: np.ndarray, ok: np.ndarray, junk: np.ndarray) -> np.ndarray:
    """0-based ranks ``[n]`` of the positives ``ok`` in ``ranked [n_ranked]`` once ``junk`` is removed."""
    pos = np.flatnonzero(np.isin(ranked, ok))
    junk_pos = np.flatnonzero(np.isin(ranked, junk))
    return pos - np.searchsorted(junk_pos, pos, side="left")  # junk ranked strictly before each positive


def precision_recall_at(ranks: np.ndarray, nres: int, kappas: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """P@k and R@k ``[K]`` from 0-based positive ranks ``[n]`` (junk removed) and ``nres`` positives.

    P@k is revisitop's: with ``kq = min(last positive's 1-based rank, k)``, the positives within the
    top ``kq`` divided by ``kq``, so a query whose positives all come early is not penalised for a
    large ``k``. R@k is the positives within the top ``k`` divided by ``nres``. Both are 0 when no
    positive is ranked.
    """
    ks = _kappas(kappas)
    prec, rec = np.zeros(len(ks)), np.zeros(len(ks))
    if len(ranks) == 0:
        return prec, rec
    pos1 = np.asarray(ranks) + 1
    for i, k in enumerate(ks):
        kq = min(int(pos1.max()), k)
        prec[i] = (pos1 <= kq).sum() / kq
        rec[i] = (pos1 <= k).sum() / nres
    return prec, rec


def _sequential_mean(values: np.ndarray) -> np.ndarray:
    """Mean over axis 0 summed in order (as revisitop's loop); ``nan`` when ``values`` is empty."""
    if len(values) == 0:
        return np.full(values.shape[1:], np.nan)
    return np.cumsum(values, axis=0)[-1] / len(values)


def compute_map(ranks: np.ndarray, gnd: Sequence[Mapping[str, Any]], kappas: Sequence[int] = KAPPAS,
                num_database: int | None = None) -> RetrievalResult:
    """mAP, mP@k and mR@k of revisitop rankings against ``"ok"`` / ``"junk"`` ground truth.

    Args:
        ranks: Database indices ``[n_ranked, nq]``, best first, one column per query.
        gnd: ``nq`` dicts with ``"ok"`` (positives, no repeats) and optional ``"junk"`` index vectors.
        kappas: Cut-offs ``k`` of P@k and R@k.
        num_database: Database size, to check the indices of ``ranks``.
    """
    ranks = check_ranks(ranks, len(gnd), num_database)
    ks = _kappas(kappas)
    nq = len(gnd)
    aps = np.full(nq, np.nan)
    prs, rcs = np.full((nq, len(ks)), np.nan), np.full((nq, len(ks)), np.nan)
    skipped = []
    for i, g in enumerate(gnd):
        ok = _index_vector(g["ok"], f"gnd[{i}]['ok']")
        if len(np.unique(ok)) != len(ok):
            raise ValueError(f"gnd[{i}]['ok'] lists a database index twice")
        if len(ok) == 0:
            skipped.append(i)
            continue
        junk = _index_vector(g.get("junk", ()), f"gnd[{i}]['junk']")
        pos = positive_ranks(ranks[:, i], ok, junk)
        aps[i] = compute_ap(pos, len(ok))
        prs[i], rcs[i] = precision_recall_at(pos, len(ok), ks)
    valid = ~np.isnan(aps)
    return RetrievalResult(float(_sequential_mean(aps[valid])), aps, _sequential_mean(prs[valid]), prs,
                           _sequential_mean(rcs[valid]), rcs, ks, tuple(skipped))


def _vec(g: Mapping[str, Any], key: str, i: int) -> np.ndarray:
    if key not in g:
        raise KeyError(f"gnd[{i}] has no {key!r} (keys: {sorted(g)})")
    return _index_vector(g[key], f"gnd[{i}][{key!r}]")


def revisited_gnd(gnd: Sequence[Mapping[str, Any]], protocol: RevisitedProtocol) -> list[dict[str, np.ndarray]]:
    """``"ok"`` / ``"junk"`` ground truth of a revisited protocol from ``easy`` / ``hard`` / ``junk`` entries.

    Easy: ok = easy, junk = junk + hard. Medium: ok = easy + hard, junk = junk. Hard: ok = hard,
    junk = junk + easy (revisitop's ``example_evaluate.py``).
    """
    if protocol not in REVISITED_PROTOCOLS:
        raise ValueError(f"protocol must be one of {', '.join(REVISITED_PROTOCOLS)}, got {protocol!r}")
    out = []
    for i, g in enumerate(gnd):
        easy, hard, junk = _vec(g, "easy", i), _vec(g, "hard", i), _vec(g, "junk", i)
        ok_junk = {"easy": (easy, np.r_[junk, hard]), "medium": (np.r_[easy, hard], junk),
                   "hard": (hard, np.r_[junk, easy])}[protocol]
        out.append({"ok": ok_junk[0], "junk": ok_junk[1]})
    return out


def classic_gnd(gnd: Sequence[Mapping[str, Any]]) -> list[dict[str, np.ndarray]]:
    """``"ok"`` / ``"junk"`` of the original Oxford5k / Paris6k protocol (good + ok are positives).

    Entries of the original ground truth (``gnd_oxford5k.pkl``) carry ``"ok"`` already; revisited
    entries give ``ok = easy + hard`` (which equals the Medium protocol).
    """
    out = []
    for i, g in enumerate(gnd):
        ok = _vec(g, "ok", i) if "ok" in g else np.r_[_vec(g, "easy", i), _vec(g, "hard", i)]
        out.append({"ok": ok, "junk": _vec(g, "junk", i) if "junk" in g else np.zeros(0, np.int64)})
    return out


def evaluate_revisited(ranks: np.ndarray, gnd: Sequence[Mapping[str, Any]], kappas: Sequence[int] = KAPPAS,
                       num_database: int | None = None) -> dict[str, RetrievalResult]:
    """ROxford5k / RParis6k evaluation: ``{"easy", "medium", "hard"}`` -> metrics (see ``compute_map``)."""
    return {p: compute_map(ranks, revisited_gnd(gnd, p), kappas, num_database) for p in REVISITED_PROTOCOLS}


def evaluate_classic(ranks: np.ndarray, gnd: Sequence[Mapping[str, Any]], kappas: Sequence[int] = KAPPAS,
                     num_database: int | None = None) -> dict[str, RetrievalResult]:
    """Original Oxford5k / Paris6k evaluation: ``{"classic"}`` -> metrics (see ``classic_gnd``)."""
    return {"classic": compute_map(ranks, classic_gnd(gnd), kappas, num_database)}


def ranks_from_scores(scores: np.ndarray) -> np.ndarray:
    """Revisitop ranks ``[db, nq]`` from similarities ``[nq, db]`` (higher is more similar).

    Ties are broken by the lower database index first (a stable sort), so the ranking, and every
    metric, is deterministic; revisitop's ``np.argsort(-sim, axis=0)`` leaves ties to quicksort.
    """
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 2:
        raise ValueError(f"scores must have shape [nq, db], got {list(s.shape)}")
    if not np.all(np.isfinite(s)):
        raise ValueError("scores must be finite")
    return np.ascontiguousarray(np.argsort(-s, axis=1, kind="stable").T)
