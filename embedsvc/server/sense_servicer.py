"""``SenseService``: a thin translation of ``Senses`` onto ``MultiSense.senses``."""

from __future__ import annotations

from typing import Any

from embedsvc.errors import InvalidArgument
from embedsvc.server.status import grpc_errors
from embedsvc.v1 import sense_service_pb2 as spb
from embedsvc.v1 import sense_service_pb2_grpc as sgrpc

DEFAULT = "multisense"


class SenseServicer(sgrpc.SenseServiceServicer):
    def __init__(self, engine: Any) -> None:
        self.engine = engine

    @grpc_errors
    def Senses(self, request, context):
        name = request.strategy or DEFAULT
        texts = list(request.texts)
        self.engine._validate_texts(texts, "texts", self.engine.config.limits.max_texts_per_request)
        strategy = self.engine.strategy(name)
        if not callable(getattr(strategy, "senses", None)):
            raise InvalidArgument(
                f"strategy {name!r} has no sense dictionary; use multisense or multisense_student",
                field="strategy",
            )
        k = 5 if request.neighbours == 0 else max(0, request.neighbours)
        out = spb.SensesResponse(strategy=name)
        for items in strategy.senses(texts, neighbours=k):
            msg = out.texts.add()
            for it in items:
                msg.tokens.append(
                    spb.TokenSense(
                        token=it["token"],
                        token_id=it["token_id"],
                        sense_id=it["sense_id"],
                        num_senses=it["num_senses"],
                        occurrences=it.get("occurrences", 0),
                        examples=it["examples"],
                        neighbours=[spb.SenseNeighbour(**n) for n in it["neighbours"]],
                    )
                )
        return out


def add_sense_servicer(server: Any, engine: Any) -> str:
    """Register ``SenseService`` on ``server``; returns its full name."""
    sgrpc.add_SenseServiceServicer_to_server(SenseServicer(engine), server)
    return spb.DESCRIPTOR.services_by_name["SenseService"].full_name
