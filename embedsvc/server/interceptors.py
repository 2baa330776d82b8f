"""gRPC interceptors: request id/logging/tracing, API-key auth and metrics, around every RPC of
every kind.

All work by wrapping the method handler grpc found, keeping its kind (unary or streaming on
either side) and serialisers, so the servicers stay unaware of them.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import grpc

from embedsvc import telemetry
from embedsvc.errors import EmbedsvcError
from embedsvc.server.auth import ApiKeyAuth
from embedsvc.server.logs import log_access
from embedsvc.server.metrics import Metrics
from embedsvc.server.status import abort
from embedsvc.server.tracing import Tracing, carrier_from_metadata

_KINDS = (
    ("unary_unary", grpc.unary_unary_rpc_method_handler),
    ("unary_stream", grpc.unary_stream_rpc_method_handler),
    ("stream_unary", grpc.stream_unary_rpc_method_handler),
    ("stream_stream", grpc.stream_stream_rpc_method_handler),
)

Behaviour = Callable[[Any, grpc.ServicerContext], Any]


def _rewrap(handler: grpc.RpcMethodHandler, wrap: Callable[[Behaviour, bool], Behaviour]):
    """A handler of the same kind as ``handler`` whose behaviour is ``wrap(behaviour)``."""
    for attr, factory in _KINDS:
        behaviour = getattr(handler, attr)
        if behaviour is not None:
            return factory(
                wrap(behaviour, handler.response_streaming),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
    return handler


def _final_code(context: grpc.ServicerContext, failed: bool) -> grpc.StatusCode:
    code = context.code() if hasattr(context, "code") else None
    if code is None:
        code = grpc.StatusCode.INTERNAL if failed else grpc.StatusCode.OK
    return code


#: health checks and reflection: access lines at DEBUG, never traced
_QUIET_PREFIXES = ("/grpc.health.", "/grpc.reflection.")


class RequestInterceptor(grpc.ServerInterceptor):
    """The outermost layer of every RPC: request id, access log line, tracing span.

    The request id is the caller's ``x-request-id`` metadata when valid, else a new one; it is
    sent back as initial metadata (so errors carry it too) and bound to the handler's context
    for log records and INTERNAL error messages. With tracing on, the RPC runs inside a SERVER
    span named after the method, with ``rpc.*`` and ``embedsvc.request_id`` attributes and the
    final ``rpc.grpc.status_code``.
    """

    def __init__(self, tracing: Tracing | None = None) -> None:
        self.tracing = tracing

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None:
            return handler
        full_method = handler_call_details.method  # "/package.Service/Method"
        rpc = full_method.lstrip("/")
        quiet = full_method.startswith(_QUIET_PREFIXES)
        metadata = handler_call_details.invocation_metadata or ()
        supplied = next((v for k, v in metadata if k == telemetry.REQUEST_ID_HEADER), None)
        supplied = supplied if isinstance(supplied, str) else None
        tracing = None if quiet else self.tracing

        def begin(context: grpc.ServicerContext):
            request_id = telemetry.accept_request_id(supplied)
            context.send_initial_metadata(((telemetry.REQUEST_ID_HEADER, request_id),))
            tokens = telemetry.enter(request_id, tracing.tracer if tracing else None)
            span = None
            if tracing is not None:
                service, _, method = rpc.partition("/")
                span = tracing.start(
                    rpc,
                    {
                        "rpc.system": "grpc",
                        "rpc.service": service,
                        "rpc.method": method,
                        "embedsvc.request_id": request_id,
                    },
                    carrier_from_metadata(metadata),
                )
            return time.perf_counter(), tokens, span

        def end(context, state, failed: bool, exc: BaseException | None) -> None:
            start, tokens, span = state
            try:
                code = _final_code(context, failed)
                if span is not None:
                    tracing.finish(
                        span,
                        {"rpc.grpc.status_code": code.value[0]},
                        error=Tracing.grpc_error(code.name),
                        exception=exc if code == grpc.StatusCode.INTERNAL else None,
                    )
                log_access(code.name, time.perf_counter() - start, rpc=rpc, quiet=quiet)
            finally:
                telemetry.leave(tokens)

        def observe(behaviour: Behaviour, streaming: bool) -> Behaviour:
            if streaming:

                def stream(request, context):
                    state, failed, error = begin(context), True, None
                    try:
                        yield from behaviour(request, context)
                        failed = False
                    except BaseException as exc:
                        error = exc
                        raise
                    finally:
                        end(context, state, failed, error)

                return stream

            def unary(request, context):
                state, failed, error = begin(context), True, None
                try:
                    response = behaviour(request, context)
                    failed = False
                    return response
                except BaseException as exc:
                    error = exc
                    raise
                finally:
                    end(context, state, failed, error)

            return unary

        return _rewrap(handler, observe)


class AuthInterceptor(grpc.ServerInterceptor):
    """Refuses calls without a valid ``authorization: Bearer <key>`` (UNAUTHENTICATED)."""

    def __init__(self, auth: ApiKeyAuth) -> None:
        self.auth = auth

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or self.auth.is_open(method):
            return handler
        metadata = dict(handler_call_details.invocation_metadata or ())
        try:
            self.auth.check(method, metadata.get("authorization"))
        except EmbedsvcError as exc:
            error = exc

            def deny(behaviour: Behaviour, streaming: bool) -> Behaviour:
                def refuse(request, context):
                    abort(context, error)  # raises: the request is never read

                return refuse

            return _rewrap(handler, deny)
        return handler


class MetricsInterceptor(grpc.ServerInterceptor):
    """Latency histogram per RPC and errors by status code."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None:
            return handler
        method = handler_call_details.method.rsplit("/", 1)[-1]
        metrics = self.metrics

        def observe(behaviour: Behaviour, streaming: bool) -> Behaviour:
            def finish(context: grpc.ServicerContext, start: float, failed: bool) -> None:
                code = _final_code(context, failed)
                metrics.observe_rpc(method, code.name, time.perf_counter() - start)

            if streaming:

                def stream(request, context):
                    start, failed = time.perf_counter(), True
                    try:
                        yield from behaviour(request, context)
                        failed = False
                    finally:
                        finish(context, start, failed)

                return stream

            def unary(request, context):
                start, failed = time.perf_counter(), True
                try:
                    response = behaviour(request, context)
                    failed = False
                    return response
                finally:
                    finish(context, start, failed)

            return unary

        return _rewrap(handler, observe)
