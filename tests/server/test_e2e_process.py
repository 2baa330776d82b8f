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

pytestmark = pytest.mark.slow


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
