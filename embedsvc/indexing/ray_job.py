"""Batch indexing on Ray Data: ``embedsvc index FILE --collection C --engine ray``.

Why Ray Data rather than a home-made pool: the same job runs in local mode on one machine and on
a Ray cluster (``--address``) unchanged, with streaming execution (bounded memory), actor pools
that load the model once per worker, and back-pressure between reading and embedding.

The pipeline::

    shards (JSONL/JSONL.gz/Parquet; files, folders or globs)
      -> parse (tasks; ``embedsvc.documents`` row rules: id/_id, title + text, metadata)
      -> skip documents already stored with the same text and metadata (resume, idempotence)
      -> embed (``map_batches`` with a callable class: an actor pool, ``concurrency`` actors)
      -> driver: upsert into the collection in chunks (durable per chunk), progress bar

Order is preserved, so a repeated id ends as the last copy, as with the single-process
indexer. With ``server`` the documents are streamed to a running server's ``Upsert`` instead
(the API takes texts, so the server embeds; Ray parallelises reading and parsing, and the server
skips unchanged documents itself).

A data folder has one owning process (``collections.ownership``): without ``server`` the driver
owns the folder for the job's duration, so a job on a folder a server owns is refused at once
(use ``server``) and a server cannot start on a folder a job is writing. Only the driver opens
the folder; the actors get texts and return vectors.
"""

from __future__ import annotations

import glob
import hashlib
import json
import logging
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, Field

from embedsvc.config import ServiceConfig
from embedsvc.errors import InvalidArgument

log = logging.getLogger(__name__)

_SUFFIXES = (".jsonl", ".jsonl.gz", ".json", ".ndjson", ".parquet")


class RayIndexConfig(BaseModel):
    """One indexing job; every field but ``paths`` and ``collection`` has a working default."""

    model_config = {"extra": "forbid"}

    #: files, folders (every JSONL/Parquet file in them) or glob patterns
    paths: list[str]
    collection: str
    #: strategy (and index kind) used when the collection is created
    strategy: str = "mean"
    index_kind: str | None = None
    #: Ray cluster address ("auto", "ray://host:10001"); None = a local Ray in this process
    address: str | None = None
    #: embedding actors (each loads the model once)
    concurrency: int = Field(1, ge=1)
    num_cpus_per_actor: float = Field(1.0, gt=0)
    num_gpus_per_actor: float = Field(0.0, ge=0)
    #: texts per actor call
    batch_size: int = Field(256, ge=1)
    #: documents per durable upsert (and per Upsert message with ``server``)
    write_chunk: int = Field(1024, ge=1)
    #: host:port of a running server: write through its Upsert stream instead of directly
    server: str | None = None
    progress: bool = True


def resolve_paths(paths: list[str]) -> list[Path]:
    """Sorted shard files from files, folders and globs (folders: known suffixes only)."""
    out: list[Path] = []
    for spec in paths:
        path = Path(spec).expanduser()
        if path.is_dir():
            out += sorted(p for p in path.rglob("*") if p.name.lower().endswith(_SUFFIXES))
        elif path.is_file():
            out.append(path)
        else:
            matches = sorted(Path(p) for p in glob.glob(str(path), recursive=True))
            out += [p for p in matches if p.is_file() and p.name.lower().endswith(_SUFFIXES)]
    if not out:
        raise InvalidArgument(f"no JSONL/Parquet shards found in {paths}", field="paths")
    return list(dict.fromkeys(p.resolve() for p in out))


def doc_digest(text: str, metadata_json: str) -> bytes:
    """What "already stored identically" compares: text + canonical metadata JSON."""
    h = hashlib.blake2b(digest_size=16)
    h.update(text.encode("utf-8"))
    h.update(b"\0")
    h.update(metadata_json.encode("utf-8"))
    return h.digest()


def stored_digests(collection_dir: Path) -> dict[str, bytes]:
    """``{id: digest}`` of what a collection stores, read from its SQLite store read-only.

    Taken once when the job starts and shipped to the filter tasks through the object store,
    so workers on other machines need no access to the collection's disk.
    """
    from embedsvc.collections.collection import DOCS_FILE

    path = Path(collection_dir) / DOCS_FILE
    if not path.is_file():
        return {}
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return {
            id_: doc_digest(text, meta)
            for id_, text, meta in conn.execute("SELECT id, text, metadata FROM docs")
        }
    finally:
        conn.close()


