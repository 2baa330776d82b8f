"""Search QPS and recall@10 per index kind, through the real server, with and without
cross-request batching of FAISS searches.

What is measured, and why this way:

* **The server's search path, not the encoder's.** A Search RPC embeds its query text first, and
  MiniLM (3-12 ms a query here) would hide the index. So the server process started here
  registers one extra strategy, ``bench_lookup``, whose "encoding" of the text ``q<i>`` is row
  ``i`` of a precomputed query matrix (a dict lookup), and serves collections built from
  precomputed 384-d vectors. Everything else is the production path: gRPC, auth/metrics
  interceptors, the text Batcher, the ``SearchBatcher`` (``BatchingConfig.batch_searches``),
  the collection's readers-writer lock, FAISS, the SQLite lookup of the hits, the response.
* **Many concurrent clients**: ``--clients`` (64) ``grpc.aio`` coroutines, one query per RPC,
  ``top_k=10``, ``omit_documents``; for ``--seconds`` each. QPS = answered queries / wall time.
* **Recall@10** of what the server returned against exact inner-product top-10 (numpy/faiss
  flat, computed here). Batched and one-by-one runs search the same index with the same
  parameters, so "at equal recall" holds by construction; both recalls are printed.
* **Data**: ``synthetic`` = i.i.d. Gaussian vectors, normalised (fine for QPS; recall on random
  data is pessimistic for ANN: there is no neighbourhood structure to exploit). ``real`` = MiniLM
  (``mean``) embeddings of Multi30K captions, held-out captions as queries (cached in the eval
  embedding cache after the first run). 1M vectors exist only synthetically here: embedding a
  million real texts takes hours on 2 cores.
* **Index parameters** are the server defaults (``IndexConfig``) except ``nlist=1024`` at 1M:
  the default ~4*sqrt(n) = 4000 lists would spend ~20 min in k-means on 2 cores.
* ``--faiss-only`` adds the in-process numbers for the same snapshots (no gRPC): one query per
  call vs blocks of 32 and 256, which is what batching can win at most.
* ``binary`` (384-bit sign codes of the same vectors, ``bench_lookup_binary``) is reported
  separately: Hamming QPS, and recall against the float truth (no rescoring here; see
  ``bench_binary.py`` for binary + float rescoring).

Built collections are kept under ``<cache_dir>/bench_search/`` (``--work-dir``) and reused: a
1M collection holds 1.5 GB of vectors in SQLite plus an index snapshot, so build once.

    .venv/bin/python benchmarks/bench_search.py                       # 100k + 1M, all kinds
    .venv/bin/python benchmarks/bench_search.py --sizes 20000 --kinds flat,hnsw --seconds 3
    .venv/bin/python benchmarks/bench_search.py build --sizes 1000000 --kinds hnsw  # prebuild
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    captions,
    exact_topk,
    machine_info,
    percentiles,
    print_load_now,
    print_machine,
    recall_at_k,
    table,
)

DIM = 384
N_QUERIES = 1000
K = 10
DENSE_KINDS = ("flat", "ivf", "hnsw", "ivfpq")
_LISTENING = re.compile(r"listening on [\w.:\[\]-]+?:(\d+)")


# ------------------------------------------------------------------------------- datasets
def default_work_dir() -> Path:
    from embedsvc.config import default_cache_dir

    return default_cache_dir() / "bench_search"


@dataclass
class Dataset:
    """Corpus + queries (float32, normalised) and the exact top-k of each query."""

    name: str
    n: int
    directory: Path

    @property
    def queries_path(self) -> Path:
        return self.directory / "queries.npy"

    @property
    def binary_queries_path(self) -> Path:
        return self.directory / "queries-binary.npy"

    @property
    def truth_path(self) -> Path:
        return self.directory / "truth.npy"

    @property
    def data_dir(self) -> Path:
        return self.directory / "indexes"

    def index_params(self) -> dict[str, Any]:
        return {"nlist": 1024} if self.n >= 500_000 else {}


def synthetic(n: int, seed: int) -> np.ndarray:
    """i.i.d. N(0, 1) rows, L2-normalised, generated in blocks (bounded temporary memory)."""
    rng = np.random.default_rng(seed)
    out = np.empty((n, DIM), dtype=np.float32)
    for start in range(0, n, 100_000):
        block = rng.standard_normal((min(100_000, n - start), DIM), dtype=np.float32)
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        out[start : start + len(block)] = block
    return out


def real_vectors(n: int, n_queries: int = N_QUERIES) -> tuple[np.ndarray, np.ndarray]:
    """MiniLM embeddings of ``n`` captions (corpus) and held-out captions (queries)."""
    from embedsvc.eval.cache import cached_encode
    from embedsvc.strategies import Role, get_strategy

    texts = captions(n + n_queries)
    if len(texts) < n + n_queries:
        raise SystemExit(f"only {len(texts)} captions available; use a smaller real size")
    strategy = get_strategy("mean")
    corpus = cached_encode(strategy, texts[:n], Role.PASSAGE, desc="embed captions")
    queries = cached_encode(strategy, texts[n:], Role.QUERY, desc="embed queries")
    return corpus.astype(np.float32), queries.astype(np.float32)


def prepare(name: str, n: int, work_dir: Path) -> tuple[Dataset, np.ndarray | None]:
    """The dataset's files (queries, truth); returns the corpus only when it had to make it."""
    ds = Dataset(name, n, work_dir / f"{name}-{n}")
    ds.directory.mkdir(parents=True, exist_ok=True)
    if ds.truth_path.is_file() and ds.queries_path.is_file():
        return ds, None
    corpus, queries = (
        (synthetic(n, 0), synthetic(N_QUERIES, 1)) if name == "synthetic" else real_vectors(n)
    )
    np.save(ds.queries_path, queries)
    np.save(ds.binary_queries_path, np.packbits(queries > 0, axis=1))
    np.save(ds.truth_path, exact_topk(corpus, queries, K))
    return ds, corpus


