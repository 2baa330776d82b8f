"""The HTTP API beside gRPC, in the same process, on the same engine and batcher.

``POST /v1/embeddings`` speaks OpenAI's embeddings protocol (so OpenAI, LangChain and LlamaIndex
clients work unmodified; ``model`` names the strategy), ``POST /v1/search`` searches a
collection, ``GET /v1/models`` lists strategies, ``GET /health`` mirrors gRPC health and
``GET /metrics`` is the Prometheus exposition. Errors use the same mapping as gRPC
(:func:`embedsvc.server.status.to_http`) with OpenAI's error body, unknown routes and bodies that
do not parse included. Every response carries ``x-request-id`` (the caller's, when valid) and
``x-total-time``.

Bounded per request: bodies (``http.max_body_bytes``, :mod:`embedsvc.server.body_limit`) and
metric labels (a path that is not one of the routes is counted as ``unknown``, so random paths
cannot add series). With API keys configured, ``/metrics`` and ``/openapi.json`` need a key too
(``/metrics`` also takes a metrics-only key); ``/health`` stays open.

The request path is kept short, because a RAG backend embeds one query per request: the
listening socket is TCP so every connection gets TCP_NODELAY (no Nagle + delayed-ACK wait),
uvicorn runs on uvloop and httptools when installed, observation is a plain ASGI middleware (no
extra task and stream per request), responses are written with orjson (numpy vectors directly),
and a small request to a warm strategy is tokenised on the event loop and awaits the batcher's
future there (no thread hop; larger or cold ones run in the thread pool).
"""

from __future__ import annotations

import base64
import threading
import time
from collections.abc import Callable
from typing import Any, Literal

import numpy as np
import orjson
from fastapi import Depends, FastAPI, Header, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from embedsvc import telemetry
from embedsvc.engine import Engine
from embedsvc.errors import EmbedsvcError, InvalidArgument, NotFound, shorten
from embedsvc.server.auth import METRICS, OPENAPI, ApiKeyAuth
from embedsvc.server.body_limit import BodyLimit, BodyTooLarge
from embedsvc.server.logs import log_access
from embedsvc.server.metrics import Metrics
from embedsvc.server.startup import Readiness
from embedsvc.server.status import to_http
from embedsvc.server.tracing import Tracing
from embedsvc.strategies import Role

#: probes and scrapes: access lines at DEBUG, never traced
_QUIET_ROUTES = frozenset(("/health", "/metrics"))
#: the metric label (and span name) of every path that is not a route
UNKNOWN_ROUTE = "unknown"
DEFAULT_MAX_BODY_BYTES = 4 * 1024 * 1024
#: requests up to this many characters are tokenised on the event loop (about a millisecond of
#: tokenizer time at most); longer ones go to the thread pool so the loop keeps serving
_INLINE_CHARS = 16_384


