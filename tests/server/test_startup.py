"""Start-up: health says what the warm-up does; a failed warm-up is reported (and ends ``serve``
with status 1); a stop during warm-up is not an error."""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from embedsvc.client import EmbedsvcClient
from embedsvc.errors import InvalidArgument
from embedsvc.server import create_server
from embedsvc.server import startup as startup_module
from tests.server.conftest import make_config


@pytest.fixture
def start(tmp_path):
    """Start an in-process server with a warm-up; yields (service, reported failures)."""
    services = []

    def run(warm_up):
        service, _ = create_server(make_config(tmp_path))
        failures: list[str] = []
        service.start(warm_up, on_failure=failures.append)
        services.append(service)
        return service, failures

    yield run
    for service in services:
        service.stop(grace=5)


def _health(service) -> httpx.Response:
    return httpx.get(f"http://127.0.0.1:{service.http_port}/health", timeout=10)


def _wait(condition, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_health_says_what_the_warm_up_does_then_serves(start, caplog, monkeypatch):
    monkeypatch.setattr(startup_module, "PROGRESS_LOG_INTERVAL_S", 0.0)
    caplog.set_level(logging.INFO, logger="embedsvc.startup")
    reported, release = threading.Event(), threading.Event()

    def warm_up(engine, startup):
        startup.progress("indexing demo corpus", 0, 5000)
        time.sleep(0.05)
        startup.progress("indexing demo corpus", 1024, 5000)
        reported.set()
        release.wait(30)

    service, failures = start(warm_up)
    assert reported.wait(30)
    response = _health(service)
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "NOT_SERVING"
    assert re.fullmatch(r"indexing demo corpus 1,024/5,000, about \d+ s left", body["reason"])
    grpc_client = EmbedsvcClient(f"127.0.0.1:{service.port}", timeout=10)
    assert grpc_client.health() == "NOT_SERVING"
    # gRPC health has no reason field: the log says it
    assert any(body["reason"] in r.getMessage() for r in caplog.records)
    release.set()
    _wait(lambda: _health(service).status_code == 200)
    assert _health(service).json() == {"status": "SERVING"}
    assert grpc_client.health() == "SERVING"
    assert failures == [] and service.startup_error is None
    grpc_client.close()


def test_a_failed_warm_up_is_reported_in_one_line(start, caplog):
    def warm_up(engine, startup):
        raise InvalidArgument("corpus.jsonl:3: not valid JSON (Expecting value)")

    service, failures = start(warm_up)
    _wait(lambda: failures)
    assert failures == ["corpus.jsonl:3: not valid JSON (Expecting value)"]
    body = _health(service).json()
    assert body == {
        "status": "NOT_SERVING",
        "reason": "start-up failed: corpus.jsonl:3: not valid JSON (Expecting value)",
    }
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert [r.getMessage() for r in errors] == [
        "start-up failed: corpus.jsonl:3: not valid JSON (Expecting value)"
    ]
    assert errors[0].exc_info is None  # no traceback at ERROR (it is logged at DEBUG)


def test_a_stop_during_warm_up_cancels_it_quietly(start, caplog):
    started = threading.Event()
    steps = []

    def warm_up(engine, startup):
        started.set()
        for i in range(100_000):
            startup.progress("indexing demo corpus", i, 100_000)
            steps.append(i)
            time.sleep(0.01)

    service, failures = start(warm_up)
    assert started.wait(30)
    begun = time.monotonic()
    service.stop(grace=10)
    assert time.monotonic() - begun < 5
    assert not service._startup_thread.is_alive()
    assert 0 < len(steps) < 100_000
    assert failures == [] and service.startup_error is None
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []


# -- the real `embedsvc serve` process ----------------------------------------------------------


def _serve(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    command = [
        sys.executable, "-m", "embedsvc.cli", "serve", "--port", "0", "--http-port", "0",
        "--data-dir", str(tmp_path / "indexes"), *args,
    ]  # fmt: skip
    return subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})},
    )


def test_serve_exits_1_with_the_reason_when_the_warm_up_fails(tmp_path):
    """No process that listens but never serves: here the preloaded strategy does not exist."""
    proc = _serve(tmp_path, env={"EMBEDSVC_PRELOAD_STRATEGIES": '["no_such_strategy"]'})
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 1, out
    failed = [line for line in out.splitlines() if "start-up failed" in line]
    assert len(failed) == 1 and "ERROR" in failed[0], out
    assert "no_such_strategy" in failed[0]
    assert "Traceback" not in out


@pytest.mark.slow
def test_sigterm_during_warm_up_stops_cleanly(tmp_path):
    """SIGTERM while the demo corpus is being embedded (real MiniLM): one line, exit 0."""
    proc = _serve(tmp_path, "--demo")
    lines = []
    try:
        for line in proc.stdout:
            lines.append(line)
            if "first start: embedding" in line:
                break
        time.sleep(1.0)  # into the first chunks
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    log = "".join(lines) + out
    assert proc.returncode == 0, log
    assert sum("stopped during start-up" in line for line in log.splitlines()) == 1, log
    assert "ERROR" not in log and "Traceback" not in log, log
    assert "serving on" not in log
