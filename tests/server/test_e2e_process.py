"""End to end: the real `embedsvc serve` process, the real MiniLM model, a real gRPC client.

Starts the server on a free port, indexes 1,000 real sentences through a client stream, searches,
deletes, stops the process (SIGTERM) and starts it again on the same data folder: the same
searches must return the same results. A second restart follows a kill -9, after more
acknowledged writes, which must all survive.
"""

from __future__ import annotations

import csv
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from embedsvc.client import EmbedsvcClient

STSB = Path(__file__).resolve().parents[3] / "shared/data/stsb/sts-dev.csv"

pytestmark = pytest.mark.slow


def _sentences(n: int) -> list[str]:
    out: list[str] = []
    with STSB.open(encoding="utf-8") as handle:
        for row in csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE):
            for sentence in (row[5], row[6]):
                if sentence not in out:
                    out.append(sentence)
            if len(out) >= n:
                return out[:n]
    return out


def _start(data_dir: Path, cache_dir: Path) -> tuple[subprocess.Popen, EmbedsvcClient]:
    env = dict(os.environ, EMBEDSVC_CACHE_DIR=str(cache_dir), HF_HUB_OFFLINE="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "embedsvc.cli", "serve", "--port", "0", "--data-dir", str(data_dir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    deadline = time.monotonic() + 120
    port = None
    lines = []
    while port is None:
        line = proc.stdout.readline()
        lines.append(line)
        if not line and proc.poll() is not None:
            raise RuntimeError("server exited:\n" + "".join(lines))
        match = re.search(r"listening on [\d.]+:(\d+)", line)
        if match:
            port = int(match.group(1))
        if time.monotonic() > deadline:
            proc.kill()
            raise TimeoutError("".join(lines))
    client = EmbedsvcClient(f"127.0.0.1:{port}", timeout=120)
    client.wait_ready(timeout=180)
    # keep draining the log so the pipe never fills up and blocks the server
    import threading

    threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()
    return proc, client


def _stop(proc: subprocess.Popen, client: EmbedsvcClient, sig: int = signal.SIGTERM) -> None:
    client.close()
    proc.send_signal(sig)
    assert proc.wait(timeout=60) is not None


def _ids(results) -> list[list[tuple[str, float]]]:
    return [[(h.id, round(h.score, 4)) for h in hits] for hits in results]


def test_serve_index_search_restart(tmp_path):
    from embedsvc.config import default_cache_dir

    data_dir, cache_dir = tmp_path / "indexes", default_cache_dir()
    sentences = _sentences(1000)
    docs = [{"id": f"s{i}", "text": t, "metadata": {"n": i % 4}} for i, t in enumerate(sentences)]
    queries = ["A man is playing a guitar.", "Stocks fell sharply.", "A dog runs in the park."]

    proc, client = _start(data_dir, cache_dir)
    try:
        assert client.health() == "SERVING"
        vectors = client.embed(["hello world", "good morning"])
        assert vectors.shape == (2, 384)
        client.create_collection("stsb", strategy="mean", index_kind="flat")
        counts = client.upsert("stsb", docs, chunk_size=100)
        assert (counts.received, counts.inserted) == (1000, 1000)
        before = client.search("stsb", queries, top_k=5)
        assert before[0][0].text and "guitar" in before[0][0].text.lower()
        filtered = client.search("stsb", queries, top_k=5, filter={"n": 2})
        assert all(h.metadata["n"] == 2 for h in filtered[0])
        assert client.delete("stsb", [before[1][0].id]) == 1
        after_delete = client.search("stsb", queries, top_k=5)
        assert before[1][0].id not in [h.id for h in after_delete[1]]
    finally:
        _stop(proc, client)

    proc, client = _start(data_dir, cache_dir)
    try:
        assert client.get_collection("stsb").document_count == 999
        assert _ids(client.search("stsb", queries, top_k=5)) == _ids(after_delete)
        # acknowledged writes survive a kill -9 (no graceful checkpoint)
        extra = [{"id": f"x{i}", "text": f"An extra sentence number {i}."} for i in range(50)]
        assert client.upsert("stsb", extra).inserted == 50
        reference = _ids(client.search("stsb", queries + ["extra sentence number 7"], top_k=5))
    finally:
        _stop(proc, client, signal.SIGKILL)

    proc, client = _start(data_dir, cache_dir)
    try:
        assert client.get_collection("stsb").document_count == 1049
        assert _ids(client.search("stsb", queries + ["extra sentence number 7"], 5)) == reference
    finally:
        _stop(proc, client)
