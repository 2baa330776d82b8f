"""`embedsvc eval compare` and the BM25, hybrid and dual rows of `eval retrieval` (tiny corpus)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
from scipy import sparse
from typer.testing import CliRunner

from embedsvc.errors import InvalidArgument
from embedsvc.eval.cli import eval_app
from embedsvc.eval.retrieval import evaluate_retrieval
from embedsvc.strategies.base import Embedding, Role, Strategy

WORDS = [
    "alpha",
    "beta",
    "gamma",
    "delta",
    "epsilon",
    "zeta",
    "eta",
    "theta",
    "iota",
    "kappa",
    "lambda",
    "omicron",
]


def write_tiny(root: Path) -> Path:
    """12 documents of distinct word pairs; query i asks for the words of document i."""
    docs = {f"d{i}": f"{WORDS[i]} {WORDS[(i + 1) % 12]} common filler" for i in range(12)}
    with open(root / "corpus.jsonl", "w") as fh:
        for d, text in docs.items():
            fh.write(json.dumps({"_id": d, "title": "", "text": text}) + "\n")
    with open(root / "queries.jsonl", "w") as fh:
        for i in range(12):
            text = f"{WORDS[i]} {WORDS[(i + 1) % 12]}"
            fh.write(json.dumps({"_id": f"q{i}", "text": text, "metadata": {}}) + "\n")
    for name, qs in (("test.tsv", range(0, 8)), ("tune.tsv", range(8, 12))):
        lines = ["query-id\tcorpus-id\tscore"] + [f"q{i}\td{i}\t1" for i in qs]
        (root / name).write_text("\r\n".join(lines) + "\r\n")
    return root


class TinyDual(Strategy):
    """Test double of a dual strategy: dense = random (uninformative), sparse = word counts."""

    name: ClassVar[str] = "tiny-dual"
    output_kind: ClassVar[str] = "dense"
    dim = 8
    max_tokens = 64
    model_fingerprint = "tiny-dual-v1"
    sparse_vocab = len(WORDS) + 2
    fusion_weight = 0.3

    def count_tokens(self, texts, role=Role.PASSAGE):
        return [len(t.split()) for t in texts]

    def encode(self, texts, role=Role.PASSAGE, *, normalize=True, truncate=True):
        rng = np.random.default_rng([len(t) for t in texts])
        v = rng.standard_normal((len(texts), 8)).astype(np.float32)
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        vocab = {w: i for i, w in enumerate(WORDS)}
        rows, cols = [], []
        for r, t in enumerate(texts):
            for w in set(t.split()):
                rows.append(r)
                cols.append(vocab.get(w, len(WORDS)))
        emb = Embedding(
            "dense", v, 8, np.zeros(len(texts), np.int64), np.zeros(len(texts), np.int64)
        )
        emb.sparse = sparse.csr_matrix(
            (np.ones(len(rows), np.float32), (rows, cols)), shape=(len(texts), self.sparse_vocab)
        )
        return emb


def test_dual_strategy_is_scored_fused_with_its_weight(tmp_path: Path) -> None:
    root = write_tiny(tmp_path)
    res = evaluate_retrieval(
        TinyDual(),
        root / "corpus.jsonl",
        root / "queries.jsonl",
        root / "test.tsv",
        tune_qrels=root / "tune.tsv",
        bm25=True,
        cache_dir=root / "cache",
    )
    assert res["fusion_weight"] == 0.3
    assert res["sparse/ndcg@10"] == pytest.approx(100.0)  # exact word match finds every doc
    assert res["ndcg@10"] > res["dense/ndcg@10"]
    assert res["bm25/ndcg@10"] == pytest.approx(100.0)
    assert 0.0 <= res["tuned/fusion_weight"] <= 1.0 and 0.0 <= res["hybrid/weight"] <= 1.0
    assert res["n_queries"] == 8
    # a second run reads both parts from the cache
    again = evaluate_retrieval(
        TinyDual(),
        root / "corpus.jsonl",
        root / "queries.jsonl",
        root / "test.tsv",
        cache_dir=root / "cache",
    )
    assert again["ndcg@10"] == res["ndcg@10"]


def test_tuning_on_the_reported_queries_is_refused(tmp_path: Path) -> None:
    root = write_tiny(tmp_path)
    with pytest.raises(InvalidArgument, match="tune on other queries"):
        evaluate_retrieval(
            TinyDual(),
            root / "corpus.jsonl",
            root / "queries.jsonl",
            root / "test.tsv",
            tune_qrels=root / "test.tsv",
            cache_dir=root / "cache",
        )


def test_compare_command_prints_one_table_and_plots(tmp_path: Path) -> None:
    root = write_tiny(tmp_path)
    args = [
        "compare",
        "--task",
        "retrieval",
        "--strategies",
        "debug,debug_binary",
        "--corpus",
        str(root / "corpus.jsonl"),
        "--queries",
        str(root / "queries.jsonl"),
        "--qrels",
        str(root / "test.tsv"),
        "--tune-qrels",
        str(root / "tune.tsv"),
        "--cache-dir",
        str(root / "cache"),
        "--sample",
        "4",
    ]
    out = CliRunner().invoke(eval_app, [*args, "--json", "--plot", str(tmp_path / "c.png")])
    assert out.exit_code == 0, out.output
    result = json.loads(out.stdout.strip().splitlines()[-1])
    names = [r["name"] for r in result["rows"]]
    assert names == ["debug", "bm25", "bm25+debug", "debug_binary", "bm25+debug_binary"]
    by = {r["name"]: r for r in result["rows"]}
    assert by["debug"]["bytes_per_doc"] == 32 * 4
    assert by["debug_binary"]["bytes_per_doc"] == 256 / 8
    assert by["bm25"]["quality"] == pytest.approx(100.0)
    assert all(r["encode_ms"] >= 0 for r in result["rows"])
    assert (tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG"
    table = CliRunner().invoke(eval_app, args)
    assert table.exit_code == 0, table.output
    assert "bm25+debug" in table.stdout and "bytes/doc" in table.stdout


def test_compare_usage_errors_exit_2(tmp_path: Path) -> None:
    out = CliRunner().invoke(eval_app, ["compare", "--task", "retrieval", "--strategies", "debug"])
    assert out.exit_code == 2
    out = CliRunner().invoke(eval_app, ["compare", "--task", "nope", "--strategies", "debug"])
    assert out.exit_code == 2
