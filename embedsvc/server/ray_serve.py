"""The service as Ray Serve deployments, behind Ray Serve's gRPC and HTTP proxies.

Two deployments in one application (``embedsvc serve --ray``, or ``serve run
embedsvc.server.ray_serve:app``):

* ``Embedder``: stateless embedding replicas (``ray_serve.embedding_replicas``, or autoscaled
  on ongoing requests up to ``max_embedding_replicas``), each with one model copy, its own
  cross-request batcher and ``embedding_num_cpus``/``embedding_num_gpus``. Embed RPCs go to
  them whole; the collection side sends them the forward passes of searches and upserts.
* ``Frontend``: the ingress, which owns the data folder, so exactly one replica per data folder
  (the one-owner rule; replicated search is what the Milvus backend is for). It serves the
  project's own servicers (``servicer.py``, ``rag_servicer.py``) and HTTP app (``http.py``)
  unchanged on an :class:`~embedsvc.engine.Engine` whose forward passes run on the embedding
  replicas, with the same auth and error mapping.

Carried by the gRPC proxy: ``EmbeddingService`` (Embed, ListStrategies), ``CollectionService``
(all RPCs, including the client-streaming ``Upsert``: Ray Serve 2.60's proxy carries client
streams), ``RagService.SelectContext`` and ``grpc.health.v1.Health/Check``. Not carried:
``GenerationService``, ``SenseService`` (they need the decoder or the sense model in the
frontend) and ``Health/Watch``. Over HTTP every route of ``http.py``.
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any

import grpc

from embedsvc.config import ServiceConfig
from embedsvc.engine import Engine
from embedsvc.errors import EmbedsvcError
from embedsvc.server.status import to_status

log = logging.getLogger(__name__)

#: the servicers the gRPC proxy registers (Ray imports them by these paths)
GRPC_SERVICER_FUNCTIONS = [
    "embedsvc.v1.embedding_service_pb2_grpc.add_EmbeddingServiceServicer_to_server",
    "embedsvc.v1.collection_service_pb2_grpc.add_CollectionServiceServicer_to_server",
    "embedsvc.v1.rag_service_pb2_grpc.add_RagServiceServicer_to_server",
    "grpc_health.v1.health_pb2_grpc.add_HealthServicer_to_server",
]


class Aborted(Exception):
    """Raised by :class:`CallContext` to end an RPC with the status it recorded."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(code, details)  # both in args: Ray pickles it to the proxy
        self.code, self.details = code, details

    def __str__(self) -> str:
        return self.details


class CallContext:
    """The part of ``grpc.ServicerContext`` the servicers use, over Ray Serve's context (or
    none, inside an embedding replica): abort records the status and raises :class:`Aborted`."""

    def __init__(self, ray_context: Any = None) -> None:
        self.ray_context = ray_context
        self.status: tuple[grpc.StatusCode, str] | None = None
        self.trailing: tuple = ()

    def invocation_metadata(self) -> list:
        return list(self.ray_context.invocation_metadata()) if self.ray_context else []

    def metadata(self, key: str) -> str | None:
        return next((v for k, v in self.invocation_metadata() if k == key), None)

    def set_trailing_metadata(self, metadata: tuple) -> None:
        self.trailing = tuple(metadata)
        if self.ray_context is not None:
            self.ray_context.set_trailing_metadata(list(metadata))

    def abort(self, code: grpc.StatusCode, details: str) -> None:
        self.status = (code, details)
        if self.ray_context is not None:
            self.ray_context.set_code(code)
            self.ray_context.set_details(details)
        raise Aborted(code, details)

    def abort_with_status(self, status: Any) -> None:
        # the google.rpc.Status (field violations) travels as trailing metadata
        if status.trailing_metadata:
            self.set_trailing_metadata(tuple(status.trailing_metadata))
        self.abort(status.code, status.details)

    def code(self) -> grpc.StatusCode | None:
        return self.status[0] if self.status else None

    def is_active(self) -> bool:
        return True


def _abort(context: CallContext, exc: BaseException) -> None:
    code, message, _ = to_status(exc)
    context.abort(code, message)


