"""gRPC interceptors: API-key auth and metrics, around every RPC of every kind.

Both work by wrapping the method handler grpc found, keeping its kind (unary or streaming on
either side) and serialisers, so the servicers stay unaware of them.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import grpc

from embedsvc.errors import EmbedsvcError
from embedsvc.server.auth import ApiKeyAuth
from embedsvc.server.metrics import Metrics
from embedsvc.server.status import abort

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
                code = context.code() if hasattr(context, "code") else None
                if code is None:
                    code = grpc.StatusCode.INTERNAL if failed else grpc.StatusCode.OK
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
