"""BM25 peer row with ``bm25s`` (Lù, "BM25S: Orders of magnitude faster lexical search via
eager sparse scoring", arXiv 2407.03618), at its defaults: Lucene BM25, k1 1.5, b 0.75,
``bm25s.tokenize`` with English stop words and no stemmer.

:func:`bm25_run` returns a ranx-style run ``{query id: {doc id: score}}`` of each query's top-k.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from embedsvc.errors import FailedPrecondition


def bm25_run(
    doc_ids: Sequence[str],
    passages: Sequence[str],
    qids: Sequence[str],
    queries: Sequence[str],
    k: int = 100,
) -> dict[str, dict[str, float]]:
    """Top-``k`` BM25 documents (positive scores only) per query."""
    try:
        import bm25s
    except ImportError:  # pragma: no cover - a declared dependency
        raise FailedPrecondition("the BM25 peer needs bm25s: pip install bm25s") from None

    retriever = bm25s.BM25()
    retriever.index(
        bm25s.tokenize(list(passages), stopwords="en", show_progress=False), show_progress=False
    )
    k = min(k, len(doc_ids))
    q_tokens = bm25s.tokenize(list(queries), stopwords="en", show_progress=False)
    idx, scores = retriever.retrieve(q_tokens, k=k, show_progress=False, n_threads=1)
    run: dict[str, dict[str, float]] = {}
    for qi, q in enumerate(qids):
        run[q] = {
            doc_ids[int(j)]: float(s) for j, s in zip(idx[qi], scores[qi], strict=True) if s > 0
        }
    return run


def bm25_cost(sample: Sequence[str], passages: Sequence[str]) -> dict[str, Any]:
    """ms per text of tokenising ``sample`` and bytes per document of the BM25 index (8 per
    unique term: a float32 score and an int32 document id per posting)."""
    import time

    import bm25s

    start = time.perf_counter()
    bm25s.tokenize(list(sample), stopwords="en", show_progress=False)
    ms = (time.perf_counter() - start) * 1000.0 / max(1, len(sample))
    tokens = bm25s.tokenize(list(passages), stopwords="en", show_progress=False)
    unique = [len(set(ids)) for ids in tokens.ids]
    return {
        "encode_ms": ms,
        "bytes_per_doc": 8.0 * sum(unique) / max(1, len(unique)),
        "index_kind": "inverted (bm25s)",
    }
