"""Load test: 64 concurrent clients mixing Embed, Search and streaming Upsert against a real
``embedsvc serve`` process, bounded in time and count, with the server's RSS sampled throughout.

What must hold (the CI form, ``tests/server/test_load.py``, asserts it; this script prints it):

* **zero errors** other than RESOURCE_EXHAUSTED: the server's answer to overload (its queue is
  deliberately small here, ``max_queue_texts``), which clients retry after a short backoff;
* **memory bounded**: documents are upserted over a fixed pool of ids (the collection reaches
  its steady size in the prefill, after which every upsert is an update), so the data does not
  grow, and the server's RSS must not either: final RSS < ``rss_factor`` x the RSS after warm-up
  + ``rss_margin_mib`` (HNSW updates leave tombstones and trigger rebuilds: that churn is the
  point);
* health stays SERVING (the watchdog must not fire under load) and SIGTERM exits 0 afterwards.

The CI form uses the model-free ``debug`` strategy (``EMBEDSVC_PRELOAD_STRATEGIES='["debug"]'``)
so that the server's own code, not MiniLM, is what is loaded; the benchmark form may use
``--strategy mean`` (the real model, ~300 sentences/s on 2 cores, so far fewer requests).

    .venv/bin/python benchmarks/load_test.py                          # 5 min, debug strategy
    .venv/bin/python benchmarks/load_test.py --seconds 300 --strategy mean
    .venv/bin/python benchmarks/load_test.py --seconds 30 --json /tmp/load.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine_info, percentiles, print_load_now, print_machine, table  # noqa: E402

COLLECTION = "load"
VOCABULARY = [f"w{i}" for i in range(2000)] + [
    "the", "a", "man", "woman", "dog", "cat", "plays", "runs", "guitar", "park", "city",
]  # fmt: skip


@dataclass
class LoadConfig:
    clients: int = 64
    seconds: float = 300.0
    warmup_s: float = 10.0
    max_requests: int = 2_000_000
    strategy: str = "debug"
    index_kind: str = "hnsw"
    id_pool: int = 5000
    #: operation mix (weights): embed, search, upsert
    mix: tuple[float, float, float] = (0.5, 0.35, 0.15)
    max_queue_texts: int = 512
    rpc_timeout_s: float = 60.0
    sample_every_s: float = 1.0
    rss_factor: float = 1.5
    rss_margin_mib: float = 64.0
    seed: int = 0


@dataclass
class LoadResult:
    config: LoadConfig
    ok: Counter = field(default_factory=Counter)
    exhausted: Counter = field(default_factory=Counter)
    errors: Counter = field(default_factory=Counter)  # "op CODE: details" -> count
    latencies: dict[str, list[float]] = field(default_factory=dict)
    rss: list[tuple[float, float]] = field(default_factory=list)  # (seconds since start, MiB)
    not_serving_samples: int = 0
    rss_after_warmup_mib: float = 0.0
    seconds: float = 0.0
    exit_code: int | None = None
    final_count: int = -1

    @property
    def rss_final_mib(self) -> float:
        return self.rss[-1][1] if self.rss else float("nan")

    @property
    def rss_limit_mib(self) -> float:
        return self.config.rss_factor * self.rss_after_warmup_mib + self.config.rss_margin_mib

    @property
    def rss_bounded(self) -> bool:
        return self.rss_final_mib < self.rss_limit_mib

    @property
    def total_ok(self) -> int:
        return sum(self.ok.values())

    def summary(self) -> dict[str, Any]:
        return {
            "config": vars(self.config),
            "seconds": round(self.seconds, 1),
            "ok": dict(self.ok),
            "resource_exhausted": dict(self.exhausted),
            "errors": dict(self.errors),
            "latency_ms": {op: percentiles(v) for op, v in self.latencies.items()},
            "rss_mib": [(round(t, 1), round(m, 1)) for t, m in self.rss],
            "rss_after_warmup_mib": round(self.rss_after_warmup_mib, 1),
            "rss_final_mib": round(self.rss_final_mib, 1),
            "rss_limit_mib": round(self.rss_limit_mib, 1),
            "rss_bounded": self.rss_bounded,
            "not_serving_samples": self.not_serving_samples,
            "exit_code": self.exit_code,
            "final_count": self.final_count,
        }


def rss_mib(pid: int) -> float:
    """Resident set size of ``pid`` from /proc (Linux), MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _text(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(VOCABULARY) for _ in range(words))


