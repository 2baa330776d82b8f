"""How far the exact scipy sparse index goes: build, upsert and query latency vs collection size.

Synthetic documents shaped like the DupMAE exact OT channel on SciFact (about 120 nonzero
vocabulary ids per abstract, 12 per query, Zipf-distributed ids over 30,522 entries, so common
ids have long posting lists). One query at a time (the served path), one thread.

    /work/bin/quiet .venv/bin/python benchmarks/bench_sparse_index.py --sizes 10000,100000,300000
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
from scipy import sparse

from embedsvc.indexes.sparse import SparseIndex

VOCAB = 30522


def rows(rng: np.random.Generator, n: int, nnz: int) -> sparse.csr_matrix:
    ids = np.minimum(rng.zipf(1.3, size=n * nnz) + 998, VOCAB - 1)  # skip the special-id range
    m = sparse.csr_matrix(
        (rng.random(n * nnz).astype(np.float32), (np.repeat(np.arange(n), nnz), ids)),
        shape=(n, VOCAB),
    )
    m.sum_duplicates()
    return m


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="10000,100000,300000")
    ap.add_argument("--queries", type=int, default=200)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    out = []
    for n in [int(s) for s in args.sizes.split(",")]:
        docs = rows(rng, n, 120)
        index = SparseIndex(VOCAB)
        t = time.perf_counter()
        index.add(np.arange(n), docs)
        index.search(rows(rng, 1, 12), 10)  # merge
        build = time.perf_counter() - t
        qs = rows(rng, args.queries, 12)
        t = time.perf_counter()
        for i in range(args.queries):
            index.search(qs[i], 100)
        per_query = (time.perf_counter() - t) * 1000 / args.queries
        t = time.perf_counter()
        index.add(np.arange(n, n + 100), rows(rng, 100, 120))
        index.remove(np.arange(0, 100))
        index.search(qs[0], 100)  # pays the merge of the pending upserts
        upsert = (time.perf_counter() - t) * 1000
        mb = (index._postings.data.nbytes + index._postings.indices.nbytes) / 2**20
        rec = {
            "docs": n,
            "build_s": round(build, 2),
            "query_ms": round(per_query, 2),
            "upsert100_delete100_then_query_ms": round(upsert, 1),
            "postings_mb": round(mb, 1),
        }
        print(json.dumps(rec), flush=True)
        out.append(rec)


if __name__ == "__main__":
    main()
