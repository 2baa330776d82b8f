"""Request ids on both surfaces, access lines, and JSON log lines that carry the request id."""

from __future__ import annotations

import io
import json
import logging
import re

import grpc
import httpx
import pytest

from embedsvc.config import LoggingConfig, ServiceConfig
from embedsvc.server.logs import JsonFormatter, configure_logging
from embedsvc.v1 import embedding_service_pb2 as epb

GENERATED = re.compile(r"[0-9a-f]{32}")


@pytest.fixture
def served(server_factory):
    service, client = server_factory()
    return service, client, f"http://127.0.0.1:{service.http_port}"


def _embed(client, request_id=None, strategy="debug"):
    metadata = (("x-request-id", request_id),) if request_id is not None else ()
    return client.embeddings.Embed.with_call(
        epb.EmbedRequest(texts=["a b c"], strategy=strategy), metadata=metadata, timeout=30
    )


def _request_id(call) -> str:
    values = [v for k, v in call.initial_metadata() if k == "x-request-id"]
    assert len(values) == 1, call.initial_metadata()
    return values[0]


def _access(caplog, request_id):
    return [
        r
        for r in caplog.records
        if r.name == "embedsvc.access" and getattr(r, "request_id", None) == request_id
    ]


def test_grpc_request_id_generated_propagated_and_replaced(served, caplog):
    caplog.set_level(logging.INFO, logger="embedsvc")
    _, client, _ = served
    _, call = _embed(client)
    assert GENERATED.fullmatch(_request_id(call))
    _, call = _embed(client, "client-req-42")
    assert _request_id(call) == "client-req-42"
    for bad in ("has space", "x" * 129, "<script>", "-leading-dash", ""):
        _, call = _embed(client, bad)
        assert GENERATED.fullmatch(_request_id(call)), bad
    # errors carry it too (initial metadata goes out before the handler runs)
    with pytest.raises(grpc.RpcError) as err:
        _embed(client, "failing-req-1", strategy="no-such-strategy")
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert _request_id(err.value) == "failing-req-1"

    (line,) = _access(caplog, "client-req-42")
    assert line.levelno == logging.INFO
    assert line.rpc == "embedsvc.v1.EmbeddingService/Embed"
    assert line.status_code == "OK"
    assert line.duration_ms >= 0
    (line,) = _access(caplog, "failing-req-1")
    assert line.status_code == "NOT_FOUND"


def test_http_request_id_generated_propagated_and_replaced(served, caplog):
    caplog.set_level(logging.INFO, logger="embedsvc")
    _, _, base = served
    body = {"input": "a b c", "model": "debug"}
    r = httpx.post(f"{base}/v1/embeddings", json=body)
    assert r.status_code == 200 and GENERATED.fullmatch(r.headers["x-request-id"])
    r = httpx.post(f"{base}/v1/embeddings", json=body, headers={"x-request-id": "http-req-7"})
    assert r.headers["x-request-id"] == "http-req-7"
    r = httpx.post(f"{base}/v1/embeddings", json=body, headers={"x-request-id": "a b\tc"})
    assert GENERATED.fullmatch(r.headers["x-request-id"])
    r = httpx.post(
        f"{base}/v1/embeddings",
        json={"input": "a", "model": "no-such-model"},
        headers={"x-request-id": "http-req-8"},
    )
    assert r.status_code == 404 and r.headers["x-request-id"] == "http-req-8"

    (line,) = _access(caplog, "http-req-7")
    assert (line.route, line.http_method, line.status_code) == ("/v1/embeddings", "POST", 200)
    assert line.duration_ms >= 0 and line.rpc is None
    (line,) = _access(caplog, "http-req-8")
    assert line.status_code == 404
    # probes and scrapes are logged at DEBUG only
    r = httpx.get(f"{base}/health", headers={"x-request-id": "probe-1"})
    assert r.headers["x-request-id"] == "probe-1"
    assert not _access(caplog, "probe-1")


