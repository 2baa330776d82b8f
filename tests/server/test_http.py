"""The HTTP API beside gRPC: OpenAI protocol, real OpenAI and LangChain clients, errors."""

from __future__ import annotations

import base64

import httpx
import numpy as np
import pytest


@pytest.fixture
def http(server_factory):
    service, client = server_factory()
    return service, client, f"http://127.0.0.1:{service.http_port}"


def test_openai_client_against_http(http):
    from openai import OpenAI

    service, grpc_client, base = http
    oai = OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0)
    response = oai.embeddings.create(input=["a b c", "d e f"], model="debug")
    vectors = np.array([d.embedding for d in response.data], dtype=np.float32)
    assert np.allclose(vectors, grpc_client.embed(["a b c", "d e f"], strategy="debug"), atol=1e-6)
    assert response.usage.prompt_tokens == 6
    # the OpenAI client asks for base64 by default when numpy is installed; both decode the same
    b64 = oai.embeddings.create(input="a b c", model="debug", encoding_format="base64")
    raw = b64.data[0].embedding
    decoded = np.frombuffer(base64.b64decode(raw), "<f4") if isinstance(raw, str) else raw
    assert np.allclose(decoded, vectors[0], atol=1e-6)
    short = oai.embeddings.create(input="a b c", model="debug", dimensions=8)
    assert len(short.data[0].embedding) == 8
    assert np.isclose(np.linalg.norm(short.data[0].embedding), 1.0, atol=1e-5)


def test_langchain_embeddings_against_http(http):
    from langchain_openai import OpenAIEmbeddings

    _, grpc_client, base = http
    lc = OpenAIEmbeddings(
        model="debug",
        base_url=f"{base}/v1",
        api_key="unused",
        # token-length pre-check would need tiktoken's BPE files from the network
        check_embedding_ctx_length=False,
        max_retries=0,
    )
    docs = lc.embed_documents(["alpha beta", "gamma delta"])
    query = lc.embed_query("alpha beta")
    assert np.allclose(docs[0], query, atol=1e-6)
    assert np.allclose(query, grpc_client.embed(["alpha beta"], strategy="debug")[0], atol=1e-6)


def test_llamaindex_embeddings_against_http(http, monkeypatch):
    """LlamaIndex's OpenAI-like integration (its plain OpenAI class checks model names), with
    every connection recorded: nothing but the server may be reached (no tiktoken or NLTK
    downloads; those would fail offline)."""
    import socket

    from llama_index.embeddings.openai_like import OpenAILikeEmbedding

    _, grpc_client, base = http
    outside: list[object] = []
    loopback = ("127.0.0.1", "::1", "localhost")
    connect, resolve = socket.socket.connect, socket.getaddrinfo

    def connect_loopback(sock, address):
        if not isinstance(address, tuple) or address[0] not in loopback:
            outside.append(address)
        return connect(sock, address)

    def resolve_loopback(host, *args, **kwargs):
        if host not in loopback:
            outside.append(host)
        return resolve(host, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", connect_loopback)
    monkeypatch.setattr(socket, "getaddrinfo", resolve_loopback)
    embedder = OpenAILikeEmbedding(
        model_name="debug", api_base=f"{base}/v1", api_key="unused", max_retries=0
    )
    docs = embedder.get_text_embedding_batch(["alpha beta", "gamma delta", "epsilon"])
    query = embedder.get_query_embedding("alpha beta")
    expected = grpc_client.embed(["alpha beta", "gamma delta", "epsilon"], strategy="debug")
    assert np.allclose(np.array(docs, dtype=np.float32), expected, atol=1e-6)
    assert np.allclose(query, expected[0], atol=1e-6)
    assert outside == []


def test_http_search_health_metrics_and_errors(http):
    service, client, base = http
    client.create_collection("docs", strategy="debug")
    client.upsert("docs", [{"id": str(i), "text": f"word{i} common"} for i in range(20)])
    hits = httpx.post(f"{base}/v1/search", json={"collection": "docs", "query": "word7 common"})
    assert hits.status_code == 200 and hits.json()["results"][0][0]["id"] == "7"
    assert httpx.get(f"{base}/health").json() == {"status": "SERVING"}
    missing = httpx.post(f"{base}/v1/search", json={"collection": "nope", "query": "x"})
    assert missing.status_code == 404 and "nope" in missing.json()["error"]["message"]
    empty = httpx.post(f"{base}/v1/embeddings", json={"input": [], "model": "debug"})
    assert empty.status_code == 400
    unknown = httpx.post(f"{base}/v1/embeddings", json={"input": "x", "model": "nope"})
    assert unknown.status_code == 404
    metrics = httpx.get(f"{base}/metrics").text
    assert 'embedsvc_requests_total{code="OK",method="Upsert"} 1.0' in metrics
    assert 'embedsvc_requests_total{code="404",method="HTTP /v1/search"} 1.0' in metrics
    assert 'embedsvc_collection_documents{collection="docs"} 20.0' in metrics
    assert "embedsvc_batch_texts_count" in metrics


def test_truncation_is_reported_on_both_transports(http):
    _, client, base = http
    long_text = " ".join(["w"] * 80)  # debug's limit is 64 words
    body = httpx.post(f"{base}/v1/embeddings", json={"input": long_text, "model": "debug"}).json()
    assert body["data"][0]["truncated_tokens"] == 16
    assert list(client.embed_response([long_text], strategy="debug").truncated_tokens) == [16]
    strict = httpx.post(
        f"{base}/v1/embeddings", json={"input": long_text, "model": "debug", "strict_length": True}
    )
    assert strict.status_code == 400 and "texts[0]" in strict.json()["error"]["message"]


def test_timing_metadata(http):
    _, client, base = http
    _, call = client.embeddings.Embed.with_call(
        __import__("embedsvc.v1.embedding_service_pb2", fromlist=["x"]).EmbedRequest(
            texts=["a b"], strategy="debug"
        )
    )
    trailing = dict(call.trailing_metadata())
    assert {"x-queue-time", "x-inference-time", "x-tokenize-time"} <= set(trailing)
    response = httpx.post(f"{base}/v1/embeddings", json={"input": "a b", "model": "debug"})
    assert "x-inference-time" in response.headers and "x-total-time" in response.headers


def test_http_connections_have_tcp_nodelay(http):
    """Every accepted connection sends small responses at once (TCP_NODELAY): without it a
    keep-alive client waited Nagle + delayed ACK, 40 ms, on every request."""
    import socket

    service, _, base = http
    with httpx.Client(base_url=base) as client:
        assert client.get("/health").status_code == 200
        connections = list(service.http.server.server_state.connections)
        assert connections, "the keep-alive connection is open"
        for protocol in connections:
            sock = protocol.transport.get_extra_info("socket")
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
