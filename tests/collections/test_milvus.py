"""The Milvus backend beyond the shared collection tests: safe filter expressions (no
injection, unsupported filters refused), FAISS-equal scores, index kinds milvus-lite builds or
refuses, collections shared by every process on one Milvus, and kill -9 durability.

All against a real Milvus engine: milvus-lite 2.5 (Milvus's C++ segcore/knowhere), on loopback
or embedded. Skipped without the ``milvus`` extra.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from embedsvc.collections import CollectionManager
from embedsvc.collections.milvus import embedsvc_name, milvus_name
from embedsvc.collections.milvus_filter import filter_expression
from embedsvc.config import MilvusConfig
from embedsvc.errors import FailedPrecondition, InvalidArgument
from tests.collections.test_collections import D, as_tuples, binary, dense, fill, unit

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def manager(tmp_path: Path, milvus_config: MilvusConfig):
    m = CollectionManager(tmp_path / "data", milvus=milvus_config)
    yield m
    m.close()


def test_names_map_one_to_one() -> None:
    names = ["a", "a_b", "a-b", "a.b", "a__b", "a_d", "_-.", "x" * 64]
    mapped = [milvus_name("embedsvc_", n) for n in names]
    assert len(set(mapped)) == len(names)
    assert all(m.replace("_", "").isalnum() for m in mapped)
    assert [embedsvc_name("embedsvc_", m) for m in mapped] == names
    assert embedsvc_name("embedsvc_", "other_collection") is None


def test_filter_expressions_are_built_from_typed_values() -> None:
    assert filter_expression({"lang": "en", "src.y": 2002, "ok": True, "w": 0.5}) == (
        'metadata["lang"] == "en" and metadata["src"]["y"] == 2002 and '
        'metadata["ok"] == true and metadata["w"] == 0.5'
    )
    assert filter_expression({"q": 'a" or id != "'}) == r'metadata["q"] == "a\" or id != \""'
    assert filter_expression({"q": "\\"}) == r'metadata["q"] == "\\"'
    for bad, match in [
        ({"k": None}, "null"),
        ({"k": [1]}, "list"),
        ({"k": {"a": 1}}, "object"),
        ({'k"]': 1}, "bad filter key"),
        ({"a..b": 1}, "bad filter key"),
        ({"k": 2**63}, "64-bit"),
        ({"k": float("nan")}, "finite"),
        ({"k": object()}, "must be a string"),
        ({"k": "two\nlines"}, "line break"),
    ]:
        with pytest.raises(InvalidArgument, match=match):
            filter_expression(bad)


def test_injection_through_values_and_ids_changes_nothing(manager: CollectionManager) -> None:
    col = manager.create("c", "s", "dense", D, "flat", backend="milvus")
    x = fill(col, 30)
    evil = ['en" or metadata["lang"] != "', "x' or id != '", 'doc-1" or id != "', "\\", '\\"']
    for value in evil:
        assert col.search(dense(x[:1]), 10, filter={"lang": value}) == [[]]
    assert col.delete(evil) == 0 and col.count == 30  # pymilvus' own ids= would splice these
    assert col.get(evil) == [None] * len(evil)
    col.upsert(evil, ["t"] * len(evil), [{"lang": v} for v in evil], dense(unit(len(evil), 5)))
    for value in evil:
        hits = col.search(dense(x[:1]), 40, filter={"lang": value})[0]
        assert [h.id for h in hits] == [value]
    assert col.delete(evil) == len(evil) and col.count == 30


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    values=st.lists(
        st.text(
            st.characters(blacklist_categories=["Cs"], blacklist_characters="\r\n"), max_size=12
        ),
        min_size=1,
        max_size=4,
        unique=True,
    )
)
def test_any_string_value_matches_exactly_itself(manager: CollectionManager, values) -> None:
    """Any text without line breaks (control characters, quotes, backslashes, non-BMP)."""
    name = "h"
    if name in manager.list():
        manager.delete(name)
    col = manager.create(name, "s", "dense", D, "flat", backend="milvus")
    ids = [f"v{i}" for i in range(len(values))]
    col.upsert(ids, ["t"] * len(ids), [{"k": v} for v in values], dense(unit(len(ids), 1)))
    for id_, value in zip(ids, values, strict=True):
        hits = col.search(dense(unit(1, 2)), 10, filter={"k": value})[0]
        assert [h.id for h in hits] == [id_], value
    manager.delete(name)


@pytest.mark.parametrize("kind", ["flat", "ivf", "binary"])
def test_scores_equal_the_faiss_backend(tmp_path: Path, milvus_config, kind: str) -> None:
    output = "binary" if kind == "binary" else "dense"
    results = {}
    for backend in ("faiss", "milvus"):
        m = CollectionManager(tmp_path / backend, milvus=milvus_config)
        col = m.create("c", "s", output, D, kind, {"nprobe": 4096}, backend=backend)
        x = fill(col, 300, kind=output)
        q = binary(x[:25]) if output == "binary" else dense(unit(25, seed=9))
        results[backend] = (col.search(q, 10), col.search(q, 10, {"lang": "fr", "parity": 1}))
        m.close()
    for faiss_rows, milvus_rows in zip(results["faiss"], results["milvus"], strict=True):
        for f, m in zip(faiss_rows, milvus_rows, strict=True):
            assert [h.score for h in m] == pytest.approx([h.score for h in f], abs=1e-5)
            # the same ids, up to the order of equal scores (Hamming scores tie often)
            assert {(h.id, round(h.score, 4)) for h in m} == {
                (h.id, round(h.score, 4)) for h in f
            } or kind == "binary"
    if kind != "binary":
        assert as_tuples(results["faiss"][0]) == as_tuples(results["milvus"][0])


def test_lite_refuses_cluster_index_types_clearly(manager: CollectionManager) -> None:
    for kind, config in [("hnsw", None), ("ivfpq", None), ("flat", {"milvus_index_type": "HNSW"})]:
        with pytest.raises(FailedPrecondition, match="cluster"):
            manager.create("c", "s", "dense", D, kind, config, backend="milvus")
        assert "c" not in manager.list()  # nothing half-made stays behind
    col = manager.create("c", "s", "dense", D, "flat", {"milvus_index_type": "IVF_FLAT"}, "milvus")
    assert col.describe()["milvus_index_type"] == "IVF_FLAT"
    with pytest.raises(InvalidArgument, match="Milvus collections only"):
        manager.create("d", "s", "dense", D, "flat", {"milvus_index_type": "HNSW"})


def test_payloads_limits_and_get(manager: CollectionManager) -> None:
    col = manager.create("c", "s", "dense", D, "flat", backend="milvus")
    emb = dense(unit(2))
    emb.payloads = [b"\x00\x01payload", b""]
    col.upsert(["a", "b"], ["ta", "tb"], [{"k": 1}, None], emb)
    assert col.payloads(["a", "b", "zz"]) == {"a": b"\x00\x01payload"}
    a, missing = col.get(["a", "zz"])
    assert (a.id, a.text, a.metadata, missing) == ("a", "ta", {"k": 1}, None)
    with pytest.raises(InvalidArgument, match="65,535 bytes"):
        col.upsert(["big"], ["x" * 70_000], None, dense(unit(1)))
    with pytest.raises(InvalidArgument, match="512 bytes"):
        col.upsert(["i" * 600], ["t"], None, dense(unit(1)))


def test_every_process_on_one_milvus_sees_the_same_collections(
    tmp_path: Path, milvus_config
) -> None:
    """Two replicas (two data folders, one Milvus): the collection is Milvus's, not a folder's."""
    a = CollectionManager(tmp_path / "a", milvus=milvus_config)
    b = CollectionManager(tmp_path / "b", milvus=milvus_config)
    col = a.create("shared", "s", "dense", D, "flat", backend="milvus")
    x = fill(col, 40)
    assert b.list() == ["shared"]
    assert [r[0].id for r in b.get("shared").search(dense(x[:3]), 1)] == ["doc-0", "doc-1", "doc-2"]
    b.get("shared").delete(["doc-0"])
    assert a.get("shared").count == 39  # Strong consistency: the other replica's write is seen
    assert not list((tmp_path / "a").glob("shared*"))  # no local copy
    a.close()
    b.close()


@pytest.mark.usefixtures("milvus_server")  # skips without the extra
def test_kill_9_loses_no_acknowledged_write(tmp_path: Path) -> None:
    """Embedded milvus-lite: the owning process and its milvus child are both killed (-9) right
    after acknowledgements; everything acknowledged is there on reopen."""
    child = textwrap.dedent(
        f"""
        import os, signal, sys
        import numpy as np
        sys.path.insert(0, {str(ROOT)!r})
        from embedsvc.collections import CollectionManager
        from embedsvc.strategies.base import Embedding
        m = CollectionManager({str(tmp_path)!r})
        col = m.create("c", "s", "dense", {D}, "ivf", backend="milvus")
        rng = np.random.default_rng(0)
        for b in range(6):
            x = rng.standard_normal((50, {D})).astype("float32")
            col.upsert([f"b{{b}}-{{i}}" for i in range(50)], ["t"] * 50, None,
                       Embedding("dense", x, {D}))
            print("ack", b, flush=True)
        col.delete(["b0-0"])
        col.upsert(["b1-1"], ["updated"], [{{"v": 2}}], Embedding("dense", x[:1], {D}))
        print("ack delete+update", flush=True)
        os.killpg(0, signal.SIGKILL)  # this process and milvus-lite's, at once
        """
    )
    proc = subprocess.run(
        [sys.executable, "-W", "ignore", "-c", child],
        capture_output=True,
        text=True,
        timeout=120,
        start_new_session=True,
    )
    assert proc.returncode == -9, proc.stderr[-2000:]
    assert proc.stdout.count("ack") == 7
    with CollectionManager(tmp_path) as m:
        col = m.get("c")
        assert col.count == 299
        assert col.get(["b0-0"]) == [None] and col.get(["b1-1"])[0].text == "updated"
        rng = np.random.default_rng(0)
        for b in range(6):
            x = rng.standard_normal((50, D)).astype("float32")
            top = [row[0].id for row in col.search(dense(x), 1)]
            expected = [f"b{b}-{i}" for i in range(50)]
            assert sum(t == e for t, e in zip(top, expected, strict=True)) >= 48, b


@pytest.mark.usefixtures("milvus_server")  # skips without the extra
def test_embedded_file_is_owned_with_the_data_folder(tmp_path: Path) -> None:
    with CollectionManager(tmp_path) as m:
        assert m.list() == [] and not (tmp_path / "milvus.db").exists()  # nothing started
        m.create("c", "s", "dense", D, "flat", backend="milvus")
        assert (tmp_path / "milvus.db").exists() and m.list() == ["c"]
    with CollectionManager(tmp_path) as m:
        assert m.list() == ["c"] and m.get("c").describe()["backend"] == "milvus"
