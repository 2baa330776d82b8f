"""The gRPC surface with a Milvus collection (``backend: "milvus"``): the same calls and
answers as a FAISS collection, on a milvus-lite 2.5 server on loopback. Skipped without the
``milvus`` extra."""

from __future__ import annotations

import grpc
import pytest

from embedsvc.config import MilvusConfig


@pytest.fixture(scope="module")
def milvus_uri(tmp_path_factory):
    pytest.importorskip("pymilvus")
    pytest.importorskip("milvus_lite.server")
    from embedsvc.testing import MilvusLiteServer

    with MilvusLiteServer(tmp_path_factory.mktemp("milvus")) as server:
        yield server.uri


def test_milvus_collection_serves_the_same_api(server_factory, milvus_uri):
    _, client = server_factory(milvus=MilvusConfig(uri=milvus_uri))
    docs = [
        {"id": f"d{i}", "text": f"topic{i % 10} word{i} shared", "metadata": {"group": i % 3}}
        for i in range(120)
    ]
    results = {}
    for backend in ("faiss", "milvus"):
        created = client.create_collection(backend, strategy="debug", backend=backend)
        assert created.backend == backend and created.index_kind == "flat"
        counts = client.upsert(backend, docs, chunk_size=50)
        assert (counts.received, counts.inserted, counts.updated) == (120, 120, 0)
        again = client.upsert(backend, docs[:20])
        assert (again.inserted, again.updated, again.unchanged) == (0, 0, 20)
        assert client.get_collection(backend).document_count == 120
        assert client.delete(backend, ["d3", "nope"]) == 1
        results[backend] = [
            client.search(backend, ["topic3 word3 shared", "topic5"], top_k=5),
            client.search(backend, ["topic4 word4 shared"], top_k=20, filter={"group": 1}),
        ]
    for faiss_rows, milvus_rows in zip(results["faiss"], results["milvus"], strict=True):
        for f, m in zip(faiss_rows, milvus_rows, strict=True):
            assert [(h.id, round(h.score, 4), h.text, h.metadata) for h in m] == [
                (h.id, round(h.score, 4), h.text, h.metadata) for h in f
            ]
    assert sorted(c.name for c in client.list_collections()) == ["faiss", "milvus"]
    with pytest.raises(grpc.RpcError) as err:  # a filter Milvus cannot express
        client.search("milvus", ["x"], top_k=3, filter={"group": None})
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as err:  # an index type milvus-lite does not build
        client.create_collection("h", strategy="debug", index_kind="hnsw", backend="milvus")
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    client.delete_collection("milvus")
    assert [c.name for c in client.list_collections()] == ["faiss"]