def _config(config_json: str) -> ServiceConfig:
    return ServiceConfig.model_validate_json(config_json)


class EmbedderImpl:
    """One embedding replica: an engine without collections, its own batcher."""

    def __init__(self, config_json: str) -> None:
        from embedsvc.server.servicer import EmbeddingServicer

        self.engine = Engine(_config(config_json), collections=False)
        self.engine.preload()
        self.servicer = EmbeddingServicer(self.engine)

    def pid(self) -> int:
        return os.getpid()

    def encode(self, strategy: str, texts: list, role: Any, normalize: bool, tokens: int):
        """A forward pass for the frontend's engine (``Batcher.encode``'s arguments)."""
        return self.engine.batcher.encode(
            self.engine.strategy(strategy), texts, role, normalize, tokens
        )

    def call(self, method: str, request: Any) -> tuple[Any, tuple, tuple | None]:
        """Run an EmbeddingService RPC: (response, trailing metadata, (code, details) or None)."""
        context = CallContext()
        try:
            response = getattr(self.servicer, method)(request, context)
        except Aborted as exc:
            return None, context.trailing, (exc.code, exc.details)
        return response, context.trailing, None


class FrontendImpl:
    """The ingress: auth, the servicers and the HTTP app on an engine whose forward passes run
    on the embedding replicas."""

    def __init__(self, config_json: str, embedder: Any) -> None:
        from embedsvc.server.auth import ApiKeyAuth
        from embedsvc.server.http import create_app
        from embedsvc.server.metrics import Metrics
        from embedsvc.server.rag_servicer import RagServicer
        from embedsvc.server.servicer import CollectionServicer
        from embedsvc.server.startup import Readiness

        config = _config(config_json)
        self.embedder = embedder
        self.engine = Engine(config, encoder=self._remote_encode)
        self.auth = ApiKeyAuth(config.auth)
        self.collections = CollectionServicer(self.engine)
        self.rag = RagServicer(self.engine)
        serving = Readiness()
        serving.set()
        self.http = create_app(self.engine, self.auth, Metrics(), serving, None)

    def _remote_encode(self, strategy, texts, role, normalize, tokens):
        # runs in a worker thread (see ``run``), so blocking on the handle is allowed
        return self.embedder.encode.remote(strategy.name, texts, role, normalize, tokens).result()

    def authorize(self, method: str, context: CallContext) -> None:
        try:
            self.auth.check(method, context.metadata("authorization"))
        except EmbedsvcError as exc:
            _abort(context, exc)

    async def run(self, servicer: Any, method: str, request: Any, ray_context: Any) -> Any:
        context = CallContext(ray_context)
        self.authorize(method, context)
        return await asyncio.to_thread(getattr(servicer, method), request, context)

    async def embedding_call(self, method: str, request: Any, ray_context: Any) -> Any:
        context = CallContext(ray_context)
        self.authorize(method, context)
        response, trailing, failure = await self.embedder.call.remote(method, request)
        if trailing:
            context.set_trailing_metadata(trailing)
        if failure is not None:
            context.abort(*failure)
        return response

    async def upsert(self, request_stream: Any, ray_context: Any) -> Any:
        """The client-streaming Upsert: each message is written (durably) as it arrives."""
        from embedsvc.server.servicer import CollectionServicer

        context = CallContext(ray_context)
        self.authorize("Upsert", context)
        messages: asyncio.Queue = asyncio.Queue(maxsize=4)
        loop = asyncio.get_running_loop()
        done = object()

        def iterate():
            while True:
                item = asyncio.run_coroutine_threadsafe(messages.get(), loop).result()
                if item is done:
                    return
                yield item

        task = asyncio.create_task(
            asyncio.to_thread(CollectionServicer.Upsert, self.collections, iterate(), context)
        )
        try:
            async for message in request_stream:
                await messages.put(message)
        finally:
            await messages.put(done)
        return await task

    async def asgi(self, request: Any) -> Any:
        """Hand an HTTP request (a starlette ``Request``) to the project's FastAPI app."""
        from starlette.responses import Response

        sent: list[dict] = []

        async def send(message: dict) -> None:
            sent.append(message)

        await self.http(request.scope, request.receive, send)
        start = next(m for m in sent if m["type"] == "http.response.start")
        body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
        response = Response(content=body, status_code=start["status"])
        response.raw_headers = list(start.get("headers", []))
        return response


