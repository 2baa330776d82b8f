"""BEIR-style retrieval: exhaustive search over a corpus, scored with ranx (pytrec_eval semantics).

Follows BEIR's protocol so numbers compare with published ones: only queries that appear in the
qrels file are evaluated, passages are ``title + " " + text`` stripped, and the search is exact
(flat inner product over normalised vectors, i.e. cosine; Hamming for binary strategies). Unlike
BEIR's ``EvaluateRetrieval.evaluate`` default, hits whose id equals the query id are *not* dropped:
nothing is excluded. Metrics are reported x100 ("points").
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from embedsvc.errors import InvalidArgument
from embedsvc.eval.cache import cached_encode
from embedsvc.eval.data import read_corpus, read_qrels, read_queries
from embedsvc.strategies.base import Role, Strategy


def search(
    strategy: Strategy, doc_vecs: np.ndarray, query_vecs: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` (scores, row indices) per query; higher score is better.

    Dense: ``IndexFlatIP``. Binary: ``IndexBinaryFlat``, with the Hamming distance ``h`` turned
    into the similarity ``1 - 2h/bits`` so both kinds rank by "higher is better".
    """
    k = min(k, doc_vecs.shape[0])
    if strategy.output_kind == "binary":
        bits = doc_vecs.shape[1] * 8
        index = faiss.IndexBinaryFlat(bits)
        index.add(np.ascontiguousarray(doc_vecs, dtype=np.uint8))
        dist, idx = index.search(np.ascontiguousarray(query_vecs, dtype=np.uint8), k)
        return 1.0 - 2.0 * dist.astype(np.float64) / bits, idx
    index = faiss.IndexFlatIP(doc_vecs.shape[1])
    index.add(np.ascontiguousarray(doc_vecs, dtype=np.float32))
    scores, idx = index.search(np.ascontiguousarray(query_vecs, dtype=np.float32), k)
    return scores.astype(np.float64), idx


def score_run(
    qrels: dict[str, dict[str, int]],
    run: dict[str, dict[str, float]],
    k_values: Sequence[int] = (10, 100),
) -> dict[str, float]:
    """``ndcg@k`` and ``recall@k`` for every k, x100, averaged over the qrels' queries.

    A query without any retrieved document scores 0 (as pytrec_eval would).
    """
    from ranx import Qrels, Run, evaluate

    ks = sorted({int(k) for k in k_values})
    if not ks or ks[0] < 1:
        raise InvalidArgument(f"k_values must be positive integers, got {list(k_values)}")
    metrics = [f"ndcg@{k}" for k in ks] + [f"recall@{k}" for k in ks]
    full_run = {q: dict(run.get(q) or {}) for q in qrels}
    # ranx rejects empty rankings; a sentinel id that no qrels mention scores 0 for that query.
    for docs in full_run.values():
        if not docs:
            docs["\x00no-result"] = 0.0
    scores = evaluate(Qrels(qrels), Run(full_run), metrics)
    if isinstance(scores, float):
        scores = {metrics[0]: scores}
    return {m: float(v) * 100.0 for m, v in scores.items()}


def score_matrix(
    qrels: dict[str, dict[str, int]],
    qids: Sequence[str],
    doc_ids: Sequence[str],
    scores: np.ndarray,
    depth: int = 100,
) -> dict[str, float]:
    """:func:`score_run` of a dense ``[len(qids), len(doc_ids)]`` score matrix, each query's top
    ``depth`` documents ranked (for evaluations that score a small corpus exhaustively)."""
    top = np.argsort(-scores, axis=1)[:, :depth]
    run = {qid: {doc_ids[j]: float(scores[i, j]) for j in top[i]} for i, qid in enumerate(qids)}
    return score_run(qrels, run)


def judged_subset(
    doc_ids: Sequence[str], qrels: dict[str, dict[str, int]], max_docs: int, seed: int = 0
) -> list[str]:
    """Every document a query is judged against, then seeded random distractors up to
    ``max_docs`` (all judged ones are kept even past it), in corpus order.

    For strategies too slow to encode a whole corpus on a CPU: the subset is easier than the
    full corpus (fewer distractors), so compare rows scored on the same subset only.
    """
    judged = {d for q in qrels.values() for d in q}
    others = [d for d in doc_ids if d not in judged]
    random.Random(seed).shuffle(others)
    keep = judged | set(others[: max(0, max_docs - len(judged))])
    return [d for d in doc_ids if d in keep]


def _run_of(qids, doc_ids, scores, idx) -> dict[str, dict[str, float]]:
    return {
        q: {doc_ids[j]: float(sc) for sc, j in zip(scores[qi], idx[qi], strict=True) if j >= 0}
        for qi, q in enumerate(qids)
    }


def _ndcg10(qrels: dict[str, dict[str, int]]):
    return lambda run: score_run(qrels, {q: run[q] for q in qrels}, (10,))["ndcg@10"]


def _prefixed(prefix: str, metrics: dict[str, float]) -> dict[str, float]:
    return {f"{prefix}/{k}": v for k, v in metrics.items()}


