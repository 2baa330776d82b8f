"""BTR benchmark: storage, reconstruction fidelity, SciFact nDCG@10 and re-embedding speed.

One run measures, on a documented SciFact subset (all 150 test queries; every judged document
plus seeded random distractors up to ``--docs``; passages cut at ``--max-length`` tokens):

* bytes per passage: token codes + fp16 scales (the payload as stored) vs float32 token states
  at the cut vs a float32 sentence vector vs the 256-bit sentence code;
* cosine of the passage embedding recomputed from codes to the float embedding, for naive sign
  (``sign(h)``), calibrated (statistics only) and trained reconstruction;
* nDCG@10 / Recall@100 of: float ``mean`` (exact cosine), Hamming only, Hamming top-``depth`` +
  re-rank from token codes (naive / calibrated / trained), Hamming + re-rank with float vectors;
* speed, side by side in this run: full forward (``mean``) vs re-embedding from codes vs
  computing the codes (lower blocks).

    .venv/bin/python benchmarks/bench_btr.py --docs 500 --max-length 128 \
        --json docs/results/btr.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

DATA = Path("/work/shared/data/scifact")


def scifact_subset(n_docs: int, seed: int = 0):
    from embedsvc.eval.data import read_corpus, read_qrels, read_queries

    corpus = read_corpus(DATA / "corpus.jsonl.gz")
    qrels = read_qrels(DATA / "qrels/test.tsv")
    queries = read_queries(DATA / "queries.jsonl")
    judged = sorted({d for rel in qrels.values() for d in rel if d in corpus})
    rest = sorted(set(corpus) - set(judged))
    rng = np.random.default_rng(seed)
    extra = rng.choice(len(rest), size=max(0, n_docs - len(judged)), replace=False)
    ids = judged + [rest[i] for i in sorted(extra)]
    return ids, [corpus[i].passage() for i in ids], qrels, {q: queries[q] for q in qrels}


def hamming_topk(q_codes: np.ndarray, d_codes: np.ndarray, k: int):
    import faiss

    index = faiss.IndexBinaryFlat(d_codes.shape[1] * 8)
    index.add(d_codes)
    dist, idx = index.search(q_codes, k)
    bits = d_codes.shape[1] * 8
    return 1 - 2 * dist / bits, idx


def ndcg(qids, doc_ids, scores, idx, qrels) -> dict[str, float]:
    from embedsvc.eval.retrieval import score_run

    run = {
        q: {doc_ids[j]: float(s) for s, j in zip(scores[i], idx[i], strict=True) if j >= 0}
        for i, q in enumerate(qids)
    }
    out = score_run(qrels, run, (10, 100))
    return {k: round(float(v), 2) for k, v in out.items()}


def rerank(cand: np.ndarray, q: np.ndarray, docs: np.ndarray):
    sc = np.einsum("qd,qkd->qk", q, docs[cand])
    order = np.argsort(-sc, axis=1)
    return np.take_along_axis(sc, order, 1), np.take_along_axis(cand, order, 1)


def main(argv: list[str] | None = None) -> dict:
    import torch

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--docs", type=int, default=500)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--depth", type=int, default=100)
    ap.add_argument("--speed-docs", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--artifact", default=None)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    from embedsvc.strategies import create_strategy
    from embedsvc.strategies.btr import decode_payload

    doc_ids, texts, qrels, queries = scifact_subset(args.docs)
    qids = list(queries)
    common = {"max_length": args.max_length, "artifact": args.artifact}
    btr = {
        m: create_strategy("btr", reconstruction=m, **common)
        for m in ("trained", "calibrated", "naive")
    }
    main_s = btr["trained"]
    res: dict = {
        "command": " ".join([sys.executable, *sys.argv]),
        "subset": {
            "queries": len(qids),
            "docs": len(doc_ids),
            "judged_docs": sum(1 for d in doc_ids if any(d in r for r in qrels.values())),
            "max_length": args.max_length,
            "depth": args.depth,
        },
        "cut": main_s.cut,
        "bits": main_s.dim,
    }
    t0 = time.perf_counter()
    codes, payloads, floats, seen, _ = main_s.index_passages(texts)
    res["index_seconds"] = round(time.perf_counter() - t0, 1)
    q_codes = main_s.encode([queries[q] for q in qids], "query").vectors
    q_float = main_s.query_vectors([queries[q] for q in qids])

    # storage
    n_tok = np.array([decode_payload(p)[0].shape[0] for p in payloads])
    d = main_s.backbone.hidden_size
    res["storage_bytes_per_passage"] = {
        "mean_tokens": round(float(n_tok.mean()), 1),
        "token_codes_plus_fp16_scales": round(float(np.mean([len(p) for p in payloads])), 1),
        "float32_token_states": round(float(n_tok.mean() * d * 4), 1),
        "float32_sentence_vector": d * 4,
        "binary_sentence_code": main_s.dim // 8,
    }
    st = res["storage_bytes_per_passage"]
    st["ratio_token_states_vs_codes"] = round(
        st["float32_token_states"] / st["token_codes_plus_fp16_scales"], 1
    )

    # retrieval: float baseline = exact cosine on the float pooled vectors (== ``mean``)
    sc = q_float @ floats.T
    top = np.argsort(-sc, axis=1)[:, :100]
    res["ndcg"] = {"float_mean": ndcg(qids, doc_ids, np.take_along_axis(sc, top, 1), top, qrels)}
    hs, hi = hamming_topk(q_codes, codes, min(args.depth, len(doc_ids)))
    res["ndcg"]["hamming_only"] = ndcg(qids, doc_ids, hs, hi, qrels)
    s2, i2 = rerank(hi, q_float, floats)
    res["ndcg"]["hamming_rerank_float_upper_bound"] = ndcg(qids, doc_ids, s2, i2, qrels)
    res["cosine_to_float"] = {}
    for mode, strat in btr.items():
        t0 = time.perf_counter()
        rec = strat.reembed(payloads)
        secs = time.perf_counter() - t0
        cos = np.sum(rec * floats, axis=1)
        res["cosine_to_float"][mode] = {
            "mean": round(float(cos.mean()), 4),
            "median": round(float(np.median(cos)), 4),
            "p05": round(float(np.quantile(cos, 0.05)), 4),
        }
        s2, i2 = rerank(hi, q_float, rec)
        res["ndcg"][f"hamming_rerank_{mode}"] = ndcg(qids, doc_ids, s2, i2, qrels)
        res["ndcg"][f"hamming_rerank_{mode}"]["reembed_seconds_all_docs"] = round(secs, 1)
    base = res["ndcg"]["float_mean"]["ndcg@10"]
    res["fraction_of_float_ndcg10"] = {
        k: round(v["ndcg@10"] / base, 4) for k, v in res["ndcg"].items() if base
    }

    # speed, side by side on the same passages and batch size
    sub, sub_p = texts[: args.speed_docs], payloads[: args.speed_docs]
    mean = create_strategy("mean", max_length=args.max_length)
    mean.encode(sub[:2])  # warm-up (weights shared)
    main_s.reembed(sub_p[:2])
    timings = {}
    for name, fn in (
        ("full_forward_mean", lambda: mean.encode(sub)),
        ("reembed_from_codes", lambda: main_s.reembed(sub_p)),
        ("compute_token_codes", lambda: main_s.token_codes(sub)),
    ):
        t0 = time.perf_counter()
        fn()
        timings[name] = round(time.perf_counter() - t0, 3)
    timings["speedup_reembed_vs_full"] = round(
        timings["full_forward_mean"] / timings["reembed_from_codes"], 2
    )
    timings["docs"] = len(sub)
    res["speed_seconds"] = timings
    text = json.dumps(res, indent=2)
    print(text)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text)
    return res


if __name__ == "__main__":
    main()
