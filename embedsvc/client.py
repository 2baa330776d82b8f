"""A small Python client for the embedsvc gRPC API.

>>> client = EmbedsvcClient("localhost:50051")
>>> client.wait_ready()
>>> vectors = client.embed(["hello world"])               # numpy float32 [1, 384]
>>> client.create_collection("docs", strategy="mean", index_kind="hnsw")
>>> client.upsert("docs", [{"id": "1", "text": "hello", "metadata": {"lang": "en"}}])
>>> client.search("docs", ["greeting"], top_k=3, filter={"lang": "en"})
>>> client.select_context("docs", "how do I greet?").k    # Adaptive-k context for a reader
>>> "".join(m.text for m in client.generate("Say hello.", drafter="dresd", datastore="ds"))
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from embedsvc.server.convert import dict_to_struct, struct_to_dict, tensor_to_numpy
from embedsvc.v1 import collection_service_pb2 as cpb
from embedsvc.v1 import collection_service_pb2_grpc as cgrpc
from embedsvc.v1 import embedding_service_pb2 as epb
from embedsvc.v1 import embedding_service_pb2_grpc as egrpc
from embedsvc.v1 import generation_service_pb2 as gpb
from embedsvc.v1 import generation_service_pb2_grpc as ggrpc
from embedsvc.v1 import rag_service_pb2 as rpb
from embedsvc.v1 import rag_service_pb2_grpc as rgrpc
from embedsvc.v1 import types_pb2

_ROLES = {"query": types_pb2.ROLE_QUERY, "passage": types_pb2.ROLE_PASSAGE}


@dataclass
class Hit:
    id: str
    score: float
    text: str
    metadata: dict[str, Any]


class _BearerToken(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    """Adds ``authorization: Bearer <key>`` to every call."""

    def __init__(self, key: str) -> None:
        self.header = ("authorization", f"Bearer {key}")

    def _with_key(self, details):
        metadata = [*(details.metadata or ()), self.header]
        return details._replace(metadata=metadata)

    def intercept_unary_unary(self, continuation, details, request):
        return continuation(self._with_key(details), request)

    def intercept_unary_stream(self, continuation, details, request):
        return continuation(self._with_key(details), request)

    def intercept_stream_unary(self, continuation, details, requests):
        return continuation(self._with_key(details), requests)

    def intercept_stream_stream(self, continuation, details, requests):
        return continuation(self._with_key(details), requests)


class EmbedsvcClient:
    """Blocking client; every method raises ``grpc.RpcError`` with the server's status."""

    def __init__(
        self,
        target: str = "localhost:50051",
        timeout: float = 600.0,
        api_key: str | None = None,
        root_certificates: bytes | None = None,
    ) -> None:
        options = [
            ("grpc.max_receive_message_length", 64 * 1024 * 1024),
            ("grpc.max_send_message_length", 64 * 1024 * 1024),
        ]
        if root_certificates is not None:
            credentials = grpc.ssl_channel_credentials(root_certificates)
            self.channel = grpc.secure_channel(target, credentials, options=options)
        else:
            self.channel = grpc.insecure_channel(target, options=options)
        if api_key:
            self.channel = grpc.intercept_channel(self.channel, _BearerToken(api_key))
        self.timeout = timeout
        self.embeddings = egrpc.EmbeddingServiceStub(self.channel)
        self.collections = cgrpc.CollectionServiceStub(self.channel)
        self.rag = rgrpc.RagServiceStub(self.channel)
        self.generation = ggrpc.GenerationServiceStub(self.channel)
        self.health_stub = health_pb2_grpc.HealthStub(self.channel)

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> EmbedsvcClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def health(self, service: str = "") -> str:
        """SERVING / NOT_SERVING / UNKNOWN as the standard health service says."""
        response = self.health_stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)

    def wait_ready(self, timeout: float = 300.0) -> None:
        """Block until the server reports SERVING (models loaded)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                if self.health() == "SERVING":
                    return
            except grpc.RpcError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"server not SERVING after {timeout:.0f}s")
            time.sleep(0.2)

    def list_strategies(self) -> list[epb.StrategyInfo]:
        return list(
            self.embeddings.ListStrategies(
                epb.ListStrategiesRequest(), timeout=self.timeout
            ).strategies
        )

    def embed_response(
        self,
        texts: list[str],
        strategy: str = "",
        role: str = "query",
        normalize: bool = True,
        strict_length: bool = False,
    ) -> epb.EmbedResponse:
        return self.embeddings.Embed(
            epb.EmbedRequest(
                texts=texts,
                strategy=strategy,
                role=_ROLES[role],
                normalize=normalize,
                strict_length=strict_length,
            ),
            timeout=self.timeout,
        )

    def embed(self, texts: list[str], strategy: str = "", role: str = "query", **kw) -> np.ndarray:
        """float32 [n, d] for dense strategies, uint8 [n, bits/8] for binary ones."""
        return tensor_to_numpy(self.embed_response(texts, strategy, role, **kw).vectors)

    def create_collection(
        self,
        name: str,
        strategy: str = "",
        index_kind: str = "",
        index_params: dict[str, Any] | None = None,
        backend: str = "",
    ) -> cpb.Collection:
        request = cpb.CreateCollectionRequest(
            name=name,
            strategy=strategy,
            index_kind=index_kind,
            backend=backend,
            index_params={k: str(v) for k, v in (index_params or {}).items()},
        )
        return self.collections.CreateCollection(request, timeout=self.timeout).collection

    def list_collections(self) -> list[cpb.Collection]:
        return list(
            self.collections.ListCollections(
                cpb.ListCollectionsRequest(), timeout=self.timeout
            ).collections
        )

    def get_collection(self, name: str) -> cpb.Collection:
        return self.collections.GetCollection(
            cpb.GetCollectionRequest(name=name), timeout=self.timeout
        ).collection

    def delete_collection(self, name: str) -> None:
        self.collections.DeleteCollection(
            cpb.DeleteCollectionRequest(name=name), timeout=self.timeout
        )

    def upsert(
        self, collection: str, documents: Iterable[dict[str, Any]], chunk_size: int = 64
    ) -> cpb.UpsertResponse:
        """Stream ``documents`` ({id, text, metadata}) in chunks; one response at the end."""

        def messages() -> Iterator[cpb.UpsertRequest]:
            it = iter(documents)
            while chunk := list(itertools.islice(it, chunk_size)):
                yield cpb.UpsertRequest(
                    collection=collection,
                    documents=[
                        cpb.Document(
                            id=str(d["id"]),
                            text=d["text"],
                            metadata=dict_to_struct(d.get("metadata")),
                        )
                        for d in chunk
                    ],
                )

        return self.collections.Upsert(messages(), timeout=self.timeout)

    def delete(self, collection: str, ids: list[str]) -> int:
        return self.collections.Delete(
            cpb.DeleteRequest(collection=collection, ids=ids), timeout=self.timeout
        ).deleted

    def search(
        self,
        collection: str,
        queries: list[str],
        top_k: int = 10,
        filter: dict[str, Any] | None = None,
    ) -> list[list[Hit]]:
        request = cpb.SearchRequest(collection=collection, queries=queries, top_k=top_k)
        if filter:
            request.filter.update(filter)
        response = self.collections.Search(request, timeout=self.timeout)
        return [
            [Hit(h.id, h.score, h.text, struct_to_dict(h.metadata)) for h in result.hits]
            for result in response.results
        ]

    def select_context(
        self,
        collection: str,
        question: str,
        filter: dict[str, Any] | None = None,
        **options: Any,
    ) -> rpb.SelectContextResponse:
        """Adaptive-k passages for ``question``; ``options`` are ``SelectContextRequest`` fields
        (``buffer``, ``pool_size``, ``token_budget``, ``strategy``, ``head_fraction`` ...)."""
        request = rpb.SelectContextRequest(question=question, collection=collection, **options)
        if filter:
            request.filter.update(filter)
        return self.rag.SelectContext(request, timeout=self.timeout)

    def generate(
        self,
        prompt: str | list[dict[str, str]],
        context: dict[str, Any] | None = None,
        **options: Any,
    ) -> Iterator[gpb.GenerateResponse]:
        """Stream a generation. ``prompt`` is a string or chat messages
        (``[{"role": "user", "content": ...}]``); ``context`` holds ``ContextOptions`` fields
        (``collection``, ``buffer`` ...); ``options`` are ``GenerateRequest`` fields
        (``max_new_tokens``, ``drafter``, ``datastore`` ...). The last message has the stats."""
        if isinstance(prompt, str):
            request = gpb.GenerateRequest(prompt=prompt, **options)
        else:
            messages = [gpb.ChatMessage(**m) for m in prompt]
            request = gpb.GenerateRequest(messages=messages, **options)
        if context:
            request.context.CopyFrom(gpb.ContextOptions(**context))
        return self.generation.Generate(request, timeout=self.timeout)
