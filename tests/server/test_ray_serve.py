"""``embedsvc serve --ray`` on a real local Ray cluster (loopback, 2 CPUs): the service tests'
client calls that the proxy carries pass through Ray Serve's gRPC proxy unchanged, HTTP works
through its HTTP proxy, and killing one of the 2 embedding replicas costs no more than that
replica's in-flight requests while Ray restarts it. Skipped without the ``serve`` extra."""

from __future__ import annotations

import os
import signal
import socket
import threading
import time

import grpc
import pytest

from embedsvc.client import EmbedsvcClient
from embedsvc.config import HttpConfig, RayServeConfig, ServiceConfig
from tests.server import test_errors, test_service

pytest.importorskip("watchfiles", reason="the serve extra (ray[serve]) is not installed")
serve = pytest.importorskip("ray.serve", reason="the serve extra (ray[serve]) is not installed")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ray_service(tmp_path_factory):
    import ray

    from embedsvc.server import ray_serve

    config = ServiceConfig(
        data_dir=tmp_path_factory.mktemp("ray") / "indexes",
        preload_strategies=["debug"],
        http=HttpConfig(port=0),
        ray_serve=RayServeConfig(
            grpc_port=_free_port(),
            http_port=_free_port(),
            embedding_replicas=2,
            embedding_num_cpus=0.25,
            collection_num_cpus=0.25,
        ),
    )
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
        _node_ip_address="127.0.0.1",
    )
    try:
        ray_serve.start(config)
        client = EmbedsvcClient(f"127.0.0.1:{config.ray_serve.grpc_port}", timeout=60)
        client.wait_ready(timeout=120)
        yield config, client
        client.close()
    finally:
        serve.shutdown()
        ray.shutdown()


@pytest.fixture
def client(ray_service):
    for c in ray_service[1].list_collections():
        ray_service[1].delete_collection(c.name)
    return ray_service[1]


@pytest.mark.parametrize(
    "case",
    [
        test_service.test_list_strategies,
        test_service.test_embed_packs_vectors_as_bytes,
        test_service.test_binary_embed,
        test_service.test_collection_lifecycle,
        test_errors.test_empty_embed_request_is_invalid_argument,
        test_errors.test_unknown_strategy_lists_valid_ones,
        test_errors.test_unknown_collection,
        test_errors.test_duplicate_collection,
        test_errors.test_bad_collection_name,
        test_errors.test_wrong_vector_kind_for_index,
        test_errors.test_unknown_index_kind,
    ],
    ids=lambda f: f.__name__,
)
def test_service_calls_pass_through_the_proxy(client, case):
    case(client)


def test_errors_keep_code_and_message_but_not_field_violations(client):
    """Ray's proxy carries a status code and message, not an error's trailing metadata: the
    google.rpc.BadRequest field violations of a direct server do not come through."""
    from grpc_status import rpc_status

    with pytest.raises(grpc.RpcError) as info:
        client.embed(["ok", "  "], strategy="debug")
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "texts[1]" in info.value.details()
    assert rpc_status.from_call(info.value) is None


@pytest.mark.parametrize("kind", ["flat", "hnsw"])
def test_index_kinds_through_the_proxy(client, kind):
    test_service.test_every_dense_index_kind_serves(client, kind)


def test_http_through_the_proxy(ray_service, client):
    import httpx

    port = ray_service[0].ray_serve.http_port
    body = {"input": ["hello world", "more"], "model": "debug"}
    response = httpx.post(f"http://127.0.0.1:{port}/v1/embeddings", json=body, timeout=60)
    assert response.status_code == 200, response.text
    assert len(response.json()["data"]) == 2 and len(response.json()["data"][0]["embedding"]) == 32
    bad = httpx.post(f"http://127.0.0.1:{port}/v1/embeddings", json={"input": []}, timeout=60)
    assert bad.status_code == 400


def _replica_pids(n_calls: int = 40) -> set[int]:
    handle = serve.get_deployment_handle("Embedder", app_name="embedsvc")
    return {handle.pid.remote().result(timeout_s=60) for _ in range(n_calls)}


def test_killing_an_embedding_replica_keeps_the_service_answering(client):
    pids = _replica_pids()
    assert len(pids) == 2, pids
    stop = threading.Event()
    outcomes: list[str] = []

    def load() -> None:
        while not stop.is_set():
            try:
                client.embed(["a b c", "d e f"], strategy="debug")
                outcomes.append("ok")
            except grpc.RpcError as exc:
                outcomes.append(exc.code().name)

    threads = [threading.Thread(target=load) for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(2)
    os.kill(sorted(pids)[0], signal.SIGKILL)
    killed_at = len(outcomes)
    time.sleep(10)
    stop.set()
    for t in threads:
        t.join()
    after = outcomes[killed_at:]
    errors = [o for o in after if o != "ok"]
    print(f"after the kill: {after.count('ok')} answered, errors: {errors}")
    assert after.count("ok") > 20, after[-20:]
    # at most the dead replica's in-flight requests (4 clients) fail
    assert len(errors) <= 4, errors
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:  # Ray starts a replacement replica
        now = _replica_pids(20)
        if len(now) == 2 and sorted(pids)[0] not in now:
            break
        time.sleep(2)
    else:
        pytest.fail(f"no replacement replica: {now}")
