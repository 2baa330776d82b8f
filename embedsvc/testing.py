"""Run a real ``embedsvc serve`` process: used by the end-to-end, fault and load tests and the
benchmarks, so each of them starts, waits for and kills the server the same way."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from embedsvc.client import EmbedsvcClient

_LISTENING = re.compile(r"listening on [\w.:\[\]-]+?:(\d+)(?:, http on [\w.:\[\]-]+?:(\d+))?")


class ServerProcess:
    """``with ServerProcess(data_dir) as server: server.client.embed(...)``.

    Binds free ports, waits until health says SERVING, keeps the last log lines for error
    messages, and stops with SIGTERM (graceful) or :meth:`kill` (SIGKILL, a crash).
    """

    def __init__(
        self,
        data_dir: Path,
        *args: str,
        env: dict[str, str] | None = None,
        ready_timeout: float = 300.0,
        cwd: Path | None = None,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.args = args
        self.cwd = cwd
        self.env = dict(os.environ, HF_HUB_OFFLINE="1", **(env or {}))
        self.ready_timeout = ready_timeout
        self.log: deque[str] = deque(maxlen=200)
        self.proc: subprocess.Popen | None = None
        self.port = self.http_port = 0
        self.client: EmbedsvcClient | None = None

    def start(self) -> ServerProcess:
        command = [
            sys.executable, "-m", "embedsvc.cli", "serve", "--port", "0", "--http-port", "0",
            "--data-dir", str(self.data_dir), *self.args,
        ]  # fmt: skip
        self.proc = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=self.env,
            cwd=self.cwd,
        )
        deadline = time.monotonic() + self.ready_timeout
        while not self.port:
            line = self.proc.stdout.readline()
            self.log.append(line)
            if not line and self.proc.poll() is not None:
                raise RuntimeError("server exited during start-up:\n" + self.tail())
            if match := _LISTENING.search(line):
                self.port = int(match.group(1))
                self.http_port = int(match.group(2) or 0)
            if time.monotonic() > deadline:
                self.kill()
                raise TimeoutError("server did not bind in time:\n" + self.tail())
        # keep draining the log so a full pipe never blocks the server
        threading.Thread(target=self._drain, daemon=True).start()
        self.client = EmbedsvcClient(f"127.0.0.1:{self.port}", timeout=120)
        while True:  # until SERVING, or the process exits (a failed warm-up), or time is up
            try:
                self.client.wait_ready(timeout=1.0)
                return self
            except TimeoutError:
                pass
            if self.proc.poll() is not None:
                time.sleep(0.5)  # let the drain thread read the last lines
                raise RuntimeError(f"server exited ({self.proc.returncode}):\n" + self.tail())
            if time.monotonic() > deadline:
                self.kill()
                raise TimeoutError("server not SERVING in time:\n" + self.tail())

    def _drain(self) -> None:
        for line in self.proc.stdout:
            self.log.append(line)

    def tail(self) -> str:
        return "".join(self.log)

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM: drain in-flight requests, checkpoint, exit. Returns the exit code."""
        return self._signal(signal.SIGTERM, timeout)

    def kill(self) -> int:
        """SIGKILL: no shutdown code runs, as in a crash or an OOM kill."""
        return self._signal(signal.SIGKILL, 30.0)

    def _signal(self, sig: int, timeout: float) -> int:
        if self.client is not None:
            self.client.close()
            self.client = None
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout=timeout)

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.kill()


@dataclass
class FaultReport:
    """What a kill -9 trial found after the restart."""

    acknowledged: int = 0
    messages_sent: int = 0
    present_unacknowledged: int = 0
    missing_acknowledged: list[str] = field(default_factory=list)
    unsearchable: list[str] = field(default_factory=list)
    torn_messages: list[list[str]] = field(default_factory=list)
    wrong_text: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (
            self.missing_acknowledged or self.unsearchable or self.torn_messages or self.wrong_text
        )


