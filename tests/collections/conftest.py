"""Collection tests run over both backends: FAISS (files in the data folder) and Milvus (a
milvus-lite 2.5 server on loopback, started once per session; skipped without the extra)."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from embedsvc.collections import CollectionManager
from embedsvc.config import MilvusConfig

BACKENDS = ["faiss", "milvus"]
_prefixes = itertools.count()


def milvus_available() -> bool:
    try:
        import milvus_lite.server  # noqa: F401
        import pymilvus  # noqa: F401
    except Exception:  # noqa: BLE001 - ImportError, or milvus-lite's own import-time failures
        return False
    return True


@pytest.fixture(scope="session")
def milvus_server(tmp_path_factory):
    if not milvus_available():
        pytest.skip("the milvus extra (pymilvus, milvus-lite) is not installed")
    from embedsvc.testing import MilvusLiteServer

    with MilvusLiteServer(tmp_path_factory.mktemp("milvus")) as server:
        yield server


@pytest.fixture(params=BACKENDS)
def backend(request) -> str:
    if request.param == "milvus":
        request.getfixturevalue("milvus_server")
    return request.param


@pytest.fixture
def milvus_config(request) -> MilvusConfig:
    """This test's own collection namespace on the shared server (a prefix per test)."""
    server = request.getfixturevalue("milvus_server")
    return MilvusConfig(uri=server.uri, collection_prefix=f"t{next(_prefixes)}_")


@pytest.fixture
def open_manager(request, backend):
    """``open_manager(path)``: a manager whose Milvus collections live in this test's
    namespace (the same one for every manager of the test, so reopening finds them)."""
    config = request.getfixturevalue("milvus_config") if backend == "milvus" else None
    opened: list[CollectionManager] = []

    def open_(path: Path) -> CollectionManager:
        manager = CollectionManager(path, milvus=config)
        opened.append(manager)
        return manager

    yield open_
    for manager in opened:
        manager.close()