class JSONResponse(Response):
    """JSON written by orjson: numpy arrays and float32 scalars serialise directly."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)


class Observe:
    """Request id (``x-request-id`` in, or new; always sent back), ``x-total-time``, the access
    line, metrics and the span of every HTTP request: a plain ASGI middleware (Starlette's
    ``@app.middleware("http")`` runs the app in a second task behind memory streams)."""

    def __init__(
        self,
        app: ASGIApp,
        metrics: Metrics,
        tracing: Tracing | None,
        routes: Callable[[], set[str]],
    ) -> None:
        self.app, self.metrics, self.tracing, self.routes = app, metrics, tracing, routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        route, method = scope["path"], scope["method"]
        # a bounded label: random paths must not each add a metric series (or span name)
        label = route if route in self.routes() else UNKNOWN_ROUTE
        if len(route) > 200:
            route = route[:200] + "..."
        quiet = label in _QUIET_ROUTES
        traced = None if quiet else self.tracing
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        request_id = telemetry.accept_request_id(headers.get(telemetry.REQUEST_ID_HEADER))
        tokens = telemetry.enter(request_id, traced.tracer if traced else None)
        span = None
        if traced is not None:
            span = traced.start(
                f"{method} {label}",
                {
                    "http.request.method": method,
                    "url.path": route,
                    "http.route": label,
                    "embedsvc.request_id": request_id,
                },
                headers,
            )
        status, error, started, finished = 500, None, False, False

        def finish() -> None:
            """The access line, the span and the metric: once, before the response's last
            bytes leave (so they are written when the client has its answer)."""
            nonlocal finished
            if finished:
                return
            finished = True
            elapsed = time.perf_counter() - start
            try:
                if span is not None:
                    traced.finish(
                        span,
                        {"http.response.status_code": status},
                        error=str(status) if status >= 500 else None,
                        exception=error,
                    )
                log_access(status, elapsed, route=route, http_method=method, quiet=quiet)
            finally:
                self.metrics.observe_rpc(f"HTTP {label}", str(status), elapsed)

        async def send_observed(message: Message) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                started, status = True, message["status"]
                elapsed = time.perf_counter() - start
                message["headers"] = [
                    *message.get("headers", ()),
                    (b"x-total-time", f"{elapsed * 1000:.2f}".encode()),
                    (telemetry.REQUEST_ID_HEADER.encode(), request_id.encode()),
                ]
            elif message["type"] == "http.response.body" and not message.get("more_body"):
                finish()
            await send(message)

        try:
            try:
                await self.app(scope, receive, send_observed)
            except Exception as exc:  # a bug: INTERNAL with the request id, trace to the log
                error = exc
                if started:
                    raise
                code, body = to_http(exc)
                await JSONResponse(body, status_code=code)(scope, receive, send_observed)
        finally:
            try:
                finish()
            finally:
                telemetry.leave(tokens)


class EmbeddingsRequest(BaseModel):
    input: str | list[str]
    model: str = "mean"
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, ge=1)
    user: str | None = None
    #: embedsvc extensions (not in OpenAI's protocol)
    role: Literal["query", "passage"] = "query"
    strict_length: bool = False


class SearchBody(BaseModel):
    collection: str
    queries: list[str] | None = None
    query: str | None = None
    top_k: int = 10
    filter: dict[str, Any] | None = None


def _encode_vector(vector: np.ndarray, encoding: str) -> np.ndarray | str:
    if encoding == "base64":  # OpenAI's format: little-endian float32 bytes
        return base64.b64encode(vector.astype("<f4").tobytes()).decode()
    # orjson writes float32 arrays directly, each value in its shortest round-trip form
    return np.ascontiguousarray(vector, dtype=np.float32)


def create_app(
    engine: Engine,
    auth: ApiKeyAuth,
    metrics: Metrics,
    serving: Readiness,
    tracing: Tracing | None = None,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    health_detail: Callable[[], dict[str, str]] | None = None,
) -> FastAPI:
    """``health_detail()``, when given, returns ``{service: reason}`` for the services that are
    NOT_SERVING while the server as a whole serves (``GET /health`` lists them)."""
    # /openapi.json is served below, behind the API keys
    app = FastAPI(
        title="embedsvc",
        version="1",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        default_response_class=JSONResponse,
    )
    known_routes: set[str] = set()

    def routes() -> set[str]:
        if not known_routes:
            known_routes.update(getattr(r, "path", "") for r in app.routes)
        return known_routes

    # BodyLimit inside Observe (added after it, so outside): a 413 gets a request id and access line
    app.add_middleware(BodyLimit, max_bytes=max_body_bytes)
    app.add_middleware(Observe, metrics=metrics, tracing=tracing, routes=routes)

    def authorize(route: str) -> Any:
        # async: a sync dependency would cost a thread-pool hop per request
        async def check(authorization: str | None = Header(None)) -> None:
            auth.check(route, authorization)

        return Depends(check)

    @app.exception_handler(EmbedsvcError)
    async def on_error(request: Request, exc: EmbedsvcError) -> JSONResponse:
        status, body = to_http(exc)
        return JSONResponse(body, status_code=status)

    @app.exception_handler(StarletteHTTPException)
    async def on_http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        """Unknown routes, wrong methods, bodies that do not parse, bodies over the limit: in
        OpenAI's error shape like every other error (FastAPI's default is ``{"detail": ...}``)."""
        if isinstance(exc, BodyTooLarge):
            error: EmbedsvcError = exc.error
        elif exc.status_code == 404:
            routes = ", ".join(sorted(p for p in known_routes if p))
            error = NotFound(
                f"no route {request.method} {shorten(request.url.path)}; routes: {routes}"
            )
        else:
            error = InvalidArgument(f"{exc.detail}: {request.method} {shorten(request.url.path)}")
        status, body = to_http(error)
        if exc.status_code not in (404, 413):
            status = exc.status_code  # e.g. 405: the method is wrong, not the body
        return JSONResponse(body, status_code=status, headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def on_invalid_body(request: Request, exc: RequestValidationError) -> JSONResponse:
        # FastAPI's default handler echoes the input back and crashes on non-UTF-8 bytes
        problems = [
            f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg', 'invalid')}"
            for e in exc.errors()
        ]
        error = InvalidArgument("invalid request body: " + "; ".join(problems[:5]))
        status, body = to_http(error)
        return JSONResponse(body, status_code=status)

    @app.get("/health")
    async def health() -> Response:
        if serving.is_set():
            body: dict[str, Any] = {"status": "SERVING"}
            degraded = health_detail() if health_detail is not None else {}
            if degraded:  # gRPC health says the same per service; the reasons are logged too
                body["services"] = {
                    name: {"status": "NOT_SERVING", "reason": reason}
                    for name, reason in degraded.items()
                }
            return JSONResponse(body)
        # why not (gRPC health has no such field; the server logs the same lines)
        return JSONResponse({"status": "NOT_SERVING", "reason": serving.reason}, 503)

    @app.get("/metrics", dependencies=[authorize(METRICS)])
    def prometheus() -> Response:
        return Response(metrics.exposition(), media_type="text/plain; version=0.0.4")

    @app.get("/openapi.json", include_in_schema=False, dependencies=[authorize(OPENAPI)])
    def openapi() -> JSONResponse:
        return JSONResponse(app.openapi())

    @app.get("/v1/models", dependencies=[authorize("ListStrategies")])
    def models() -> dict[str, Any]:
        return {
            "object": "list",
            "data": [
                {"id": s.name, "object": "model", "owned_by": "embedsvc", "kind": s.kind}
                for s in engine.list_strategies()
            ],
        }

    @app.post("/v1/embeddings", dependencies=[authorize("Embed")])
    async def embeddings(body: EmbeddingsRequest) -> JSONResponse:
        texts = [body.input] if isinstance(body.input, str) else body.input
        args = (texts, body.model, Role(body.role), True, body.strict_length)
        if engine.is_warm(body.model) and sum(map(len, texts)) <= _INLINE_CHARS:
            emb = await engine.embed_async(*args)
        else:
            emb = await run_in_threadpool(engine.embed, *args)
        if emb.kind != "dense":
            raise InvalidArgument(
                f"model {body.model!r} returns binary codes; /v1/embeddings serves dense "
                "strategies (use the gRPC Embed RPC for binary ones)",
                field="model",
            )
        vectors = emb.vectors
        if body.dimensions is not None:
            if body.dimensions > emb.dim:
                raise InvalidArgument(
                    f"dimensions={body.dimensions} exceeds the model's {emb.dim}",
                    field="dimensions",
                )
            # shortened as OpenAI does: keep the leading dimensions, re-normalise
            vectors = vectors[:, : body.dimensions]
            norms = np.linalg.norm(vectors, axis=1, keepdims=True)
            vectors = vectors / np.maximum(norms, 1e-12)
        tokens = int(emb.token_counts.sum())
        content = {
            "object": "list",
            "model": body.model,
            "data": [
                {
                    "object": "embedding",
                    "index": i,
                    "embedding": _encode_vector(v, body.encoding_format),
                    "truncated_tokens": int(emb.truncated_tokens[i]),
                }
                for i, v in enumerate(vectors)
            ],
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
        headers = {
            "x-truncated-tokens": str(int(emb.truncated_tokens.sum())),
            **{f"x-{k}-time": f"{v * 1000:.2f}" for k, v in emb.timings.items()},
        }
        return JSONResponse(content, headers=headers)

    @app.post("/v1/search", dependencies=[authorize("Search")])
    def search(body: SearchBody) -> dict[str, Any]:
        queries = body.queries or ([body.query] if body.query else [])
        results = engine.search(body.collection, queries, body.top_k, body.filter)
        return {
            "results": [
                [
                    {"id": h.id, "score": h.score, "text": h.text, "metadata": h.metadata}
                    for h in hits
                ]
                for hits in results
            ]
        }

    return app


class HttpServer:
    """uvicorn in a background thread (signals stay with the main thread's gRPC loop)."""

    def __init__(
        self, app: FastAPI, host: str, port: int, tls=None, loop: str = "auto", parser: str = "auto"
    ) -> None:
        import socket

        import uvicorn

        # proto=IPPROTO_TCP, not 0: asyncio (and uvloop) set TCP_NODELAY on accepted
        # connections only when the listening socket says it is TCP; with proto 0 every small
        # response met Nagle + the client's delayed ACK, a fixed 40 ms per request
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._socket = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind((host, port))
        self.port = self._socket.getsockname()[1]
        ssl = {}
        if tls is not None and tls.enabled:
            ssl = {"ssl_certfile": str(tls.cert_file), "ssl_keyfile": str(tls.key_file)}
        # log_config=None: uvicorn's lines go through the process's handlers (JSON or text)
        config = uvicorn.Config(
            app,
            loop=loop,
            http=parser,
            log_level="warning",
            access_log=False,
            log_config=None,
            **ssl,
        )
        self.server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self.server.run,
            kwargs={"sockets": [self._socket]},
            daemon=True,
            name="embedsvc-http",
        )

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self.server.should_exit = True
        self._thread.join(timeout)