def corpus_of(ds: Dataset) -> np.ndarray:
    return synthetic(ds.n, 0) if ds.name == "synthetic" else real_vectors(ds.n)[0]


def build(ds: Dataset, kind: str, corpus: np.ndarray | None) -> dict[str, Any]:
    """Create collection ``kind`` from the corpus in one upsert (one training), checkpoint it."""
    marker = ds.directory / f"built-{kind}.json"
    if marker.is_file():
        return json.loads(marker.read_text())
    from embedsvc.collections.manager import CollectionManager
    from embedsvc.strategies.base import Embedding

    corpus = corpus_of(ds) if corpus is None else corpus
    binary = kind == "binary"
    vectors = np.packbits(corpus > 0, axis=1) if binary else corpus
    started = time.perf_counter()
    with CollectionManager(ds.data_dir) as manager:
        if kind in manager.list():
            manager.delete(kind)  # a half-built one from a killed run
        collection = manager.create(
            kind,
            strategy="bench_lookup_binary" if binary else "bench_lookup",
            output_kind="binary" if binary else "dense",
            dim=DIM,
            index_kind=kind,
            index_config=ds.index_params(),
        )
        zeros = np.zeros(len(vectors), dtype=np.int64)
        embedding = Embedding("binary" if binary else "dense", vectors, DIM, zeros + 1, zeros)
        collection.upsert([f"d{i}" for i in range(len(vectors))], ["x"] * len(vectors), None,
                          embedding)  # fmt: skip
        upserted = time.perf_counter()
        collection.checkpoint()
    info = {
        "kind": kind,
        "n": ds.n,
        "dataset": ds.name,
        "upsert_and_index_s": round(upserted - started, 1),
        "total_s": round(time.perf_counter() - started, 1),
        "index_params": ds.index_params(),
    }
    marker.write_text(json.dumps(info))
    return info


