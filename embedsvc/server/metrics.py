"""Prometheus metrics: RPC latency and errors, queue and batch sizes, index sizes.

Each service gets its own registry (tests start several servers in one process); the HTTP
server exposes it at ``/metrics`` (behind the API keys when keys are configured), and
:meth:`Metrics.serve` on a separate port without a key (``metrics.port``), to be kept private.

Every label has a bounded set of values: methods are the registered RPCs and HTTP routes (the
HTTP layer counts any other path as ``unknown``), codes are status codes, collections are the
collections that exist.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    start_http_server,
)
from prometheus_client.core import GaugeMetricFamily

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class _IndexSizes:
    """Collected at scrape time, so it is never stale and costs nothing between scrapes."""

    def __init__(self, sizes: Callable[[], dict[str, int]]) -> None:
        self.sizes = sizes

    def collect(self):
        family = GaugeMetricFamily(
            "embedsvc_collection_documents", "documents per collection", labels=["collection"]
        )
        for name, count in self.sizes().items():
            family.add_metric([name], count)
        yield family


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._server: Any = None
        self.rpc_latency = Histogram(
            "embedsvc_request_seconds",
            "request latency by method (gRPC and HTTP)",
            ["method"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.rpc_total = Counter(
            "embedsvc_requests_total",
            "requests by method and status code",
            ["method", "code"],
            registry=self.registry,
        )
        self.queue_texts = Gauge(
            "embedsvc_queue_texts", "texts waiting for a forward pass", registry=self.registry
        )
        self.batch_texts = Histogram(
            "embedsvc_batch_texts",
            "texts per forward pass",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024),
            registry=self.registry,
        )
        self.batch_tokens = Histogram(
            "embedsvc_batch_tokens",
            "tokens per forward pass",
            buckets=(16, 64, 256, 1024, 2048, 4096, 8192, 16384),
            registry=self.registry,
        )
        self.batch_seconds = Histogram(
            "embedsvc_batch_seconds",
            "forward-pass time",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )

    def observe_rpc(self, method: str, code: str, seconds: float) -> None:
        self.rpc_latency.labels(method).observe(seconds)
        self.rpc_total.labels(method, code).inc()

    def observe_batch(self, texts: int, tokens: int, seconds: float) -> None:
        self.batch_texts.observe(texts)
        self.batch_tokens.observe(tokens)
        self.batch_seconds.observe(seconds)

    def track_queue(self, queued: Callable[[], int]) -> None:
        self.queue_texts.set_function(queued)

    def track_collections(self, sizes: Callable[[], dict[str, int]]) -> None:
        self.registry.register(_IndexSizes(sizes))

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

    def serve(self, host: str, port: int) -> int:
        """Serve this registry on ``host:port`` (0 = any free port) in a thread; returns the
        port. No key: bind it where only the scraper can reach it."""
        server, _thread = start_http_server(port, host, registry=self.registry)
        self._server = server
        return int(server.server_address[1])

    def stop_serving(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
