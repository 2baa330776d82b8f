"""Score fusion of two ranked lists (dense + sparse, or BM25 + dense).

* :func:`convex_fuse`: each list's scores min-max normalised to [0, 1] over *its own* top-N,
  then ``w * dense + (1 - w) * sparse`` on the union; a document missing from one list gets 0
  there (below that list's worst retrieved score). This is the hybrid the issue's peer row uses
  (Bruch et al., "An Analysis of Fusion Functions for Hybrid Retrieval", TOIS 2023: a tuned
  convex combination beats RRF when a few labelled queries exist).
* :func:`rrf_fuse`: reciprocal rank fusion (Cormack et al. 2009), ``sum 1 / (k + rank)``;
  needs no tuning.
* :func:`tune_weight`: the convex weight with the best mean nDCG@10 on labelled *selection*
  queries (never the reported ones).

Runs are ``{doc_id: score}`` per query; ties in the fused list are broken by id.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

Run = Mapping[str, float]


def minmax(run: Run) -> dict[str, float]:
    """Scores scaled to [0, 1] (all 1.0 when every score is equal)."""
    if not run:
        return {}
    lo, hi = min(run.values()), max(run.values())
    if hi <= lo:
        return {d: 1.0 for d in run}
    return {d: (s - lo) / (hi - lo) for d, s in run.items()}


def _ranked(scores: dict[str, float], k: int | None) -> list[tuple[str, float]]:
    ranked = sorted(scores.items(), key=lambda x: (-x[1], x[0]))
    return ranked if k is None else ranked[:k]


def convex_fuse(
    dense: Run, sparse: Run, weight: float, k: int | None = None
) -> list[tuple[str, float]]:
    """``weight * minmax(dense) + (1 - weight) * minmax(sparse)`` on the union, best first."""
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"fusion weight must be in [0, 1], got {weight}")
    nd, ns = minmax(dense), minmax(sparse)
    fused = {d: weight * nd.get(d, 0.0) + (1.0 - weight) * ns.get(d, 0.0) for d in {*nd, *ns}}
    return _ranked(fused, k)


def rrf_fuse(runs: Sequence[Run], k: int | None = None, rrf_k: int = 60) -> list[tuple[str, float]]:
    """Reciprocal rank fusion of any number of runs, best first."""
    fused: dict[str, float] = {}
    for run in runs:
        for rank, (doc, _) in enumerate(_ranked(dict(run), None), start=1):
            fused[doc] = fused.get(doc, 0.0) + 1.0 / (rrf_k + rank)
    return _ranked(fused, k)


def fuse_runs(
    dense: Mapping[str, Run],
    sparse: Mapping[str, Run],
    weight: float | None,
    k: int = 100,
) -> dict[str, dict[str, float]]:
    """Per-query fusion of two runs: convex with ``weight``, or RRF when ``weight`` is None."""
    out: dict[str, dict[str, float]] = {}
    for q in {*dense, *sparse}:
        d, s = dense.get(q, {}), sparse.get(q, {})
        ranked = rrf_fuse([d, s], k) if weight is None else convex_fuse(d, s, weight, k)
        out[q] = dict(ranked)
    return out


def tune_weight(
    score: Callable[[dict[str, dict[str, float]]], float],
    dense: Mapping[str, Run],
    sparse: Mapping[str, Run],
    grid: Sequence[float] = tuple(i / 20 for i in range(21)),
) -> tuple[float, dict[float, float]]:
    """The grid weight maximising ``score(fused run)`` (ties: the one nearest 0.5), and every
    weight's score."""
    table = {w: score(fuse_runs(dense, sparse, w)) for w in grid}
    best = max(table, key=lambda w: (round(table[w], 9), -abs(w - 0.5)))
    return best, table
