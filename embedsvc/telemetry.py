"""Per-request context shared by the transports and the engine: the request id and the tracer.

Standard library only, on purpose: the engine reports its stages (tokenize, queue, inference,
search) here, and they become OpenTelemetry spans only while the request is traced. Untraced,
each report is one context-variable read; the OTel SDK is never imported
(:mod:`embedsvc.server.tracing` sets it up when an OTLP endpoint is configured).

Context variables follow the request: gRPC handlers run in one worker thread, FastAPI copies
the context into the thread that runs a sync route. The batcher's thread serves many requests
at once, so its own log lines carry no request id; its timings come back with each result and
are reported from the request's thread.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Mapping
from contextvars import ContextVar, Token
from typing import Any

#: the id of the request being handled (None outside a request)
REQUEST_ID: ContextVar[str | None] = ContextVar("embedsvc_request_id", default=None)
#: the OTel tracer of the request being handled, when it is traced
TRACER: ContextVar[Any] = ContextVar("embedsvc_tracer", default=None)

REQUEST_ID_HEADER = "x-request-id"
#: a supplied request id is kept only if it looks like an id (else one is generated)
_VALID_REQUEST_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/+=@-]{0,127}")

#: the engine's stages in the order a request goes through them
STAGES = ("tokenize", "queue", "inference", "search")


def new_request_id() -> str:
    return uuid.uuid4().hex


def accept_request_id(supplied: str | None) -> str:
    """``supplied`` if it is 1..128 characters of ``[A-Za-z0-9._:/+=@-]`` (starting with a
    letter or digit), else a fresh id: a caller's id must not inject text into log lines."""
    if supplied and _VALID_REQUEST_ID.fullmatch(supplied):
        return supplied
    return new_request_id()


def current_request_id() -> str | None:
    return REQUEST_ID.get()


def enter(request_id: str, tracer: Any = None) -> tuple[Token, Token]:
    """Bind ``request_id`` (and ``tracer``) to the current context; undo with :func:`leave`."""
    return REQUEST_ID.set(request_id), TRACER.set(tracer)


def leave(tokens: tuple[Token, Token]) -> None:
    REQUEST_ID.reset(tokens[0])
    TRACER.reset(tokens[1])


def record_stages(timings: Mapping[str, float], **attributes: Any) -> None:
    """Report stage durations (seconds, as in ``Embedding.timings``) that just ended.

    Traced, each becomes a child span of the current span, laid end to end in
    :data:`STAGES` order and ending now; ``attributes`` (``strategy=``, ``collection=``, ...)
    go on those spans and on the request's span as ``embedsvc.<name>``. Untraced: nothing.
    """
    tracer = TRACER.get()
    if tracer is None:
        return
    from opentelemetry import trace

    attrs = {f"embedsvc.{k}": v for k, v in attributes.items() if v is not None}
    current = trace.get_current_span()
    if attrs and current.is_recording():
        current.set_attributes(attrs)
    end = time.time_ns()
    for stage in reversed(STAGES):
        seconds = timings.get(stage)
        if seconds is None:
            continue
        start = end - max(0, int(seconds * 1e9))
        tracer.start_span(f"embedsvc.{stage}", start_time=start, attributes=attrs).end(end)
        end = start


_factory_installed = False


def install_log_record_factory() -> None:
    """Give every log record a ``request_id`` attribute (None outside a request). Idempotent."""
    global _factory_installed
    if _factory_installed:
        return
    previous = logging.getLogRecordFactory()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        record.request_id = REQUEST_ID.get()
        return record

    logging.setLogRecordFactory(factory)
    _factory_installed = True
