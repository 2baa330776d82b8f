"""Score DupMAE's channel ablations (CLS-only, OT-only, CLS+OT) and the ``mean`` baseline.

One encoder pass per text yields all three DupMAE vectors (``DupMAE.channel_vectors``), so the
ablations are scored on exactly the same inputs; ``embedsvc eval retrieval --strategy
dupmae_cls`` etc. give the same numbers on the full sets but encode three times.

CPU budget (2 shared cores): the OT channel needs ``[L, 30522]`` vocabulary logits per text,
so by default the sets are *documented subsets*: SciFact = every test-judged document + seeded
(0) random distractors up to ``--scifact-docs``, documents cut to ``--doc-tokens`` word pieces,
all 150 test queries; STS-B dev = a seeded (0) random ``--sts-pairs`` pairs (0 = all 1500).

    .venv/bin/python training/eval_dupmae.py --artifact dupmae/pretrained --out docs/results/x.json

``--tune-weight`` also picks the CLS weight ``w`` of the concatenation (inner product
``w cos_cls + (1-w) cos_ot``) on SciFact's *train* queries (``qrels/train.tsv``, disjoint from
the test queries) over the same documents, and scores the test queries at that ``w``
(``both_tuned``): model selection on a training split, never on the reported one.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

DATA = Path("/work/shared/data")


def scifact_subset(
    n_docs: int, doc_tokens: int, tokenizer: Any, tune_split: bool = False
) -> dict[str, Any]:
    from embedsvc.eval.data import read_corpus, read_qrels, read_queries

    root = DATA / "scifact"
    corpus = read_corpus(root / "corpus.jsonl.gz")
    qrels = read_qrels(root / "qrels/test.tsv")
    queries = read_queries(root / "queries.jsonl")
    judged = sorted({d for q in qrels.values() for d in q})
    others = sorted(set(corpus) - set(judged))
    random.Random(0).shuffle(others)
    doc_ids = judged + others[: max(0, n_docs - len(judged))]
    train_qrels: dict[str, dict[str, int]] = {}
    if tune_split:
        # train queries whose relevant documents are all in the scored documents
        kept = set(doc_ids)
        train_qrels = {
            q: rel for q, rel in read_qrels(root / "qrels/train.tsv").items() if set(rel) <= kept
        }

    def cut(text: str) -> str:
        ids = tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
        return text if len(ids) <= doc_tokens else tokenizer.decode(ids[:doc_tokens])

    qids = list(qrels)
    return {
        "doc_ids": doc_ids,
        "docs": [cut(corpus[d].passage()) for d in doc_ids],
        "qids": qids,
        "queries": [queries[q] for q in qids],
        "qrels": qrels,
        "train_qids": list(train_qrels),
        "train_queries": [queries[q] for q in train_qrels],
        "train_qrels": train_qrels,
    }


def dense(x: Any) -> np.ndarray:
    return x.toarray() if hasattr(x, "toarray") else np.asarray(x)


def sparse_hstack(parts: list[Any]) -> Any:
    from scipy.sparse import csr_matrix, hstack

    return hstack([csr_matrix(p) for p in parts]).tocsr()


def retrieval_scores(sf: dict[str, Any], q: Any, d: Any) -> dict[str, float]:
    from embedsvc.eval.retrieval import score_matrix

    return score_matrix(sf["qrels"], sf["qids"], sf["doc_ids"], dense(q @ d.T))


def tune_cls_weight(
    sf: dict[str, Any], qv: dict[str, Any], dv: dict[str, Any], ot: str = "ot"
) -> tuple[float, dict[str, float]]:
    """The CLS weight with the best train-query nDCG@10 (grid 0.05..0.95), and the grid."""
    from embedsvc.eval.retrieval import score_matrix

    s_cls, s_ot = qv["cls"] @ dv["cls"].T, dense(qv[ot] @ dv[ot].T)
    grid = {}
    for w in np.round(np.arange(0.05, 0.96, 0.05), 2):
        scores = w * s_cls + (1 - w) * s_ot
        grid[f"{w:.2f}"] = score_matrix(sf["train_qrels"], sf["train_qids"], sf["doc_ids"], scores)[
            "ndcg@10"
        ]
    best = max(grid, key=grid.__getitem__)
    return float(best), grid


def sts_scores(a: Any, b: Any, gold: np.ndarray) -> float:
    from scipy.stats import spearmanr

    a, b = dense(a), dense(b)
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12)
    return float(spearmanr(cos, gold).statistic) * 100.0


def main(argv: list[str] | None = None) -> None:
    import torch

    from embedsvc.strategies import create_strategy

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--artifact", default="dupmae/finetuned")
    parser.add_argument("--scifact-docs", type=int, default=300)
    parser.add_argument("--doc-tokens", type=int, default=96)
    parser.add_argument("--sts-pairs", type=int, default=200)
    parser.add_argument("--mean", action="store_true", help="also score the mean baseline")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--ot-dim", type=int, help="hash buckets of the OT channel (override)")
    parser.add_argument(
        "--tune-weight", action="store_true", help="pick the CLS weight on SciFact train queries"
    )
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from train_text2token import sts_subset

    t0 = time.time()
    dup = create_strategy("dupmae", artifact=args.artifact, batch_size=16, ot_dim=args.ot_dim)
    tok = dup.backbone.tokenizer
    sf = scifact_subset(args.scifact_docs, args.doc_tokens, tok, args.tune_weight)
    s1, s2, gold = sts_subset(DATA / "stsb/sts-dev.csv", args.sts_pairs)
    res: dict[str, Any] = {
        "artifact": args.artifact,
        "ot_dim": dup.ot_dim,
        "subset": {
            "scifact_docs": len(sf["doc_ids"]),
            "doc_tokens": args.doc_tokens,
            "queries": len(sf["qids"]),
            "sts_pairs": len(gold),
            "train_queries_for_tuning": len(sf["train_qids"]),
        },
        "command": " ".join([".venv/bin/python", *sys.argv]),
    }
    dv = dup.channel_vectors(sf["docs"], sparse=True)
    qv = dup.channel_vectors(sf["queries"], sparse=True)
    av, bv = dup.channel_vectors(s1, sparse=True), dup.channel_vectors(s2, sparse=True)
    w0 = dup.cls_weight
    for v in (dv, qv, av, bv):
        # the paper's form: exact sparse OT scores (no hashing), alone and beside CLS
        v["ot_exact"] = v["ot_sparse"]
        v["both_exact"] = sparse_hstack([np.sqrt(w0) * v["cls"], np.sqrt(1 - w0) * v["ot_sparse"]])
    for ch in ("cls", "ot", "both", "ot_exact", "both_exact"):
        r = retrieval_scores(sf, qv[ch], dv[ch])
        res[ch] = {
            "ndcg@10": r["ndcg@10"],
            "recall@100": r["recall@100"],
            "sts": sts_scores(av[ch], bv[ch], gold),
        }
        print(ch, res[ch], flush=True)
    if args.tune_weight:
        tv = dup.channel_vectors(sf["train_queries"], sparse=True)
        for ot, name in (("ot", "both_tuned"), ("ot_sparse", "both_exact_tuned")):
            w, grid = tune_cls_weight(sf, tv, dv, ot)

            def both(v: dict[str, Any], w: float = w, ot: str = ot) -> Any:
                return sparse_hstack([np.sqrt(w) * v["cls"], np.sqrt(1 - w) * v[ot]])

            r = retrieval_scores(sf, both(qv), both(dv))
            res[name] = {
                "cls_weight": w,
                "train_ndcg@10_by_weight": grid,
                "ndcg@10": r["ndcg@10"],
                "recall@100": r["recall@100"],
                "sts": sts_scores(both(av), both(bv), gold),
            }
            print(name, {k: v for k, v in res[name].items() if "by_weight" not in k}, flush=True)
    if args.mean:
        mean = create_strategy("mean", batch_size=16)
        d = mean.encode(sf["docs"]).vectors
        q = mean.encode(sf["queries"]).vectors
        r = retrieval_scores(sf, q, d)
        res["mean"] = {
            "ndcg@10": r["ndcg@10"],
            "recall@100": r["recall@100"],
            "sts": sts_scores(mean.encode(s1).vectors, mean.encode(s2).vectors, gold),
        }
        print("mean", res["mean"], flush=True)
    res["wall_seconds"] = round(time.time() - t0, 1)
    print(json.dumps(res, indent=2))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
