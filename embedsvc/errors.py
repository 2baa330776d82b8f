"""Library exceptions.

Every error a caller can cause is one of these. The gRPC layer maps them to status codes in one
place (``embedsvc.server.status``); the CLI prints their message. Messages are written for a
person: say what was wrong and what to do instead.
"""

from __future__ import annotations


class EmbedsvcError(Exception):
    """Base class: something the caller asked for cannot be done as asked."""

    #: grpc.StatusCode name this error maps to (read by ``embedsvc.server.status``).
    code: str = "INTERNAL"

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        #: the request field at fault, e.g. ``texts[3]`` (goes into google.rpc BadRequest).
        self.field = field


class InvalidArgument(EmbedsvcError):
    code = "INVALID_ARGUMENT"


class NotFound(EmbedsvcError):
    code = "NOT_FOUND"


class AlreadyExists(EmbedsvcError):
    code = "ALREADY_EXISTS"


class ResourceExhausted(EmbedsvcError):
    code = "RESOURCE_EXHAUSTED"


class FailedPrecondition(EmbedsvcError):
    code = "FAILED_PRECONDITION"


class Unavailable(EmbedsvcError):
    code = "UNAVAILABLE"


class Unauthenticated(EmbedsvcError):
    code = "UNAUTHENTICATED"


class PermissionDenied(EmbedsvcError):
    code = "PERMISSION_DENIED"


class PayloadTooLarge(ResourceExhausted):
    """A request body over the configured limit (HTTP 413; RESOURCE_EXHAUSTED on gRPC)."""

    http_status = 413


#: how much of a caller's value an error message repeats
ECHO_CHARS = 100


def shorten(value: object, limit: int = ECHO_CHARS) -> str:
    """``repr(value)`` for an error message, cut to about ``limit`` characters.

    Messages repeat what the caller sent so they can find it; a 10,000-character name repeated
    whole would push the message past gRPC's metadata limit (and into every log line).
    """
    text = repr(value)
    if len(text) <= limit:
        return text
    size = f" ({len(value):,} characters)" if isinstance(value, str) else ""
    return f"{text[:limit]}...{size}"
