"""Every index kind passes the same behavioural tests (see conftest for the data)."""

from __future__ import annotations

from pathlib import Path

import faiss
import numpy as np
import pytest

from embedsvc.errors import FailedPrecondition, InvalidArgument, NotFound
from embedsvc.indexes import IndexConfig, available_index_kinds, create_index, load_index
from embedsvc.indexes.gpu import GpuMirror
from tests.indexes.synthetic import BITS, D, clustered, exact_scores

KINDS = ["flat", "ivf", "hnsw", "ivfpq", "binary"]
_BUILT: dict[str, object] = {}


def dim_of(kind: str) -> int:
    return BITS if kind == "binary" else D


def data_for(kind: str, request: pytest.FixtureRequest) -> tuple[np.ndarray, np.ndarray]:
    return request.getfixturevalue("binary_data" if kind == "binary" else "dense_data")


def built(kind: str, request: pytest.FixtureRequest):
    """One index per kind at default settings, built once for the read-only tests."""
    if kind not in _BUILT:
        x, _ = data_for(kind, request)
        index = create_index(kind, dim_of(kind))
        index.add(np.arange(x.shape[0]) + 1000, x)
        _BUILT[kind] = index
    return _BUILT[kind]


def recall_at(kind: str, q, x, ids, scores_ref, k: int = 10) -> float:
    """Share of returned hits scoring at least the exact k-th best (robust to Hamming ties)."""
    kth = np.sort(scores_ref, axis=1)[:, -k][:, None]
    got = np.take_along_axis(scores_ref, np.clip(ids - 1000, 0, None), axis=1)
    return float(((got >= kth - 1e-5) & (ids >= 0)).sum() / ids.size)


def test_registry_lists_all_kinds() -> None:
    assert set(KINDS) <= set(available_index_kinds())
    with pytest.raises(NotFound, match="valid kinds"):
        create_index("nope", 8)


@pytest.mark.parametrize("kind", KINDS)
def test_recall_against_exact(kind: str, request: pytest.FixtureRequest) -> None:
    x, q = data_for(kind, request)
    index = built(kind, request)
    assert index.count == x.shape[0]
    scores, ids = index.search(q, 10)
    assert scores.shape == ids.shape == (q.shape[0], 10)
    assert recall_at(kind, q, x, ids, exact_scores(kind, q, x)) >= 0.9
    assert np.all(np.diff(scores, axis=1) <= 1e-6)  # best first


@pytest.mark.parametrize("kind", KINDS)
def test_self_search_finds_itself(kind: str, request: pytest.FixtureRequest) -> None:
    x, _ = data_for(kind, request)
    scores, ids = built(kind, request).search(x[:50], 1)
    assert (ids[:, 0] == np.arange(50) + 1000).mean() >= 0.98
    assert np.allclose(scores[ids[:, 0] == np.arange(50) + 1000, 0], 1.0, atol=1e-4)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("share", [0.05, 0.6])
def test_filter_returns_only_allowed(kind: str, share: float, request) -> None:
    x, q = data_for(kind, request)
    rng = np.random.default_rng(3)
    allowed = rng.choice(x.shape[0], int(share * x.shape[0]), replace=False) + 1000
    index = built(kind, request)
    old = index.config.exact_filter_threshold
    index.config.exact_filter_threshold = 500  # 5 % -> exact path, 60 % -> IDSelector path
    try:
        scores, ids = index.search(q, 10, allowed_ids=np.append(allowed, 10**9))  # unknown id
    finally:
        index.config.exact_filter_threshold = old
    assert np.isin(ids[ids >= 0], allowed).all()
    ref = exact_scores(kind, q, x)[:, allowed - 1000]
    best = ref.max(axis=1)
    assert (scores[:, 0] >= best - 1e-4).mean() >= 0.9  # nearest allowed found


@pytest.mark.parametrize("kind", KINDS)
def test_remove_then_search_never_returns_removed(kind: str, request) -> None:
    x, _ = data_for(kind, request)
    index = create_index(kind, dim_of(kind))
    index.add(np.arange(1000), x[:1000])
    gone = np.arange(0, 1000, 3)
    assert index.remove(np.append(gone, 5000)) == gone.size  # absent id ignored
    assert index.count == 1000 - gone.size
    scores, ids = index.search(x[gone[:100]], 10)
    assert not np.isin(ids, gone).any()
    assert (ids >= 0).all()
    _, ids = index.search(x[gone[:20]], 10, allowed_ids=gone)  # only removed ids allowed
    assert (ids == -1).all()


@pytest.mark.parametrize("kind", KINDS)
def test_save_load_round_trip(kind: str, tmp_path: Path, request) -> None:
    x, q = data_for(kind, request)
    index = create_index(kind, dim_of(kind))
    index.add(np.arange(1500) * 2, x[:1500])
    index.remove(np.array([0, 2, 4]))
    path = tmp_path / "index.faiss"
    index.save(path)
    loaded = load_index(path)
    assert type(loaded) is type(index) and loaded.count == index.count
    for allowed in (None, np.arange(0, 3000, 4)):
        s1, i1 = index.search(q, 10, allowed)
        s2, i2 = loaded.search(q, 10, allowed)
        np.testing.assert_array_equal(i1, i2)
        np.testing.assert_allclose(s1, s2, rtol=1e-6)
    loaded.add(np.array([99999]), x[1500:1501])  # still mutable after load
    assert loaded.search(x[1500:1501], 1)[1][0, 0] == 99999


