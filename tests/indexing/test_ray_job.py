"""The Ray Data indexing job builds the same collection as the single-process indexer.

Bulk: 2 000 real Wikipedia passages with the model-free ``debug`` strategy (fast on 2 cores);
real model: the first 100 of them with ``mean`` (MiniLM). Local Ray, one embedding actor.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("ray")

from embedsvc.cli import _index_into_engine  # noqa: E402
from embedsvc.collections.manager import CollectionManager  # noqa: E402
from embedsvc.config import ServiceConfig  # noqa: E402
from embedsvc.engine import Engine  # noqa: E402
from embedsvc.indexing.ray_job import RayIndexConfig, resolve_paths, run_ray_index  # noqa: E402

WIKI = Path("/work/shared/data/train/wiki_en/passages_part1.jsonl")
pytestmark = pytest.mark.skipif(not WIKI.is_file(), reason="wiki passages not available")


@pytest.fixture(scope="module")
def ray_local():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


def _write_shards(tmp_path: Path, n: int, shards: int) -> tuple[Path, Path]:
    """``n`` passages as one file (for the reference) and as ``shards`` files in a folder."""
    lines = WIKI.read_text().splitlines()[:n]
    single = tmp_path / "all.jsonl"
    single.write_text("\n".join(lines) + "\n")
    folder = tmp_path / "shards"
    folder.mkdir()
    per = -(-n // shards)
    for k in range(shards):
        part = lines[k * per : (k + 1) * per]
        (folder / f"part-{k:03d}.jsonl").write_text("\n".join(part) + "\n")
    return single, folder


def _reference(tmp_path: Path, file: Path, strategy: str) -> Path:
    data = tmp_path / "ref"
    engine = Engine(ServiceConfig(data_dir=data, preload_strategies=[]))
    try:
        engine.create_collection("c", strategy=strategy)
        _index_into_engine(engine, file, "c", 256)
    finally:
        engine.close()
    return data


def _dump(data_dir: Path) -> tuple[dict, np.ndarray, list[str]]:
    import sqlite3

    with CollectionManager(data_dir) as manager:
        coll = manager.get("c")
        meta = {k: getattr(coll, k) for k in ("strategy", "output_kind", "dim", "index_kind")}
    conn = sqlite3.connect(data_dir / "c" / "docs.sqlite")
    rows = conn.execute("SELECT id, text, metadata, vector FROM docs ORDER BY id").fetchall()
    conn.close()
    docs = {r[0]: (r[1], json.loads(r[2])) for r in rows}
    vectors = np.stack([np.frombuffer(r[3], dtype=np.float32) for r in rows])
    return {"meta": meta, "docs": docs}, vectors, [r[0] for r in rows]


def _search(data_dir: Path, queries: list[str]) -> list[list[str]]:
    engine = Engine(ServiceConfig(data_dir=data_dir, preload_strategies=[]))
    try:
        return [[h.id for h in hits] for hits in engine.search("c", queries, top_k=10)]
    finally:
        engine.close()


def _compare(ref: Path, got: Path, atol: float) -> None:
    a, va, ids_a = _dump(ref)
    b, vb, ids_b = _dump(got)
    assert ids_a == ids_b
    assert a == b  # same settings, ids, texts and metadata
    np.testing.assert_allclose(va, vb, atol=atol)
    queries = ["American basketball player", "a river in Europe", "history of the church"]
    assert _search(ref, queries) == _search(got, queries)


def _job(folder: Path, strategy: str, **kw) -> RayIndexConfig:
    return RayIndexConfig(
        paths=[str(folder)], collection="c", strategy=strategy, progress=False, **kw
    )


def test_resolve_paths(tmp_path):
    _, folder = _write_shards(tmp_path, 30, 3)
    assert len(resolve_paths([str(folder)])) == 3
    assert len(resolve_paths([str(folder / "part-00*.jsonl")])) == 3
    with pytest.raises(Exception, match="no JSONL"):
        resolve_paths([str(tmp_path / "nothing-*.jsonl")])


def test_ray_equals_single_process_debug_and_resumes(tmp_path, ray_local):
    single, folder = _write_shards(tmp_path, 2000, 4)
    ref = _reference(tmp_path, single, "debug")
    data = tmp_path / "ray"
    counts = run_ray_index(
        _job(folder, "debug", batch_size=128, write_chunk=500),
        ServiceConfig(data_dir=data, preload_strategies=[]),
    )
    assert counts["received"] == 2000 and counts["inserted"] == 2000
    _compare(ref, data, atol=1e-6)

    # resume / idempotence: a re-run embeds nothing; a changed text is the only update
    again = run_ray_index(_job(folder, "debug"), ServiceConfig(data_dir=data))
    assert again == {"received": 2000, "inserted": 0, "updated": 0, "unchanged": 2000}
    shard = folder / "part-000.jsonl"
    rows = [json.loads(x) for x in shard.read_text().splitlines()]
    rows[0]["text"] = "A changed passage about rivers in Europe."
    shard.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    third = run_ray_index(_job(folder, "debug"), ServiceConfig(data_dir=data))
    assert third == {"received": 2000, "inserted": 0, "updated": 1, "unchanged": 1999}


@pytest.mark.slow
def test_ray_equals_single_process_real_model(tmp_path, ray_local):
    single, folder = _write_shards(tmp_path, 100, 2)
    ref = _reference(tmp_path, single, "mean")
    data = tmp_path / "ray"
    counts = run_ray_index(_job(folder, "mean", batch_size=32), ServiceConfig(data_dir=data))
    assert counts["inserted"] == 100
    _compare(ref, data, atol=1e-5)


def test_cli_index_engine_ray(tmp_path, ray_local):
    from typer.testing import CliRunner

    from embedsvc.cli import app

    _, folder = _write_shards(tmp_path, 300, 3)
    data = tmp_path / "cli"
    args = ["index", str(folder), "-c", "c", "--strategy", "debug", "--engine", "ray"]
    result = CliRunner().invoke(app, [*args, "--data-dir", str(data)])
    assert result.exit_code == 0, result.output
    counts = _last_json(result.stdout)
    assert counts == {"received": 300, "inserted": 300, "updated": 0, "unchanged": 0}
    bad = CliRunner().invoke(app, [*args[:-1], "spark", "--data-dir", str(data)])
    assert bad.exit_code == 2


def _last_json(output: str) -> dict:
    """The command's JSON line (the last line of stdout starting with a brace)."""
    lines = [x.strip() for x in output.splitlines() if x.strip().startswith("{")]
    assert lines, output[-2000:]
    return json.loads(lines[-1])


def test_a_job_on_an_owned_folder_is_refused_before_ray_starts(tmp_path):
    """One owner per data folder (issue 13): the driver takes the folder's lock before Ray."""
    import ray

    from embedsvc.collections.ownership import DataDirOwned

    _, folder = _write_shards(tmp_path, 10, 1)
    data = tmp_path / "owned"
    owner = CollectionManager(data)  # stands in for a server on this folder
    owner.owner_lock.record(grpc="127.0.0.1:50999")
    try:
        started = ray.is_initialized()
        with pytest.raises(DataDirOwned, match="--server 127.0.0.1:50999"):
            run_ray_index(_job(folder, "debug"), ServiceConfig(data_dir=data))
        assert ray.is_initialized() == started  # refused before any Ray work
        assert owner.list() == []
    finally:
        owner.close()
