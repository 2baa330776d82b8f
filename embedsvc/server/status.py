"""The one place where errors become gRPC status codes.

Library errors (:mod:`embedsvc.errors`) carry their code name and a message written for a person;
the field at fault goes into a ``google.rpc.BadRequest`` detail. Anything else is a bug: the
client gets INTERNAL with the request id (the one sent back as ``x-request-id``), and the stack
trace goes to the log, never to the wire.
"""

from __future__ import annotations

import functools
import logging
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from embedsvc.errors import EmbedsvcError
from embedsvc.telemetry import current_request_id

log = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])

#: a status message is sent as gRPC trailing metadata (8 KiB in all by default): never more
MAX_MESSAGE_CHARS = 2000

#: the HTTP status of each gRPC code (as grpc-gateway maps them)
HTTP_STATUS = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.INTERNAL: 500,
}


def to_status(exc: BaseException) -> tuple[grpc.StatusCode, str, status_pb2.Status]:
    """Map an exception to (code, message, rich status)."""
    if isinstance(exc, EmbedsvcError):
        code = getattr(grpc.StatusCode, exc.code, grpc.StatusCode.INTERNAL)
        message = exc.message
        if len(message) > MAX_MESSAGE_CHARS:  # the status travels in (size-limited) metadata
            message = message[:MAX_MESSAGE_CHARS] + "... (message cut)"
    else:
        request_id = current_request_id() or uuid.uuid4().hex[:12]
        log.exception("internal error (request %s)", request_id)
        code, message = grpc.StatusCode.INTERNAL, f"internal error; request id {request_id}"
    rich = status_pb2.Status(code=getattr(code_pb2, code.name), message=message)
    field = getattr(exc, "field", None)
    if field:
        detail = any_pb2.Any()
        detail.Pack(
            error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(field=field, description=message)
                ]
            )
        )
        rich.details.append(detail)
    return code, message, rich


def to_http(exc: BaseException) -> tuple[int, dict[str, Any]]:
    """(HTTP status, OpenAI-style error body) for ``exc``."""
    code, message, _ = to_status(exc)
    body = {
        "error": {
            "message": message,
            "type": code.name.lower(),
            "code": code.name,
            "param": getattr(exc, "field", None),
        }
    }
    return getattr(exc, "http_status", None) or HTTP_STATUS.get(code, 500), body


def abort(context: grpc.ServicerContext, exc: BaseException) -> None:
    """Abort the RPC with ``exc`` mapped to its status (raises, as grpc's abort does)."""
    _, _, rich = to_status(exc)
    context.abort_with_status(rpc_status.to_status(rich))


def grpc_errors(method: F) -> F:
    """Decorator for servicer methods: library errors become status codes, never crashes."""

    @functools.wraps(method)
    def wrapper(self, request, context):
        try:
            return method(self, request, context)
        except Exception as exc:
            if isinstance(exc, grpc.RpcError) or _already_aborted(context):
                raise
            abort(context, exc)

    return wrapper  # type: ignore[return-value]


def grpc_stream_errors(method: F) -> F:
    """``grpc_errors`` for server-streaming methods (generators): errors raised while streaming,
    before or after the first message, become status codes too."""

    @functools.wraps(method)
    def wrapper(self, request, context):
        try:
            yield from method(self, request, context)
        except Exception as exc:
            if isinstance(exc, grpc.RpcError) or _already_aborted(context):
                raise
            abort(context, exc)

    return wrapper  # type: ignore[return-value]


def _already_aborted(context: grpc.ServicerContext) -> bool:
    code = getattr(context, "code", lambda: None)()
    return code is not None and code != grpc.StatusCode.OK
