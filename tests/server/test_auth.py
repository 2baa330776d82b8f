"""API keys on every data RPC and HTTP route; health and reflection stay open."""

from __future__ import annotations

import grpc
import httpx
import pytest

from embedsvc.client import EmbedsvcClient
from embedsvc.config import AuthConfig


@pytest.fixture
def secured(server_factory):
    service, _ = server_factory(auth=AuthConfig(api_keys=["s3cret"], read_only_keys=["reader"]))
    return service


def _client(service, key: str | None) -> EmbedsvcClient:
    return EmbedsvcClient(f"127.0.0.1:{service.port}", timeout=30, api_key=key)


def test_grpc_requires_a_key_but_health_is_open(secured):
    anonymous = _client(secured, None)
    assert anonymous.health() == "SERVING"
    with pytest.raises(grpc.RpcError) as info:
        anonymous.embed(["x"], strategy="debug")
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(grpc.RpcError) as info:
        _client(secured, "wrong").create_collection("c", strategy="debug")
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert secured.engine.collections.list() == [], "an unauthenticated call touched nothing"
    assert _client(secured, "s3cret").embed(["x"], strategy="debug").shape == (1, 32)


def test_read_only_key(secured):
    admin, reader = _client(secured, "s3cret"), _client(secured, "reader")
    admin.create_collection("c", strategy="debug")
    admin.upsert("c", [{"id": "1", "text": "hello there"}])
    assert reader.search("c", ["hello"])[0][0].id == "1"
    with pytest.raises(grpc.RpcError) as info:
        reader.upsert("c", [{"id": "2", "text": "nope"}])
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert admin.get_collection("c").document_count == 1


def test_http_requires_a_key(secured):
    base = f"http://127.0.0.1:{secured.http_port}"
    body = {"input": "x", "model": "debug"}
    assert httpx.post(f"{base}/v1/embeddings", json=body).status_code == 401
    bad = httpx.post(f"{base}/v1/embeddings", json=body, headers={"authorization": "Bearer no"})
    assert bad.status_code == 401
    ok = httpx.post(f"{base}/v1/embeddings", json=body, headers={"authorization": "Bearer reader"})
    assert ok.status_code == 200
    assert httpx.get(f"{base}/health").status_code == 200
