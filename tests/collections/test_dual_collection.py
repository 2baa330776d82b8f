"""Collections of a dual strategy: a sparse side index beside the FAISS one, fused search,
kept consistent through upsert, delete, restart and kill -9."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from scipy import sparse

from embedsvc.collections import CollectionManager
from embedsvc.errors import FailedPrecondition, InvalidArgument
from embedsvc.indexes.fusion import convex_fuse
from embedsvc.strategies.base import Embedding

D, V = 16, 300
ROOT = Path(__file__).resolve().parents[2]


def make(n: int, seed: int) -> Embedding:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, D)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    rows = np.repeat(np.arange(n), 6)
    s = sparse.coo_matrix(
        (rng.random(n * 6).astype(np.float32) + 0.1, (rows, rng.integers(0, V, n * 6))),
        shape=(n, V),
    ).tocsr()
    s.sum_duplicates()
    emb = Embedding("dense", x, D)
    emb.sparse = s
    return emb


def expected(docs: dict[str, Embedding], q: Embedding, k: int, w: float) -> list[list[str]]:
    """Brute force: exact dense and sparse scores of every stored doc, top-100 each, fused."""
    ids = sorted(docs)
    x = np.concatenate([docs[i].vectors for i in ids])
    s = sparse.vstack([docs[i].sparse for i in ids]).tocsr()
    out = []
    for qi in range(len(q)):
        ds = x @ q.vectors[qi]
        ss = (s @ q.sparse[qi].T).toarray().ravel()
        dense = {ids[j]: float(ds[j]) for j in np.argsort(-ds)[:100]}
        sp = {ids[j]: float(ss[j]) for j in np.argsort(-ss)[:100] if ss[j] > 0}
        out.append([d for d, _ in convex_fuse(dense, sp, w, k)])
    return out


def upsert(col, docs: dict[str, Embedding], start: int, n: int, seed: int) -> None:
    emb = make(n, seed)
    ids = [f"d{start + i}" for i in range(n)]
    col.upsert(ids, ["t"] * n, None, emb)
    for i, id_ in enumerate(ids):
        docs[id_] = emb.slice(i, i + 1)


def test_fused_search_matches_brute_force_through_writes_and_restart(tmp_path: Path) -> None:
    m = CollectionManager(tmp_path)
    col = m.create("c", "dual", "dense", D, "flat", sparse_vocab=V)
    docs: dict[str, Embedding] = {}
    upsert(col, docs, 0, 150, 1)
    upsert(col, docs, 50, 30, 2)  # replaces d50..d79
    col.delete([f"d{i}" for i in range(0, 150, 7)])
    for i in range(0, 150, 7):
        docs.pop(f"d{i}", None)
    q = make(5, 99)
    got = [[h.id for h in row] for row in col.search(q, 10, fusion_weight=0.6)]
    assert got == expected(docs, q, 10, 0.6)
    assert col.describe()["sparse_count"] == len(docs)
    m.close()
    m2 = CollectionManager(tmp_path)
    col2 = m2.get("c")
    assert [[h.id for h in row] for row in col2.search(q, 10, fusion_weight=0.6)] == got
    # a dense-only query embedding searches the dense index alone
    plain = Embedding("dense", q.vectors, D)
    assert len(col2.search(plain, 3)[0]) == 3
    # documents without their sparse part are refused
    with pytest.raises(FailedPrecondition):
        col2.upsert(["x"], ["t"], None, Embedding("dense", q.vectors[:1], D))
    m2.close()


def test_kill_9_keeps_both_indexes(tmp_path: Path) -> None:
    child = textwrap.dedent(
        f"""
        import os, signal, sys
        sys.path.insert(0, {str(ROOT)!r})
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_dual_collection import make, D, V
        from embedsvc.collections import CollectionManager
        m = CollectionManager({str(tmp_path)!r})
        col = m.create("c", "dual", "dense", D, "flat", sparse_vocab=V)
        for b in range(4):
            col.upsert([f"b{{b}}-{{i}}" for i in range(40)], ["t"] * 40, None, make(40, b))
            print("ack", b, flush=True)
            if b == 1:
                col.checkpoint()
        col.delete(["b0-0", "b3-1"])
        print("ack delete", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", child], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == -9, proc.stderr
    assert proc.stdout.count("ack") == 5
    m = CollectionManager(tmp_path)
    col = m.get("c")
    info = col.describe()
    assert info["count"] == info["index_count"] == info["sparse_count"] == 158
    docs: dict[str, Embedding] = {}
    for b in range(4):
        emb = make(40, b)
        for i in range(40):
            docs[f"b{b}-{i}"] = emb.slice(i, i + 1)
    docs.pop("b0-0")
    docs.pop("b3-1")
    q = make(6, 123)
    got = [[h.id for h in row] for row in col.search(q, 10, fusion_weight=0.5)]
    assert got == expected(docs, q, 10, 0.5)
    m.close()


def test_milvus_refuses_a_sparse_side_index(tmp_path: Path) -> None:
    m = CollectionManager(tmp_path)
    with pytest.raises(InvalidArgument, match="FAISS collections only"):
        m.create("c", "dual", "dense", D, "flat", sparse_vocab=V, backend="milvus")
    assert m.list() == []