def kill_during_upserts(
    data_dir: Path,
    seed: int = 0,
    writers: int = 4,
    kill_after_s: float = 1.5,
    docs_per_message: int = 8,
    messages_per_stream: int = 3,
) -> FaultReport:
    """Stream upserts from ``writers`` threads, kill -9 the server, restart, and audit.

    Uses the model-free ``debug`` strategy so the trial measures storage, not the model.
    """
    import random

    import grpc

    rng = random.Random(seed)
    vocabulary = [f"w{i}" for i in range(5000)]
    env = {"EMBEDSVC_PRELOAD_STRATEGIES": '["debug"]'}
    sent: list[list[tuple[str, str]]] = []  # per stream message: (id, text)
    acknowledged: set[str] = set()
    lock, stop = threading.Lock(), threading.Event()

    server = ServerProcess(data_dir, env=env).start()
    if "faults" not in [c.name for c in server.client.list_collections()]:
        server.client.create_collection("faults", strategy="debug", index_kind="hnsw")
    target = f"127.0.0.1:{server.port}"

    def writer(w: int) -> None:
        client = EmbedsvcClient(target, timeout=30)
        local = random.Random(seed * 1000 + w)
        stream = 0
        while not stop.is_set():
            messages = [
                [
                    (
                        f"t{seed}-w{w}-s{stream}-m{m}-d{d}",
                        " ".join(local.choice(vocabulary) for _ in range(12)),
                    )
                    for d in range(docs_per_message)
                ]
                for m in range(messages_per_stream)
            ]
            with lock:
                sent.extend(messages)
            docs = [{"id": i, "text": t} for message in messages for i, t in message]
            try:
                client.upsert("faults", docs, chunk_size=docs_per_message)
            except grpc.RpcError:
                break  # the server is gone: this stream was never acknowledged
            with lock:
                acknowledged.update(d["id"] for d in docs)
            stream += 1
        client.close()

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(writers)]
    for t in threads:
        t.start()
    time.sleep(kill_after_s * (0.5 + rng.random()))
    server.kill()
    stop.set()
    for t in threads:
        t.join(60)

    report = FaultReport(acknowledged=len(acknowledged), messages_sent=len(sent))
    texts = {i: t for message in sent for i, t in message}
    with ServerProcess(data_dir, env=env) as server:
        from embedsvc.collections.manager import CollectionManager

        # audit through the server (searchable) and through the store (exact contents)
        probe = sorted(acknowledged)
        for start in range(0, len(probe), 128):
            batch = probe[start : start + 128]
            results = server.client.search("faults", [texts[i] for i in batch], top_k=3)
            report.unsearchable += [
                i for i, hits in zip(batch, results) if i not in {h.id for h in hits}
            ]
        server.stop()
    with CollectionManager(data_dir) as manager:
        collection = manager.get("faults")
        stored = dict(zip(texts, collection.get(list(texts))))
    for message in sent:
        present = [i for i, _ in message if stored[i] is not None]
        if present and len(present) != len(message):
            report.torn_messages.append(present)
    for doc_id, doc in stored.items():
        if doc is None:
            if doc_id in acknowledged:
                report.missing_acknowledged.append(doc_id)
            continue
        if doc.text != texts[doc_id]:
            report.wrong_text.append(doc_id)
        if doc_id not in acknowledged:
            report.present_unacknowledged += 1
    return report


class MilvusLiteServer:
    """A milvus-lite 2.5 server (Milvus's own engine) on a free loopback port, for tests:
    ``with MilvusLiteServer(folder) as milvus: MilvusConfig(uri=milvus.uri)``.

    The backend then talks to it over gRPC at ``http://127.0.0.1:<port>`` exactly as it would to
    a Milvus standalone or cluster (the embedded ``milvus.db`` form uses a Unix socket instead).
    Needs the ``milvus`` extra.
    """

    def __init__(self, folder: Path, db_name: str = "milvus.db", start_timeout: float = 30.0):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.db_file = self.folder / db_name
        self.start_timeout = start_timeout
        self.port = 0
        self._server = None

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> MilvusLiteServer:
        import socket

        from milvus_lite.server import Server

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self._server = Server(str(self.db_file), f"127.0.0.1:{self.port}")
        if not self._server.init() or not self._server.start():
            raise RuntimeError(f"milvus-lite did not start on {self.db_file}")
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return self
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"milvus-lite did not listen on port {self.port}")

    def stop(self) -> None:
        if self._server is not None:
            proc = self._server._p
            if proc is not None and proc.poll() is None:  # with an address it has no lock file
                proc.send_signal(signal.SIGTERM)  # to stop it by: stop it ourselves
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=5)
            self._server.stop()
            self._server = None

    def __enter__(self) -> MilvusLiteServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
