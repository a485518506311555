"""Partial hard-negative mining with a descriptor cache (NetVLAD, VG benchmark ``partial``).

Every ``refresh_every`` optimiser steps the cache is emptied and the descriptors of ``candidates`` places
drawn at random (seeded by the refresh's step) are recomputed by the caller's ``encode`` (no grad, eval
mode). For each query of a batch, ``select``:

- the positive is the nearest in descriptor space among the query's positives (those within 10 m,
  ``data.Pairs``), NetVLAD's rule;
- the negatives are the query's ``num_negatives`` nearest in descriptor space among the cached candidates
  that are its negatives (beyond 25 m, another traversal): nearest first, so the triplets that violate the
  margin (``d_neg < d_pos + margin``) come first; a query with fewer such candidates is topped up with
  random negatives of its own.

Query and positive descriptors missing from the cache are computed on demand and kept until the next
refresh, so every distance compared comes from a model at most ``refresh_every`` steps old. Descriptors
are ``[n, D]`` float32 on the CPU, L2-normalised, compared by L2 distance.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from visloc.train.event_vpr.data import Pairs

#: place rows ``[n]`` -> their descriptors ``[n, D]`` (no grad)
Encode = Callable[[np.ndarray], torch.Tensor]


class MiningCache:
    """The descriptor cache and the triplet choice (module docstring).

    Args:
        pairs: the split rule's queries, positives and negatives.
        num_places: ``P``, the rows candidates are drawn from.
        num_negatives: ``K``.
        candidates: places recomputed per refresh.
        refresh_every: optimiser steps between refreshes.
        seed: seed of the candidate draws and top-ups.
    """

    def __init__(self, pairs: Pairs, num_places: int, num_negatives: int, candidates: int, refresh_every: int,
                 seed: int = 0) -> None:
        self.pairs, self.num_places = pairs, num_places
        self.num_negatives, self.candidates, self.refresh_every, self.seed = (num_negatives, candidates,
                                                                              refresh_every, seed)
        self.refreshed_at: int | None = None
        self.rows = np.zeros(0, np.int64)  # the candidates of the current refresh
        self._desc: dict[int, torch.Tensor] = {}
        self.encoded = 0  # descriptors computed since construction (monitoring, tests)

    def stale(self, step: int) -> bool:
        """Whether optimiser step ``step`` needs a refresh first."""
        return self.refreshed_at is None or step - self.refreshed_at >= self.refresh_every

    def refresh(self, encode: Encode, step: int) -> None:
        """Empty the cache and encode a fresh random draw of candidates."""
        rng = np.random.default_rng((self.seed, step))
        n = min(self.candidates, self.num_places)
        self.rows = np.sort(rng.choice(self.num_places, n, replace=False)).astype(np.int64)
        self._desc = {}
        self.refreshed_at = step
        self.descriptors(self.rows, encode)

    def descriptors(self, rows: np.ndarray, encode: Encode) -> torch.Tensor:
        """``[n, D]`` of ``rows``, encoding (and keeping) those not cached."""
        missing = np.unique([int(r) for r in rows if int(r) not in self._desc]).astype(np.int64)
        if len(missing):
            desc = encode(missing).detach().float().cpu()
            self.encoded += len(missing)
            self._desc.update({int(r): d for r, d in zip(missing, desc, strict=True)})
        return torch.stack([self._desc[int(r)] for r in rows])

    def select(self, query_ids: np.ndarray, encode: Encode, step: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Rows of the queries ``[B]``, their positives ``[B]`` and negatives ``[B, K]`` (module docstring).

        Args:
            query_ids: positions in ``pairs.queries``.
            encode: computes descriptors (no grad).
            step: the optimiser step (refreshes first when the cache is stale).
        """
        if self.stale(step):
            self.refresh(encode, step)
        rng = np.random.default_rng((self.seed, step, *map(int, query_ids)))
        q_rows = self.pairs.queries[query_ids]
        q_desc = self.descriptors(q_rows, encode)
        pos_out = np.empty(len(q_rows), np.int64)
        neg_out = np.empty((len(q_rows), self.num_negatives), np.int64)
        for i, qi in enumerate(query_ids):
            positives = self.pairs.positives[int(qi)]
            d_pos = (self.descriptors(positives, encode) - q_desc[i]).norm(dim=1)
            pos_out[i] = positives[int(d_pos.argmin())]
            neg_out[i] = self._hardest(self.pairs.negatives[int(qi)], q_desc[i], encode, rng)
        return q_rows, pos_out, neg_out

    def _hardest(self, negatives: np.ndarray, q_desc: torch.Tensor, encode: Encode,
                 rng: np.random.Generator) -> np.ndarray:
        k = self.num_negatives
        cand = self.rows[np.isin(self.rows, negatives)]
        chosen = np.zeros(0, np.int64)
        if len(cand):
            d = (self.descriptors(cand, encode) - q_desc).norm(dim=1)
            chosen = cand[torch.argsort(d, stable=True)[:k].numpy()]
        if len(chosen) < k:  # too few cached candidates are this query's negatives: random ones of its own
            rest = np.setdiff1d(negatives, chosen)
            pool = rest if len(rest) else negatives
            chosen = np.concatenate([chosen, rng.choice(pool, k - len(chosen), replace=len(pool) < k - len(chosen))])
        return chosen.astype(np.int64)


__all__ = ["Encode", "MiningCache"]
