"""The load test's CI form: 64 concurrent clients mixing Embed, Search and streaming Upsert for
30 s against a real ``embedsvc serve`` process (model-free ``debug`` strategy, HNSW collection
over a fixed id pool, so every upsert after the prefill is an update with tombstones).

Zero errors other than RESOURCE_EXHAUSTED (the deliberately small queue's answer to overload),
server RSS bounded, health SERVING throughout, a clean SIGTERM exit, and the collection still
holding exactly the id pool. The long form is ``benchmarks/load_test.py`` (minutes, RSS over
time printed); both run the same code, loaded here from the benchmarks folder.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

LOAD_TEST = Path(__file__).resolve().parents[2] / "benchmarks" / "load_test.py"


def _load_module():
    spec = importlib.util.spec_from_file_location("embedsvc_load_test", LOAD_TEST)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their module through sys.modules
    spec.loader.exec_module(module)
    return module


@pytest.mark.timeout(240)
def test_64_clients_mixed_load_bounded_memory(tmp_path):
    load = _load_module()
    cfg = load.LoadConfig(clients=64, seconds=30.0, warmup_s=8.0, id_pool=2000, seed=1)
    result = load.run_load(tmp_path / "indexes", cfg, log=lambda _msg: None)
    summary = result.summary()

    assert not result.errors, f"errors other than RESOURCE_EXHAUSTED: {dict(result.errors)}"
    for op in ("embed", "search", "upsert"):
        assert result.ok[op] > 0, f"no successful {op}: {summary}"
    assert result.total_ok >= 300, f"too little work done to mean anything: {summary}"
    assert result.rss_bounded, (
        f"server RSS grew: {result.rss_after_warmup_mib:.0f} MiB after warm-up, "
        f"{result.rss_final_mib:.0f} MiB at the end (limit {result.rss_limit_mib:.0f}): "
        f"{summary['rss_mib']}"
    )
    assert result.not_serving_samples == 0, "health left SERVING under load"
    assert result.exit_code == 0, "SIGTERM after the load did not exit cleanly"
    assert result.final_count == cfg.id_pool