async def _clients(port: int, cfg: LoadConfig, result: LoadResult, started: float) -> None:
    import grpc

    from embedsvc.v1 import collection_service_pb2 as cpb
    from embedsvc.v1 import collection_service_pb2_grpc as cgrpc
    from embedsvc.v1 import embedding_service_pb2 as epb
    from embedsvc.v1 import embedding_service_pb2_grpc as egrpc

    options = [("grpc.max_receive_message_length", 64 << 20)]
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=options)
    embed_stub = egrpc.EmbeddingServiceStub(channel)
    coll_stub = cgrpc.CollectionServiceStub(channel)
    deadline = started + cfg.seconds
    issued = 0
    for op in ("embed", "search", "upsert"):
        result.latencies.setdefault(op, [])

    async def one(op: str, rng: random.Random) -> None:
        if op == "embed":
            texts = [_text(rng, rng.randint(1, 24)) for _ in range(rng.choice((1, 1, 4, 16)))]
            request = epb.EmbedRequest(texts=texts, strategy=cfg.strategy)
            await embed_stub.Embed(request, timeout=cfg.rpc_timeout_s)
        elif op == "search":
            queries = [_text(rng, rng.randint(2, 12)) for _ in range(rng.choice((1, 1, 1, 4)))]
            request = cpb.SearchRequest(collection=COLLECTION, queries=queries, top_k=10)
            response = await coll_stub.Search(request, timeout=cfg.rpc_timeout_s)
            assert len(response.results) == len(queries)
        else:
            messages = [
                cpb.UpsertRequest(
                    collection=COLLECTION,
                    documents=[
                        cpb.Document(id=f"doc{rng.randrange(cfg.id_pool)}", text=_text(rng, 12))
                        for _ in range(rng.randint(1, 16))
                    ],
                )
                for _ in range(rng.randint(1, 3))
            ]
            await coll_stub.Upsert(iter(messages), timeout=cfg.rpc_timeout_s)

    async def client(c: int) -> None:
        nonlocal issued
        rng = random.Random(cfg.seed * 1_000_003 + c)
        while time.monotonic() < deadline and issued < cfg.max_requests:
            issued += 1
            op = rng.choices(("embed", "search", "upsert"), weights=cfg.mix)[0]
            t0 = time.perf_counter()
            try:
                await one(op, rng)
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                    result.exhausted[op] += 1
                    await asyncio.sleep(0.01 + 0.05 * rng.random())  # backoff, then go on
                    continue
                result.errors[f"{op} {exc.code().name}: {exc.details()[:120]}"] += 1
                continue
            result.latencies[op].append(time.perf_counter() - t0)
            result.ok[op] += 1

    await asyncio.gather(*(client(c) for c in range(cfg.clients)))
    await channel.close()


def run_load(data_dir: Path, cfg: LoadConfig, log=print) -> LoadResult:
    """Start a server, prefill the id pool, run the clients while sampling RSS, stop it."""
    from embedsvc.client import EmbedsvcClient
    from embedsvc.testing import ServerProcess

    env = {
        "EMBEDSVC_PRELOAD_STRATEGIES": json.dumps([cfg.strategy]),
        "EMBEDSVC_BATCHING__MAX_QUEUE_TEXTS": str(cfg.max_queue_texts),
    }
    result = LoadResult(cfg)
    server = ServerProcess(data_dir, env=env).start()
    try:
        client = server.client
        client.create_collection(COLLECTION, strategy=cfg.strategy, index_kind=cfg.index_kind)
        rng = random.Random(cfg.seed)
        pool = [{"id": f"doc{i}", "text": _text(rng, 12)} for i in range(cfg.id_pool)]
        client.upsert(COLLECTION, pool, chunk_size=256)
        log(f"prefilled {cfg.id_pool} documents; server RSS {rss_mib(server.proc.pid):.0f} MiB")

        stop = threading.Event()
        started = time.monotonic()
        probe = EmbedsvcClient(f"127.0.0.1:{server.port}", timeout=10)

        def sample() -> None:
            next_print = 0.0
            while not stop.wait(cfg.sample_every_s):
                elapsed = time.monotonic() - started
                mib = rss_mib(server.proc.pid)
                result.rss.append((elapsed, mib))
                if elapsed <= cfg.warmup_s:
                    result.rss_after_warmup_mib = mib
                try:
                    if probe.health() != "SERVING":
                        result.not_serving_samples += 1
                except Exception:  # noqa: BLE001 - a failed probe counts as not serving
                    result.not_serving_samples += 1
                if elapsed >= next_print:
                    done = result.total_ok
                    log(f"  t={elapsed:6.1f}s  RSS {mib:7.1f} MiB  ok {done:7d}  "
                        f"exhausted {sum(result.exhausted.values()):5d}  "
                        f"errors {sum(result.errors.values())}")  # fmt: skip
                    next_print += max(5.0, cfg.seconds / 20)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        try:
            asyncio.run(_clients(server.port, cfg, result, started))
        finally:
            stop.set()
            sampler.join(10)
            probe.close()
        result.seconds = time.monotonic() - started
        result.rss.append((result.seconds, rss_mib(server.proc.pid)))
        if not result.rss_after_warmup_mib:
            result.rss_after_warmup_mib = result.rss[0][1]
        result.final_count = server.client.get_collection(COLLECTION).document_count
        result.exit_code = server.stop()
    finally:
        if server.proc is not None and server.proc.poll() is None:
            server.kill()
    return result


