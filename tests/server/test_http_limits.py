"""Bounded memory for any HTTP request: bodies over the limit are refused while they are read
(a real server process, its RSS watched), metric labels stay bounded whatever paths are asked
for, ``/metrics`` and ``/openapi.json`` follow the API keys, and every error has OpenAI's shape.
"""

from __future__ import annotations

import contextlib
import json
import select
import socket
import time
from pathlib import Path

import grpc
import httpx
import pytest

from embedsvc.config import AuthConfig, MetricsConfig
from embedsvc.testing import ServerProcess

MIB = 1024 * 1024


def _openai_error(response: httpx.Response) -> dict:
    body = response.json()
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"message", "type", "param", "code"}, body
    return body["error"]


# --------------------------------------------------------------------------- request bodies


def _rss_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"{field} not in /proc/{pid}/status")


def _send_body(port: int, total: int, chunked: bool) -> tuple[bytes, int]:
    """POST ``total`` bytes of JSON-ish body over a raw socket, as fast as the server takes them,
    stopping as soon as it answers. Returns (the response bytes, how many body bytes went)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    head = "POST /v1/embeddings HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
    head += "Transfer-Encoding: chunked\r\n\r\n" if chunked else f"Content-Length: {total}\r\n\r\n"
    sock.sendall(head.encode())
    sock.setblocking(False)
    piece = b'{"input": [' + b'"aaaaaaa",' * 6550  # ~64 KiB, never a complete document
    pending, sent, response = b"", 0, b""
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            readable, writable, _ = select.select([sock], [sock] if sent < total else [], [], 1)
            if readable:
                data = sock.recv(65536)
                if not data:
                    break
                response += data
                if b"\r\n\r\n" in response and response.rstrip().endswith(b"}"):
                    break
                continue
            if writable:
                if not pending:
                    chunk = piece[: total - sent]
                    sent += len(chunk)
                    pending = f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n" if chunked else chunk
                pending = pending[sock.send(pending) :]
    except (BrokenPipeError, ConnectionResetError):
        sock.setblocking(True)
        with contextlib.suppress(OSError):
            response += sock.recv(65536)
    finally:
        sock.close()
    return response, sent


def test_huge_bodies_are_refused_while_read_without_growing_memory(tmp_path):
    """100 MB with a Content-Length and 100 MB chunked: 413 in OpenAI's shape after at most a few
    MB, and the server's peak RSS grows by less than 16 MB (it grew by ~850 MB for a 300 MB body
    before the limit)."""
    env = {"EMBEDSVC_PRELOAD_STRATEGIES": '["debug"]'}
    with ServerProcess(tmp_path / "indexes", env=env) as server:
        pid = server.proc.pid
        base = f"http://127.0.0.1:{server.http_port}"
        assert httpx.post(f"{base}/v1/embeddings", json={"input": "a", "model": "debug"}).is_success
        Path(f"/proc/{pid}/clear_refs").write_text("5")  # reset the peak (VmHWM) to now
        before = _rss_kib(pid, "VmHWM")
        for chunked in (False, True):
            response, sent = _send_body(server.http_port, 100 * 1000 * 1000, chunked)
            head, _, body = response.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 413"), (chunked, response[:300], server.tail())
            error = json.loads(body[body.index(b"{") :])["error"]
            assert error["code"] == "RESOURCE_EXHAUSTED" and "4,194,304 bytes" in error["message"]
            assert set(error) == {"message", "type", "param", "code"}
            # refused after the limit (plus what the socket buffers held), not after 100 MB
            assert sent < 40 * MIB, (chunked, sent)
        grown = _rss_kib(pid, "VmHWM") - before
        assert grown < 16 * 1024, f"peak RSS grew by {grown} KiB"
        # still serving, and a body under the limit still works
        body = {"input": ["x" * 1000] * 100, "model": "debug"}
        ok = httpx.post(f"{base}/v1/embeddings", json=body)
        assert ok.status_code == 200


def test_body_limit_is_configurable(server_factory):
    from embedsvc.config import HttpConfig

    service, _ = server_factory(http=HttpConfig(port=0, max_body_bytes=4096))
    base = f"http://127.0.0.1:{service.http_port}"
    small = httpx.post(f"{base}/v1/embeddings", json={"input": "a b", "model": "debug"})
    assert small.status_code == 200
    big = httpx.post(f"{base}/v1/embeddings", json={"input": "a " * 5000, "model": "debug"})
    assert big.status_code == 413
    assert "4,096 bytes" in _openai_error(big)["message"]

    def chunks():
        for _ in range(10):
            yield b" " * 1000

    streamed = httpx.post(
        f"{base}/v1/embeddings", content=chunks(), headers={"content-type": "application/json"}
    )
    assert streamed.status_code == 413 and _openai_error(streamed)["param"] == "body"


# ------------------------------------------------------------------------------ error shapes


def test_every_http_error_has_the_openai_shape(server_factory):
    service, _ = server_factory()
    base = f"http://127.0.0.1:{service.http_port}"
    missing = httpx.get(f"{base}/no/such/route")
    assert missing.status_code == 404
    assert "/v1/embeddings" in _openai_error(missing)["message"]
    assert _openai_error(httpx.put(f"{base}/v1/embeddings"))["code"] == "INVALID_ARGUMENT"
    for raw in (b"\xff\xfe{not json", b"{not json", b'{"input": "a",', b"[1, 2]"):
        response = httpx.post(
            f"{base}/v1/embeddings", content=raw, headers={"content-type": "application/json"}
        )
        assert response.status_code == 400, response.text
        assert _openai_error(response)["code"] == "INVALID_ARGUMENT"
    typed = httpx.post(f"{base}/v1/embeddings", json={"input": 5, "model": "debug"})
    assert typed.status_code == 400 and "input" in _openai_error(typed)["message"]


# ----------------------------------------------------------------------------------- metrics


def test_metrics_stay_flat_under_unknown_paths(server_factory):
    """5,000 distinct paths took /metrics to 207 MB before; now they share one label (a few
    hundred show it: each new path added ~1.5 KB of series)."""
    service, client = server_factory(auth=AuthConfig(api_keys=["k"]))
    base = f"http://127.0.0.1:{service.http_port}"
    key = {"authorization": "Bearer k"}
    with httpx.Client(base_url=base) as http:
        for i in range(5):
            http.get(f"/warm-{i}")
        before = len(http.get("/metrics", headers=key).content)
        for i in range(200):  # each added ~1.5 KB of series before (and RSS)
            assert http.get(f"/probe-{i}/{'x' * (i % 50)}").status_code in (401, 404)
            if i % 4 == 0:
                http.post(f"/v1/{i}", headers=key, content=b"{}")
        for i in range(20):  # unknown gRPC methods are refused before any metric
            with pytest.raises(grpc.RpcError):
                client.channel.unary_unary(f"/embedsvc.v1.Nope/Probe{i}")(b"", timeout=5)
        scraped = http.get("/metrics", headers=key).text
    assert len(scraped) - before < 2000, (before, len(scraped))
    assert 'method="HTTP unknown"' in scraped and "probe-" not in scraped


def test_metrics_and_openapi_follow_the_api_keys(server_factory):
    service, _ = server_factory(
        auth=AuthConfig(api_keys=["admin"], read_only_keys=["reader"], metrics_keys=["scraper"]),
        metrics=MetricsConfig(port=0),
    )
    base = f"http://127.0.0.1:{service.http_port}"

    def get(path: str, key: str | None = None) -> httpx.Response:
        headers = {"authorization": f"Bearer {key}"} if key else {}
        return httpx.get(f"{base}{path}", headers=headers)

    assert get("/metrics").status_code == 401
    assert get("/openapi.json").status_code == 401
    assert _openai_error(get("/metrics"))["code"] == "UNAUTHENTICATED"
    for key in ("admin", "reader", "scraper"):
        assert "embedsvc_requests_total" in get("/metrics", key).text
    assert get("/openapi.json", "reader").json()["info"]["title"] == "embedsvc"
    assert get("/openapi.json", "scraper").status_code == 403  # metrics keys scrape only
    scraper = httpx.post(
        f"{base}/v1/embeddings",
        json={"input": "a", "model": "debug"},
        headers={"authorization": "Bearer scraper"},
    )
    assert scraper.status_code == 403
    assert get("/health").status_code == 200  # probes stay open
    # the separate metrics port: no key, same registry (keep it on a private network)
    private = httpx.get(f"http://127.0.0.1:{service.metrics_port}/metrics")
    assert private.status_code == 200 and "embedsvc_collection_documents" in private.text


def test_metrics_stay_open_without_keys(server_factory):
    service, _ = server_factory()
    base = f"http://127.0.0.1:{service.http_port}"
    assert httpx.get(f"{base}/metrics").status_code == 200
    assert httpx.get(f"{base}/openapi.json").status_code == 200


def test_a_metrics_key_alone_closes_only_metrics(server_factory):
    service, client = server_factory(auth=AuthConfig(metrics_keys=["scraper"]))
    base = f"http://127.0.0.1:{service.http_port}"
    assert httpx.get(f"{base}/metrics").status_code == 401
    assert httpx.get(f"{base}/metrics", headers={"authorization": "Bearer scraper"}).is_success
    assert client.embed(["x"], strategy="debug").shape == (1, 32)  # the data API stays open
