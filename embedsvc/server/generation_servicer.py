"""``GenerationService``: a thin translation of ``Generate`` onto ``rag.generation.Generator``."""

from __future__ import annotations

from typing import Any

from embedsvc.rag.generation import Generator
from embedsvc.server.status import grpc_stream_errors
from embedsvc.v1 import generation_service_pb2 as gpb
from embedsvc.v1 import generation_service_pb2_grpc as ggrpc


def _stats_to_proto(chunk: Any, drafter: str) -> gpb.GenerationStats:
    s = chunk.stats
    return gpb.GenerationStats(
        prompt_tokens=chunk.prompt_tokens,
        new_tokens=s.new_tokens,
        target_calls=s.target_calls,
        accepted_tokens=s.accepted_tokens,
        mean_accepted_length=s.mean_accepted_length,
        acceptance_rate=s.acceptance_rate,
        calls_per_token=s.calls_per_token,
        tokens_per_s=s.tokens_per_s,
        wall_time_s=s.wall_time_s,
        finish_reason=chunk.finish_reason,
        drafter=drafter,
    )


class GenerationServicer(ggrpc.GenerationServiceServicer):
    def __init__(self, engine: Any) -> None:
        self.generator = Generator(engine)

    @grpc_stream_errors
    def Generate(self, request, context):
        ctx = request.context if request.HasField("context") else None
        options = None
        if ctx is not None:
            options = {
                name: getattr(ctx, name) if ctx.HasField(name) else None
                for name in ("buffer", "pool_size", "token_budget")
            }
        drafter = request.drafter or "none"
        chunks = self.generator.stream(
            request.prompt,
            [{"role": m.role, "content": m.content} for m in request.messages],
            raw_prompt=request.raw_prompt,
            max_new_tokens=request.max_new_tokens or 128,
            drafter=drafter,
            datastore=request.datastore,
            num_drafts=request.num_drafts or 10,
            len_drafts=request.len_drafts or 10,
            context_collection=ctx.collection if ctx is not None else "",
            context_strategy=(ctx.strategy or None) if ctx is not None else None,
            context_options=options,
        )
        for chunk in chunks:
            if not context.is_active():
                return
            yield gpb.GenerateResponse(
                token_ids=chunk.token_ids,
                text=chunk.text,
                accepted=chunk.accepted,
                context=[
                    gpb.ContextPassageInfo(id=p.id, score=float(p.score), token_count=p.token_count)
                    for p in chunk.context
                ],
                final=chunk.final,
                stats=_stats_to_proto(chunk, drafter) if chunk.final else None,
            )


def add_generation_servicer(server: Any, engine: Any) -> str:
    """Register ``GenerationService`` on ``server``; returns its full name."""
    ggrpc.add_GenerationServiceServicer_to_server(GenerationServicer(engine), server)
    return gpb.DESCRIPTOR.services_by_name["GenerationService"].full_name
