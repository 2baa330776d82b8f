"""FAISS vs Milvus collection backends on the same real-embedding collection: recall@10 and QPS.

The corpus is MiniLM (``mean``) embeddings of N unique Multi30K captions; the queries are 500
held-out captions (a held-out caption has paraphrases in the corpus, so queries behave like
real ones). Both backends get the same vectors through the same ``Collection`` API, one
collection per (backend, index kind), and are searched through it:

* recall@10 against the exact inner-product top 10 (numpy);
* QPS of one query per call, calls back to back from one thread (the latency-bound case), and
  of the 500 queries in one call (batched).

Milvus is the embedded milvus-lite 2.5 (Milvus's own segcore/knowhere, one process, a Unix
socket). It builds FLAT and IVF_FLAT only, so the kinds compared are ``flat`` and ``ivf``
(nlist 1024 -> Milvus IVF_FLAT nlist 1024 per sealed segment, nprobe 32 both).

Two phases: ``--prepare`` embeds (cached in the eval embedding cache) and builds the
collections (slow, run it niced in the background); ``--measure`` only opens and searches
(run it under /work/bin/quiet: each cell runs ``--seconds``).

    OMP_NUM_THREADS=1 nice -n 19 python benchmarks/bench_backends.py --n 100000 --prepare
    /work/bin/quiet python benchmarks/bench_backends.py --n 100000 --measure --json out.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    captions,
    exact_topk,
    machine_info,
    print_load_now,
    print_machine,
    table,
)

N_QUERIES = 500
K = 10
KINDS = ("flat", "ivf")
BACKENDS = ("faiss", "milvus")


def work_dir(n: int) -> Path:
    from embedsvc.config import default_cache_dir

    return default_cache_dir() / "bench_backends" / f"captions-{n}"


def vectors(n: int) -> tuple[list[str], np.ndarray, np.ndarray]:
    from embedsvc.eval.cache import cached_encode
    from embedsvc.strategies import Role, get_strategy

    texts = captions(n + N_QUERIES)
    if len(texts) < n + N_QUERIES:
        raise SystemExit(f"only {len(texts)} captions available")
    strategy = get_strategy("mean")
    corpus = cached_encode(strategy, texts[:n], Role.PASSAGE, desc="embed captions")
    queries = cached_encode(strategy, texts[n:], Role.QUERY, desc="embed queries")
    return texts[:n], corpus.astype(np.float32), queries.astype(np.float32)


def collection_name(backend: str, kind: str) -> str:
    return f"{backend}-{kind}"


def prepare(n: int) -> None:
    from embedsvc.collections import CollectionManager
    from embedsvc.strategies.base import Embedding

    texts, corpus, queries = vectors(n)
    directory = work_dir(n)
    directory.mkdir(parents=True, exist_ok=True)
    np.save(directory / "queries.npy", queries)
    np.save(directory / "truth.npy", exact_topk(corpus, queries, K))
    with CollectionManager(directory / "indexes") as manager:
        for backend in BACKENDS:
            for kind in KINDS:
                name = collection_name(backend, kind)
                if name in manager.list():
                    continue
                started = time.perf_counter()
                col = manager.create(
                    name, "mean", "dense", corpus.shape[1], kind, {"nlist": 1024}, backend=backend
                )
                for start in range(0, n, 2000):
                    stop = min(start + 2000, n)
                    col.upsert(
                        [str(i) for i in range(start, stop)],
                        texts[start:stop],
                        None,
                        Embedding("dense", corpus[start:stop], corpus.shape[1]),
                    )
                col.checkpoint()
                print(f"built {name}: {n} vectors in {time.perf_counter() - started:.1f} s")


def measure(n: int, seconds: float) -> list[dict]:
    from embedsvc.collections import CollectionManager
    from embedsvc.strategies.base import Embedding

    directory = work_dir(n)
    queries = np.load(directory / "queries.npy")
    truth = np.load(directory / "truth.npy")
    rows = []
    with CollectionManager(directory / "indexes") as manager:
        for kind in KINDS:
            for backend in BACKENDS:
                col = manager.get(collection_name(backend, kind))
                dim = queries.shape[1]
                col.search(Embedding("dense", queries[:1], dim), K)  # open / load
                started = time.perf_counter()
                batched = col.search(Embedding("dense", queries, dim), K)
                batch_s = time.perf_counter() - started
                found = [[int(h.id) for h in row] for row in batched]
                recall = float(
                    np.mean([len(set(f) & set(t)) / K for f, t in zip(found, truth.tolist())])
                )
                calls, started = 0, time.perf_counter()
                while time.perf_counter() - started < seconds:
                    col.search(
                        Embedding("dense", queries[calls % N_QUERIES : calls % N_QUERIES + 1], dim),
                        K,
                    )
                    calls += 1
                single_qps = calls / (time.perf_counter() - started)
                rows.append(
                    {
                        "backend": backend,
                        "kind": kind,
                        "n": n,
                        "recall@10": round(recall, 4),
                        "qps_one_query_per_call": round(single_qps, 1),
                        "qps_500_queries_per_call": round(N_QUERIES / batch_s, 1),
                    }
                )
                print(rows[-1], flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--prepare", action="store_true")
    ap.add_argument("--measure", action="store_true")
    ap.add_argument("--seconds", type=float, default=15.0, help="per single-query cell")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    info = machine_info(["faiss-cpu", "pymilvus", "milvus-lite"])
    print_machine(info)
    if args.prepare:
        prepare(args.n)
    if args.measure:
        rows = measure(args.n, args.seconds)
        print(table(list(rows[0]), [list(r.values()) for r in rows]))
        load = print_load_now()
        if args.json:
            args.json.write_text(json.dumps({"machine": info, "rows": rows, "load_end": load}))


if __name__ == "__main__":
    main()