@pytest.mark.parametrize("kind", KINDS)
def test_one_vector_collection(kind: str, request) -> None:
    x, _ = data_for(kind, request)
    index = create_index(kind, dim_of(kind))
    assert index.search(x[:2], 3)[1].tolist() == [[-1, -1, -1]] * 2
    index.add(np.array([7]), x[:1])
    scores, ids = index.search(x[:2], 3)
    assert ids.tolist() == [[7, -1, -1], [7, -1, -1]]
    assert np.isneginf(scores[:, 1:]).all() and scores[0, 0] == pytest.approx(1.0, abs=1e-5)
    index.add(np.array([8]), x[1:2])
    assert index.search(x[1:2], 1)[1][0, 0] == 8
    assert index.remove(np.array([7, 8])) == 2 and index.count == 0
    assert (index.search(x[:1], 2)[1] == -1).all()


@pytest.mark.parametrize("kind", KINDS)
def test_add_existing_id_replaces_vector(kind: str, request) -> None:
    x, _ = data_for(kind, request)
    index = create_index(kind, dim_of(kind))
    index.add(np.arange(200), x[:200])
    index.add(np.array([5]), x[500:501])  # id 5 now holds vector 500
    assert index.count == 200
    _, ids = index.search(x[500:501], 1)
    assert ids[0, 0] == 5
    _, ids = index.search(x[5:6], 3)
    assert ids[0, 0] != 5


@pytest.mark.parametrize("kind", KINDS)
def test_wrong_vector_kind_is_failed_precondition(kind: str, request) -> None:
    index = create_index(kind, dim_of(kind))
    if kind == "binary":
        bad = np.zeros((1, BITS), dtype=np.float32)
        message = "needs binary codes"
    else:
        bad = np.zeros((1, D // 8), dtype=np.uint8)
        message = "needs dense float vectors"
    with pytest.raises(FailedPrecondition, match=message):
        index.add(np.array([1]), bad)
    with pytest.raises(FailedPrecondition, match=message):
        index.search(bad, 1)


@pytest.mark.parametrize("kind", KINDS)
def test_bad_input_is_invalid_argument(kind: str, request) -> None:
    x, _ = data_for(kind, request)
    index = create_index(kind, dim_of(kind))
    with pytest.raises(InvalidArgument, match="shape"):
        index.add(np.array([1]), x[:1, :4])
    with pytest.raises(InvalidArgument, match="unique"):
        index.add(np.array([1, 1]), x[:2])
    with pytest.raises(InvalidArgument, match=">= 0"):
        index.add(np.array([-1]), x[:1])
    with pytest.raises(InvalidArgument, match="k must"):
        index.search(x[:1], 0)


def test_ivf_retrains_when_grown() -> None:
    x = clustered(2400, D, seed=2)
    index = create_index("ivf", D)
    index.add(np.arange(10), x[:10])
    assert index._nlist == 1
    for start in range(10, 2400, 400):
        index.add(np.arange(start, min(start + 400, 2400)), x[start : start + 400])
    assert index.count == 2400 and index._nlist > 10 and index._trained_on >= 600
    _, ids = index.search(x[:50], 1)
    assert (ids[:, 0] == np.arange(50)).mean() >= 0.98


def test_ivfpq_is_exact_until_trained_then_rescored() -> None:
    x = clustered(1500, D, seed=4)
    index = create_index("ivfpq", D, IndexConfig(pq_min_train_points=1000))
    index.add(np.arange(900), x[:900])
    assert not index.trained
    index.add(np.arange(900, 1500), x[900:])
    assert index.trained
    scores, ids = index.search(x[:20], 5)
    np.testing.assert_allclose(scores[:, 0], 1.0, atol=1e-5)  # exact rescoring, not PQ
    np.testing.assert_array_equal(ids[:, 0], np.arange(20))


def test_hnsw_tombstones_then_compaction() -> None:
    x = clustered(800, D, seed=6)
    index = create_index("hnsw", D)
    index.add(np.arange(800), x)
    index.remove(np.arange(100))
    assert index.tombstones == 100 and index.count == 700
    assert not np.isin(index.search(x[:100], 10)[1], np.arange(100)).any()
    index.remove(np.arange(100, 300))  # 300 / 800 > 25 %: compacted
    assert index.tombstones == 0 and index.count == 500
    _, ids = index.search(x[300:350], 1)
    assert (ids[:, 0] == np.arange(300, 350)).mean() >= 0.98


def test_gpu_mirror_logic_with_cpu_clone() -> None:
    """The GPU path's bookkeeping, exercised with faiss.clone_index standing in for the GPU."""
    x = clustered(500, D, seed=7)
    index = create_index("flat", D)
    index._gpu = GpuMirror(True, clone=faiss.clone_index)
    index.add(np.arange(400), x[:400])
    ref = x[:400] @ x[:5].T
    _, ids = index.search(x[:5], 1)
    assert index._gpu.clones == 1 and ids[:, 0].tolist() == ref.argmax(axis=0).tolist()
    index.add(np.arange(400, 500), x[400:])  # mirrored, no re-clone
    assert index.search(x[450:451], 1)[1][0, 0] == 450 and index._gpu.clones == 1
    index.remove(np.array([450]))  # GPU copies cannot remove: re-cloned on next search
    assert index.search(x[450:451], 1)[1][0, 0] != 450 and index._gpu.clones == 2
    assert index.search(x[:1], 1, allowed_ids=np.array([3]))[1][0, 0] == 3  # CPU path
