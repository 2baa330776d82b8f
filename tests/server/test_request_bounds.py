"""Bounded requests: index parameters within ranges, filters validated (depth, types, 64-bit
integers), repeated fields capped, and caller values echoed in messages only in part."""

from __future__ import annotations

import json

import grpc
import httpx
import pytest
from grpc_status import rpc_status

from embedsvc.v1 import collection_service_pb2 as cpb
from embedsvc.v1 import embedding_service_pb2 as epb


def _status(call) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value


def _field(err: grpc.RpcError) -> str:
    from google.rpc import error_details_pb2

    detail = rpc_status.from_call(err)
    assert detail is not None and detail.details, "a BadRequest field violation is attached"
    bad = error_details_pb2.BadRequest()
    detail.details[0].Unpack(bad)
    return bad.field_violations[0].field


@pytest.fixture
def http(server_factory):
    service, client = server_factory()
    return client, f"http://127.0.0.1:{service.http_port}"


# ------------------------------------------------------------------------- index parameters


@pytest.mark.parametrize(
    ("kind", "param", "value", "accepted"),
    [
        ("hnsw", "hnsw_m", 1000000, "4..256"),
        ("hnsw", "ef_construction", 1e8, "8..4096"),
        ("hnsw", "ef_search", 10**9, "1..4096"),
        ("ivf", "nprobe", 2e9, "1..65536"),
        ("ivf", "nlist", 1e23, "1..65536"),
        ("ivfpq", "pq_m", 1000, "1..32"),  # at most the dimension (debug: 32)
        ("ivfpq", "rerank_factor", 10**6, "1..100"),
        ("ivf", "nlist", 0, "1..65536"),
    ],
)
def test_out_of_range_index_params_are_refused(client, kind, param, value, accepted):
    """``hnsw_m=1000000`` on 100 documents took 1 GB and wrote an 800 MB index before."""
    err = _status(lambda: client.create_collection("c", "debug", kind, index_params={param: value}))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"index parameter {param}=" in err.details() and f"use {accepted}" in err.details()
    assert _field(err) == f"index_params.{param}"
    assert client.list_collections() == [], "nothing was created"


def test_unknown_and_malformed_index_params(client):
    err = _status(lambda: client.create_collection("c", "debug", "hnsw", {"hnsw_mm": 8}))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "unknown index parameter" in (
        err.details()
    )
    err = _status(lambda: client.create_collection("c", "debug", "hnsw", {"hnsw_m": "many"}))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "hnsw_m" in err.details()


def test_in_range_params_work_and_nlist_follows_the_collection_size(client):
    """The largest ``nlist`` on 60 documents trains one list per document at most; with every
    list probed and the widest HNSW search, results equal the exact ones."""
    client.create_collection("flat", "debug", "flat")
    client.create_collection("ivf", "debug", "ivf", {"nlist": 65536, "nprobe": 65536})
    client.create_collection("hnsw", "debug", "hnsw", {"hnsw_m": 256, "ef_search": 4096})
    docs = [{"id": str(i), "text": f"document number {i} about {i % 7}"} for i in range(60)]
    queries = ["document number 5", "about 3"]
    exact = None
    for name in ("flat", "ivf", "hnsw"):
        client.upsert(name, docs)
        # scores, not ids: the hashing test engine gives several documents equal scores
        found = [[round(h.score, 5) for h in hits] for hits in client.search(name, queries, 5)]
        exact = exact or found
        assert found == exact, name


# ---------------------------------------------------------------------------------- filters


def _nested(depth: int) -> dict:
    value: object = "x"
    for _ in range(depth):
        value = {"a": value}
    return value  # type: ignore[return-value]


