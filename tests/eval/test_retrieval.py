"""Retrieval metrics on a handmade BEIR set whose scores are worked out by hand."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest

from embedsvc.errors import InvalidArgument
from embedsvc.eval.retrieval import evaluate_retrieval, score_run
from embedsvc.strategies.base import Embedding, Role, Strategy


class VectorText(Strategy):
    """Test double: a text *is* its vector, written as numbers ("0 0.5 0.4 0.8")."""

    name: ClassVar[str] = "vector-text"
    output_kind: ClassVar[str] = "dense"

    dim = 4
    max_tokens = 512
    model_fingerprint = "vector-text-v1"

    def count_tokens(self, texts, role=Role.PASSAGE):
        return [len(t.split()) for t in texts]

    def encode(self, texts, role=Role.PASSAGE, *, normalize=True, truncate=True):
        v = np.array([[float(x) for x in t.split()] for t in texts], dtype=np.float32)
        if normalize:
            v /= np.linalg.norm(v, axis=1, keepdims=True)
        n = np.zeros(len(texts), dtype=np.int64)
        return Embedding("dense", v, 4, n, n)


def write_beir(root: Path, queries: dict[str, str], qrels: list[tuple[str, str, int]]) -> Path:
    docs = {"d1": "1 0 0 0", "d2": "0 1 0 0", "d3": "0 0 1 0", "d4": "0 0 0 1"}
    with open(root / "corpus.jsonl", "w") as fh:
        for i, (d, text) in enumerate(docs.items()):
            # the title is joined in front (BEIR); an empty title must not change the vector
            fh.write(json.dumps({"_id": d, "title": "" if i % 2 else "  ", "text": text}) + "\n")
    with open(root / "queries.jsonl", "w") as fh:
        for q, text in queries.items():
            fh.write(json.dumps({"_id": q, "text": text, "metadata": {}}) + "\n")
    lines = ["query-id\tcorpus-id\tscore"] + [f"{q}\t{d}\t{r}" for q, d, r in qrels]
    (root / "qrels.tsv").write_bytes(("\r\n".join(lines) + "\r\n").encode())
    return root


def run_eval(root: Path, k_values=(10, 100)) -> dict:
    return evaluate_retrieval(
        VectorText(),
        root / "corpus.jsonl",
        root / "queries.jsonl",
        root / "qrels.tsv",
        k_values=k_values,
        cache_dir=root / "cache",
    )


QRELS = [("q1", "d1", 1), ("q2", "d2", 1), ("q2", "d3", 1)]


def test_perfect_ranking(tmp_path: Path) -> None:
    write_beir(tmp_path, {"q1": "1 0 0 0.1", "q2": "0 1 0.9 0", "q3": "1 1 1 1"}, QRELS)
    res = run_eval(tmp_path)
    assert res["ndcg@10"] == pytest.approx(100.0)
    assert res["recall@100"] == pytest.approx(100.0)
    # q3 has no judgements: it is not evaluated
    assert (res["n_queries"], res["n_docs"]) == (2, 4)
    assert res["seconds"] >= 0


def test_known_permutation(tmp_path: Path) -> None:
    # q1 ranks d4 (0.8) > d1 (0.6); q2 ranks d4 (0.8) > d2 (0.5) > d3 (0.4) > d1.
    write_beir(tmp_path, {"q1": "0.6 0 0 0.8", "q2": "0 0.5 0.4 0.8"}, QRELS)
    res = run_eval(tmp_path, k_values=(2, 10, 100))
    q1 = 1 / math.log2(3)  # relevant d1 at rank 2, ideal DCG 1
    q2 = (1 / math.log2(3) + 1 / math.log2(4)) / (1 + 1 / math.log2(3))  # ranks 2, 3
    assert res["ndcg@10"] == pytest.approx(100 * (q1 + q2) / 2)  # 66.218
    assert res["ndcg@10"] == pytest.approx(66.218, abs=1e-3)
    assert res["recall@2"] == pytest.approx(100 * (1.0 + 0.5) / 2)
    assert res["recall@100"] == pytest.approx(100.0)


def test_unretrievable_judged_doc_counts_against_recall(tmp_path: Path) -> None:
    write_beir(tmp_path, {"q1": "1 0 0 0", "q2": "0 1 1 0"}, QRELS + [("q1", "gone", 1)])
    res = run_eval(tmp_path)
    assert res["recall@100"] == pytest.approx(100 * (0.5 + 1.0) / 2)


def test_query_without_results_scores_zero() -> None:
    qrels = {"a": {"x": 1}, "b": {"y": 1}}
    out = score_run(qrels, {"a": {"x": 1.0}}, k_values=(10,))
    assert out["ndcg@10"] == pytest.approx(50.0)


def test_judged_query_missing_from_queries_file(tmp_path: Path) -> None:
    write_beir(tmp_path, {"q1": "1 0 0 0"}, QRELS)
    with pytest.raises(InvalidArgument, match="not in"):
        run_eval(tmp_path)


def test_score_matrix_ranks_each_query_over_the_whole_matrix():
    import numpy as np

    from embedsvc.eval.retrieval import score_matrix

    qrels = {"q1": {"a": 1}, "q2": {"c": 1}}
    scores = np.array([[0.9, 0.1, 0.5], [0.2, 0.3, 0.1]])
    result = score_matrix(qrels, ["q1", "q2"], ["a", "b", "c"], scores, depth=2)
    # q1 finds "a" first; q2's relevant "c" scores lowest and falls outside depth 2
    assert result["ndcg@10"] == 50.0 and result["recall@100"] == 50.0


def test_judged_subset_keeps_every_judged_doc_and_is_seeded():
    from embedsvc.eval.retrieval import judged_subset

    ids = [f"d{i}" for i in range(100)]
    qrels = {"q1": {"d7": 1}, "q2": {"d42": 1, "d99": 1}}
    subset = judged_subset(ids, qrels, 10)
    assert len(subset) == 10 and {"d7", "d42", "d99"} <= set(subset)
    assert subset == sorted(subset, key=ids.index)  # corpus order
    assert subset == judged_subset(ids, qrels, 10)  # same seed, same distractors
    assert judged_subset(ids, qrels, 2) == ["d7", "d42", "d99"]  # judged kept past max_docs


def test_max_docs_scores_the_subset(tmp_path: Path) -> None:
    write_beir(tmp_path, {"q1": "0.9 0 0 0.5", "q2": "0 1 0.2 0"}, QRELS)
    result = evaluate_retrieval(
        VectorText(),
        tmp_path / "corpus.jsonl",
        tmp_path / "queries.jsonl",
        tmp_path / "qrels.tsv",
        max_docs=3,
        cache_dir=tmp_path / "cache",
    )
    # d1, d2, d3 are judged; d4 (q1's runner-up distractor) is dropped
    assert result["n_docs"] == 3 and "subset" in result
    assert result["ndcg@10"] == 100.0
