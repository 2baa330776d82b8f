"""End to end: the real `embedsvc serve` process, the real MiniLM model, a real gRPC client.

Starts the server on a free port, indexes 1,000 real sentences through a client stream, searches,
deletes, stops the process (SIGTERM) and starts it again on the same data folder: the same
searches must return the same results. A second restart follows a kill -9, after more
acknowledged writes, which must all survive.
"""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from embedsvc.testing import ServerProcess

STSB = Path(__file__).resolve().parents[3] / "shared/data/stsb/sts-dev.csv"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not STSB.is_file(), reason=f"{STSB} not available (../shared/data)"),
]


def _sentences(n: int) -> list[str]:
    out: dict[str, None] = {}
    with STSB.open(encoding="utf-8") as handle:
        for row in csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE):
            out.update(dict.fromkeys((row[5], row[6])))
            if len(out) >= n:
                break
    return list(out)[:n]


def _ids(results) -> list[list[tuple[str, float]]]:
    return [[(h.id, round(h.score, 4)) for h in hits] for hits in results]


def test_serve_index_search_restart(tmp_path):
    data_dir = tmp_path / "indexes"
    docs = [
        {"id": f"s{i}", "text": t, "metadata": {"n": i % 4}} for i, t in enumerate(_sentences(1000))
    ]
    queries = ["A man is playing a guitar.", "Stocks fell sharply.", "A dog runs in the park."]

    with ServerProcess(data_dir) as server:
        client = server.client
        assert client.health() == "SERVING"
        assert client.embed(["hello world", "good morning"]).shape == (2, 384)
        client.create_collection("stsb", strategy="mean", index_kind="flat")
        counts = client.upsert("stsb", docs, chunk_size=100)
        assert (counts.received, counts.inserted) == (1000, 1000)
        before = client.search("stsb", queries, top_k=5)
        assert "guitar" in before[0][0].text.lower()
        filtered = client.search("stsb", queries, top_k=5, filter={"n": 2})
        assert filtered[0] and all(h.metadata["n"] == 2 for h in filtered[0])
        assert client.delete("stsb", [before[1][0].id]) == 1
        after_delete = client.search("stsb", queries, top_k=5)
        assert before[1][0].id not in [h.id for h in after_delete[1]]
        assert server.stop() == 0, server.tail()

    with ServerProcess(data_dir) as server:
        client = server.client
        assert client.get_collection("stsb").document_count == 999
        assert _ids(client.search("stsb", queries, top_k=5)) == _ids(after_delete)
        # acknowledged writes survive a kill -9 (no graceful checkpoint)
        extra = [{"id": f"x{i}", "text": f"An extra sentence number {i}."} for i in range(50)]
        assert client.upsert("stsb", extra).inserted == 50
        probe = [*queries, "extra sentence number 7"]
        reference = _ids(client.search("stsb", probe, top_k=5))
        server.kill()

    with ServerProcess(data_dir) as server:
        assert server.client.get_collection("stsb").document_count == 1049
        assert _ids(server.client.search("stsb", probe, top_k=5)) == reference


def test_select_context_and_generate_on_a_real_server(tmp_path):
    """The RAG surface of a real process: Adaptive-k over a MiniLM collection, then SmolLM2
    generation grounded on that context, plain and with the DReSD drafter (token-identical)."""
    import json
    import os
    import shutil
    import subprocess
    import sys
    import uuid

    from embedsvc.rag.datastore import datastore_root

    corpus = tmp_path / "corpus.json"
    corpus.write_text(
        json.dumps(
            [
                {"instruction": "Name a fast animal.", "input": "", "output": "A cheetah."},
                {"instruction": "What do dogs like?", "input": "", "output": "Dogs like walks."},
            ]
        )
    )
    name = f"e2e-{uuid.uuid4().hex[:8]}"  # the server resolves datastores in the user cache
    build = [sys.executable, "-m", "embedsvc.cli", "datastore", "build", name]
    subprocess.run(
        [*build, "--corpus", str(corpus), "--form", "ood", "--max-seq-tokens", "64"],
        check=True,
        capture_output=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    try:
        with ServerProcess(tmp_path / "indexes") as server:
            client = server.client
            client.create_collection("kb", strategy="mean", index_kind="flat")
            docs = [{"id": f"s{i}", "text": t} for i, t in enumerate(_sentences(300))]
            docs.append({"id": "dog", "text": "Dogs love long walks in the park every day."})
            client.upsert("kb", docs)
            picked = client.select_context("kb", "What do dogs love to do?", pool_size=100)
            assert picked.pool_size == 100 and picked.strategy == "mean"
            assert picked.k == len(picked.passages) == picked.cut_index + 1 + 5
            assert picked.passages[0].id == "dog"
            assert picked.total_tokens == sum(p.token_count for p in picked.passages) > 0

            ask = [{"role": "user", "content": "What do dogs like?"}]
            context = {"collection": "kb", "buffer": 1}
            plain = list(client.generate(ask, context=context, max_new_tokens=10))
            drafted = list(
                client.generate(
                    ask, context=context, max_new_tokens=10, drafter="dresd", datastore=name
                )
            )
            tokens = [t for m in plain for t in m.token_ids]
            assert 0 < len(tokens) == plain[-1].stats.new_tokens <= 10
            assert [t for m in drafted for t in m.token_ids] == tokens
            assert plain[0].context[0].id == "dog"
            stats = drafted[-1].stats
            assert stats.drafter == "dresd" and stats.target_calls == len(drafted) - 1
            assert server.stop() == 0, server.tail()
    finally:
        shutil.rmtree(datastore_root() / name, ignore_errors=True)