# ------------------------------------------------------------------------ server process
def serve(
    data_dir: Path, queries: Path, batch_searches: bool, grpc_workers: int, blas: int | None
) -> None:
    """The server process: embedsvc's own ``serve`` plus the two lookup strategies."""
    from embedsvc.config import BatchingConfig, HttpConfig, ServiceConfig
    from embedsvc.server import serve as run
    from embedsvc.strategies.base import Embedding, Role, Strategy, register_strategy

    dense = np.load(queries)
    binary = np.packbits(dense > 0, axis=1)

    class _Lookup(Strategy):
        description = "benchmark: q<i> -> row i of a precomputed query matrix"
        table: np.ndarray

        @property
        def dim(self) -> int:
            return DIM

        @property
        def max_tokens(self) -> int:
            return 8

        @property
        def model_fingerprint(self) -> str:
            return f"{self.name}-{queries}"

        def count_tokens(self, texts: list[str], role: Role = Role.PASSAGE) -> list[int]:
            return [1] * len(texts)

        def encode(self, texts, role=Role.PASSAGE, *, normalize=True, truncate=True):
            rows = self.table[[_row(t) % len(self.table) for t in texts]]
            ones = np.ones(len(texts), dtype=np.int64)
            return Embedding(self.output_kind, rows, DIM, ones, ones * 0)

    @register_strategy("bench_lookup")
    class _Dense(_Lookup):
        output_kind = "dense"
        table = dense

    @register_strategy("bench_lookup_binary")
    class _Binary(_Lookup):
        output_kind = "binary"
        table = binary

    config = ServiceConfig(
        host="127.0.0.1",
        port=0,
        data_dir=data_dir,
        preload_strategies=["bench_lookup"],
        http=HttpConfig(enabled=False),
        batching=BatchingConfig(batch_searches=batch_searches),
        grpc_workers=grpc_workers,
    )
    set_blas_threshold(blas)
    run(config)


def set_blas_threshold(value: int | None) -> int:
    """Override faiss' ``distance_compute_blas_threshold`` (nq * d above which a flat search is
    one GEMM instead of nq separate scans); None keeps what embedsvc set. Returns the value."""
    import faiss

    import embedsvc.indexes  # noqa: F401 - embedsvc may set its own value on import

    if value is not None:
        faiss.cvar.distance_compute_blas_threshold = value
    return int(faiss.cvar.distance_compute_blas_threshold)


def _row(text: str) -> int:
    """``q17`` -> 17; anything else (the server's warm-up text) -> 0."""
    return int(text[1:]) if text[1:].isdigit() else 0


class BenchServer:
    """``bench_search.py serve`` as a child process on a free port (SIGTERM to stop)."""

    def __init__(
        self, ds: Dataset, batch_searches: bool, grpc_workers: int, blas: int | None
    ) -> None:
        command = [
            sys.executable, __file__, "serve", "--data-dir", str(ds.data_dir),
            "--queries", str(ds.queries_path), "--batch-searches", str(int(batch_searches)),
            "--grpc-workers", str(grpc_workers),
            *(["--blas-threshold", str(blas)] if blas is not None else []),
        ]  # fmt: skip
        env = dict(os.environ, HF_HUB_OFFLINE="1")
        self.log: deque[str] = deque(maxlen=100)
        self.proc = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
        )
        self.port = 0
        deadline = time.monotonic() + 300
        while not self.port:
            line = self.proc.stdout.readline()
            self.log.append(line)
            if not line and self.proc.poll() is not None:
                raise RuntimeError("bench server exited:\n" + "".join(self.log))
            if match := _LISTENING.search(line):
                self.port = int(match.group(1))
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError("bench server did not start:\n" + "".join(self.log))
        threading.Thread(target=self._drain, daemon=True).start()
        from embedsvc.client import EmbedsvcClient

        with EmbedsvcClient(f"127.0.0.1:{self.port}", timeout=600) as client:
            client.wait_ready(timeout=300)

    def _drain(self) -> None:
        for line in self.proc.stdout:
            self.log.append(line)

    def rss_mib(self) -> float:
        try:
            for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        except OSError:
            pass
        return float("nan")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(120)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(30)


