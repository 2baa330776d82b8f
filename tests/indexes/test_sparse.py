"""The exact sparse index against brute force, through interleaved adds, replaces and deletes."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import sparse

from embedsvc.indexes.sparse import (
    SparseIndex,
    csr_rows_to_bytes,
    decode_sparse_rows,
)
from embedsvc.strategies.dupmae.exact import pool_csr

VOCAB = 200


def random_rows(rng: np.random.Generator, n: int, nnz: int = 8) -> sparse.csr_matrix:
    rows = np.repeat(np.arange(n), nnz)
    cols = rng.integers(0, VOCAB, size=n * nnz)
    vals = rng.random(n * nnz).astype(np.float32) + 0.01
    m = sparse.coo_matrix((vals, (rows, cols)), shape=(n, VOCAB)).tocsr()
    m.sum_duplicates()
    return m


def brute_force(truth: dict[int, sparse.csr_matrix], q: sparse.csr_matrix, k: int, allowed=None):
    allowed = None if allowed is None else {int(a) for a in allowed}
    keys = sorted(k_ for k_ in truth if allowed is None or k_ in allowed)
    out = []
    for qi in range(q.shape[0]):
        scored = [(float((q[qi] @ truth[key].T).toarray()[0, 0]), key) for key in keys]
        scored = [(s, key) for s, key in scored if s > 0]
        scored.sort(key=lambda x: (-x[0], x[1]))
        out.append(scored[:k])
    return out


def check(index: SparseIndex, truth, rng, k=7, allowed=None):
    q = random_rows(rng, 5, nnz=12)
    scores, keys = index.search(q, k, allowed)
    expect = brute_force(truth, q, k, allowed)
    for qi, exp in enumerate(expect):
        got = [(float(s), int(key)) for s, key in zip(scores[qi], keys[qi]) if key >= 0]
        assert [g[1] for g in got] == [e[1] for e in exp]
        np.testing.assert_allclose([g[0] for g in got], [e[0] for e in exp], rtol=1e-5)
        assert all(key == -1 for key in keys[qi][len(exp) :])


def test_add_delete_replace_search_match_brute_force():
    rng = np.random.default_rng(0)
    index = SparseIndex(VOCAB)
    truth: dict[int, sparse.csr_matrix] = {}
    next_key = 0
    for _ in range(30):
        op = rng.random()
        if op < 0.5 or not truth:  # add new
            n = int(rng.integers(1, 20))
            keys = np.arange(next_key, next_key + n)
            next_key += n
            rows = random_rows(rng, n)
            index.add(keys, rows)
            truth.update({int(key): rows[i] for i, key in enumerate(keys)})
        elif op < 0.7:  # replace existing
            keys = rng.choice(sorted(truth), size=min(3, len(truth)), replace=False)
            rows = random_rows(rng, len(keys))
            index.add(keys, rows)
            truth.update({int(key): rows[i] for i, key in enumerate(keys)})
        else:  # delete some (and an unknown key)
            keys = rng.choice(sorted(truth), size=min(5, len(truth)), replace=False)
            assert index.remove(np.append(keys, 10**9)) == len(keys)
            for key in keys:
                truth.pop(int(key))
        assert index.count == len(truth)
        check(index, truth, rng)
    allowed = np.array(sorted(truth)[::2])
    check(index, truth, rng, allowed=allowed)


def test_allowed_filter_and_empty_index():
    rng = np.random.default_rng(1)
    index = SparseIndex(VOCAB)
    scores, keys = index.search(random_rows(rng, 2), 3)
    assert (keys == -1).all() and (scores == 0).all()
    rows = random_rows(rng, 40)
    index.add(np.arange(40), rows)
    truth = {i: rows[i] for i in range(40)}
    allowed = np.arange(0, 40, 3)
    q = random_rows(rng, 4, nnz=20)
    _, keys = index.search(q, 10, allowed)
    assert set(keys[keys >= 0].tolist()) <= set(allowed.tolist())
    exp = brute_force(truth, q, 10, set(allowed.tolist()))
    assert [[key for _, key in e] for e in exp] == [[int(x) for x in row if x >= 0] for row in keys]


def test_bad_shapes_rejected():
    index = SparseIndex(VOCAB)
    with pytest.raises(ValueError):
        index.add(np.arange(2), sparse.csr_matrix((3, VOCAB)))
    with pytest.raises(ValueError):
        index.add(np.array([1, 1]), sparse.csr_matrix((2, VOCAB)))
    with pytest.raises(ValueError):
        index.search(sparse.csr_matrix((1, VOCAB + 1)), 3)


def test_bytes_roundtrip():
    rows = random_rows(np.random.default_rng(2), 6)
    blobs = csr_rows_to_bytes(rows)
    back = decode_sparse_rows(blobs + [b""], VOCAB)
    assert back.shape == (7, VOCAB)
    assert (back[:6] != rows).nnz == 0 and back[6].nnz == 0


def test_pool_csr_matches_pool_torch():
    import torch
    from trainlib.dupmae_exact import pool_torch

    rng = np.random.default_rng(3)
    t = 300
    ids = rng.integers(0, VOCAB, t)
    owner = np.sort(rng.integers(0, 5, t))
    w = np.maximum(rng.normal(size=t), 0).astype(np.float32)
    dense = pool_torch(
        torch.from_numpy(ids), torch.from_numpy(w), torch.from_numpy(owner), 5, VOCAB
    ).numpy()
    np.testing.assert_allclose(pool_csr(ids, w, owner, 5, VOCAB).toarray(), dense)
