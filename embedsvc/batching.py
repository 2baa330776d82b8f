"""Cross-request micro-batching: many concurrent requests, one forward pass (or one FAISS call).

A :class:`MicroBatcher` keeps one bounded queue and one worker thread. The worker takes the
oldest request and runs every queued request that shares its key in one call while the batch
stays within a cost budget (tokens for a forward pass, queries for a search) and an item cap. A
request larger than the budget runs alone.

When to wait for company: a lone request on an idle worker runs at once (as TEI's queue does),
so one sequential client never pays ``max_wait_ms``. Under load, i.e. when the previous batch
carried several requests, the free worker waits up to ``max_wait_ms`` for as many requests as
that batch carried, so a steady set of concurrent clients keeps sharing forward passes instead
of settling into a lone request and the rest (1, n-1, 1, n-1, ...: half the throughput). Past
``max_queue`` queued items a new request is refused with ResourceExhausted at once, so overload
is answered, not absorbed until memory runs out. One worker is right on CPU: torch and FAISS
already use every core inside one call.

Two batchers use it:

* :class:`Batcher` embeds texts (``Embed`` and ``Search`` queries share forward passes), keyed by
  (strategy, role, normalise), under ``max_batch_tokens``.
* :class:`SearchBatcher` runs the FAISS searches of concurrent ``Search`` calls on the same
  collection (same k and filter) as one multi-query search: on the CPU a batch of queries costs
  about what one query costs until BLAS kicks in (perf-anchors §1).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import numpy as np

from embedsvc.config import BatchingConfig
from embedsvc.errors import ResourceExhausted, Unavailable
from embedsvc.strategies.base import Embedding, Role, Strategy

log = logging.getLogger(__name__)

P = TypeVar("P")  # what one request carries
R = TypeVar("R")  # what one request gets back


@dataclass
class _Request(Generic[P]):
    key: Hashable
    payload: P
    items: int
    cost: int
    run: Callable[[list[P]], list[Any]]
    future: Future = field(default_factory=Future)
    enqueued_at: float = field(default_factory=time.monotonic)


@dataclass
class BatchStats:
    """Counters for observability and tests (how much batching really happened)."""

    batches: int = 0
    requests: int = 0
    texts: int = 0
    tokens: int = 0
    rejected: int = 0
    largest_batch_requests: int = 0


class MicroBatcher:
    """The queue and the worker; subclasses say what a request is and how a batch runs."""

    def __init__(
        self,
        name: str,
        max_wait_ms: float,
        max_items: int,
        max_cost: int,
        max_queue: int,
        on_batch: Callable[[int, int, float], None] | None = None,
    ) -> None:
        self.max_wait_ms, self.max_items, self.max_cost = max_wait_ms, max_items, max_cost
        self.max_queue = max_queue
        self.stats = BatchStats()
        #: called after each batch with (items, cost, seconds): metrics hook
        self.on_batch = on_batch
        self._queue: deque[_Request] = deque()
        self._queued = 0
        self._cond = threading.Condition()
        self._closed = False
        self._busy_since: float | None = None
        #: requests the previous batch carried: how much company the next one waits for
        self._last_batch_requests = 1
        #: a batch is running (on the worker, or on a caller's thread)
        self._running = False
        self._worker = threading.Thread(target=self._run, name=f"embedsvc-{name}", daemon=True)
        self._worker.start()

    def _submit(
        self,
        key: Hashable,
        payload: Any,
        items: int,
        cost: int,
        run: Callable[[list[Any]], list[Any]],
        on_caller: bool = False,
    ) -> Future:
        """Queue one request; its future resolves to its result.

        ``on_caller``: when the worker is idle, nothing is queued and the previous batch was a
        lone request (no load), run the request here, on the calling thread, before returning
        (two thread hand-offs fewer). Never from an event loop: the forward would block it."""
        request = _Request(key, payload, items, max(cost, items), run)
        with self._cond:
            if self._closed:
                raise Unavailable("the server is shutting down; retry on another replica")
            if self._queued and self._queued + items > self.max_queue:
                self.stats.rejected += 1
                raise ResourceExhausted(
                    f"the queue is full ({self._queued} items waiting, limit {self.max_queue}); "
                    "retry with backoff or send fewer texts"
                )
            inline = (
                on_caller
                and not self._running
                and not self._queue
                and self._last_batch_requests <= 1
            )
            if inline:
                self._running = True  # the worker waits until this batch is done
            else:
                self._queue.append(request)
                self._queued += items
                self._cond.notify()
        if inline:
            try:
                if request.future.set_running_or_notify_cancel():
                    self._execute([request])
            finally:
                with self._cond:
                    self._running = False
                    self._cond.notify_all()
        return request.future

    @property
    def queued_texts(self) -> int:
        return self._queued

    def busy_for(self) -> float:
        """Seconds the current batch has been running (0 when idle): a watchdog reads this."""
        started = self._busy_since
        return 0.0 if started is None else time.monotonic() - started

    def close(self, timeout: float = 30.0) -> None:
        """Finish what is queued, then stop the worker; also wait for a batch running on a
        caller's thread (``on_caller``), so nothing is mid-forward when the engine closes."""
        deadline = time.monotonic() + timeout
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._worker.join(timeout)
        with self._cond:
            while self._running and (remaining := deadline - time.monotonic()) > 0:
                self._cond.wait(remaining)

    def _take_batch(self) -> list[_Request] | None:
        with self._cond:
            while not self._queue or self._running:
                if self._closed and not self._queue:
                    return None
                self._cond.wait()
            # under load, give concurrent callers a moment to join the oldest request's batch;
            # a lone request on an idle worker (previous batch: one request) goes at once. The
            # wait counts from now, when the worker is free: the callers of the batch that just
            # finished are sending their next requests (counting from the oldest request's
            # arrival instead settles into alternating batches of 1 and n-1)
            expected = self._last_batch_requests
            deadline = time.monotonic() + self.max_wait_ms / 1000.0
            while not self._closed and len(self._queue) < expected:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._queued >= self.max_items:
                    break
                self._cond.wait(remaining)
            first = self._queue.popleft()
            batch, cost, items = [first], first.cost, first.items
            keep: deque[_Request] = deque()
            while self._queue:
                req = self._queue.popleft()
                fits = cost + req.cost <= self.max_cost and items + req.items <= self.max_items
                if req.key == first.key and fits:
                    batch.append(req)
                    cost += req.cost
                    items += req.items
                else:
                    keep.append(req)
            self._queue = keep
            self._queued -= items
            self._running = True
            return batch

    def _run(self) -> None:
        while (batch := self._take_batch()) is not None:
            try:
                live = [r for r in batch if r.future.set_running_or_notify_cancel()]
                if live:
                    self._execute(live)
            finally:
                with self._cond:
                    self._running = False

    def _execute(self, live: list[_Request]) -> None:
        """Run one batch and resolve its futures (an error goes to every caller)."""
        self._busy_since = started = time.monotonic()
        try:
            results = live[0].run([r.payload for r in live])
        except BaseException as exc:  # hand the error to every caller; keep serving
            for r in live:
                r.future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        finally:
            elapsed = time.monotonic() - started
            self._busy_since = None
        self._last_batch_requests = len(live)
        items, cost = sum(r.items for r in live), sum(r.cost for r in live)
        self.stats.batches += 1
        self.stats.requests += len(live)
        self.stats.texts += items
        self.stats.tokens += cost
        self.stats.largest_batch_requests = max(self.stats.largest_batch_requests, len(live))
        if self.on_batch is not None:
            self.on_batch(items, cost, elapsed)
        for r, result in zip(live, results):
            if isinstance(result, Embedding):
                result.timings = {"queue": started - r.enqueued_at, "inference": elapsed}
            r.future.set_result(result)