# ---------------------------------------------------------------------------- load driver
@dataclass
class Run:
    dataset: str
    n: int
    kind: str
    mode: str  # batched | one-by-one | faiss-1 | faiss-32 | faiss-256
    queries: int = 0
    seconds: float = 0.0
    recall: float = float("nan")
    latencies: list[float] = field(default_factory=list, repr=False)
    errors: int = 0
    rss_mib: float = float("nan")
    note: str = ""

    @property
    def qps(self) -> float:
        return self.queries / self.seconds if self.seconds else float("nan")

    def summary(self) -> dict[str, Any]:
        out = asdict(self)
        del out["latencies"]
        p50, p99 = percentiles(self.latencies)
        out.update(qps=self.qps, p50_ms=p50, p99_ms=p99)
        return out


async def _load(port: int, collection: str, clients: int, seconds: float, run: Run,
                truth: np.ndarray) -> None:  # fmt: skip
    import grpc

    from embedsvc.v1 import collection_service_pb2 as cpb
    from embedsvc.v1 import collection_service_pb2_grpc as cgrpc

    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    stub = cgrpc.CollectionServiceStub(channel)

    def request(i: int) -> Any:
        return cpb.SearchRequest(
            collection=collection, queries=[f"q{i}"], top_k=K, omit_documents=True
        )

    # warm-up: opens (loads) the collection, then a few searches
    await stub.Search(request(0), timeout=900)
    await asyncio.gather(*(stub.Search(request(i), timeout=300) for i in range(clients)))
    found: dict[int, list[int]] = {}
    counter = iter(range(1 << 62))
    stop_at = time.perf_counter() + seconds

    async def client() -> None:
        while time.perf_counter() < stop_at:
            i = next(counter) % len(truth)
            started = time.perf_counter()
            try:
                response = await stub.Search(request(i), timeout=300)
            except grpc.aio.AioRpcError:
                run.errors += 1
                continue
            run.latencies.append(time.perf_counter() - started)
            found[i] = [int(h.id[1:]) for h in response.results[0].hits]

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    run.seconds = time.perf_counter() - started
    run.queries = len(run.latencies)
    ids = sorted(found)
    run.recall = recall_at_k([found[i] for i in ids], truth[ids], K)
    await channel.close()


def measure_server(ds: Dataset, kinds: list[str], modes: list[str], args: argparse.Namespace
                   ) -> list[Run]:  # fmt: skip
    """Per kind: one server per mode, both up, measured in turn (the order alternating by kind),
    so that a change in the machine's load hits both modes of a kind alike. Servers restart
    per kind so that each holds one collection (two 1M collections in two processes fit; all
    of them would not)."""
    truth = np.load(ds.truth_path)
    runs = []
    for i, kind in enumerate(kinds):
        servers: dict[str, BenchServer] = {}
        try:
            for mode in modes:
                servers[mode] = BenchServer(
                    ds, mode == "batched", args.grpc_workers, args.blas_threshold
                )
            for mode in modes if i % 2 == 0 else modes[::-1]:
                server = servers[mode]
                run = Run(ds.name, ds.n, kind, mode)
                asyncio.run(_load(server.port, kind, args.clients, args.seconds, run, truth))
                run.rss_mib = server.rss_mib()
                runs.append(run)
                p50, p99 = percentiles(run.latencies)
                print(
                    f"  {ds.name}-{ds.n} {kind:6s} {mode:10s} {run.qps:8.1f} QPS  "
                    f"R@10 {run.recall:.3f}  p50 {p50:6.1f} ms  p99 {p99:6.1f} ms  "
                    f"errors {run.errors}  server RSS {run.rss_mib:,.0f} MiB  "
                    f"load {os.getloadavg()[0]:.1f}",
                    flush=True,
                )
        finally:
            for server in servers.values():
                server.stop()
    return runs


