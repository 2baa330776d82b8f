"""gRPC servicers: a thin translation of protobuf messages onto :class:`Engine` calls."""

from __future__ import annotations

from typing import Any

import grpc

from embedsvc.engine import Document, Engine
from embedsvc.errors import InvalidArgument, shorten
from embedsvc.rag.context import adaptive_search
from embedsvc.server.convert import (
    KIND,
    dict_to_struct,
    role_from_proto,
    struct_to_dict,
    tensor_from_numpy,
)
from embedsvc.server.rag_servicer import add_rag_servicer, config_from_proto
from embedsvc.server.status import grpc_errors
from embedsvc.v1 import (
    collection_service_pb2 as cpb,
)
from embedsvc.v1 import (
    collection_service_pb2_grpc as cgrpc,
)
from embedsvc.v1 import (
    embedding_service_pb2 as epb,
)
from embedsvc.v1 import (
    embedding_service_pb2_grpc as egrpc,
)


def send_timings(context: grpc.ServicerContext, timings: dict[str, float]) -> None:
    """Per-stage milliseconds as trailing metadata (``x-queue-time``, ...), as TEI reports them."""
    context.set_trailing_metadata(
        tuple((f"x-{stage}-time", f"{seconds * 1000:.3f}") for stage, seconds in timings.items())
    )


class EmbeddingServicer(egrpc.EmbeddingServiceServicer):
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    @grpc_errors
    def ListStrategies(self, request, context):
        return epb.ListStrategiesResponse(
            strategies=[
                epb.StrategyInfo(
                    name=s.name,
                    description=s.description,
                    kind=KIND[s.kind],
                    dim=s.dim,
                    max_tokens=s.max_tokens,
                    loaded=s.loaded,
                    runtime=s.runtime,
                )
                for s in self.engine.list_strategies()
            ]
        )

    @grpc_errors
    def Embed(self, request, context):
        emb = self.engine.embed(
            list(request.texts),
            strategy=request.strategy or None,
            role=role_from_proto(request.role),
            normalize=request.normalize if request.HasField("normalize") else True,
            strict=request.strict_length,
        )
        send_timings(context, emb.timings)
        return epb.EmbedResponse(
            strategy=request.strategy or self.engine.strategy(None).name,
            kind=KIND[emb.kind],
            dim=emb.dim,
            vectors=tensor_from_numpy(emb.vectors),
            token_counts=emb.token_counts.tolist(),
            truncated_tokens=emb.truncated_tokens.tolist(),
            sparse=sparse_to_proto(emb.sparse),
        )


def sparse_to_proto(matrix: Any) -> list[epb.SparseVector]:
    """Rows of a CSR as ``SparseVector`` messages (none for dense-only strategies)."""
    if matrix is None:
        return []
    m = matrix.tocsr()
    m.sort_indices()
    return [
        epb.SparseVector(indices=m.indices[a:b].tolist(), values=m.data[a:b].tolist())
        for a, b in zip(m.indptr[:-1], m.indptr[1:], strict=True)
    ]


def collection_to_proto(info: dict[str, Any]) -> cpb.Collection:
    return cpb.Collection(
        name=info["name"],
        strategy=info["strategy"],
        index_kind=info["index_kind"],
        kind=KIND[info["output_kind"]],
        dim=info["dim"],
        document_count=info["count"],
        index_params={k: str(v) for k, v in (info.get("index_params") or {}).items()},
        backend=info.get("backend", "faiss"),
    )


def _index_params(raw: dict[str, str]) -> dict[str, Any]:
    """map<string,string> from the wire -> typed values (ints where they look like ints)."""
    params: dict[str, Any] = {}
    for key, value in raw.items():
        try:
            params[key] = int(value)
        except ValueError:
            try:
                params[key] = float(value)
            except ValueError:
                params[key] = value
    return params


