"""Binary codes + float rescoring: recall@10 against memory, on real MiniLM embeddings.

The recipe (sentence-transformers' embedding-quantization example, HF's "binary + rescoring
keeps ~96 %"): keep only 1-bit sign codes in RAM (384 bits = 48 bytes per MiniLM vector, 32x
less than float32), search them by Hamming distance for ``k * factor`` candidates, then rescore
those candidates with the float query against full-precision (or int8) document vectors kept
on disk / mmap, and return the best ``k``. This script measures what each rescoring factor
buys on real embeddings, beside float32 exact search and int8 scalar quantisation:

* recall@10 against exact float32 inner-product top-10 (the reference),
* bytes per vector in RAM (the index) and in the rescoring store (read only for candidates),
* QPS for one batched call of all queries and p50 latency of one query per call.

Data: MiniLM (``mean`` strategy) embeddings of Multi30K captions, held-out captions as queries:
the same cached vectors ``bench_search.py`` uses (first run embeds them: ~2-3 min on 2 cores).

    .venv/bin/python benchmarks/bench_binary.py
    .venv/bin/python benchmarks/bench_binary.py --n 5000 --factors 1,4,10
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import faiss
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    exact_topk,
    machine_info,
    print_load_now,
    print_machine,
    recall_at_k,
    table,
)
from bench_search import real_vectors  # noqa: E402

K = 10


def _timed(search: Callable[[np.ndarray], np.ndarray], queries: np.ndarray,
           singles: int) -> tuple[np.ndarray, float, float]:  # fmt: skip
    """(ids, batched QPS, p50 ms of one query per call)."""
    search(queries[:8])
    started = time.perf_counter()
    ids = search(queries)
    qps = len(queries) / (time.perf_counter() - started)
    lat = []
    for i in range(singles):
        t0 = time.perf_counter()
        search(queries[i : i + 1])
        lat.append(time.perf_counter() - t0)
    return ids, qps, float(np.median(lat) * 1000)


def rescore(queries: np.ndarray, candidates: np.ndarray, store: np.ndarray, scale: float,
            k: int) -> np.ndarray:  # fmt: skip
    """Best ``k`` of each row's candidates by float query x stored vector (int8 or float32)."""
    vecs = store[np.clip(candidates, 0, None)].astype(np.float32) * scale  # [nq, kc, d]
    scores = np.einsum("qd,qcd->qc", queries, vecs)
    scores[candidates < 0] = -np.inf
    order = np.argsort(-scores, axis=1)[:, :k]
    return np.take_along_axis(candidates, order, axis=1)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--n", type=int, default=10000, help="caption corpus size")
    ap.add_argument("--queries", type=int, default=1000, help="held-out caption queries")
    ap.add_argument("--factors", default="1,2,4,10,20,40", help="rescoring factors")
    ap.add_argument("--singles", type=int, default=100, help="queries timed one per call")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    factors = [int(f) for f in args.factors.split(",")]
    info = machine_info()
    print_machine(info)

    corpus, queries = real_vectors(args.n, args.queries)
    n, d = corpus.shape
    print(f"corpus: {n} Multi30K captions x {d} (MiniLM mean), {len(queries)} held-out queries")
    truth = exact_topk(corpus, queries, K)

    flat = faiss.IndexFlatIP(d)
    flat.add(corpus)
    sq8 = faiss.IndexScalarQuantizer(d, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT)
    sq8.train(corpus)
    sq8.add(corpus)
    codes = np.packbits(corpus > 0, axis=1)
    qcodes_of: Callable[[np.ndarray], np.ndarray] = lambda q: np.packbits(q > 0, axis=1)  # noqa: E731
    binary = faiss.IndexBinaryFlat(d)
    binary.add(codes)
    # int8 rescoring store: symmetric per-corpus scale (as sentence-transformers' int8 ranges)
    scale = float(np.abs(corpus).max()) / 127.0
    int8_store = np.round(corpus / scale).astype(np.int8)

    rows: list[list[Any]] = []
    results: list[dict[str, Any]] = []

    def add(name: str, ram: float, store: float, search: Callable[[np.ndarray], np.ndarray]):
        ids, qps, p50 = _timed(search, queries, args.singles)
        recall = recall_at_k(ids, truth, K)
        rows.append([name, ram, store, round(d * 4 / ram, 1), recall, qps, p50])
        results.append(dict(name=name, ram_bytes=ram, store_bytes=store, recall_at_10=recall,
                            batched_qps=qps, p50_ms=p50))  # fmt: skip
        print(f"  {name:32s} RAM {ram:6.0f} B/vec  R@10 {recall:.3f}  {qps:8.0f} QPS  "
              f"p50 {p50:.2f} ms", flush=True)  # fmt: skip

    add("float32 flat (exact)", d * 4, 0, lambda q: flat.search(q, K)[1])
    add("int8 scalar quantiser (SQ8)", d, 0, lambda q: sq8.search(q, K)[1])
    add("binary, Hamming only", d / 8, 0, lambda q: binary.search(qcodes_of(q), K)[1])
    for f in factors:
        add(
            f"binary + float32 rescore x{f}",
            d / 8,
            d * 4,
            lambda q, f=f: rescore(q, binary.search(qcodes_of(q), K * f)[1], corpus, 1.0, K),
        )
    for f in factors:
        add(
            f"binary + int8 rescore x{f}",
            d / 8,
            d,
            lambda q, f=f: rescore(q, binary.search(qcodes_of(q), K * f)[1], int8_store, scale, K),
        )
    end_load = print_load_now()
    print(f"\n### binary + rescoring on {n} real MiniLM vectors (recall@10 vs exact float32)\n")
    print(
        table(
            ["method", "RAM B/vec", "rescore store B/vec", "RAM saving", "R@10",
             "batched QPS", "p50 ms (1 query)"],
            rows,
        )
    )  # fmt: skip
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        payload = {"machine": info, "load_at_end": end_load, "n": n, "rows": results}
        args.json.write_text(json.dumps(payload, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
