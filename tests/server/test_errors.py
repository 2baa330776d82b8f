"""Every caller mistake gets the right status code and an actionable message; the server lives."""

from __future__ import annotations

import grpc
import pytest
from grpc_status import rpc_status

from embedsvc.v1 import collection_service_pb2 as cpb
from embedsvc.v1 import embedding_service_pb2 as epb


def _status(call) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value


def test_empty_embed_request_is_invalid_argument(client):
    err = _status(lambda: client.embed([], strategy="debug"))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "at least one text" in err.details()


def test_empty_text_names_the_field(client):
    err = _status(lambda: client.embed(["ok", "  "], strategy="debug"))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "texts[1]" in err.details()
    detail = rpc_status.from_call(err)
    assert detail is not None and detail.details, "a BadRequest field violation is attached"


def test_too_many_texts(server_factory):
    from embedsvc.config import LimitsConfig

    _, client = server_factory(limits=LimitsConfig(max_texts_per_request=4))
    err = _status(lambda: client.embed(["a"] * 5, strategy="debug"))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "limit is 4" in err.details()


def test_over_long_text_truncates_by_default_and_errors_when_strict(client):
    long_text = " ".join(["word"] * 100)  # debug's limit is 64 words
    response = client.embed_response([long_text, "short text"], strategy="debug")
    assert list(response.truncated_tokens) == [36, 0]
    assert list(response.token_counts) == [64, 2]
    err = _status(lambda: client.embed([long_text], strategy="debug", strict_length=True))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "100 tokens" in err.details() and "texts[0]" in err.details()


def test_unknown_strategy_lists_valid_ones(client):
    err = _status(lambda: client.embed(["x"], strategy="nope"))
    assert err.code() == grpc.StatusCode.NOT_FOUND
    assert "debug" in err.details() and "mean" in err.details()


def test_unknown_collection(client):
    err = _status(lambda: client.search("missing", ["x"]))
    assert err.code() == grpc.StatusCode.NOT_FOUND
    assert "missing" in err.details()


def test_duplicate_collection(client):
    client.create_collection("c1", strategy="debug")
    err = _status(lambda: client.create_collection("c1", strategy="debug"))
    assert err.code() == grpc.StatusCode.ALREADY_EXISTS


def test_bad_collection_name(client):
    err = _status(lambda: client.create_collection("../etc", strategy="debug"))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_wrong_vector_kind_for_index(client):
    err = _status(lambda: client.create_collection("c2", strategy="debug", index_kind="binary"))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    err = _status(
        lambda: client.create_collection("c3", strategy="debug_binary", index_kind="hnsw")
    )
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION


def test_unknown_index_kind(client):
    err = _status(lambda: client.create_collection("c4", strategy="debug", index_kind="lsh9"))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "flat" in err.details()


def test_upsert_without_collection_name_and_missing_id(client):
    client.create_collection("docs", strategy="debug")
    stub = client.collections
    err = _status(
        lambda: stub.Upsert(iter([cpb.UpsertRequest(documents=[cpb.Document(id="1", text="a")])]))
    )
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    err = _status(lambda: client.upsert("docs", [{"id": "", "text": "a"}]))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "id" in err.details()


def test_bad_top_k_and_unknown_role(client):
    client.create_collection("docs", strategy="debug")
    err = _status(lambda: client.search("docs", ["x"], top_k=-1))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    err = _status(lambda: client.embeddings.Embed(epb.EmbedRequest(texts=["x"], role=7)))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_server_keeps_serving_after_errors(client):
    for _ in range(5):
        _status(lambda: client.embed([], strategy="debug"))
    assert client.embed(["still alive"], strategy="debug").shape == (1, 32)
    assert client.health() == "SERVING"


def test_nan_or_infinity_in_filter_or_metadata(client):
    client.create_collection("docs", strategy="debug")
    request = cpb.SearchRequest(collection="docs", queries=["x"])
    request.filter.update({"score": float("inf")})
    err = _status(lambda: client.collections.Search(request))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "filter" in err.details()
    doc = cpb.Document(id="1", text="hello")
    doc.metadata.update({"x": float("nan")})
    upsert = cpb.UpsertRequest(collection="docs", documents=[doc])
    err = _status(lambda: client.collections.Upsert(iter([upsert])))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "documents[0].metadata" in err.details()
