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


@pytest.mark.slow
def test_multisense_senses_and_collection_on_a_real_dictionary(
    server_factory, tmp_path, monkeypatch
):
    """The real strategy behind the real servicer: a tiny dictionary built from real sentences
    by the real builder, then ``Senses`` and a ``multisense`` collection over gRPC."""
    import importlib.util
    import sys
    from pathlib import Path

    from embedsvc.strategies import base as strategy_base
    from embedsvc.strategies.multisense.io import default_dictionary_dir

    root = Path(__file__).resolve().parents[2]
    spec = importlib.util.spec_from_file_location(
        "build_sense_dictionary", root / "training" / "build_sense_dictionary.py"
    )
    builder = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "build_sense_dictionary", builder)
    spec.loader.exec_module(builder)
    monkeypatch.setenv("EMBEDSVC_CACHE_DIR", str(tmp_path / "cache"))
    # fresh shared instances that resolve the dictionary under this test's cache
    monkeypatch.setattr(strategy_base, "_INSTANCES", {})
    sentences = [
        "The bank of the river was muddy after the rain.",
        "She went to the bank to deposit her money.",
        "A man is playing a guitar on the street.",
        "The river flows past the old mill.",
    ]
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(sentences * 4))
    out = default_dictionary_dir()
    builder.build(
        builder.BuildConfig(corpus=[str(corpus)], max_passages=16, max_length=32, out_dir=str(out))
    )

    _, client = server_factory(preload_strategies=[])
    stub = sgrpc.SenseServiceStub(client.channel)
    resp = stub.Senses(spb.SensesRequest(texts=["Money is in the bank."], neighbours=2))
    assert resp.strategy == "multisense"
    bank = next(t for t in resp.texts[0].tokens if t.token == "bank")
    assert bank.num_senses >= 1 and bank.sense_id >= 0 and bank.examples
    assert len(bank.neighbours) <= 2

    client.create_collection("senses", strategy="multisense", index_kind="flat")
    client.upsert("senses", [{"id": str(i), "text": s} for i, s in enumerate(sentences)])
    hits = client.search("senses", ["Someone plays the guitar outside."], top_k=2)
    assert hits[0][0].id == "2"
    vectors = client.embed(sentences[:2], strategy="multisense")
    assert vectors.shape == (2, 384)