class CollectionServicer(cgrpc.CollectionServiceServicer):
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    @grpc_errors
    def CreateCollection(self, request, context):
        if not request.name:
            raise InvalidArgument("name is empty; give the collection a name", field="name")
        coll = self.engine.create_collection(
            request.name,
            strategy=request.strategy or None,
            index_kind=request.index_kind or None,
            index_params=_index_params(dict(request.index_params)),
            backend=request.backend or None,
        )
        return cpb.CreateCollectionResponse(collection=collection_to_proto(coll.describe()))

    @grpc_errors
    def ListCollections(self, request, context):
        return cpb.ListCollectionsResponse(
            collections=[
                collection_to_proto(self.engine.collections.get(name).describe())
                for name in self.engine.collections.list()
            ]
        )

    @grpc_errors
    def GetCollection(self, request, context):
        coll = self.engine.collections.get(request.name)
        return cpb.GetCollectionResponse(collection=collection_to_proto(coll.describe()))

    @grpc_errors
    def DeleteCollection(self, request, context):
        self.engine.collections.delete(request.name)
        return cpb.DeleteCollectionResponse()

    @grpc_errors
    def Upsert(self, request_iterator, context):
        from embedsvc.engine import UpsertCounts

        total = UpsertCounts()
        collection = ""
        for message in request_iterator:
            if message.collection:
                if collection and message.collection != collection:
                    raise InvalidArgument(
                        "one Upsert stream writes one collection: got "
                        f"{shorten(message.collection)} after {shorten(collection)}; open a new "
                        "stream per collection",
                        field="collection",
                    )
                collection = message.collection
            if not collection:
                raise InvalidArgument(
                    "the first UpsertRequest must name the collection", field="collection"
                )
            docs = [
                Document(d.id, d.text, struct_to_dict(d.metadata, f"documents[{i}].metadata"))
                for i, d in enumerate(message.documents)
            ]
            total += self.engine.upsert(collection, docs)
        return cpb.UpsertResponse(
            received=total.received,
            inserted=total.inserted,
            updated=total.updated,
            unchanged=total.unchanged,
        )

    @grpc_errors
    def Delete(self, request, context):
        return cpb.DeleteResponse(deleted=self.engine.delete(request.collection, list(request.ids)))

    @grpc_errors
    def Search(self, request, context):
        filter = struct_to_dict(request.filter, "filter") if request.HasField("filter") else None
        if request.HasField("adaptive_k") and request.adaptive_k.enabled:
            results = adaptive_search(
                self.engine,
                request.collection,
                list(request.queries),
                config_from_proto(request.adaptive_k),
                filter,
            )
        else:
            timings: dict[str, float] = {}
            results = self.engine.search(
                request.collection,
                list(request.queries),
                top_k=request.top_k or 10,
                filter=filter,
                timings=timings,
            )
            send_timings(context, timings)
        omit = request.omit_documents
        return cpb.SearchResponse(
            results=[
                cpb.QueryResult(
                    hits=[
                        cpb.SearchHit(
                            id=h.id,
                            score=float(h.score),
                            text="" if omit else h.text,
                            metadata=None if omit else dict_to_struct(h.metadata),
                        )
                        for h in hits
                    ]
                )
                for hits in results
            ]
        )


def add_servicers(server: grpc.Server, engine: Engine) -> list[str]:
    """Register every embedsvc service on ``server``; returns their full names."""
    egrpc.add_EmbeddingServiceServicer_to_server(EmbeddingServicer(engine), server)
    cgrpc.add_CollectionServiceServicer_to_server(CollectionServicer(engine), server)
    rag = add_rag_servicer(server, engine)
    from embedsvc.server.generation_servicer import add_generation_servicer

    generation = add_generation_servicer(server, engine)
    from embedsvc.server.sense_servicer import add_sense_servicer

    senses = add_sense_servicer(server, engine)
    return [
        epb.DESCRIPTOR.services_by_name["EmbeddingService"].full_name,
        cpb.DESCRIPTOR.services_by_name["CollectionService"].full_name,
        rag,
        generation,
        senses,
    ]
