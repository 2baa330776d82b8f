"""The cross-request batcher, on the model-free debug engine."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from embedsvc.batching import Batcher
from embedsvc.config import BatchingConfig
from embedsvc.errors import ResourceExhausted
from embedsvc.strategies import Role, create_strategy


@pytest.fixture
def debug():
    return create_strategy("debug")


def test_results_come_back_in_order_and_match_direct_encode(debug):
    batcher = Batcher(BatchingConfig(max_wait_ms=20))
    texts = [[f"alpha {i}", f"beta {i} gamma"] for i in range(20)]
    results: dict[int, np.ndarray] = {}
    slow = create_strategy("debug", delay_ms=20)  # requests queue while a batch runs

    def call(i: int) -> None:
        results[i] = batcher.encode(slow, texts[i], Role.QUERY, True, 4).vectors

    threads = [threading.Thread(target=call, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    batcher.close()
    for i in range(20):
        assert np.allclose(results[i], debug.encode(texts[i], Role.QUERY).vectors)
    assert batcher.stats.batches < 20, "some requests shared a batch"
    assert batcher.stats.texts == 40


def test_token_budget_splits_batches(debug):
    batcher = Batcher(BatchingConfig(max_wait_ms=50, max_batch_tokens=10))
    futures = [batcher.submit(debug, ["a b c d"], Role.QUERY, True, 4) for _ in range(6)]
    for f in futures:
        f.result(5)
    batcher.close()
    # 4 tokens each under a budget of 10: at most 2 requests per forward pass
    assert batcher.stats.largest_batch_requests <= 2
    assert batcher.stats.batches >= 3


def test_different_roles_or_strategies_never_share_a_batch(debug):
    other = create_strategy("debug_binary")
    batcher = Batcher(BatchingConfig(max_wait_ms=50))
    f1 = batcher.submit(debug, ["x y"], Role.QUERY, True, 2)
    f2 = batcher.submit(other, ["x y"], Role.QUERY, True, 2)
    f3 = batcher.submit(debug, ["x y"], Role.PASSAGE, True, 2)
    assert f1.result(5).kind == "dense" and f2.result(5).kind == "binary"
    assert f3.result(5).kind == "dense"
    batcher.close()
    assert batcher.stats.batches == 3


def test_bounded_queue_rejects_instead_of_growing():
    slow = create_strategy("debug", delay_ms=200)
    batcher = Batcher(BatchingConfig(max_wait_ms=0, max_queue_texts=4, max_batch_texts=4))
    first = batcher.submit(slow, ["a"] * 4, Role.QUERY, True, 4)
    accepted = [first]
    with pytest.raises(ResourceExhausted, match="queue is full"):
        for _ in range(10):
            accepted.append(batcher.submit(slow, ["b"] * 4, Role.QUERY, True, 4))
    for f in accepted:
        f.result(10)
    batcher.close()
    assert batcher.stats.rejected == 1


def test_encode_error_reaches_every_caller_and_worker_survives(debug):
    class Broken:
        name = "broken"

        def encode(self, texts, role, normalize=True):
            raise RuntimeError("boom")

    batcher = Batcher(BatchingConfig(max_wait_ms=0))
    with pytest.raises(RuntimeError, match="boom"):
        batcher.encode(Broken(), ["x"], Role.QUERY)
    assert batcher.encode(debug, ["still works"], Role.QUERY).vectors.shape == (1, 32)
    batcher.close()


def test_search_batcher_merges_concurrent_searches(tmp_path, debug):
    from embedsvc.batching import SearchBatcher
    from embedsvc.collections.manager import CollectionManager

    manager = CollectionManager(tmp_path)
    coll = manager.create("c", strategy="debug", output_kind="dense", dim=32, index_kind="flat")
    texts = [f"doc{i} topic{i % 5}" for i in range(200)]
    coll.upsert([str(i) for i in range(200)], texts, None, debug.encode(texts))
    calls = []
    original = coll.search

    def counting_search(*args, **kwargs):
        calls.append(len(args[0]))
        return original(*args, **kwargs)

    coll.search = counting_search
    batcher = SearchBatcher(BatchingConfig(max_wait_ms=30))
    queries = [debug.encode([f"doc{i} topic{i % 5}"]) for i in range(16)]
    results: dict[int, list] = {}

    def call(i: int) -> None:
        results[i] = batcher.search(coll, queries[i], 3, None)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    batcher.close()
    for i in range(16):
        assert [h.id for h in results[i][0]] == [h.id for h in original(queries[i], 3)[0]]
    assert len(calls) < 16 and sum(calls) == 16, "searches were merged into fewer FAISS calls"
    # different filters never share a call
    batcher = SearchBatcher(BatchingConfig(max_wait_ms=30))
    a = batcher.search(coll, queries[0], 3, {"x": True})
    b = batcher.search(coll, queries[0], 3, {"x": 1})
    assert a == [[]] and b == [[]]
    batcher.close()
    manager.close()


@pytest.mark.parametrize("kind, batched", [("flat", True), ("hnsw", False), ("binary", False)])
def test_engine_batches_only_index_kinds_that_gain_from_it(tmp_path, kind, batched):
    from embedsvc.config import ServiceConfig
    from embedsvc.engine import Document, Engine

    strategy = "debug_binary" if kind == "binary" else "debug"
    engine = Engine(ServiceConfig(data_dir=tmp_path, preload_strategies=[]))
    engine.create_collection("c", strategy=strategy, index_kind=kind)
    engine.upsert("c", [Document(id=str(i), text=f"doc {i} topic {i % 7}") for i in range(50)])
    seen = []
    original = engine.search_batcher.search
    engine.search_batcher.search = lambda *a, **kw: seen.append(1) or original(*a, **kw)
    hits = engine.search("c", ["doc 3 topic 3"], 5)
    assert hits[0][0].id == "3"
    assert bool(seen) is batched
    engine.close()


def test_lone_request_on_idle_worker_runs_at_once(debug):
    """One sequential client never waits max_wait_ms (the worker is idle, nobody else queues)."""
    batcher = Batcher(BatchingConfig(max_wait_ms=2000))
    for _ in range(3):
        emb = batcher.encode(debug, ["alone"], Role.QUERY)
        assert emb.timings["queue"] < 1.0, emb.timings
    batcher.close()
    assert batcher.stats.batches == 3


@pytest.mark.parametrize("max_wait_ms, batches", [(2000, 3), (0, 4)])
def test_under_load_a_batch_waits_for_company(max_wait_ms, batches):
    """After a batch of two requests, the next request waits (up to max_wait_ms) for a second
    one instead of running alone; with max_wait_ms=0 it runs alone."""
    slow = create_strategy("debug", delay_ms=100)
    batcher = Batcher(BatchingConfig(max_wait_ms=max_wait_ms))
    first = batcher.submit(slow, ["a"], Role.QUERY, True, 1)  # runs alone: the worker was idle
    while not first.running():
        time.sleep(0.001)
    pair = [batcher.submit(slow, [t], Role.QUERY, True, 1) for t in ("b", "c")]  # queue behind
    for f in (first, *pair):
        f.result(10)
    assert batcher.stats.largest_batch_requests == 2
    late = batcher.submit(slow, ["d"], Role.QUERY, True, 1)
    time.sleep(0.05)
    later = batcher.submit(slow, ["e"], Role.QUERY, True, 1)
    late.result(10), later.result(10)
    batcher.close()
    assert batcher.stats.batches == batches


class _Recording:
    """Wraps a strategy; records the thread each forward ran on."""

    def __init__(self, inner):
        self.inner, self.name, self.threads = inner, "recording", []

    def encode(self, texts, role, normalize=True):
        self.threads.append(threading.current_thread().name)
        return self.inner.encode(texts, role, normalize=normalize)


def test_idle_blocking_caller_runs_the_forward_itself(debug):
    rec = _Recording(debug)
    batcher = Batcher(BatchingConfig(max_wait_ms=0))
    assert batcher.encode(rec, ["x"], Role.QUERY).vectors.shape == (1, 32)
    assert rec.threads == [threading.current_thread().name]
    batcher.close()

    rec = _Recording(debug)
    batcher = Batcher(BatchingConfig(max_wait_ms=0, run_on_caller=False))
    batcher.encode(rec, ["x"], Role.QUERY)
    assert rec.threads == ["embedsvc-batcher"]
    batcher.close()


def test_busy_worker_queues_a_blocking_caller():
    """One forward at a time: while the worker runs a batch, a blocking caller queues."""
    slow = create_strategy("debug", delay_ms=200)
    rec = _Recording(slow)
    batcher = Batcher(BatchingConfig(max_wait_ms=0))
    running = batcher.submit(slow, ["a"], Role.QUERY, True, 1)
    while not running.running():
        time.sleep(0.001)
    batcher.encode(rec, ["b"], Role.QUERY)
    assert running.done() and rec.threads == ["embedsvc-batcher"]
    batcher.close()


def test_steady_concurrent_clients_keep_full_batches():
    """8 closed-loop clients: once a batch of 8 ran, the free worker waits for all 8 next
    requests instead of settling into alternating batches of 1 and 7 (half the throughput)."""
    # the wait (40 ms) is shorter than a forward (60 ms): a request that queued during the
    # forward must still wait for the others once the worker is free
    slow = create_strategy("debug", delay_ms=60)
    sizes: list[int] = []
    batcher = Batcher(BatchingConfig(max_wait_ms=40), on_batch=lambda n, c, e: sizes.append(n))

    def client() -> None:
        for i in range(10):
            batcher.encode(slow, [f"t {i}"], Role.QUERY)

    threads = [threading.Thread(target=client) for _ in range(8)]
    threads[0].start()  # its first request runs alone; the other 7 queue behind it
    while batcher.busy_for() == 0:
        time.sleep(0.001)
    for t in threads[1:]:
        t.start()
    for t in threads:
        t.join()
    batcher.close()
    assert sum(sizes) == 80
    # e.g. [1, 7, 8, 8, ...] or [1, 8, ..., 8, 7]; alternating 1 and 7 would be 20 batches
    assert len(sizes) <= 12 and sizes.count(8) >= 8, sizes