def measure_faiss(ds: Dataset, kind: str, seconds: float) -> list[Run]:
    """The same snapshot in-process: one query per call vs blocks of 32 and 256."""
    from embedsvc.indexes import load_index

    index = load_index(ds.data_dir / kind / "index.faiss")
    queries = np.load(ds.binary_queries_path if kind == "binary" else ds.queries_path)
    truth = np.load(ds.truth_path)
    runs = []
    for block in (1, 32, 256):
        run = Run(ds.name, ds.n, kind, f"faiss-{block}")
        index.search(queries[:block], K)
        started = time.perf_counter()
        done = 0
        while time.perf_counter() - started < seconds or done == 0:
            start = done % len(queries)
            q = queries[start : start + block]
            t0 = time.perf_counter()
            index.search(q, K)
            run.latencies.append(time.perf_counter() - t0)
            done += len(q)
        run.seconds = time.perf_counter() - started
        run.queries = done
        runs.append(run)
    _, ids = index.search(queries, K)  # index ids are the store's seq = corpus row + 1
    for run in runs:
        run.recall = recall_at_k([[int(i) - 1 for i in row if i >= 0] for row in ids], truth, K)
    return runs


# ------------------------------------------------------------------------------------ main
def _sets(args: argparse.Namespace) -> list[tuple[str, int]]:
    out = [("synthetic", n) for n in args.sizes]
    if args.real:
        out.append(("real", args.real))
    return out


def build_all(args: argparse.Namespace) -> list[dict[str, Any]]:
    infos = []
    for name, n in _sets(args):
        ds, corpus = prepare(name, n, args.work_dir)
        for kind in args.kinds:
            if (ds.directory / f"built-{kind}.json").is_file():
                infos.append(json.loads((ds.directory / f"built-{kind}.json").read_text()))
                continue
            print(f"building {name}-{n} {kind} ...", flush=True)
            info = build(ds, kind, corpus)
            print(f"  built in {info['total_s']} s", flush=True)
            infos.append(info)
        del corpus
    return infos


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("command", nargs="?", default="run", choices=["run", "build", "serve"])
    ap.add_argument("--sizes", default="100000,1000000", help="synthetic corpus sizes")
    ap.add_argument("--real", type=int, default=10000, help="real caption corpus size (0: off)")
    ap.add_argument("--kinds", default="flat,ivf,hnsw,ivfpq,binary")
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--seconds", type=float, default=6.0, help="per (kind, mode)")
    ap.add_argument("--modes", default="batched,one-by-one")
    ap.add_argument("--no-faiss-only", action="store_true", help="skip the in-process rows")
    ap.add_argument("--no-build", action="store_true", help="measure only what is built")
    ap.add_argument("--work-dir", type=Path, default=None)
    ap.add_argument("--json", type=Path)
    # serve (internal)
    ap.add_argument("--data-dir", type=Path)
    ap.add_argument("--queries", type=Path)
    ap.add_argument("--batch-searches", type=int, default=1)
    ap.add_argument("--grpc-workers", type=int, default=32, help="server threads (default 32)")
    ap.add_argument(
        "--blas-threshold",
        type=int,
        default=None,
        help="faiss distance_compute_blas_threshold (nq*d) in the server and the in-process "
        "rows; default: what embedsvc sets",
    )
    args = ap.parse_args(argv)
    if args.command == "serve":
        serve(
            args.data_dir,
            args.queries,
            bool(args.batch_searches),
            args.grpc_workers,
            args.blas_threshold,
        )
        return 0
    args.sizes = [int(s) for s in str(args.sizes).split(",") if s]
    args.kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    args.work_dir = args.work_dir or default_work_dir()
    info = machine_info()
    info["faiss_blas_threshold"] = set_blas_threshold(args.blas_threshold)
    info["grpc_workers"] = args.grpc_workers
    print_machine(info)
    print(f"faiss distance_compute_blas_threshold = {info['faiss_blas_threshold']} (nq*d); "
          f"server grpc_workers = {args.grpc_workers}; clients = {args.clients}")  # fmt: skip
    if args.command == "build" or not args.no_build:
        builds = build_all(args)
    else:
        builds = [
            json.loads(p.read_text())
            for name, n in _sets(args)
            for p in sorted((args.work_dir / f"{name}-{n}").glob("built-*.json"))
        ]
    if args.command == "build":
        return 0

    runs: list[Run] = []
    modes = [m.strip() for m in args.modes.split(",")]
    for name, n in _sets(args):
        ds = Dataset(name, n, args.work_dir / f"{name}-{n}")
        kinds = [k for k in args.kinds if (ds.directory / f"built-{k}.json").is_file()]
        if missing := [k for k in args.kinds if k not in kinds]:
            print(f"{name}-{n}: not built, skipped: {', '.join(missing)}", flush=True)
        if not kinds:
            continue
        print(f"\n== {name}-{n}: {args.clients} clients, {args.seconds:.0f} s per row ==")
        runs += measure_server(ds, kinds, modes, args)
        if not args.no_faiss_only:
            for kind in kinds:
                for run in measure_faiss(ds, kind, min(args.seconds, 3.0)):
                    runs.append(run)
                    print(f"  {name}-{n} {kind:6s} {run.mode:10s} {run.qps:8.1f} QPS  "
                          f"R@10 {run.recall:.3f}", flush=True)  # fmt: skip
    end_load = print_load_now()
    report(runs, builds)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps(
                {
                    "machine": info,
                    "load_at_end": end_load,
                    "builds": builds,
                    "runs": [r.summary() for r in runs],
                },
                indent=2,
            )
        )
    return 0


