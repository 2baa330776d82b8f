"""``SenseService.Senses`` over a real gRPC channel, with a model-free fake engine/strategy."""

from __future__ import annotations

from concurrent import futures

import grpc
import pytest

from embedsvc.config import ServiceConfig
from embedsvc.engine import Engine
from embedsvc.server.sense_servicer import add_sense_servicer
from embedsvc.v1 import sense_service_pb2 as spb
from embedsvc.v1 import sense_service_pb2_grpc as sgrpc


class _FakeSenses:
    name = "multisense"

    def senses(self, texts, neighbours=5):
        return [
            [
                {
                    "token": w,
                    "token_id": i,
                    "sense_id": i % 2,
                    "num_senses": 2,
                    "occurrences": 7,
                    "examples": [f"a [{w}] b"],
                    "neighbours": [
                        {
                            "token": "x",
                            "token_id": 9,
                            "sense_id": 0,
                            "distance": 1.5,
                            "example": "[x]",
                        }
                    ][:neighbours],
                }
                for i, w in enumerate(t.split())
            ]
            for t in texts
        ]


class _FakeEngine:
    def __init__(self, tmp_path) -> None:
        self.config = ServiceConfig(data_dir=tmp_path / "d", cache_dir=tmp_path / "c")

    _validate_texts = Engine._validate_texts

    def strategy(self, name):
        if name == "mean":
            return object()
        return _FakeSenses()


@pytest.fixture
def stub(tmp_path):
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    name = add_sense_servicer(server, _FakeEngine(tmp_path))
    assert name == "embedsvc.v1.SenseService"
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    yield sgrpc.SenseServiceStub(channel)
    channel.close()
    server.stop(grace=0)


def test_senses_round_trip(stub) -> None:
    resp = stub.Senses(spb.SensesRequest(texts=["river bank", "money"], neighbours=1))
    assert resp.strategy == "multisense" and len(resp.texts) == 2
    tok = resp.texts[0].tokens[1]
    assert (tok.token, tok.sense_id, tok.num_senses, tok.occurrences) == ("bank", 1, 2, 7)
    assert list(tok.examples) == ["a [bank] b"] and tok.neighbours[0].token == "x"


def test_senses_errors_are_status_codes(stub) -> None:
    with pytest.raises(grpc.RpcError) as err:
        stub.Senses(spb.SensesRequest(texts=[]))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as err:
        stub.Senses(spb.SensesRequest(texts=["x"], strategy="mean"))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "sense dictionary" in err.value.details()
