"""Collections: document store + index + durability, on small synthetic vectors (no model).

Tests taking the ``backend`` fixture run on both backends (``conftest.py``): FAISS + SQLite in
the data folder, and Milvus (milvus-lite 2.5 on loopback; index kinds it builds: flat, ivf,
binary). Tests of FAISS internals (snapshots, generations, tombstones) run on FAISS only.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest

from embedsvc.collections import CollectionManager
from embedsvc.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from embedsvc.strategies.base import Embedding

D = 32
ROOT = Path(__file__).resolve().parents[2]


def unit(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((20, D))
    x = centres[rng.integers(0, 20, n)] + 0.5 * rng.standard_normal((n, D))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def dense(x: np.ndarray) -> Embedding:
    return Embedding("dense", x, D)


def binary(x: np.ndarray) -> Embedding:
    return Embedding("binary", np.packbits(x > 0, axis=1), D)


def fill(col, n: int, seed: int = 0, kind: str = "dense") -> np.ndarray:
    x = unit(n, seed)
    ids = [f"doc-{i}" for i in range(n)]
    metas = [
        {"parity": i % 2, "lang": "en" if i % 3 else "fr", "src": {"y": 2000 + i % 4}}
        for i in range(n)
    ]
    col.upsert(
        ids, [f"text {i}" for i in range(n)], metas, binary(x) if kind == "binary" else dense(x)
    )
    return x


def as_tuples(results) -> list[list[tuple[str, float]]]:
    return [[(h.id, round(h.score, 5)) for h in row] for row in results]


#: the index kind a test asks for where the kind does not matter, per backend: milvus-lite
#: builds FLAT, IVF_FLAT and BIN_FLAT only (HNSW is passed through for a cluster)
GRAPH = {"faiss": "hnsw", "milvus": "ivf"}


@pytest.fixture
def manager(tmp_path: Path, open_manager):
    return open_manager(tmp_path / "data")


def create(m: CollectionManager, backend: str, name: str, kind: str, output: str = "dense", **kw):
    return m.create(name, "mean", output, D, kind, kw or None, backend=backend)


def test_upsert_counts_and_idempotence(manager: CollectionManager, backend: str) -> None:
    col = create(manager, backend, "c1", "flat")
    x = unit(5)
    ids, texts = [f"d{i}" for i in range(5)], [f"t{i}" for i in range(5)]
    assert tuple(col.upsert(ids, texts, None, dense(x))) == (5, 0)
    again = col.upsert(ids, texts, None, dense(x))
    assert (again.inserted, again.updated, again.unchanged) == (0, 0, 5)
    if backend == "faiss":
        gen = col.describe()["generation"]
        assert col.describe()["generation"] == gen  # the no-op wrote nothing
    res = col.upsert(["d0", "d9"], ["t0", "new"], [{"a": 1}, None], dense(unit(2, 9)))
    assert (res.inserted, res.updated, res.unchanged) == (1, 1, 0)
    assert col.count == 6 and col.describe()["index_count"] == 6


def test_update_changes_text_and_vector(manager: CollectionManager, backend: str) -> None:
    col = create(manager, backend, "c", GRAPH[backend])
    x = fill(col, 50)
    new = unit(1, seed=42)
    col.upsert(["doc-3"], ["changed"], [{"k": "v"}], dense(new))
    hit = col.search(dense(new), 1)[0][0]
    assert (hit.id, hit.text, hit.metadata) == ("doc-3", "changed", {"k": "v"})
    assert hit.score == pytest.approx(1.0, abs=1e-5)
    assert "doc-3" not in [h.id for h in col.search(dense(x[3:4]), 3)[0]]
    assert col.count == 50


def test_delete(manager: CollectionManager, backend: str) -> None:
    col = create(manager, backend, "c", "ivf")
    x = fill(col, 100)
    assert col.delete(["doc-1", "doc-2", "nope", "doc-1"]) == 2
    assert col.count == 98 and col.get(["doc-1", "doc-5"])[0] is None
    ids = {h.id for row in col.search(dense(x[:5]), 10) for h in row}
    assert not ids & {"doc-1", "doc-2"}


def test_metadata_filter(manager: CollectionManager, backend: str) -> None:
    col = create(manager, backend, "c", "flat")
    x = fill(col, 60)
    col.upsert(["flag"], ["f"], [{"parity": True, "none": None}], dense(unit(1, 3)))
    cases = [
        ({"parity": 1}, lambda m: m["parity"] == 1 and m["parity"] is not True),
        ({"lang": "fr"}, lambda m: m.get("lang") == "fr"),
        ({"lang": "en", "parity": 0}, lambda m: m.get("lang") == "en" and m["parity"] == 0),
        ({"src.y": 2002}, lambda m: m.get("src", {}).get("y") == 2002),
        ({"parity": True}, lambda m: m["parity"] is True),
        ({"none": None}, lambda m: "none" in m),
    ]
    if backend == "milvus":  # Milvus expressions cannot compare a JSON key with null
        with pytest.raises(InvalidArgument, match="null"):
            col.search(dense(x[:1]), 5, filter=cases.pop()[0])
    for flt, check in cases:
        rows = col.search(dense(x[:4]), 10, filter=flt)
        assert all(rows) and all(check(h.metadata) for row in rows for h in row), flt
    assert col.search(dense(x[:2]), 5, filter={"lang": "de"}) == [[], []]
    with pytest.raises(InvalidArgument, match="filter"):
        col.search(dense(x[:1]), 5, filter={"lang": object()})


@pytest.mark.parametrize("kind", ["flat", "ivf", "hnsw", "ivfpq", "binary"])
def test_restart_returns_identical_results(
    tmp_path: Path, kind: str, backend: str, open_manager
) -> None:
    if backend == "milvus" and kind in ("hnsw", "ivfpq"):
        pytest.skip("milvus-lite builds FLAT/IVF_FLAT/BIN_FLAT only (test_milvus.py checks it)")
    output = "binary" if kind == "binary" else "dense"
    m = open_manager(tmp_path)
    col = m.create("c", "s", output, D, kind, {"pq_min_train_points": 200}, backend=backend)
    x = fill(col, 400, kind=output)
    col.delete(["doc-7"])
    q = binary(x[:20]) if output == "binary" else dense(x[:20])
    before = as_tuples(col.search(q, 5))
    filtered = as_tuples(col.search(q, 5, {"lang": "fr"}))
    m.close()
    m2 = open_manager(tmp_path)
    col2 = m2.get("c")
    if backend == "faiss":
        assert col2.describe()["snapshot_generation"] == col2.describe()["generation"]
    assert as_tuples(col2.search(q, 5)) == before
    assert as_tuples(col2.search(q, 5, {"lang": "fr"})) == filtered
    m2.close()


def test_reopen_without_close_finds_every_acknowledged_doc(tmp_path: Path) -> None:
    m = CollectionManager(tmp_path / "a")
    col = m.create("c", "s", "dense", D, "hnsw")
    x = fill(col, 200)
    col.checkpoint()  # snapshot at some generation, then more writes it does not hold
    col.delete(["doc-0", "doc-1"])
    col.upsert(["doc-5", "late"], ["upd", "late"], None, dense(unit(2, 77)))
    shutil.copytree(tmp_path / "a", tmp_path / "b")  # the disk as a crash would leave it
    m2 = CollectionManager(tmp_path / "b")
    col2 = m2.get("c")
    assert col2.count == 199 and col2.describe()["index_count"] == 199
    assert col2.get(["doc-0", "late"])[0] is None and col2.get(["late"])[0].text == "late"
    hits = col2.search(dense(x[10:60]), 1)
    assert [row[0].id for row in hits] == [f"doc-{i}" for i in range(10, 60)]
    assert col2.search(dense(unit(2, 77)[:1]), 1)[0][0].id == "doc-5"
    m2.close()
    # a broken snapshot is not fatal: the index is rebuilt from the store
    (tmp_path / "b" / "c" / "index.faiss").write_bytes(b"garbage")
    (tmp_path / "b" / "c" / "index.json").write_text(json.dumps({"generation": 1}))
    m3 = CollectionManager(tmp_path / "b")
    assert m3.get("c").search(dense(x[10:11]), 1)[0][0].id == "doc-10"
    m3.close()
    m.close()


def test_kill_9_loses_no_acknowledged_write(tmp_path: Path) -> None:
    child = textwrap.dedent(
        f"""
        import os, signal, sys
        import numpy as np
        sys.path.insert(0, {str(ROOT)!r})
        from embedsvc.collections import CollectionManager
        from embedsvc.strategies.base import Embedding
        m = CollectionManager({str(tmp_path)!r})
        col = m.create("c", "s", "dense", {D}, "ivf")
        rng = np.random.default_rng(0)
        for b in range(6):
            x = rng.standard_normal((50, {D})).astype("float32")
            col.upsert([f"b{{b}}-{{i}}" for i in range(50)], ["t"] * 50, None,
                       Embedding("dense", x, {D}))
            print("ack", b, flush=True)
            if b == 2:
                col.checkpoint()
        col.delete(["b0-0"])
        print("ack delete", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    proc = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=60)
    assert proc.returncode == -9, proc.stderr
    assert proc.stdout.count("ack") == 7
    m = CollectionManager(tmp_path)
    col = m.get("c")
    assert col.count == 299 and col.describe()["index_count"] == 299
    rng = np.random.default_rng(0)
    for b in range(6):
        x = rng.standard_normal((50, D)).astype("float32")
        top = [row[0].id for row in col.search(dense(x), 1)]
        expected = [f"b{b}-{i}" for i in range(50)]
        assert sum(t == e for t, e in zip(top, expected, strict=True)) >= 49 - (b == 0)
    m.close()


