"""OpenTelemetry tracing over OTLP/gRPC, set up only when an endpoint is configured.

One span per RPC (``embedsvc.v1.EmbeddingService/Embed``, kind SERVER) and per HTTP request
(``POST /v1/embeddings``), continuing a caller's W3C ``traceparent`` when one is sent, with
children for the engine's stages (``embedsvc.tokenize``, ``embedsvc.queue``,
``embedsvc.inference``, ``embedsvc.search``: the same durations as the ``x-*-time`` metadata).
Each service has its own ``TracerProvider`` (never the global one: tests start several servers
in one process), flushed and shut down when the service stops. Without an endpoint
:func:`create_tracing` returns None and the SDK is not even imported.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

from embedsvc.config import TracingConfig

log = logging.getLogger(__name__)

#: gRPC codes that are the server's fault (OTel's semantic conventions for RPC servers)
_SERVER_ERRORS = frozenset(
    ("UNKNOWN", "DEADLINE_EXCEEDED", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS")
)


class Tracing:
    """A service's tracer provider and the span helpers the transports use."""

    def __init__(self, config: TracingConfig) -> None:
        try:
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
            from opentelemetry.sdk.resources import Resource
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import BatchSpanProcessor
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise RuntimeError(
                "tracing.otlp_endpoint is set but the OpenTelemetry SDK is missing: "
                "pip install 'embedsvc[otel]'"
            ) from exc
        from opentelemetry import context, propagate, trace

        self._context, self._propagate, self._trace = context, propagate, trace
        self.config = config
        self.provider = TracerProvider(
            resource=Resource.create({"service.name": config.service_name})
        )
        exporter = OTLPSpanExporter(
            endpoint=config.otlp_endpoint,
            insecure=config.insecure,
            timeout=config.export_timeout_s,
        )
        self.provider.add_span_processor(BatchSpanProcessor(exporter))
        self.tracer = self.provider.get_tracer("embedsvc")
        log.info("tracing to %s as %r", config.otlp_endpoint, config.service_name)

    def start(
        self, name: str, attributes: Mapping[str, Any], carrier: Mapping[str, str]
    ) -> tuple[Any, Any]:
        """Start a SERVER span (child of the caller's ``traceparent`` in ``carrier``) and make
        it current; returns the handle for :meth:`finish`."""
        parent = self._propagate.extract(carrier)
        span = self.tracer.start_span(
            name, context=parent, kind=self._trace.SpanKind.SERVER, attributes=attributes
        )
        token = self._context.attach(self._trace.set_span_in_context(span, parent))
        return span, token

    def finish(
        self,
        handle: tuple[Any, Any],
        attributes: Mapping[str, Any],
        error: str | None = None,
        exception: BaseException | None = None,
    ) -> None:
        """End the span: ``attributes`` (the status code), ERROR status when ``error``."""
        span, token = handle
        try:
            span.set_attributes(attributes)
            if exception is not None:
                span.record_exception(exception)
            if error is not None:
                span.set_status(self._trace.Status(self._trace.StatusCode.ERROR, error))
            span.end()
        finally:
            self._context.detach(token)

    @staticmethod
    def grpc_error(code_name: str) -> str | None:
        return code_name if code_name in _SERVER_ERRORS else None

    def shutdown(self) -> None:
        """Export what is buffered, then stop the exporter (graceful shutdown; at most about
        ``export_timeout_s`` when the collector is unreachable)."""
        self.provider.shutdown()


def create_tracing(config: TracingConfig) -> Tracing | None:
    """A :class:`Tracing` when ``config.otlp_endpoint`` is set, else None (no overhead)."""
    return Tracing(config) if config.enabled else None


def carrier_from_metadata(metadata: Iterable[tuple[str, Any]] | None) -> dict[str, str]:
    """gRPC invocation metadata as a propagation carrier (text keys only)."""
    return {k: v for k, v in metadata or () if isinstance(v, str)}
