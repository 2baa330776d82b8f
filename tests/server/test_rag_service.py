"""SelectContext and Search-with-Adaptive-k through an in-process server on the debug engine."""

from __future__ import annotations

import grpc
import pytest

from embedsvc.v1 import collection_service_pb2 as cpb
from embedsvc.v1 import rag_service_pb2 as rpb
from embedsvc.v1 import rag_service_pb2_grpc as rgrpc

QUESTION = "alpha beta gamma delta"
N_RELEVANT = 3
N_FILLER = 150


@pytest.fixture
def rag(client):
    """(client, RagService stub) with a collection: 3 passages about the question, 150 fillers."""
    client.create_collection("kb", strategy="debug")
    docs = [
        {"id": f"rel{i}", "text": f"{QUESTION} note{i}", "metadata": {"group": "a"}}
        for i in range(N_RELEVANT)
    ]
    docs += [
        {"id": f"f{i}", "text": f"zq{i} wv{i} xr{i} yk{i} lp{i}", "metadata": {"group": "b"}}
        for i in range(N_FILLER)
    ]
    client.upsert("kb", docs)
    return client, rgrpc.RagServiceStub(client.channel)


def _select(stub, **fields) -> rpb.SelectContextResponse:
    request = rpb.SelectContextRequest(question=QUESTION, collection="kb", **fields)
    return stub.SelectContext(request, timeout=30)


def test_health_and_reflection_cover_rag_service(rag):
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
        ProtoReflectionDescriptorDatabase,
    )

    client, _ = rag
    assert client.health("embedsvc.v1.RagService") == "SERVING"
    assert (
        "embedsvc.v1.RagService" in ProtoReflectionDescriptorDatabase(client.channel).get_services()
    )


def test_select_context_cuts_after_the_relevant_passages(rag):
    _, stub = rag
    response = _select(stub)
    ids = [p.id for p in response.passages]
    assert response.pool_size == N_RELEVANT + N_FILLER  # the whole collection (< 1000)
    assert response.cut_index == N_RELEVANT - 1  # the drop after the 3 relevant passages
    assert response.k == len(ids) == N_RELEVANT + 5 == response.k_before_budget
    assert set(ids[:N_RELEVANT]) == {f"rel{i}" for i in range(N_RELEVANT)}
    scores = [p.score for p in response.passages]
    assert scores == sorted(scores, reverse=True)
    assert [p.token_count for p in response.passages[:N_RELEVANT]] == [5] * N_RELEVANT
    assert response.total_tokens == sum(p.token_count for p in response.passages)
    assert response.strategy == "debug"
    assert response.passages[0].metadata["group"] == "a" and response.passages[0].text


def test_select_context_buffer_budget_and_omit(rag):
    _, stub = rag
    assert _select(stub, buffer=0).k == N_RELEVANT
    budget = _select(stub, buffer=0, token_budget=12, omit_documents=True)
    assert (budget.k, budget.total_tokens, budget.k_before_budget) == (2, 10, N_RELEVANT)
    assert budget.passages[0].text == "" and not budget.passages[0].metadata


def test_select_context_filter_and_strategy_rescoring(rag):
    _, stub = rag
    request = rpb.SelectContextRequest(question=QUESTION, collection="kb", buffer=0)
    request.filter.update({"group": "b"})
    filtered = stub.SelectContext(request, timeout=30)
    assert filtered.pool_size == N_FILLER and all(p.id.startswith("f") for p in filtered.passages)
    rescored = _select(stub, buffer=0, strategy="debug_binary")
    assert rescored.strategy == "debug_binary" and rescored.k >= 1


def test_search_with_adaptive_k_matches_select_context(rag):
    client, stub = rag
    request = cpb.SearchRequest(
        collection="kb",
        queries=[QUESTION, QUESTION],
        top_k=1,  # ignored when adaptive_k is enabled
        adaptive_k=cpb.AdaptiveK(enabled=True, buffer=1),
    )
    response = client.collections.Search(request, timeout=30)
    expected = [p.id for p in _select(stub, buffer=1).passages]
    assert len(expected) == N_RELEVANT + 1
    assert [[h.id for h in r.hits] for r in response.results] == [expected, expected]
    plain = client.search("kb", [QUESTION], top_k=2)
    assert len(plain[0]) == 2  # adaptive_k unset: plain top_k as before


def _code(call) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code()


def test_errors_are_status_codes(rag):
    client, stub = rag
    assert _code(lambda: _select(stub, pool_size=50)) == grpc.StatusCode.INVALID_ARGUMENT
    assert _code(lambda: _select(stub, pool_size=5000)) == grpc.StatusCode.INVALID_ARGUMENT
    assert _code(lambda: _select(stub, buffer=-1)) == grpc.StatusCode.INVALID_ARGUMENT
    assert (
        _code(lambda: _select(stub, head_fraction=0.6, tail_fraction=0.5))
        == grpc.StatusCode.INVALID_ARGUMENT
    )
    assert _code(lambda: _select(stub, strategy="nope")) == grpc.StatusCode.NOT_FOUND
    missing = rpb.SelectContextRequest(question=QUESTION, collection="missing")
    assert _code(lambda: stub.SelectContext(missing, timeout=30)) == grpc.StatusCode.NOT_FOUND
    empty = rpb.SelectContextRequest(question=" ", collection="kb")
    assert _code(lambda: stub.SelectContext(empty, timeout=30)) == grpc.StatusCode.INVALID_ARGUMENT


def test_fewer_than_two_candidates_is_invalid_argument(rag):
    client, stub = rag
    client.create_collection("one", strategy="debug")
    client.upsert("one", [{"id": "only", "text": "a lonely passage"}])
    request = rpb.SelectContextRequest(question="lonely", collection="one")
    with pytest.raises(grpc.RpcError) as info:
        stub.SelectContext(request, timeout=30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "at least 2" in info.value.details()
    search = cpb.SearchRequest(
        collection="one", queries=["x"], adaptive_k=cpb.AdaptiveK(enabled=True)
    )
    assert _code(lambda: client.collections.Search(search, timeout=30)) == (
        grpc.StatusCode.INVALID_ARGUMENT
    )
