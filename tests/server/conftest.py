"""In-process servers on free ports, backed by the model-free ``debug`` strategies."""

from __future__ import annotations

import pytest

from embedsvc.client import EmbedsvcClient
from embedsvc.config import BatchingConfig, HttpConfig, ServiceConfig
from embedsvc.server import create_server


def make_config(tmp_path, **overrides) -> ServiceConfig:
    base = dict(
        host="127.0.0.1",
        port=0,
        data_dir=tmp_path / "indexes",
        preload_strategies=["debug"],
        http=HttpConfig(port=0),
    )
    base.update(overrides)
    return ServiceConfig(**base)


@pytest.fixture
def server_factory(tmp_path):
    """Start servers with config overrides; every one is stopped at the end of the test."""
    started = []

    def start(**overrides):
        service, port = create_server(make_config(tmp_path, **overrides))
        service.start()
        client = EmbedsvcClient(f"127.0.0.1:{port}", timeout=30)
        client.wait_ready(timeout=60)
        started.append((service, client))
        return service, client

    yield start
    for service, client in started:
        client.close()
        service.stop(grace=1)


@pytest.fixture
def client(server_factory) -> EmbedsvcClient:
    return server_factory()[1]


@pytest.fixture
def slow_batching() -> BatchingConfig:
    return BatchingConfig(max_wait_ms=50, max_queue_texts=64, max_batch_texts=256)


def _register_slow_debug() -> None:
    """A debug engine that takes 300 ms per forward pass, to fill the queue on purpose."""
    from embedsvc.strategies import available_strategies, register_strategy
    from embedsvc.strategies.debug import DebugConfig, DebugDense

    if "debug_slow" in available_strategies():
        return

    class SlowDebugConfig(DebugConfig):
        delay_ms: float = 300.0

    @register_strategy("debug_slow")
    class SlowDebug(DebugDense):
        config_cls = SlowDebugConfig
        description = "test engine: debug with a 300 ms forward pass"


_register_slow_debug()
