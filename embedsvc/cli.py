"""The ``embedsvc`` command: serve, index, search, embed, eval."""

from __future__ import annotations

import itertools
import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer

from embedsvc.config import ServiceConfig
from embedsvc.demo import DEMO_COLLECTION, DEMO_CORPUS
from embedsvc.errors import EmbedsvcError

app = typer.Typer(
    help="embedsvc: embedding and retrieval service for sentence representations.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


def _fail(exc: EmbedsvcError) -> None:
    typer.echo(f"error: {exc.message}", err=True)
    raise typer.Exit(2)


def _config(config: Path | None, **overrides: Any) -> ServiceConfig:
    try:
        return ServiceConfig.load(config, **overrides)
    except (OSError, ValueError) as exc:
        typer.echo(f"error: cannot read config {config}: {exc}", err=True)
        raise typer.Exit(2) from None


def _index_into_engine(
    engine,
    path: Path,
    collection: str,
    batch_size: int,
    progress: Callable[[int], None] | None = None,
) -> dict[str, int]:
    """Embed and upsert a document file in chunks (resumable: unchanged ids are skipped).

    A progress bar, or ``progress(documents done)`` after each chunk instead (the server logs)."""
    from tqdm import tqdm

    from embedsvc.documents import count_documents, read_documents
    from embedsvc.engine import Document, UpsertCounts

    total = UpsertCounts()
    docs = read_documents(path)
    with tqdm(
        total=count_documents(path),
        unit="doc",
        desc=f"index {collection}",
        disable=progress is not None,
    ) as bar:
        while chunk := list(itertools.islice(docs, batch_size)):
            batch = [Document(d["id"], d["text"], d["metadata"]) for d in chunk]
            total += engine.upsert(collection, batch)
            bar.update(len(chunk))
            if progress is not None:
                progress(total.received)
    engine.collections.get(collection).checkpoint()
    return vars(total)


def _readable_corpus(path: Path) -> int:
    """Read the whole corpus once and count its documents; exit 2 in one line if it cannot be
    read (missing, malformed, empty), before any model loads."""
    from embedsvc.documents import read_documents

    try:
        count = sum(1 for _ in read_documents(path))
    except EmbedsvcError as exc:
        reason = exc.message
    except (OSError, ValueError, EOFError) as exc:  # permissions, bad gzip, bad UTF-8, Parquet
        reason = str(exc)
    else:
        if count:
            return count
        reason = "it holds no documents"
    reason = " ".join(reason.removeprefix(f"{path}: ").split())
    typer.echo(f"error: cannot read the demo corpus {path}: {reason}", err=True)
    raise typer.Exit(2)


def _ensure_collection(
    engine, name: str, strategy: str, index_kind: str | None, backend: str = "faiss"
) -> None:
    from embedsvc.errors import NotFound

    try:
        engine.collections.get(name)
    except NotFound:
        engine.create_collection(name, strategy=strategy, index_kind=index_kind, backend=backend)


@app.command()
def serve(
    host: str = typer.Option(None, help="bind address (default 127.0.0.1)"),
    port: int = typer.Option(None, help="port (default 50051; 0 = any free port)"),
    http_port: int = typer.Option(None, help="HTTP API port (default 8080; 0 = any free port)"),
    data_dir: Path = typer.Option(None, help="where collections persist (default ./indexes)"),
    config: Path = typer.Option(
        None, envvar="EMBEDSVC_CONFIG", help="YAML/JSON config file (see embedsvc.config)"
    ),
    demo: bool = typer.Option(
        False,
        help=f"create and fill the '{DEMO_COLLECTION}' collection from the 1,312 Wikipedia "
        "passages that ship with embedsvc (embedded once; later starts reuse it)",
    ),
    demo_corpus: Path = typer.Option(
        None,
        help="another JSONL(.gz)/Parquet corpus for --demo (implies it), "
        "e.g. ../shared/data/scifact/corpus.jsonl.gz",
    ),
    demo_collection: str = typer.Option(DEMO_COLLECTION, help="the collection --demo fills"),
    log_level: str = typer.Option(None, help="DEBUG, INFO, ... (default: logging.level, INFO)"),
    log_format: str = typer.Option(None, help="text | json (default: logging.format, text)"),
    ray: bool = typer.Option(
        False,
        "--ray",
        help="deploy on Ray Serve instead (embedding replicas + one collection replica behind "
        "Ray's gRPC proxy on ray_serve.grpc_port and HTTP proxy on ray_serve.http_port; needs "
        "the serve extra)",
    ),
    address: str = typer.Option(
        None, help="--ray: a running Ray cluster (ray://head:10001, auto); default: local Ray"
    ),
) -> None:
    """Run the gRPC server until SIGTERM/SIGINT (then drain and checkpoint).

    Exits 2 at once on a demo corpus it cannot read, and 1 (reason logged in one line) when the
    warm-up fails, rather than listening without ever serving."""
    corpus = demo_corpus or DEMO_CORPUS
    demo = demo or demo_corpus is not None
    corpus_size = _readable_corpus(corpus) if demo else 0

    from embedsvc.server import serve as run
    from embedsvc.server.logs import configure_logging

    cfg = _config(config, host=host, port=port, data_dir=data_dir)
    if http_port is not None:
        cfg.http.port = http_port
    overrides = {"level": log_level, "format": log_format}
    try:
        cfg.logging = type(cfg.logging).model_validate(
            {**cfg.logging.model_dump(), **{k: v for k, v in overrides.items() if v is not None}}
        )
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    configure_logging(cfg.logging)
    if ray:
        if demo:
            typer.echo("error: --demo is not supported with --ray", err=True)
            raise typer.Exit(2)
        if address:
            cfg.ray_serve.address = address
        raise typer.Exit(_serve_on_ray(cfg))

    def warm_up(engine, startup) -> None:
        if not demo:
            return
        _ensure_collection(engine, demo_collection, "mean", "flat")
        stored = engine.collections.get(demo_collection).count
        if stored:
            startup.report(
                f"collection '{demo_collection}' holds {stored:,} documents: checking them "
                f"against {corpus} (only new or changed documents are embedded)"
            )
        else:
            startup.report(
                f"first start: embedding the {corpus_size:,} documents of {corpus} into "
                f"collection '{demo_collection}', once (later starts reuse "
                f"{Path(cfg.data_dir).resolve()})"
            )
        step = "indexing demo corpus" if stored < corpus_size else "checking demo corpus"
        startup.progress(step, 0, corpus_size)
        counts = _index_into_engine(
            engine,
            corpus,
            demo_collection,
            64,  # small chunks: fine-grained progress, and a stop waits for one chunk at most
            progress=lambda done: startup.progress(step, done, corpus_size),
        )
        log = logging.getLogger("embedsvc")
        log.info("demo collection '%s' ready: %s", demo_collection, counts)

    try:
        status = run(cfg, warm_up=warm_up)
    except EmbedsvcError as exc:  # e.g. the data folder is owned by another process
        _fail(exc)
    raise typer.Exit(status)


def _serve_on_ray(cfg) -> int:
    """Deploy on Ray Serve and wait for SIGTERM/SIGINT, then shut the application down."""
    import signal
    import threading

    try:
        from embedsvc.server import ray_serve
    except ImportError as exc:
        typer.echo(f"error: --ray needs the serve extra (pip install 'embedsvc[serve]'): {exc}")
        return 2
    done = threading.Event()
    try:
        ray_serve.start(cfg)
    except EmbedsvcError as exc:
        _fail(exc)
    # after ray.init, which installs handlers of its own
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    rs = cfg.ray_serve
    print(
        f"embedsvc on Ray Serve: gRPC on {rs.host}:{rs.grpc_port}, http on "
        f"{rs.host}:{rs.http_port} ({rs.embedding_replicas} embedding replicas)",
        flush=True,
    )
    done.wait()
    from ray import serve

    serve.delete(rs.application)
    serve.shutdown()
    print("embedsvc on Ray Serve: stopped", flush=True)
    return 0


@app.command()
def index(
    file: Path = typer.Argument(..., help="JSONL(.gz) or Parquet with id, text, metadata"),
    collection: str = typer.Option(..., "--collection", "-c"),
    strategy: str = typer.Option("mean", help="strategy when the collection is created"),
    index_kind: str = typer.Option(None, help="index kind when created (flat, ivf, hnsw, ...)"),
    backend: str = typer.Option(
        "faiss", help="where a new collection lives: faiss (data folder) or milvus (milvus.uri)"
    ),
    server: str = typer.Option(None, help="host:port of a running server (else in-process)"),
    data_dir: Path = typer.Option(None, help="in-process: where collections persist"),
    config: Path = typer.Option(None),
    batch_size: int = typer.Option(256, min=1),
    engine: str = typer.Option(
        "local",
        help="local | ray (Ray Data batch job; FILE may be a "
        "folder or a glob of JSONL/Parquet shards)",
    ),
    address: str = typer.Option(None, help="ray: cluster address (default: local Ray)"),
    concurrency: int = typer.Option(1, min=1, help="ray: embedding actors"),
) -> None:
    """Index a document file into a collection, with a progress bar. Re-running resumes."""
    try:
        if engine == "ray":
            from embedsvc.indexing.ray_job import RayIndexConfig, run_ray_index

            job = RayIndexConfig(
                paths=[str(file)],
                collection=collection,
                strategy=strategy,
                index_kind=index_kind,
                address=address,
                concurrency=concurrency,
                write_chunk=batch_size,
                server=server,
            )
            counts = run_ray_index(job, _config(config, data_dir=data_dir))
        elif engine != "local":
            typer.echo("error: --engine must be local or ray", err=True)
            raise typer.Exit(2)
        elif server:
            counts = _index_via_server(
                server, file, collection, strategy, index_kind, batch_size, backend
            )
        else:
            from embedsvc.engine import Engine

            engine = Engine(_config(config, data_dir=data_dir))
            try:
                _ensure_collection(engine, collection, strategy, index_kind, backend)
                counts = _index_into_engine(engine, file, collection, batch_size)
            finally:
                engine.close()
    except EmbedsvcError as exc:
        _fail(exc)
    typer.echo(json.dumps(counts))


def _index_via_server(
    target: str,
    file: Path,
    collection: str,
    strategy: str,
    index_kind: str | None,
    chunk: int,
    backend: str = "faiss",
) -> dict[str, int]:
    import grpc
    from tqdm import tqdm

    from embedsvc.client import EmbedsvcClient
    from embedsvc.documents import count_documents, read_documents

    with EmbedsvcClient(target) as client:
        try:
            client.get_collection(collection)
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.NOT_FOUND:
                raise
            client.create_collection(
                collection, strategy=strategy, index_kind=index_kind or "", backend=backend
            )
        bar = tqdm(total=count_documents(file), unit="doc", desc=f"index {collection}")

        def counted():
            for doc in read_documents(file):
                bar.update(1)
                yield doc

        response = client.upsert(collection, counted(), chunk_size=chunk)
        bar.close()
    return {
        "received": response.received,
        "inserted": response.inserted,
        "updated": response.updated,
        "unchanged": response.unchanged,
    }


@app.command()
def search(
    queries: list[str] = typer.Argument(..., help="one or more query texts"),
    collection: str = typer.Option(..., "--collection", "-c"),
    top_k: int = typer.Option(10, "--top-k", "-k"),
    filter: str = typer.Option(None, help='metadata equality filter as JSON: {"key": value}'),
    server: str = typer.Option(None, help="host:port of a running server (else in-process)"),
    data_dir: Path = typer.Option(None),
    config: Path = typer.Option(None),
) -> None:
    """Search a collection; prints one JSON line per query."""
    flt = json.loads(filter) if filter else None
    try:
        if server:
            from embedsvc.client import EmbedsvcClient

            with EmbedsvcClient(server) as client:
                results = client.search(collection, queries, top_k, flt)
        else:
            from embedsvc.engine import Engine

            engine = Engine(_config(config, data_dir=data_dir))
            try:
                results = engine.search(collection, queries, top_k, flt)
            finally:
                engine.close()
    except EmbedsvcError as exc:
        _fail(exc)
    for query, hits in zip(queries, results):
        rows = [{"id": h.id, "score": round(float(h.score), 5), "text": h.text} for h in hits]
        typer.echo(json.dumps({"query": query, "hits": rows}))


@app.command()
def embed(
    texts: list[str] = typer.Argument(None, help="texts (default: one per line on stdin)"),
    strategy: str = typer.Option("mean"),
    role: str = typer.Option("query", help="query | passage"),
    output: Path = typer.Option(None, help="write a .npy file instead of JSON lines"),
) -> None:
    """Embed texts in-process; prints one JSON array per text (or writes .npy)."""
    import numpy as np

    from embedsvc.strategies import Role, get_strategy

    texts = texts or [line.rstrip("\n") for line in sys.stdin if line.strip()]
    try:
        emb = get_strategy(strategy).encode(texts, Role(role))
    except EmbedsvcError as exc:
        _fail(exc)
    except ValueError:
        typer.echo("error: --role must be query or passage", err=True)
        raise typer.Exit(2) from None
    if output:
        np.save(output, emb.vectors)
        typer.echo(f"wrote {emb.vectors.shape} {emb.vectors.dtype} to {output}")
        return
    for row in emb.vectors:
        typer.echo(json.dumps([round(float(x), 6) for x in row]))


@app.command()
def health(
    server: str = typer.Option("localhost:50051", help="host:port"),
    service: str = typer.Option("", help="service name ('' = the whole server)"),
) -> None:
    """Exit 0 when the server's grpc.health.v1 status is SERVING (for container health checks)."""
    import grpc

    from embedsvc.client import EmbedsvcClient

    with EmbedsvcClient(server) as client:
        try:
            status = client.health(service)
        except grpc.RpcError as exc:
            typer.echo(f"{server}: {exc.code().name}", err=True)
            raise typer.Exit(1) from None
    typer.echo(status)
    raise typer.Exit(0 if status == "SERVING" else 1)


def _mount_subcommands() -> None:
    from embedsvc.eval.cli import eval_app

    app.add_typer(eval_app, name="eval", help="Evaluate a strategy on STS or retrieval data.")
    from embedsvc.export.cli import export_command

    app.command("export")(export_command)
    from embedsvc.rag.bench import bench_app, datastore_app

    app.add_typer(bench_app, name="bench", help="Benchmarks (speculative decoding).")
    app.add_typer(datastore_app, name="datastore", help="DReSD / REST datastores.")


_mount_subcommands()


if __name__ == "__main__":
    app()