def _split(total: Any, sizes: Sequence[int], take: Callable[[Any, int, int], Any]) -> list[Any]:
    out, start = [], 0
    for size in sizes:
        out.append(take(total, start, start + size))
        start += size
    return out


class Batcher(MicroBatcher):
    """Runs ``strategy.encode`` for many concurrent requests in shared forward passes."""

    def __init__(
        self,
        config: BatchingConfig | None = None,
        on_batch: Callable[[int, int, float], None] | None = None,
    ) -> None:
        self.config = config or BatchingConfig()
        super().__init__(
            "batcher",
            self.config.max_wait_ms,
            self.config.max_batch_texts,
            self.config.max_batch_tokens,
            self.config.max_queue_texts,
            on_batch,
        )

    def submit(
        self,
        strategy: Strategy,
        texts: list[str],
        role: Role,
        normalize: bool,
        tokens: int,
        on_caller: bool = False,
    ) -> Future:
        """Queue ``texts``; the future resolves to their :class:`Embedding` (in order).

        ``on_caller``: a blocking caller (a gRPC worker thread, never an event loop) may run the
        forward itself when the worker is idle and there is no load (``run_on_caller``)."""

        def run(batches: list[list[str]]) -> list[Embedding]:
            out = strategy.encode([t for b in batches for t in b], role, normalize=normalize)
            return _split(out, [len(b) for b in batches], lambda e, i, j: e.slice(i, j))

        key = (strategy.name, id(strategy), role, normalize)
        on_caller = on_caller and self.config.run_on_caller
        return self._submit(key, texts, len(texts), tokens, run, on_caller)

    def encode(
        self,
        strategy: Strategy,
        texts: list[str],
        role: Role,
        normalize: bool = True,
        tokens: int | None = None,
        timeout: float | None = None,
    ) -> Embedding:
        """Blocking convenience around :meth:`submit` (runs on the caller when idle)."""
        future = self.submit(strategy, texts, role, normalize, tokens or len(texts), True)
        return future.result(timeout)


class SearchBatcher(MicroBatcher):
    """Runs concurrent searches of one collection (same k and filter) as one FAISS call."""

    def __init__(self, config: BatchingConfig | None = None) -> None:
        config = config or BatchingConfig()
        self.run_on_caller = config.run_on_caller
        super().__init__(
            "search-batcher",
            config.max_wait_ms,
            config.max_search_queries,
            config.max_search_queries,
            config.max_queue_texts,
        )

    def search(self, collection: Any, queries: Embedding, k: int, filter: dict | None) -> list:
        """``collection.search(queries, k, filter)``, sharing the call with concurrent ones."""

        def run(batches: list[Embedding]) -> list[list]:
            merged = batches[0] if len(batches) == 1 else Embedding.concat(batches)
            hits = collection.search(merged, k, filter)
            return _split(hits, [len(b) for b in batches], lambda h, i, j: h[i:j])

        key = (id(collection), k, _freeze(filter))
        n = len(queries)
        return self._submit(key, queries, n, n, run, self.run_on_caller).result()


def _freeze(value: Any) -> Hashable:
    """A hashable, order-independent form of a JSON-like filter (for grouping)."""
    if isinstance(value, dict):
        return tuple(sorted((k, _freeze(v)) for k, v in value.items()))
    if isinstance(value, list):
        return tuple(_freeze(v) for v in value)
    if isinstance(value, np.generic):
        value = value.item()
    return (type(value).__name__, value)  # so that True and 1 never share a batch