def _parse_lines(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    from embedsvc.documents import _row_to_document

    docs = []
    for line in batch["text"]:
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InvalidArgument(f"a shard line is not valid JSON ({exc.msg})") from None
        if not isinstance(row, dict):
            raise InvalidArgument("expected a JSON object per line")
        docs.append(_row_to_document(row, "ray shard"))
    return _columns(docs)


def _parse_table(table: Any) -> dict[str, np.ndarray]:
    from embedsvc.documents import _row_to_document

    return _columns([_row_to_document(row, "ray shard") for row in table.to_pylist()])


def _columns(docs: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    from embedsvc.collections.store import canonical_metadata

    return {
        "id": np.array([d["id"] for d in docs], dtype=object),
        "text": np.array([d["text"] for d in docs], dtype=object),
        "metadata": np.array([canonical_metadata(d["metadata"]) for d in docs], dtype=object),
    }


class _SkipStored:
    """Drops documents stored with the same text and metadata (the resume/idempotence step)."""

    def __init__(self, stored: Any) -> None:
        import ray

        # an ObjectRef inside constructor args is not resolved by Ray Data: fetch it once here
        self.stored = ray.get(stored) if isinstance(stored, ray.ObjectRef) else stored

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        keep = [
            self.stored.get(i) != doc_digest(t, m)
            for i, t, m in zip(batch["id"], batch["text"], batch["metadata"])
        ]
        mask = np.asarray(keep, dtype=bool)
        return {k: v[mask] for k, v in batch.items()}


class Embedder:
    """The actor: loads the strategy once (torch or ONNX, as the service config says)."""

    def __init__(self, strategy: str, config: dict[str, Any]) -> None:
        from embedsvc.export.startup import prepare

        # exports (once, under a file lock) when the runtime is ONNX and no export exists yet
        self.strategy = prepare(strategy, ServiceConfig(**config))

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from embedsvc.strategies import Role

        texts = [str(t) for t in batch["text"]]
        if not texts:
            out = dict(batch)
            out["vector"] = np.zeros((0, 0), np.float32)
            out["tokens"] = np.zeros(0, np.int64)
            return out
        emb = self.strategy.encode(texts, Role.PASSAGE, normalize=True)
        out = dict(batch)
        out["vector"] = emb.vectors
        out["tokens"] = emb.token_counts
        return out


def build_dataset(job: RayIndexConfig, files: list[Path], stored: dict[str, bytes] | None) -> Any:
    """The lazy Ray dataset of documents to write (with vectors unless ``job.server``)."""
    import ray

    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True  # last copy of a repeated id wins
    ctx.enable_progress_bars = False  # the driver's tqdm counts written documents
    lines = [str(f) for f in files if not f.name.lower().endswith(".parquet")]
    tables = [str(f) for f in files if f.name.lower().endswith(".parquet")]
    parts = []
    plain = [f for f in lines if not f.lower().endswith(".gz")]
    gz = [f for f in lines if f.lower().endswith(".gz")]
    if plain:
        parts.append(ray.data.read_text(plain).map_batches(_parse_lines, batch_format="numpy"))
    if gz:
        ds = ray.data.read_text(gz, arrow_open_stream_args={"compression": "gzip"})
        parts.append(ds.map_batches(_parse_lines, batch_format="numpy"))
    if tables:
        parts.append(
            ray.data.read_parquet(tables).map_batches(_parse_table, batch_format="pyarrow")
        )
    ds = parts[0].union(*parts[1:]) if len(parts) > 1 else parts[0]
    if stored:
        ds = ds.map_batches(
            _SkipStored,
            fn_constructor_args=(ray.put(stored),),
            compute=ray.data.ActorPoolStrategy(size=1),
        )
    return ds


def _ensure_ray(address: str | None) -> None:
    import ray

    if ray.is_initialized():
        return
    if address:
        ray.init(address=address, log_to_driver=False)
    else:
        ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False)


def _chunks(ds: Any, size: int) -> Iterator[dict[str, np.ndarray]]:
    yield from ds.iter_batches(batch_size=size, batch_format="numpy", prefetch_batches=1)


def _dedupe(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Keep the last copy of each id within a chunk (the store refuses repeats per request)."""
    ids = list(batch["id"])
    last = {id_: i for i, id_ in enumerate(ids)}
    if len(last) == len(ids):
        return batch
    keep = np.asarray(sorted(last.values()), dtype=np.int64)
    return {k: v[keep] for k, v in batch.items()}


def run_ray_index(job: RayIndexConfig, service: ServiceConfig | None = None) -> dict[str, int]:
    """Run the job to completion; returns counts like the single-process indexer's.

    ``unchanged`` includes documents the skip step dropped before embedding. Safe to re-run
    after a crash: everything acknowledged is in the collection and is skipped next time.
    """
    service = service or ServiceConfig()
    files = resolve_paths(job.paths)
    total = _count(files)
    if job.server:
        _ensure_ray(job.address)
        return _run_via_server(job, files, total)
    from embedsvc.collections.manager import CollectionManager
    from embedsvc.errors import NotFound
    from embedsvc.strategies import strategy_class

    kind = strategy_class(job.strategy).output_kind
    counts = {"received": 0, "inserted": 0, "updated": 0, "unchanged": 0}
    # the driver owns the data folder for the whole job (refused at once, before Ray starts, if
    # a server or another job owns it); workers never touch it
    manager = CollectionManager(service.data_dir)
    try:
        _ensure_ray(job.address)
        import ray

        try:
            coll = manager.get(job.collection)
            if coll.meta.backend != "faiss":
                from embedsvc.errors import FailedPrecondition

                raise FailedPrecondition(
                    f"collection {job.collection!r} is a Milvus collection; the Ray job writes "
                    "FAISS collections: index it with `embedsvc index` (in-process or --server)"
                )
            stored = stored_digests(coll.directory)
            strategy = coll.strategy
        except NotFound:
            coll, stored, strategy = None, {}, job.strategy
        ds = build_dataset(job, files, stored)
        ds = ds.map_batches(
            Embedder,
            fn_constructor_args=(strategy, _actor_config(service)),
            batch_size=job.batch_size,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=job.concurrency),
            num_cpus=job.num_cpus_per_actor,
            num_gpus=job.num_gpus_per_actor or None,
        )
        bar = _progress(job, total)
        written = 0
        for batch in _chunks(ds, job.write_chunk):
            batch = _dedupe(batch)
            n = len(batch["id"])
            if not n:
                continue
            vectors = np.ascontiguousarray(np.stack(list(batch["vector"])))
            if coll is None:
                coll = _create(
                    manager,
                    job,
                    strategy,
                    kind,
                    int(vectors.shape[1]) * (8 if kind == "binary" else 1),
                )
            res = coll.upsert(
                [str(i) for i in batch["id"]],
                [str(t) for t in batch["text"]],
                [json.loads(m) for m in batch["metadata"]],
                _embedding(kind, vectors, batch["tokens"]),
            )
            counts["inserted"] += res.inserted
            counts["updated"] += res.updated
            counts["unchanged"] += res.unchanged
            written += n
            if bar is not None:
                bar.update(n)
        counts["received"] = total
        counts["unchanged"] += total - written  # skipped before embedding, or repeated ids
        if coll is not None:
            coll.checkpoint()
        if bar is not None:
            bar.close()
    finally:
        manager.close()
    return counts


def _embedding(kind: str, vectors: np.ndarray, tokens: np.ndarray) -> Any:
    from embedsvc.strategies import Embedding

    dim = vectors.shape[1] * (8 if kind == "binary" else 1)
    tokens = np.asarray(tokens, dtype=np.int64)
    return Embedding(kind, vectors, dim, tokens, np.zeros_like(tokens))


def _create(manager: Any, job: RayIndexConfig, strategy: str, kind: str, dim: int) -> Any:
    index_kind = job.index_kind or ("binary" if kind == "binary" else "flat")
    return manager.create(
        job.collection, strategy=strategy, output_kind=kind, dim=dim, index_kind=index_kind
    )


def _actor_config(service: ServiceConfig) -> dict[str, Any]:
    """What an actor needs of the service config (plain JSON: it crosses processes)."""
    return {
        "runtime": service.runtime,
        "cache_dir": str(service.cache_dir),
        "torch_threads": service.torch_threads,
    }


def _count(files: list[Path]) -> int:
    from embedsvc.documents import count_documents

    return sum(count_documents(f) or 0 for f in files)


def _progress(job: RayIndexConfig, total: int) -> Any:
    if not job.progress:
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit="doc", desc=f"index {job.collection} (ray)")


def _run_via_server(job: RayIndexConfig, files: list[Path], total: int) -> dict[str, int]:
    import grpc

    from embedsvc.client import EmbedsvcClient

    ds = build_dataset(job, files, None)
    bar = _progress(job, total)

    def documents() -> Iterator[dict[str, Any]]:
        for batch in _chunks(ds, job.write_chunk):
            for i, t, m in zip(batch["id"], batch["text"], batch["metadata"]):
                yield {"id": str(i), "text": str(t), "metadata": json.loads(m)}
            if bar is not None:
                bar.update(len(batch["id"]))

    with EmbedsvcClient(job.server) as client:
        try:
            client.get_collection(job.collection)
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.NOT_FOUND:
                raise
            client.create_collection(
                job.collection, strategy=job.strategy, index_kind=job.index_kind or ""
            )
        response = client.upsert(job.collection, documents(), chunk_size=job.write_chunk)
    if bar is not None:
        bar.close()
    return {
        "received": response.received,
        "inserted": response.inserted,
        "updated": response.updated,
        "unchanged": response.unchanged,
    }