def test_concurrent_writers_and_readers(manager: CollectionManager, backend: str) -> None:
    col = create(manager, backend, "c", GRAPH[backend])
    fill(col, 50)
    errors: list[BaseException] = []

    def writer(w: int) -> None:
        try:
            for b in range(10):
                x = unit(10, seed=1000 * w + b)
                col.upsert([f"w{w}-{b}-{i}" for i in range(10)], ["t"] * 10, None, dense(x))
                if b % 3 == 0:
                    col.delete([f"w{w}-{b}-0"])
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    def reader() -> None:
        try:
            for i in range(40):
                rows = col.search(
                    dense(unit(4, seed=i)), 5, filter={"parity": 1} if i % 2 else None
                )
                assert all(len(r) == 5 for r in rows)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(3)]
    threads += [threading.Thread(target=reader) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert col.count == 50 + 3 * (100 - 4) == col.describe()["index_count"]


def test_hnsw_delete_via_tombstones(tmp_path: Path) -> None:
    manager = CollectionManager(tmp_path)
    col = manager.create("c", "mean", "dense", D, "hnsw")
    x = fill(col, 200)
    col.delete([f"doc-{i}" for i in range(0, 30)])
    assert col._index.tombstones == 30
    assert not {h.id for row in col.search(dense(x[:30]), 10) for h in row} & {
        f"doc-{i}" for i in range(30)
    }
    col.delete([f"doc-{i}" for i in range(30, 80)])  # > 25 % dead: compacted
    assert col._index.tombstones == 0 and col.describe()["index_count"] == 120
    assert col.search(dense(x[100:101]), 1)[0][0].id == "doc-100"
    manager.close()


def test_manager_names_and_errors(manager: CollectionManager, backend: str) -> None:
    for bad in ["", "a" * 65, "has space", "x/y", ".hidden", "é"]:
        with pytest.raises(InvalidArgument, match="collection name"):
            manager.create(bad, "s", "dense", D, "flat", backend=backend)
    manager.create("a-1_b.c", "s", "dense", D, "flat", backend=backend)
    for other in ("faiss", "milvus") if backend == "milvus" else ("faiss",):
        with pytest.raises(AlreadyExists):  # one name space across both backends
            manager.create("a-1_b.c", "s", "dense", D, "flat", backend=other)
    with pytest.raises(InvalidArgument, match="backend"):
        manager.create("b", "s", "dense", D, "flat", backend="annoy")
    with pytest.raises(NotFound, match="a-1_b.c"):
        manager.get("missing")
    with pytest.raises(FailedPrecondition, match="needs a strategy with binary output"):
        manager.create("b", "mean", "dense", D, "binary")
    with pytest.raises(FailedPrecondition, match="needs a strategy with dense output"):
        manager.create("b", "btr", "binary", D, "hnsw")
    with pytest.raises(InvalidArgument, match="unknown index kind"):
        manager.create("b", "s", "dense", D, "annoy")
    with pytest.raises(InvalidArgument, match="nprobe=0 is out of range: use 1..65536"):
        manager.create("b", "s", "dense", D, "ivf", {"nprobe": 0})
    assert manager.list() == ["a-1_b.c"]
    col = manager.get("a-1_b.c")
    with pytest.raises(FailedPrecondition, match="stores dense embeddings"):
        col.search(binary(unit(1)), 1)
    with pytest.raises(InvalidArgument, match="dimension"):
        col.upsert(["x"], ["t"], None, Embedding("dense", np.zeros((1, 8), np.float32), 8))
    with pytest.raises(InvalidArgument, match="twice"):
        col.upsert(["x", "x"], ["t", "t"], None, dense(unit(2)))
    manager.delete("a-1_b.c")
    assert manager.list() == []
    with pytest.raises(FailedPrecondition, match="closed or was deleted"):
        col.search(dense(unit(1)), 1)
    manager.create("a-1_b.c", "s", "dense", D, "flat", backend=backend)  # the name is free again
    desc = manager.get("a-1_b.c").describe()
    assert (desc["count"], desc["index_kind"], desc["strategy"], desc["dim"]) == (0, "flat", "s", D)
    assert desc["backend"] == backend