def test_http_filters_are_validated(http):
    """A 65+ bit integer and 500-deep nesting answered 500 before (SQLite overflow, recursion)."""
    client, base = http
    client.create_collection("f", strategy="debug")
    client.upsert("f", [{"id": "1", "text": "hello there", "metadata": {"n": 5, "a": {"a": 1}}}])
    cases = {
        "integer beyond 64 bits": {"n": 2**70},
        "integer below -2**63": {"n": -(2**63) - 1},
        "500 deep": {"a": _nested(500)},
        "too many keys": {f"k{i}": i for i in range(100)},
    }
    for what, flt in cases.items():
        body = json.dumps({"collection": "f", "query": "hello", "filter": flt})
        response = httpx.post(
            f"{base}/v1/search", content=body, headers={"content-type": "application/json"}
        )
        assert response.status_code == 400, (what, response.text[:300])
        error = response.json()["error"]
        assert error["code"] == "INVALID_ARGUMENT" and error["param"] == "filter", what
        assert len(error["message"]) < 400, what
    ok = httpx.post(
        f"{base}/v1/search",
        json={"collection": "f", "query": "hello", "filter": {"n": 2**63 - 1}},
    )
    assert ok.status_code == 200 and ok.json()["results"] == [[]]
    hit = httpx.post(
        f"{base}/v1/search", json={"collection": "f", "query": "hello", "filter": {"n": 5}}
    )
    assert [h["id"] for h in hit.json()["results"][0]] == ["1"]


def test_grpc_filters_are_validated(client):
    client.create_collection("f", strategy="debug")
    client.upsert("f", [{"id": "1", "text": "hello there"}])
    # (past ~30 levels protobuf itself refuses to decode a Struct, before any code of ours)
    err = _status(lambda: client.search("f", ["hello"], filter={"a": _nested(20)}))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "deeper than" in err.details()
    assert client.search("f", ["hello"], filter={"a": _nested(3)}) == [[]]


# ------------------------------------------------------------- long values, repeated fields


def test_long_names_are_cut_in_messages(http):
    """A 10,000-character name came back as RESOURCE_EXHAUSTED: the message repeating it
    overflowed gRPC's metadata limit."""
    client, base = http
    name = "n" * 10_000
    for call, code in [
        (lambda: client.get_collection(name), grpc.StatusCode.NOT_FOUND),
        (lambda: client.create_collection(name, "debug"), grpc.StatusCode.INVALID_ARGUMENT),
        (lambda: client.search(name, ["q"]), grpc.StatusCode.NOT_FOUND),
        (lambda: client.delete_collection(name), grpc.StatusCode.NOT_FOUND),
        (lambda: client.embed(["q"], strategy=name), grpc.StatusCode.NOT_FOUND),
    ]:
        err = _status(call)
        assert err.code() == code, err.details()[:200]
        assert "(10,000 characters)" in err.details() and len(err.details()) < 1000
    response = httpx.post(f"{base}/v1/search", json={"collection": name, "query": "q"})
    assert response.status_code == 404 and len(response.json()["error"]["message"]) < 1000
    model = httpx.post(f"{base}/v1/embeddings", json={"input": "q", "model": name})
    assert model.status_code == 404 and "(10,000 characters)" in model.text


def test_delete_ids_are_capped(server_factory):
    from embedsvc.config import LimitsConfig

    _, client = server_factory(limits=LimitsConfig(max_ids_per_request=100))
    client.create_collection("d", strategy="debug")
    client.upsert("d", [{"id": "1", "text": "one"}])
    err = _status(lambda: client.delete("d", [str(i) for i in range(101)]))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "limit is 100" in err.details()
    assert client.delete("d", [str(i) for i in range(100)]) == 1


def test_default_delete_limit_covers_a_huge_repeated_field(client):
    """Without the cap, one 64 MiB Delete could name millions of ids."""
    client.create_collection("d", strategy="debug")
    request = cpb.DeleteRequest(collection="d", ids=[f"{i}" for i in range(10_001)])
    err = _status(lambda: client.collections.Delete(request, timeout=30))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "10,000" in err.details()
    texts = epb.EmbedRequest(texts=["a"] * 1025, strategy="debug")
    err = _status(lambda: client.embeddings.Embed(texts, timeout=30))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
