"""OpenTelemetry tracing: spans reach a real OTLP/gRPC collector with the expected shape.

The collector is an in-process gRPC server implementing OTLP's ``TraceService.Export`` (the
generated service from ``opentelemetry-proto``); the embedsvc server exports to it with the real
SDK and OTLP exporter, and the test reads back what arrived.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from concurrent import futures

import grpc
import httpx
import pytest

pytest.importorskip("opentelemetry.sdk", reason="needs the otel extra")

from opentelemetry.proto.collector.trace.v1 import (  # noqa: E402
    trace_service_pb2,
    trace_service_pb2_grpc,
)

from embedsvc.v1 import embedding_service_pb2 as epb  # noqa: E402


class FakeCollector(trace_service_pb2_grpc.TraceServiceServicer):
    """Keeps every exported span as (resource attributes, span)."""

    def __init__(self) -> None:
        self.spans = []
        self.lock = threading.Lock()

    def Export(self, request, context):
        with self.lock:
            for resource_spans in request.resource_spans:
                resource = _attrs(resource_spans.resource.attributes)
                for scope_spans in resource_spans.scope_spans:
                    self.spans.extend((resource, span) for span in scope_spans.spans)
        return trace_service_pb2.ExportTraceServiceResponse()


def _value(v):
    kind = v.WhichOneof("value")
    return getattr(v, kind) if kind else None


def _attrs(kvs) -> dict:
    return {kv.key: _value(kv.value) for kv in kvs}


@pytest.fixture
def collector():
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    servicer = FakeCollector()
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield servicer, f"http://127.0.0.1:{port}"
    server.stop(None)


def _children(spans, parent):
    return {s.name: s for _, s in spans if s.parent_span_id == parent.span_id}


def test_spans_per_request_with_stage_children(server_factory, collector):
    from embedsvc.config import TracingConfig

    sink, endpoint = collector
    service, client = server_factory(
        tracing=TracingConfig(otlp_endpoint=endpoint, service_name="embedsvc-test")
    )
    assert service.tracing is not None
    client.create_collection("docs", strategy="debug")
    client.upsert("docs", [{"id": str(i), "text": f"word{i} common"} for i in range(10)])

    # gRPC Embed, continuing a caller's trace (W3C traceparent)
    caller_trace = "4bf92f3577b34da6a3ce929d0e0e4736"
    traceparent = f"00-{caller_trace}-00f067aa0ba902b7-01"
    client.embeddings.Embed(
        epb.EmbedRequest(texts=["a b c", "d e"], strategy="debug"),
        metadata=(("traceparent", traceparent), ("x-request-id", "embed-req-1")),
        timeout=30,
    )
    hits = client.search("docs", ["word3 common"], top_k=3)
    assert hits[0][0].id == "3"
    base = f"http://127.0.0.1:{service.http_port}"
    r = httpx.post(f"{base}/v1/embeddings", json={"input": ["x y z"], "model": "debug"})
    assert r.status_code == 200
    # an error: NOT_FOUND is the caller's fault (span status stays unset), but the code is kept
    with pytest.raises(grpc.RpcError) as err:
        client.embed(["a"], strategy="no-such-strategy")
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert httpx.get(f"{base}/health").status_code == 200  # probes are not traced

    service.stop(grace=1)  # flushes the span processor
    spans = list(sink.spans)
    assert spans, "the collector received nothing"
    assert {res.get("service.name") for res, _ in spans} == {"embedsvc-test"}
    by_name = {}
    for _, span in spans:
        by_name.setdefault(span.name, []).append(span)

    # gRPC Embed: a SERVER span in the caller's trace, stages as children
    embeds = by_name["embedsvc.v1.EmbeddingService/Embed"]
    ok = [s for s in embeds if _attrs(s.attributes)["rpc.grpc.status_code"] == 0]
    failed = [s for s in embeds if _attrs(s.attributes)["rpc.grpc.status_code"] == 5]
    assert len(ok) == 1 and len(failed) == 1
    embed = ok[0]
    assert embed.kind == embed.SPAN_KIND_SERVER
    assert embed.trace_id.hex() == caller_trace
    assert embed.parent_span_id.hex() == "00f067aa0ba902b7"
    attrs = _attrs(embed.attributes)
    assert attrs["rpc.system"] == "grpc"
    assert attrs["rpc.service"] == "embedsvc.v1.EmbeddingService"
    assert attrs["rpc.method"] == "Embed"
    assert attrs["embedsvc.request_id"] == "embed-req-1"
    assert attrs["embedsvc.strategy"] == "debug"
    assert attrs["embedsvc.batch_size"] == 2
    stages = _children(spans, embed)
    assert set(stages) == {"embedsvc.tokenize", "embedsvc.queue", "embedsvc.inference"}
    for stage in stages.values():
        assert stage.trace_id == embed.trace_id
        assert embed.start_time_unix_nano <= stage.start_time_unix_nano
        assert stage.start_time_unix_nano <= stage.end_time_unix_nano <= embed.end_time_unix_nano
        assert _attrs(stage.attributes)["embedsvc.strategy"] == "debug"
    # laid end to end in the order the request went through them
    tok, queue, inf = (stages[f"embedsvc.{s}"] for s in ("tokenize", "queue", "inference"))
    assert tok.end_time_unix_nano == queue.start_time_unix_nano
    assert queue.end_time_unix_nano == inf.start_time_unix_nano
    assert failed[0].status.code == failed[0].status.STATUS_CODE_UNSET  # client error

    # gRPC Search: collection, plus a search stage after the embedding stages
    (search,) = by_name["embedsvc.v1.CollectionService/Search"]
    attrs = _attrs(search.attributes)
    assert attrs["rpc.grpc.status_code"] == 0
    assert attrs["embedsvc.collection"] == "docs"
    assert attrs["embedsvc.strategy"] == "debug"
    assert attrs["embedsvc.batch_size"] == 1
    assert len(attrs["embedsvc.request_id"]) == 32  # generated
    stages = _children(spans, search)
    assert set(stages) == {
        "embedsvc.tokenize",
        "embedsvc.queue",
        "embedsvc.inference",
        "embedsvc.search",
    }
    assert _attrs(stages["embedsvc.search"].attributes)["embedsvc.collection"] == "docs"
    assert (
        stages["embedsvc.inference"].end_time_unix_nano
        <= stages["embedsvc.search"].start_time_unix_nano
    )
    assert search.parent_span_id == b""  # a root span: no caller trace

    # HTTP /v1/embeddings: its own SERVER span with the HTTP attributes and the same stages
    (http_span,) = by_name["POST /v1/embeddings"]
    attrs = _attrs(http_span.attributes)
    assert attrs["http.request.method"] == "POST"
    assert attrs["http.route"] == "/v1/embeddings"
    assert attrs["http.response.status_code"] == 200
    assert attrs["embedsvc.request_id"] == r.headers["x-request-id"]
    assert attrs["embedsvc.strategy"] == "debug"
    assert http_span.kind == http_span.SPAN_KIND_SERVER
    assert set(_children(spans, http_span)) == {
        "embedsvc.tokenize",
        "embedsvc.queue",
        "embedsvc.inference",
    }

    # upserts are traced too; health checks and probes are not
    assert "embedsvc.v1.CollectionService/Upsert" in by_name
    assert not any("Health" in name or "health" in name for name in by_name)


def test_no_endpoint_no_tracing(server_factory):
    from embedsvc import telemetry

    service, client = server_factory()
    assert service.tracing is None
    assert client.embed(["a b"], strategy="debug").shape == (1, 32)
    assert telemetry.TRACER.get() is None
    seen = []

    def spy(*args, **kwargs):
        seen.append(telemetry.TRACER.get())
        return real(*args, **kwargs)

    real = service.engine.embed
    service.engine.embed = spy
    client.embed(["a b"], strategy="debug")
    assert seen == [None]  # the request ran with no tracer bound


def test_no_endpoint_does_not_import_the_sdk(tmp_path):
    """Without an endpoint the OTel SDK and exporter are never imported (no overhead)."""
    code = f"""
import sys
import httpx
from embedsvc.client import EmbedsvcClient
from embedsvc.config import HttpConfig, ServiceConfig
from embedsvc.server import create_server
service, port = create_server(ServiceConfig(port=0, data_dir={str(tmp_path)!r},
                                            preload_strategies=["debug"], http=HttpConfig(port=0)))
assert service.tracing is None
service.start()
client = EmbedsvcClient(f"127.0.0.1:{{port}}", timeout=30)
client.wait_ready(timeout=60)
client.embed(["a b"], strategy="debug")
r = httpx.post(f"http://127.0.0.1:{{service.http_port}}/v1/embeddings",
               json={{"input": "a b", "model": "debug"}})
assert r.status_code == 200, r.text
client.close()
service.stop(grace=1)
leaked = sorted(m for m in sys.modules if m.startswith(("opentelemetry.sdk",
                                                        "opentelemetry.exporter")))
assert not leaked, leaked
print("ok")
"""
    started = time.monotonic()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().endswith("ok"), (out.stdout, time.monotonic() - started)
