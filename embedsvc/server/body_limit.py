"""A bound on HTTP request bodies, enforced while they are read.

A ``Content-Length`` over the limit is answered 413 at once, before a byte of the body is read;
a body without one (``Transfer-Encoding: chunked``) or one that lies about its length is counted
as it arrives, and the request fails with 413 as soon as the count passes the limit. Either way
the process never holds more than the limit (plus the server's small read buffer) of one body.
uvicorn closes the connection after such an answer, so the rest of the body is never read.

ASGI middleware: the body is read by the route's handler through ``receive``; this wraps
``receive``, and its :class:`BodyTooLarge` is an ``HTTPException`` so that FastAPI's body
parsing passes it through to the app's exception handlers (which give OpenAI's error body).
"""

from __future__ import annotations

from typing import Any

from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse

from embedsvc.errors import PayloadTooLarge
from embedsvc.server.status import to_http


class BodyTooLarge(HTTPException):
    """Raised from ``receive`` once a body passes the limit; ``error`` is the library error."""

    def __init__(self, limit: int) -> None:
        self.error = too_large(limit)
        super().__init__(413, self.error.message)


def too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"request body over the limit of {limit:,} bytes (http.max_body_bytes): send fewer or "
        "shorter texts per request",
        field="body",
    )


class BodyLimit:
    """``app.add_middleware(BodyLimit, max_bytes=...)``."""

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            status, body = to_http(too_large(self.max_bytes))
            await JSONResponse(body, status, headers={"connection": "close"})(scope, receive, send)
            return
        limit, received = self.max_bytes, 0

        async def counted() -> dict:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit)
            return message

        await self.app(scope, counted, send)


def _content_length(scope: dict) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None  # malformed: the server rejects it; counting still applies
    return None