def build_app(config: ServiceConfig) -> Any:
    """The Ray Serve application (``serve.run(build_app(config))``)."""
    from ray import serve

    rs = config.ray_serve
    options: dict[str, Any] = {
        "ray_actor_options": {
            "num_cpus": rs.embedding_num_cpus,
            "num_gpus": rs.embedding_num_gpus,
        },
        "max_ongoing_requests": rs.max_ongoing_requests,
    }
    if rs.max_embedding_replicas:
        options["autoscaling_config"] = {
            "min_replicas": rs.embedding_replicas,
            "max_replicas": max(rs.max_embedding_replicas, rs.embedding_replicas),
            "target_ongoing_requests": rs.target_ongoing_requests,
        }
    else:
        options["num_replicas"] = rs.embedding_replicas

    @serve.deployment(name="Embedder", **options)
    class Embedder(EmbedderImpl):
        pass

    @serve.deployment(
        name="Frontend",
        num_replicas=1,  # it owns the data folder: one replica per folder
        max_ongoing_requests=rs.max_ongoing_requests,
        ray_actor_options={"num_cpus": rs.collection_num_cpus},
    )
    class Frontend(FrontendImpl):
        # gRPC: the proxy calls the method named like the RPC, with the request message
        async def Embed(self, request, grpc_context=None):
            return await self.embedding_call("Embed", request, grpc_context)

        async def ListStrategies(self, request, grpc_context=None):
            return await self.embedding_call("ListStrategies", request, grpc_context)

        async def CreateCollection(self, request, grpc_context=None):
            return await self.run(self.collections, "CreateCollection", request, grpc_context)

        async def ListCollections(self, request, grpc_context=None):
            return await self.run(self.collections, "ListCollections", request, grpc_context)

        async def GetCollection(self, request, grpc_context=None):
            return await self.run(self.collections, "GetCollection", request, grpc_context)

        async def DeleteCollection(self, request, grpc_context=None):
            return await self.run(self.collections, "DeleteCollection", request, grpc_context)

        async def Upsert(self, request_stream, grpc_context=None):
            return await self.upsert(request_stream, grpc_context)

        async def Delete(self, request, grpc_context=None):
            return await self.run(self.collections, "Delete", request, grpc_context)

        async def Search(self, request, grpc_context=None):
            return await self.run(self.collections, "Search", request, grpc_context)

        async def SelectContext(self, request, grpc_context=None):
            return await self.run(self.rag, "SelectContext", request, grpc_context)

        async def Check(self, request, grpc_context=None):
            from grpc_health.v1 import health_pb2

            return health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)

        async def __call__(self, request):  # HTTP
            return await self.asgi(request)

    config_json = config.model_dump_json()
    return Frontend.bind(config_json, Embedder.bind(config_json))


def start(config: ServiceConfig, blocking: bool = False) -> None:
    """Connect to (or start) Ray, start Serve's proxies on the configured ports and deploy."""
    import ray
    from ray import serve
    from ray.serve.config import HTTPOptions, gRPCOptions

    rs = config.ray_serve
    if not ray.is_initialized():
        if rs.address:
            ray.init(address=rs.address, log_to_driver=False)
        else:
            ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False)
    serve.start(
        http_options=HTTPOptions(host=rs.host, port=rs.http_port),
        grpc_options=gRPCOptions(
            port=rs.grpc_port, grpc_servicer_functions=GRPC_SERVICER_FUNCTIONS
        ),
    )
    serve.run(build_app(config), name=rs.application, route_prefix="/", blocking=blocking)


def app_builder(args: dict[str, str]) -> Any:
    """For ``serve run embedsvc.server.ray_serve:app_builder config=embedsvc.yaml`` (or a Serve
    config file's ``import_path``); the gRPC proxy then needs ``grpc_options`` with
    :data:`GRPC_SERVICER_FUNCTIONS` in that file. ``embedsvc serve --ray`` sets both up."""
    return build_app(ServiceConfig.load(args.get("config")))
