"""Honest health and errors when the data folder cannot be written: a read-only mount and a full
disk, on a small tmpfs the test mounts itself (tests and CI run as root here), so every error is
the kernel's and SQLite's own. Where mounting is refused the tests skip and say so.

What must hold: ``CollectionService`` health is NOT_SERVING with the reason (log and HTTP
``/health``) while ``EmbeddingService`` and the server stay SERVING; searches keep working on a
read-only mount (SQLite WAL stores open immutable there); writes answer FAILED_PRECONDITION
(read-only) or RESOURCE_EXHAUSTED (full) with a message that says what to do, never INTERNAL;
and once space is freed, writes work again and health turns back to SERVING by itself.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import subprocess
import time
from pathlib import Path

import grpc
import httpx
import pytest

from embedsvc.client import EmbedsvcClient
from embedsvc.server import create_server
from tests.server.conftest import make_config

COLLECTIONS = "embedsvc.v1.CollectionService"
EMBEDDINGS = "embedsvc.v1.EmbeddingService"


def _mount(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["mount", *args], capture_output=True, text=True, timeout=30)


@pytest.fixture
def small_fs(tmp_path) -> Path:
    """A 2 MiB tmpfs at ``tmp_path/fs``, unmounted at the end."""
    point = tmp_path / "fs"
    point.mkdir()
    done = _mount("-t", "tmpfs", "-o", "size=2m", "tmpfs", str(point))
    if done.returncode != 0:
        pytest.skip(
            "cannot mount a tmpfs here ("
            + (done.stderr.strip() or f"exit {done.returncode}")
            + "): the read-only and full-disk tests need root (or CAP_SYS_ADMIN) to mount one"
        )
    yield point
    _mount("-o", "remount,rw", str(point))
    subprocess.run(["umount", "-l", str(point)], capture_output=True, timeout=30)


@contextlib.contextmanager
def _server(data_dir: Path, tmp_path: Path, **overrides):
    service, port = create_server(make_config(tmp_path, data_dir=data_dir, **overrides))
    service.start()
    client = EmbedsvcClient(f"127.0.0.1:{port}", timeout=30)
    client.wait_ready(timeout=60)
    try:
        yield service, client
    finally:
        client.close()
        service.stop(grace=1)


def _code(call) -> grpc.StatusCode:
    try:
        call()
    except grpc.RpcError as exc:
        _code.details = exc.details()
        return exc.code()
    return grpc.StatusCode.OK


def _health_detail(service) -> dict:
    response = httpx.get(f"http://127.0.0.1:{service.http_port}/health")
    assert response.status_code == 200, response.text
    return response.json()


def _wait_for(predicate, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return predicate()


DOCS = [
    {"id": str(i), "text": f"passage {i} about topic {i}", "metadata": {"i": i}} for i in range(5)
]


def test_read_only_data_folder(small_fs, tmp_path, caplog):
    data_dir = small_fs / "indexes"
    with _server(data_dir, tmp_path) as (_, client):
        client.create_collection("c", strategy="debug")
        client.upsert("c", DOCS)
    remount = _mount("-o", "remount,ro", str(small_fs))
    assert remount.returncode == 0, remount.stderr
    caplog.set_level(logging.WARNING)
    with _server(data_dir, tmp_path) as (service, client):
        # health: the collection service is down with a reason, embedding and the server are up
        assert client.health(COLLECTIONS) == "NOT_SERVING"
        assert client.health(EMBEDDINGS) == "SERVING"
        assert client.health() == "SERVING"
        detail = _health_detail(service)
        reason = detail["services"][COLLECTIONS]["reason"]
        assert "cannot be written" in reason and "Read-only file system" in reason, detail
        assert any("NOT_SERVING" in r.getMessage() for r in caplog.records), "logged too"
        assert client.embed(["still embeds"], strategy="debug").shape == (1, 32)
        # reads work: the stores open immutable (WAL needs -shm/-wal files it cannot create)
        hits = client.search("c", ["passage 3 about topic 3"], top_k=5, filter={"i": 3})
        assert [h.id for h in hits[0]] == ["3"]
        assert client.get_collection("c").document_count == 5
        assert [c.name for c in client.list_collections()] == ["c"]
        # writes: FAILED_PRECONDITION saying what is wrong, never INTERNAL
        writes = {
            "upsert": lambda: client.upsert("c", [{"id": "9", "text": "new"}]),
            "delete": lambda: client.delete("c", ["1"]),
            "create": lambda: client.create_collection("d", strategy="debug"),
            "drop": lambda: client.delete_collection("c"),
        }
        for what, call in writes.items():
            assert _code(call) == grpc.StatusCode.FAILED_PRECONDITION, (what, _code.details)
            assert "cannot be written" in _code.details and "remount" in _code.details, what
        assert client.get_collection("c").document_count == 5


def _fill(directory: Path) -> Path:
    filler = directory / "filler"
    with open(filler, "wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
    return filler


def test_full_disk(small_fs, tmp_path):
    data_dir = small_fs / "indexes"
    with _server(data_dir, tmp_path, storage_check_interval_s=0.2) as (service, client):
        client.create_collection("c", strategy="debug")
        client.upsert("c", DOCS)
        assert client.health(COLLECTIONS) == "SERVING"
        filler = _fill(small_fs)
        big = [{"id": "big", "text": "word " * 18_000}]  # needs new pages in the WAL
        assert _code(lambda: client.upsert("c", big)) == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "is full" in _code.details and "free space" in _code.details
        create = _code(lambda: client.create_collection("d", strategy="debug"))
        assert create == grpc.StatusCode.RESOURCE_EXHAUSTED, _code.details
        # a delete may still fit in the WAL's free pages; either way, no INTERNAL
        assert _code(lambda: client.delete("c", ["0"])) in (
            grpc.StatusCode.OK,
            grpc.StatusCode.RESOURCE_EXHAUSTED,
        )
        assert client.search("c", ["passage 2 about topic 2"], top_k=1)[0][0].id == "2"
        assert _wait_for(lambda: client.health(COLLECTIONS) == "NOT_SERVING")
        assert client.health(EMBEDDINGS) == "SERVING" and client.health() == "SERVING"
        assert "is full" in _health_detail(service)["services"][COLLECTIONS]["reason"]
        assert client.get_collection("c").document_count in (4, 5), "the failed write left none"
        assert [c.name for c in client.list_collections()] == ["c"], "no half-made collection"
        # space back: writes work again and health recovers by itself
        filler.unlink()
        assert client.upsert("c", big).inserted == 1
        client.create_collection("d", strategy="debug")
        assert _wait_for(lambda: client.health(COLLECTIONS) == "SERVING")
        assert "services" not in _health_detail(service)
