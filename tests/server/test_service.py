"""The gRPC surface end to end, in-process, on the debug engine."""

from __future__ import annotations

import threading

import grpc
import numpy as np
import pytest

from embedsvc.v1 import embedding_service_pb2 as epb


def test_health_and_reflection(client):
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
        ProtoReflectionDescriptorDatabase,
    )

    assert client.health() == "SERVING"
    assert client.health("embedsvc.v1.EmbeddingService") == "SERVING"
    services = ProtoReflectionDescriptorDatabase(client.channel).get_services()
    assert "embedsvc.v1.CollectionService" in services
    assert "grpc.health.v1.Health" in services


def test_list_strategies(client):
    names = {s.name: s for s in client.list_strategies()}
    assert {"mean", "debug", "debug_binary"} <= set(names)
    assert names["debug"].loaded and names["debug"].dim == 32


def test_embed_packs_vectors_as_bytes(client):
    response = client.embed_response(["a b c", "c d e"], strategy="debug")
    assert response.vectors.dtype == 1 and list(response.vectors.shape) == [2, 32]
    assert len(response.vectors.data) == 2 * 32 * 4
    vectors = client.embed(["a b c", "c d e"], strategy="debug")
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    raw = client.embed(["a b c"], strategy="debug", normalize=False)
    assert not np.isclose(np.linalg.norm(raw), 1.0)


def test_binary_embed(client):
    response = client.embed_response(["a b c"], strategy="debug_binary")
    assert response.kind == 2 and response.dim == 256
    assert client.embed(["a b c"], strategy="debug_binary").shape == (1, 32)


def test_collection_lifecycle(client):
    created = client.create_collection("docs", strategy="debug", index_kind="hnsw")
    assert created.index_kind == "hnsw" and created.dim == 32
    docs = [
        {"id": f"d{i}", "text": f"topic{i % 10} word{i} shared", "metadata": {"group": i % 3}}
        for i in range(300)
    ]
    counts = client.upsert("docs", docs, chunk_size=64)
    assert (counts.received, counts.inserted, counts.updated) == (300, 300, 0)
    again = client.upsert("docs", docs[:50])
    assert (again.inserted, again.updated, again.unchanged) == (0, 0, 50)
    assert client.get_collection("docs").document_count == 300

    hits = client.search("docs", ["topic3 word3 shared", "topic5"], top_k=5)
    assert len(hits) == 2 and hits[0][0].id == "d3"
    assert hits[0][0].metadata == {"group": 0}
    filtered = client.search("docs", ["topic3 word3 shared"], top_k=20, filter={"group": 1})
    assert filtered[0] and all(h.metadata["group"] == 1 for h in filtered[0])

    assert client.delete("docs", ["d3", "nope"]) == 1
    assert all(h.id != "d3" for h in client.search("docs", ["topic3 word3 shared"], 20)[0])
    assert [c.name for c in client.list_collections()] == ["docs"]
    client.delete_collection("docs")
    assert client.list_collections() == []


def test_concurrent_calls_are_batched(server_factory):
    from embedsvc.config import BatchingConfig

    service, client = server_factory(batching=BatchingConfig(max_wait_ms=30))
    errors = []

    def call(i: int) -> None:
        try:
            # 300 ms per forward: requests arrive while one runs (a lone one runs at once)
            client.embed([f"text {i}", f"more {i}"], strategy="debug_slow")
        except grpc.RpcError as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(24)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    stats = service.engine.batcher.stats
    assert stats.largest_batch_requests > 1, "concurrent requests shared a forward pass"


def test_full_queue_answers_resource_exhausted(server_factory):
    from embedsvc.config import BatchingConfig

    _, client = server_factory(
        batching=BatchingConfig(max_wait_ms=0, max_queue_texts=8, max_batch_texts=8)
    )
    # debug with a 300 ms delay keeps the worker busy while the queue fills
    client.embed(["warm"], strategy="debug")
    codes: list[grpc.StatusCode] = []

    def call() -> None:
        try:
            client.embeddings.Embed(epb.EmbedRequest(texts=["x"] * 8, strategy="debug_slow"))
            codes.append(grpc.StatusCode.OK)
        except grpc.RpcError as exc:
            codes.append(exc.code())

    threads = [threading.Thread(target=call) for _ in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert grpc.StatusCode.RESOURCE_EXHAUSTED in codes
    assert grpc.StatusCode.OK in codes
    assert set(codes) <= {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED}


@pytest.mark.parametrize("kind", ["flat", "ivf", "hnsw", "ivfpq"])
def test_every_dense_index_kind_serves(client, kind):
    client.create_collection(f"k_{kind}", strategy="debug", index_kind=kind)
    docs = [{"id": str(i), "text": f"alpha{i} beta{i % 7} gamma"} for i in range(200)]
    client.upsert(f"k_{kind}", docs)
    hits = client.search(f"k_{kind}", ["alpha42 beta0 gamma"], top_k=3)[0]
    assert hits[0].id == "42"