def print_report(result: LoadResult) -> None:
    cfg = result.config
    rows = []
    for op in ("embed", "search", "upsert"):
        p50, p99 = percentiles(result.latencies.get(op, []))
        rows.append([op, result.ok[op], result.ok[op] / max(result.seconds, 1e-9),
                     result.exhausted[op], p50, p99])  # fmt: skip
    print(f"\n### load: {cfg.clients} clients, {result.seconds:.0f} s, strategy {cfg.strategy}, "
          f"index {cfg.index_kind}, {cfg.id_pool} ids\n")  # fmt: skip
    print(table(["op", "ok", "per s", "RESOURCE_EXHAUSTED", "p50 ms", "p99 ms"], rows))
    print("\nRSS over time (MiB):")
    step = max(1, len(result.rss) // 20)
    print("  " + "  ".join(f"{t:.0f}s:{m:.0f}" for t, m in result.rss[::step]))
    print(
        f"\nRSS after warm-up {result.rss_after_warmup_mib:.0f} MiB, final "
        f"{result.rss_final_mib:.0f} MiB, max {max(m for _, m in result.rss):.0f} MiB, limit "
        f"{result.rss_limit_mib:.0f} MiB -> {'bounded' if result.rss_bounded else 'GREW'}"
    )
    print(f"errors (other than RESOURCE_EXHAUSTED): {sum(result.errors.values())}")
    for line, count in result.errors.most_common(10):
        print(f"  {count} x {line}")
    print(
        f"health NOT_SERVING samples: {result.not_serving_samples}; "
        f"SIGTERM exit code {result.exit_code}; documents at end {result.final_count}"
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--seconds", type=float, default=300.0)
    ap.add_argument("--warmup", type=float, default=None, help="default: 10%% of --seconds")
    ap.add_argument("--max-requests", type=int, default=2_000_000)
    ap.add_argument("--strategy", default="debug")
    ap.add_argument("--index-kind", default="hnsw")
    ap.add_argument("--id-pool", type=int, default=5000)
    ap.add_argument("--max-queue-texts", type=int, default=512)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    cfg = LoadConfig(
        clients=args.clients,
        seconds=args.seconds,
        warmup_s=args.warmup if args.warmup is not None else max(5.0, args.seconds / 10),
        max_requests=args.max_requests,
        strategy=args.strategy,
        index_kind=args.index_kind,
        id_pool=args.id_pool,
        max_queue_texts=args.max_queue_texts,
    )
    info = machine_info()
    print_machine(info)
    with tempfile.TemporaryDirectory(prefix="load-test-") as tmp:
        result = run_load(Path(tmp) / "indexes", cfg)
    end_load = print_load_now()
    print_report(result)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        payload = {"machine": info, "load_at_end": end_load, **result.summary()}
        args.json.write_text(json.dumps(payload, indent=2, default=str))
    failed = bool(result.errors) or not result.rss_bounded or result.exit_code != 0
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