def test_log_records_during_a_request_carry_its_id(served, caplog):
    """A log line written while handling the request (here the INTERNAL error's stack trace)
    carries the request id, and the error message names the same id."""
    caplog.set_level(logging.INFO, logger="embedsvc")
    service, client, base = served

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    async def broken_async(*args, **kwargs):
        raise RuntimeError("boom")

    service.engine.embed = broken
    service.engine.embed_async = broken_async  # HTTP's path for small requests
    with pytest.raises(grpc.RpcError) as err:
        _embed(client, "bug-req-1")
    assert err.value.code() == grpc.StatusCode.INTERNAL
    assert "bug-req-1" in err.value.details()
    errors = [r for r in caplog.records if r.name == "embedsvc.server.status"]
    assert [r.request_id for r in errors] == ["bug-req-1"]
    assert errors[0].exc_info is not None

    r = httpx.post(
        f"{base}/v1/embeddings",
        json={"input": "a", "model": "debug"},
        headers={"x-request-id": "bug-req-2"},
    )
    assert r.status_code == 500 and r.headers["x-request-id"] == "bug-req-2"
    assert "bug-req-2" in r.json()["error"]["message"]
    errors = [r for r in caplog.records if r.name == "embedsvc.server.status"]
    assert [r.request_id for r in errors] == ["bug-req-1", "bug-req-2"]
    (line,) = _access(caplog, "bug-req-2")
    assert line.status_code == 500
    # outside a request there is no id
    logging.getLogger("embedsvc.test").warning("outside")
    assert caplog.records[-1].request_id is None


def test_json_lines(served):
    """configure_logging(json): one JSON object per line with the request fields."""
    _, client, base = served
    root = logging.getLogger()
    level = root.level
    handler = configure_logging(LoggingConfig(format="json", level="info"))
    stream = io.StringIO()
    handler.setStream(stream)
    try:
        _embed(client, "json-req-1")
        httpx.post(
            f"{base}/v1/embeddings",
            json={"input": "a", "model": "debug"},
            headers={"x-request-id": "json-req-2"},
        )
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    by_id = {line["request_id"]: line for line in lines if line["logger"] == "embedsvc.access"}
    grpc_line, http_line = by_id["json-req-1"], by_id["json-req-2"]
    assert grpc_line["rpc"] == "embedsvc.v1.EmbeddingService/Embed"
    assert grpc_line["status_code"] == "OK" and grpc_line["level"] == "INFO"
    assert http_line["route"] == "/v1/embeddings" and http_line["status_code"] == 200
    assert http_line["http_method"] == "POST"
    for line in (grpc_line, http_line):
        assert set(line) >= {"timestamp", "level", "logger", "message", "duration_ms"}
        assert line["timestamp"].endswith("+00:00")


def test_json_formatter_exception_and_plain_record():
    formatter = JsonFormatter()
    try:
        raise ValueError("bad")
    except ValueError:
        import sys

        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "m %s", ("y",), sys.exc_info())
    line = json.loads(formatter.format(record))
    assert line["message"] == "m y" and line["level"] == "ERROR" and line["logger"] == "x"
    assert "ValueError: bad" in line["exception"]
    assert line["request_id"] is None


def test_config_from_environment(monkeypatch):
    monkeypatch.setenv("EMBEDSVC_LOGGING__FORMAT", "json")
    monkeypatch.setenv("EMBEDSVC_LOGGING__LEVEL", "debug")
    monkeypatch.setenv("EMBEDSVC_TRACING__OTLP_ENDPOINT", "http://collector:4317")
    monkeypatch.setenv("EMBEDSVC_TRACING__SERVICE_NAME", "embedsvc-eu")
    config = ServiceConfig()
    assert config.logging.format == "json" and config.logging.level == "DEBUG"
    assert config.tracing.otlp_endpoint == "http://collector:4317"
    assert config.tracing.service_name == "embedsvc-eu" and config.tracing.enabled
    assert not ServiceConfig.model_fields["tracing"].default.enabled
    with pytest.raises(ValueError):
        LoggingConfig(level="LOUD")
    with pytest.raises(ValueError):
        LoggingConfig(format="xml")
