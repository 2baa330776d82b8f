"""Cross-request batching of texts under a token budget and a max wait.

Concurrent ``Embed`` and ``Search`` calls put their texts on one bounded queue; a single worker
thread takes the oldest request, waits up to ``max_wait_ms`` for company, and runs one forward
pass over every queued request that shares its (strategy, role, normalise) key while the batch
stays within ``max_batch_tokens`` / ``max_batch_texts``. A request larger than the budget runs
alone (the strategy sub-batches internally). Past ``max_queue_texts`` queued texts a new request
is refused with ResourceExhausted at once, so overload is answered, not absorbed until memory
runs out. One worker is right on CPU: torch already uses every core inside a forward pass.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

from embedsvc.config import BatchingConfig
from embedsvc.errors import ResourceExhausted, Unavailable
from embedsvc.strategies.base import Embedding, Role, Strategy

log = logging.getLogger(__name__)

BatchKey = tuple[str, Role, bool]


@dataclass
class _Request:
    strategy: Strategy
    role: Role
    normalize: bool
    texts: list[str]
    tokens: int
    future: Future = field(default_factory=Future)
    enqueued_at: float = field(default_factory=time.monotonic)

    @property
    def key(self) -> BatchKey:
        return (self.strategy.name, self.role, self.normalize)


@dataclass
class BatchStats:
    """Counters for observability and tests (how much batching really happened)."""

    batches: int = 0
    requests: int = 0
    texts: int = 0
    tokens: int = 0
    rejected: int = 0
    largest_batch_requests: int = 0


class Batcher:
    """Runs ``strategy.encode`` for many concurrent requests in shared forward passes."""

    def __init__(
        self,
        config: BatchingConfig | None = None,
        on_batch: Callable[[int, int, float], None] | None = None,
    ) -> None:
        self.config = config or BatchingConfig()
        self.stats = BatchStats()
        self.on_batch = on_batch
        self._queue: deque[_Request] = deque()
        self._queued_texts = 0
        self._cond = threading.Condition()
        self._closed = False
        self._busy_since: float | None = None
        self._worker = threading.Thread(target=self._run, name="embedsvc-batcher", daemon=True)
        self._worker.start()

    # -- client side ---------------------------------------------------------------------------

    def submit(
        self, strategy: Strategy, texts: list[str], role: Role, normalize: bool, tokens: int
    ) -> Future:
        """Queue ``texts``; the future resolves to their :class:`Embedding` (in order)."""
        request = _Request(strategy, role, normalize, texts, max(tokens, len(texts)))
        with self._cond:
            if self._closed:
                raise Unavailable("the server is shutting down; retry on another replica")
            if self._queued_texts and self._queued_texts + len(texts) > self.config.max_queue_texts:
                self.stats.rejected += 1
                raise ResourceExhausted(
                    f"the embedding queue is full ({self._queued_texts} texts waiting, limit "
                    f"{self.config.max_queue_texts}); retry with backoff or send fewer texts"
                )
            self._queue.append(request)
            self._queued_texts += len(texts)
            self._cond.notify()
        return request.future

    def encode(
        self,
        strategy: Strategy,
        texts: list[str],
        role: Role,
        normalize: bool = True,
        tokens: int | None = None,
        timeout: float | None = None,
    ) -> Embedding:
        """Blocking convenience around :meth:`submit`."""
        return self.submit(strategy, texts, role, normalize, tokens or len(texts)).result(timeout)

    @property
    def queued_texts(self) -> int:
        return self._queued_texts

    def busy_for(self) -> float:
        """Seconds the current batch has been running (0 when idle): a watchdog reads this."""
        started = self._busy_since
        return 0.0 if started is None else time.monotonic() - started

    def close(self, timeout: float = 30.0) -> None:
        """Finish what is queued, then stop the worker."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._worker.join(timeout)

    # -- worker side ---------------------------------------------------------------------------

    def _take_batch(self) -> list[_Request] | None:
        cfg = self.config
        with self._cond:
            while not self._queue:
                if self._closed:
                    return None
                self._cond.wait()
            # give concurrent callers a moment to join the first request's batch
            deadline = self._queue[0].enqueued_at + cfg.max_wait_ms / 1000.0
            while not self._closed:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._queued_texts >= cfg.max_batch_texts:
                    break
                self._cond.wait(remaining)
            first = self._queue.popleft()
            batch, tokens, texts = [first], first.tokens, len(first.texts)
            keep: deque[_Request] = deque()
            while self._queue:
                req = self._queue.popleft()
                fits = (
                    tokens + req.tokens <= cfg.max_batch_tokens
                    and texts + len(req.texts) <= cfg.max_batch_texts
                )
                if req.key == first.key and fits:
                    batch.append(req)
                    tokens += req.tokens
                    texts += len(req.texts)
                else:
                    keep.append(req)
            self._queue = keep
            self._queued_texts -= texts
            return batch

    def _run(self) -> None:
        while True:
            batch = self._take_batch()
            if batch is None:
                return
            live = [r for r in batch if r.future.set_running_or_notify_cancel()]
            if not live:
                continue
            first = live[0]
            texts = [t for r in live for t in r.texts]
            self._busy_since = started = time.monotonic()
            try:
                out = first.strategy.encode(texts, first.role, normalize=first.normalize)
            except BaseException as exc:  # hand the error to every caller; keep serving
                for r in live:
                    r.future.set_exception(exc)
                if not isinstance(exc, Exception):
                    raise
                continue
            finally:
                elapsed = time.monotonic() - started
                self._busy_since = None
            self.stats.batches += 1
            self.stats.requests += len(live)
            self.stats.texts += len(texts)
            self.stats.tokens += sum(r.tokens for r in live)
            self.stats.largest_batch_requests = max(self.stats.largest_batch_requests, len(live))
            if self.on_batch is not None:
                self.on_batch(len(texts), sum(r.tokens for r in live), elapsed)
            start = 0
            for r in live:
                piece = out.slice(start, start + len(r.texts))
                piece.timings = {"queue": started - r.enqueued_at, "inference": elapsed}
                r.future.set_result(piece)
                start += len(r.texts)