def evaluate_retrieval(
    strategy: Strategy,
    corpus: str | Path,
    queries: str | Path,
    qrels: str | Path,
    k_values: Sequence[int] = (10, 100),
    max_docs: int | None = None,
    bm25: bool = False,
    tune_qrels: str | Path | None = None,
    **cache: Any,
) -> dict[str, Any]:
    """nDCG@k and Recall@k (x100) of exact search with ``strategy`` on a BEIR dataset.

    ``max_docs`` scores a :func:`judged_subset` of the corpus instead of all of it.
    ``cache`` is passed to :func:`embedsvc.eval.cache.cached_encode` (``cache_dir``,
    ``use_cache``); the corpus embeddings are what makes a second run fast.

    A *dual* strategy (one with ``sparse_vocab``, e.g. ``dupmae_dual``) is scored as it
    serves: dense top-100 and exact sparse top-100 fused with its ``fusion_weight``; the
    channels alone are reported as ``dense/...`` and ``sparse/...``.

    ``bm25`` adds the peer rows ``bm25/...`` (``bm25s`` defaults) and ``hybrid/...``: BM25 and
    this strategy's dense channel fused the same way (convex, min-max over each top-100). The
    hybrid weight (and, for a dual strategy, ``tuned/...``: its own fusion re-tuned) is chosen
    on ``tune_qrels`` (judged queries from the same queries file, e.g. the train split), never
    on ``qrels``; without ``tune_qrels`` the hybrid uses 0.5.
    """
    from embedsvc.indexes.fusion import fuse_runs, tune_weight

    start = time.perf_counter()
    docs = read_corpus(corpus)
    all_queries = read_queries(queries)
    judged = read_qrels(qrels)
    tune = read_qrels(tune_qrels) if tune_qrels is not None else {}
    for path, rels in ((qrels, judged), (tune_qrels, tune)):
        missing = [q for q in rels if q not in all_queries]
        if missing:
            raise InvalidArgument(
                f"{path}: {len(missing)} judged query id(s) not in {queries}, e.g. {missing[0]!r}"
            )
    overlap = set(tune) & set(judged)
    if overlap:
        raise InvalidArgument(
            f"--tune-qrels shares {len(overlap)} queries with --qrels: tune on other queries"
        )
    qids = list(judged) + [q for q in tune if q not in judged]
    doc_ids = list(docs)
    if max_docs is not None:
        doc_ids = judged_subset(doc_ids, judged, max_docs)
    passages = [docs[d].passage() for d in doc_ids]
    q_texts = [all_queries[q] for q in qids]
    depth = max(max(k_values), 100)
    dual = getattr(strategy, "sparse_vocab", None) is not None
    if dual:
        from embedsvc.eval.cache import cached_encode_dual
        from embedsvc.indexes.sparse import SparseIndex

        doc_vecs, doc_sparse = cached_encode_dual(
            strategy, passages, Role.PASSAGE, desc="corpus", **cache
        )
        query_vecs, query_sparse = cached_encode_dual(
            strategy, q_texts, Role.QUERY, desc="queries", **cache
        )
        sindex = SparseIndex(doc_sparse.shape[1])  # type: ignore[union-attr]
        sindex.add(np.arange(len(doc_ids)), doc_sparse)
        sparse_run = _run_of(qids, doc_ids, *sindex.search(query_sparse, depth))
    else:
        doc_vecs = cached_encode(strategy, passages, Role.PASSAGE, desc="corpus", **cache)
        query_vecs = cached_encode(strategy, q_texts, Role.QUERY, desc="queries", **cache)
    dense_run = _run_of(qids, doc_ids, *search(strategy, doc_vecs, query_vecs, depth))
    result: dict[str, Any] = {
        "task": "retrieval",
        "strategy": strategy.name,
        "corpus": str(corpus),
        "queries": str(queries),
        "qrels": str(qrels),
    }
    if max_docs is not None:
        result["subset"] = f"judged documents + seeded (0) distractors up to {max_docs}"
    if dual:
        weight = float(strategy.fusion_weight)  # type: ignore[attr-defined]
        main_run = fuse_runs(dense_run, sparse_run, weight, depth)
        result["fusion_weight"] = weight
    else:
        main_run = dense_run
    result.update(score_run(judged, {q: main_run[q] for q in judged}, k_values))
    if dual:
        result.update(_prefixed("dense", score_run(judged, dense_run, k_values)))
        result.update(_prefixed("sparse", score_run(judged, sparse_run, k_values)))
        if tune:
            w, _ = tune_weight(_ndcg10(tune), dense_run, sparse_run)
            result["tuned/fusion_weight"] = w
            tuned = fuse_runs(dense_run, sparse_run, w, depth)
            result.update(_prefixed("tuned", score_run(judged, tuned, k_values)))
    if bm25:
        from embedsvc.eval.bm25 import bm25_run

        b_run = bm25_run(doc_ids, passages, qids, q_texts, depth)
        result.update(_prefixed("bm25", score_run(judged, b_run, k_values)))
        w = tune_weight(_ndcg10(tune), dense_run, b_run)[0] if tune else 0.5
        result["hybrid/weight"] = w
        hybrid = fuse_runs(dense_run, b_run, w, depth)
        result.update(_prefixed("hybrid", score_run(judged, hybrid, k_values)))
        if tune:
            result["hybrid/tuned_on"] = str(tune_qrels)
    result.update(n_queries=len(judged), n_docs=len(doc_ids), seconds=time.perf_counter() - start)
    return result
