"""``embedsvc eval compare``: several strategies and the BM25 peer through one harness, one table.

Each row: quality (nDCG@10 and Recall@100 for retrieval, Spearman x100 for STS), encode
milliseconds per text (wall clock of ``Strategy.encode`` on a fixed sample of passages after a
warm-up; only meaningful on a quiet machine, which the caller states), bytes stored per document
(dense float32 = 4 x dim, binary = dim / 8, plus payload bytes and, for a dual strategy, 8 bytes
per sparse nonzero), and the index kind. Retrieval adds ``bm25`` and ``bm25+<strategy>`` hybrid
rows (:func:`embedsvc.eval.retrieval.evaluate_retrieval` with ``bm25=True``).
:func:`plot` draws quality against encode cost (matplotlib), one labelled point per row.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from embedsvc.errors import FailedPrecondition
from embedsvc.strategies.base import Role, Strategy

#: the encoder strategies compared by default (decoder-LLM ones only on request)
DEFAULT_STRATEGIES = ("mean", "dupmae_dual", "dupmae", "btr", "multisense", "multisense_student")


def encode_cost(strategy: Strategy, texts: Sequence[str], sample: int = 64) -> dict[str, Any]:
    """ms per text of ``encode`` on ``texts[:sample]`` (after a 4-text warm-up) and bytes per
    stored document."""
    texts = list(texts[:sample])
    strategy.encode(texts[:4], Role.PASSAGE)
    start = time.perf_counter()
    emb = strategy.encode(texts, Role.PASSAGE)
    ms = (time.perf_counter() - start) * 1000.0 / max(1, len(texts))
    if strategy.output_kind == "binary":
        per_doc = strategy.dim / 8
        kind = "binary flat (FAISS, Hamming)"
    else:
        per_doc = strategy.dim * 4
        kind = "flat (FAISS, inner product)"
    if emb.payloads is not None:
        per_doc += float(np.mean([len(p) for p in emb.payloads]))
        kind += " + re-rank payload"
    if emb.sparse is not None:
        per_doc += float(np.mean(emb.sparse.getnnz(axis=1))) * 8
        kind += " + exact sparse inverted (fused)"
    return {"encode_ms": ms, "bytes_per_doc": float(per_doc), "index_kind": kind}


def compare_retrieval(
    strategies: Sequence[str],
    corpus: str | Path,
    queries: str | Path,
    qrels: str | Path,
    *,
    bm25: bool = True,
    tune_qrels: str | Path | None = None,
    max_docs: int | None = None,
    sample: int = 64,
    **cache: Any,
) -> dict[str, Any]:
    from embedsvc.eval.bm25 import bm25_cost
    from embedsvc.eval.data import read_corpus
    from embedsvc.eval.retrieval import evaluate_retrieval
    from embedsvc.strategies import get_strategy

    passages = [d.passage() for d in read_corpus(corpus).values()]
    rows: list[dict[str, Any]] = []
    bm25_row: dict[str, Any] | None = None
    n_docs = n_queries = 0
    skipped: dict[str, str] = {}
    for name in strategies:
        try:
            strategy = get_strategy(name)
            res = evaluate_retrieval(
                strategy,
                corpus,
                queries,
                qrels,
                max_docs=max_docs,
                bm25=bm25,
                tune_qrels=tune_qrels,
                **cache,
            )
        except FailedPrecondition as exc:  # an artifact or dictionary not built here
            skipped[name] = exc.message
            continue
        cost = encode_cost(strategy, passages, sample)
        rows.append(
            {
                "name": name,
                "quality": res["ndcg@10"],
                "recall@100": res.get("recall@100"),
                **cost,
            }
        )
        if bm25 and bm25_row is None:
            bm25_row = {
                "name": "bm25",
                "quality": res["bm25/ndcg@10"],
                "recall@100": res.get("bm25/recall@100"),
                **bm25_cost(passages[:sample], passages),
            }
            rows.append(bm25_row)
        if bm25_row is not None:
            rows.append(
                {
                    # a dual strategy's hybrid uses its dense channel (for dupmae_dual: mean)
                    "name": f"bm25+{name}" + (".dense" if "dense/ndcg@10" in res else ""),
                    "quality": res["hybrid/ndcg@10"],
                    "recall@100": res.get("hybrid/recall@100"),
                    "encode_ms": cost["encode_ms"],
                    "bytes_per_doc": cost["bytes_per_doc"] + bm25_row["bytes_per_doc"],
                    "index_kind": f"hybrid (w={res['hybrid/weight']:.2f})",
                }
            )
        n_docs, n_queries = res["n_docs"], res["n_queries"]
    subset = f"judged + distractors up to {max_docs}" if max_docs else "full corpus"
    return {
        "task": "retrieval",
        "metric": "nDCG@10",
        "dataset": str(corpus),
        "qrels": str(qrels),
        "docs": subset,
        "n_docs": n_docs,
        "n_queries": n_queries,
        "tuned_on": str(tune_qrels) if tune_qrels else None,
        "rows": rows,
        "skipped": skipped,
    }


def compare_sts(strategies: Sequence[str], file: str | Path, sample: int = 64, **cache: Any):
    from embedsvc.eval.data import read_sts
    from embedsvc.eval.sts import evaluate_sts
    from embedsvc.strategies import get_strategy

    pairs = read_sts(file)
    rows, skipped = [], {}
    for name in strategies:
        try:
            strategy = get_strategy(name)
            res = evaluate_sts(strategy, file, **cache)
        except FailedPrecondition as exc:
            skipped[name] = exc.message
            continue
        cost = encode_cost(strategy, pairs.sentences1, sample)
        rows.append({"name": name, "quality": res["spearman"], **cost})
    return {
        "task": "sts",
        "metric": "Spearman x100",
        "dataset": str(file),
        "rows": rows,
        "skipped": skipped,
    }


def plot(result: dict[str, Any], path: str | Path) -> None:
    """Quality against encode ms per text (log x), one labelled point per row."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, row in enumerate(result["rows"]):
        x, y = max(row["encode_ms"], 1e-3), row["quality"]
        hybrid = "+" in row["name"]
        ax.scatter([x], [y], marker="s" if hybrid else "o", s=20 + row["bytes_per_doc"] / 40)
        # alternate label sides so points at the same place stay readable
        offset = (4, 4) if i % 2 == 0 else (4, -11)
        ax.annotate(row["name"], (x, y), textcoords="offset points", xytext=offset, fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("encode ms per text (log; marker area ~ bytes per document)")
    ax.set_ylabel(result["metric"])
    ax.set_title(f"{result['task']}: {Path(result['dataset']).parent.name or result['dataset']}")
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