def report(runs: list[Run], builds: list[dict[str, Any]]) -> None:
    rows = []
    index = {(r.dataset, r.n, r.kind, r.mode): r for r in runs}
    goals = []
    for (dataset, n, kind, mode), r in index.items():
        if mode != "batched":
            continue
        one = index.get((dataset, n, kind, "one-by-one"))
        f1 = index.get((dataset, n, kind, "faiss-1"))
        f32 = index.get((dataset, n, kind, "faiss-32"))
        f256 = index.get((dataset, n, kind, "faiss-256"))
        ratio = r.qps / one.qps if one and one.qps else float("nan")
        rows.append(
            [f"{dataset}-{n}", kind, r.qps, one.qps if one else float("nan"), ratio,
             r.recall, one.recall if one else float("nan"), percentiles(r.latencies)[1],
             percentiles(one.latencies)[1] if one else float("nan"),
             f1.qps if f1 else float("nan"), f32.qps if f32 else float("nan"),
             f256.qps if f256 else float("nan"), r.errors + (one.errors if one else 0)]
        )  # fmt: skip
        if one:
            goals.append(
                f"{dataset}-{n} {kind}: batched/one-by-one = {ratio:.2f}x at R@10 "
                f"{r.recall:.3f} vs {one.recall:.3f} -> goal >= 5x: "
                f"{'MET' if ratio >= 5 else 'NOT MET'}"
            )
    print("\n### search through the server (QPS = answered single-query RPCs per second)\n")
    print(
        table(
            ["data", "kind", "batched QPS", "one-by-one QPS", "ratio", "R@10 batched",
             "R@10 one-by-one", "p99 ms batched", "p99 ms 1-by-1", "faiss nq=1 QPS",
             "faiss nq=32 QPS", "faiss nq=256 QPS", "errors"],
            rows,
        )
    )  # fmt: skip
    if builds:
        print("\n### builds (one upsert of the whole corpus + checkpoint)\n")
        print(
            table(
                ["data", "kind", "seconds", "index params"],
                [[f"{b['dataset']}-{b['n']}", b["kind"], b["total_s"], b["index_params"]]
                 for b in builds],
            )
        )  # fmt: skip
    print("\ngoals:")
    for line in goals:
        print(f"  {line}")


if __name__ == "__main__":
    raise SystemExit(main())
