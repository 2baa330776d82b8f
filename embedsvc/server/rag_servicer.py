"""gRPC RagService: a thin translation of SelectContext onto :mod:`embedsvc.rag.context`."""

from __future__ import annotations

from typing import Any

from embedsvc.engine import Engine
from embedsvc.rag.adaptive_k import AdaptiveKConfig
from embedsvc.rag.context import ContextPassage, adaptive_k_config, select_context
from embedsvc.server.convert import dict_to_struct, struct_to_dict
from embedsvc.server.status import grpc_errors
from embedsvc.v1 import rag_service_pb2 as rpb
from embedsvc.v1 import rag_service_pb2_grpc as rgrpc

SERVICE_NAME = rpb.DESCRIPTOR.services_by_name["RagService"].full_name


def _optional(message: Any, name: str) -> Any:
    return getattr(message, name) if message.HasField(name) else None


def config_from_proto(message: Any) -> AdaptiveKConfig:
    """SelectContextRequest or AdaptiveK -> config (0 / unset fields keep the defaults)."""
    return adaptive_k_config(
        buffer=_optional(message, "buffer"),
        pool_size=message.pool_size or None,
        token_budget=message.token_budget or None,
        head_fraction=_optional(message, "head_fraction"),
        tail_fraction=_optional(message, "tail_fraction"),
    )


def passage_to_proto(p: ContextPassage, omit: bool = False) -> rpb.ContextPassage:
    return rpb.ContextPassage(
        id=p.id,
        score=p.score,
        text="" if omit else p.text,
        metadata=None if omit else dict_to_struct(p.metadata),
        token_count=p.token_count,
    )


class RagServicer(rgrpc.RagServiceServicer):
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    @grpc_errors
    def SelectContext(self, request, context):
        selection = select_context(
            self.engine,
            request.question,
            request.collection,
            strategy=request.strategy or None,
            config=config_from_proto(request),
            filter=struct_to_dict(request.filter, "filter") if request.HasField("filter") else None,
        )
        return rpb.SelectContextResponse(
            passages=[passage_to_proto(p, request.omit_documents) for p in selection.passages],
            k=selection.k,
            total_tokens=selection.total_tokens,
            pool_size=selection.pool_size,
            cut_index=selection.cut_index,
            k_before_budget=selection.k_before_budget,
            strategy=selection.strategy,
        )


def add_rag_servicer(server: Any, engine: Engine) -> str:
    """Register RagService on ``server``; returns its full name (for health and reflection)."""
    rgrpc.add_RagServiceServicer_to_server(RagServicer(engine), server)
    return SERVICE_NAME
