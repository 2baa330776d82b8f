"""A collection: one strategy's embeddings in one vector index, with their documents in SQLite.

Durability: the SQLite store (``docs.sqlite``) is the source of truth and a write returns only
after its transaction committed with fsync. The index is derived state: ``checkpoint()`` (and
``close()``) snapshots it to ``index.faiss`` and then records the store generation it reflects in
``index.json`` (each file written atomically: tmp, fsync, rename, fsync dir). Opening loads the
snapshot and replays the store's changes since that generation (deletions and rows written later;
replay is idempotent, so a snapshot newer than its ``index.json`` is harmless); with no usable
snapshot it rebuilds the index from the stored vectors. A crash therefore loses nothing
acknowledged and costs at most a replay.

Dual strategies (``Embedding.sparse``, e.g. ``dupmae_dual``) also get a sparse side index
(``embedsvc.indexes.sparse.SparseIndex``, exact): each document's sparse vector is stored in the
same SQLite transaction as its dense vector (the payload column), and the side index is rebuilt
from the store on every open, so it can never disagree with the store after a crash. A search
then fuses the dense and sparse top-N (``embedsvc.indexes.fusion.convex_fuse``).

Concurrency: a readers-writer lock; searches share it, writes (store commit + index update) and
snapshots exclude writers. The index itself is not thread-safe.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, Field

from embedsvc.collections.rwlock import RWLock
from embedsvc.collections.storage import read_only_message, storage_guarded, writable
from embedsvc.collections.store import DocStore, Document, canonical_metadata
from embedsvc.errors import FailedPrecondition, InvalidArgument
from embedsvc.indexes import IndexConfig, VectorIndex, create_index, load_index
from embedsvc.indexes.base import write_atomic
from embedsvc.indexes.fusion import convex_fuse
from embedsvc.indexes.sparse import SparseIndex, csr_rows_to_bytes, decode_sparse_rows
from embedsvc.strategies.base import Embedding, OutputKind

log = logging.getLogger(__name__)

META_FILE = "meta.json"
DOCS_FILE = "docs.sqlite"
INDEX_FILE = "index.faiss"  # a VectorIndex.save bundle (npz of serialised faiss indexes)
SNAPSHOT_FILE = "index.json"
#: candidates per channel that a fused (dense + sparse) search combines
FUSION_DEPTH = 100


class CollectionMeta(BaseModel):
    """What ``meta.json`` holds; fixed at creation."""

    format: int = 1
    name: str
    strategy: str
    output_kind: OutputKind
    dim: int = Field(ge=1)
    index_kind: str
    index_config: IndexConfig = Field(default_factory=IndexConfig)
    #: width of the sparse side index (vocabulary size) for dual strategies; None = dense only
    sparse_vocab: int | None = Field(None, ge=1)
    #: where documents and vectors live: this folder's SQLite + FAISS files, or Milvus
    backend: Literal["faiss", "milvus"] = "faiss"
    created_at: str = Field(default_factory=lambda: datetime.now(timezone.utc).isoformat())


@dataclass
class Hit:
    id: str
    score: float
    text: str
    metadata: dict[str, Any]


@dataclass(frozen=True)
class UpsertResult:
    """Counts of an upsert. Unpacks as ``(inserted, updated)``; ``unchanged`` counts documents
    that were already stored identically (a retried request), which are not rewritten."""

    inserted: int
    updated: int
    unchanged: int

    def __iter__(self):
        return iter((self.inserted, self.updated))


def check_embedding(meta: CollectionMeta, embedding: Embedding, what: str) -> np.ndarray:
    """The embedding's vectors as a contiguous [n, width] array of the collection's kind."""
    kind = getattr(embedding, "kind", None)
    if kind != meta.output_kind:
        raise FailedPrecondition(
            f"collection {meta.name!r} stores {meta.output_kind} embeddings of strategy "
            f"{meta.strategy!r} (index kind {meta.index_kind!r}), got a {kind} {what}"
        )
    vectors = np.asarray(embedding.vectors)
    if vectors.ndim == 1:
        vectors = vectors.reshape(1, -1)
    width = meta.dim // 8 if meta.output_kind == "binary" else meta.dim
    if vectors.ndim != 2 or vectors.shape[1] != width:
        raise InvalidArgument(
            f"collection {meta.name!r} has dimension {meta.dim}; {what} has shape "
            f"{list(vectors.shape)} (expected [n, {width}])"
        )
    dtype = np.uint8 if meta.output_kind == "binary" else np.float32
    return np.ascontiguousarray(vectors, dtype=dtype)


def check_documents(ids: list, texts: list, metas: list, embedding: Embedding) -> None:
    """Equal lengths, non-empty string ids, string texts, no id twice."""
    if not (len(ids) == len(texts) == len(metas) == len(embedding)):
        raise InvalidArgument(
            f"ids ({len(ids)}), texts ({len(texts)}), metadatas ({len(metas)}) and "
            f"embeddings ({len(embedding)}) must have the same length"
        )
    for i, (id_, text) in enumerate(zip(ids, texts, strict=True)):
        if not isinstance(id_, str) or not id_:
            raise InvalidArgument("document ids must be non-empty strings", field=f"ids[{i}]")
        if not isinstance(text, str):
            raise InvalidArgument("texts must be strings", field=f"texts[{i}]")
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise InvalidArgument(f"document id {dup!r} appears twice in one request", field="ids")


class Collection:
    """Use ``CollectionManager`` to create and open collections; this class does the work."""

    def __init__(self, directory: Path, meta: CollectionMeta) -> None:
        self.directory = Path(directory)
        self.meta = meta
        self._lock = RWLock()
        self._snapshot_lock = threading.Lock()
        self._closed = False
        #: on a read-only mount: searches and reads work, writes fail with FAILED_PRECONDITION
        self.read_only = not writable(self.directory)
        self._store = DocStore(self.directory / DOCS_FILE, read_only=self.read_only)
        self._snapshot_generation = -1
        self._index = self._open_index()
        self._sparse = self._rebuild_sparse()

    # ------------------------------------------------------------- properties
    @property
    def name(self) -> str:
        return self.meta.name

    @property
    def strategy(self) -> str:
        return self.meta.strategy

    @property
    def output_kind(self) -> OutputKind:
        return self.meta.output_kind

    @property
    def dim(self) -> int:
        return self.meta.dim

    @property
    def index_kind(self) -> str:
        return self.meta.index_kind

    @property
    @storage_guarded("directory")
    def count(self) -> int:
        self._check_open()
        return self._store.count()

    # ------------------------------------------------------------------ writes
    @storage_guarded("directory")
    def upsert(
        self,
        ids: Sequence[str],
        texts: Sequence[str],
        metadatas: Sequence[dict[str, Any] | None] | None,
        embedding: Embedding,
    ) -> UpsertResult:
        """Insert new ids, update changed ones, skip identical ones; durable when it returns."""
        self._check_open()
        self.check_writable()
        ids, texts = list(ids), list(texts)
        metas = list(metadatas) if metadatas is not None else [None] * len(ids)
        check_documents(ids, texts, metas, embedding)
        vectors = self._check_embedding(embedding, "embedding")
        payloads = getattr(embedding, "payloads", None)
        sparse_rows = self._check_sparse(embedding, "embedding")
        if sparse_rows is not None:
            payloads = csr_rows_to_bytes(sparse_rows)
        if payloads is not None and len(payloads) != len(ids):
            raise InvalidArgument(f"{len(payloads)} payloads for {len(ids)} documents")
        meta_json = [canonical_metadata(m, f"metadatas[{i}]") for i, m in enumerate(metas)]
        if not ids:
            return UpsertResult(0, 0, 0)
        with self._lock.write():
            self._check_open()
            out = self._store.upsert(
                ids, texts, meta_json, [v.tobytes() for v in vectors], payloads
            )
            if out.vector_seqs:
                self._apply(
                    lambda: self._index.add(
                        np.asarray(out.vector_seqs, dtype=np.int64), vectors[out.vector_rows]
                    )
                )
                if self._sparse is not None and sparse_rows is not None:
                    self._apply_sparse(
                        lambda: self._sparse.add(  # type: ignore[union-attr]
                            np.asarray(out.vector_seqs, dtype=np.int64),
                            sparse_rows[out.vector_rows],
                        )
                    )
        return UpsertResult(out.inserted, out.updated, out.unchanged)

    @storage_guarded("directory")
    def delete(self, ids: Sequence[str]) -> int:
        """Delete documents by id (unknown ids are ignored); returns how many were deleted."""
        self._check_open()
        self.check_writable()
        ids = list(dict.fromkeys(ids))
        if not ids:
            return 0
        with self._lock.write():
            self._check_open()
            seqs = self._store.delete(ids)
            if seqs:
                self._apply(lambda: self._index.remove(np.asarray(seqs, dtype=np.int64)))
                if self._sparse is not None:
                    self._apply_sparse(
                        lambda: self._sparse.remove(  # type: ignore[union-attr]
                            np.asarray(seqs, dtype=np.int64)
                        )
                    )
        return len(seqs)

    # ------------------------------------------------------------------- reads
    @storage_guarded("directory")
    def search(
        self,
        query_embedding: Embedding,
        k: int,
        filter: dict[str, Any] | None = None,
        fusion_weight: float | None = None,
        fusion_depth: int = FUSION_DEPTH,
    ) -> list[list[Hit]]:
        """Best ``k`` documents per query, best first; ``filter`` = metadata equalities.

        With a sparse side index and a query embedding that carries ``sparse``, the dense and
        sparse top-``max(k, fusion_depth)`` are fused (``fusion_weight`` = dense share, default
        0.5) and the hits' scores are the fused ones.
        """
        self._check_open()
        if k < 1:
            raise InvalidArgument(f"k must be >= 1, got {k}", field="k")
        queries = self._check_embedding(query_embedding, "query embedding")
        q_sparse = self._check_sparse(query_embedding, "query embedding", required=False)
        with self._lock.read():
            self._check_open()
            allowed = self._store.filter_seqs(filter) if filter else None
            if self._sparse is not None and q_sparse is not None:
                scores, seqs = self._fused_search(
                    queries, q_sparse, k, allowed, fusion_weight, fusion_depth
                )
            else:
                scores, seqs = self._index.search(queries, k, allowed)
            docs = self._store.docs_by_seq(sorted({int(s) for s in seqs.ravel() if s >= 0}))
        return [
            [
                Hit(docs[s].id, float(sc), docs[s].text, docs[s].metadata)
                for sc, s in zip(row_s, row_i, strict=True)
                if s >= 0 and s in docs
            ]
            for row_s, row_i in zip(scores, seqs.tolist(), strict=True)
        ]

    @storage_guarded("directory")
    def get(self, ids: Sequence[str]) -> list[Document | None]:
        """Stored documents by id, None where unknown."""
        self._check_open()
        found = self._store.docs_by_id(list(ids))
        return [found.get(i) for i in ids]

    @storage_guarded("directory")
    def payloads(self, ids: Sequence[str]) -> dict[str, bytes]:
        """The strategy payloads stored with these documents (``Embedding.payloads``)."""
        self._check_open()
        return self._store.payloads_by_id(list(ids))

    @storage_guarded("directory")
    def describe(self) -> dict[str, Any]:
        self._check_open()
        with self._lock.read():
            return {
                "name": self.name,
                "strategy": self.strategy,
                "output_kind": self.output_kind,
                "dim": self.dim,
                "index_kind": self.index_kind,
                "index_config": self.meta.index_config.model_dump(),
                "backend": "faiss",
                "count": self._store.count(),
                "index_count": self._index.count,
                "sparse_count": None if self._sparse is None else self._sparse.count,
                "generation": self._store.generation,
                "snapshot_generation": self._snapshot_generation,
                "created_at": self.meta.created_at,
                "path": str(self.directory),
            }

    # --------------------------------------------------------------- lifecycle
    @storage_guarded("directory")
    def checkpoint(self) -> bool:
        """Snapshot the index if writes happened since the last one; True if it wrote one."""
        self._check_open()
        if self.read_only:
            return False  # nothing can have changed through a read-only mount
        with self._snapshot_lock, self._lock.read():  # readers go on; writers wait
            generation = self._store.generation
            if generation == self._snapshot_generation:
                return False
            self._index.save(self.directory / INDEX_FILE)
            snapshot = {
                "generation": generation,
                "kind": self.index_kind,
                "count": self._index.count,
            }
            write_atomic(
                self.directory / SNAPSHOT_FILE, lambda f: f.write(json.dumps(snapshot).encode())
            )
            self._store.prune_removed(generation)
            self._snapshot_generation = generation
            return True

    def close(self, checkpoint: bool = True) -> None:
        """Snapshot (unless told not to) and release the store; later calls fail."""
        if self._closed:
            return
        if checkpoint:
            try:
                self.checkpoint()
            except Exception:  # noqa: BLE001 - the store is the truth; reopen rebuilds
                log.exception("checkpoint of collection %r failed at close", self.name)
        with self._lock.write():
            self._closed = True
            self._store.close()

    # ---------------------------------------------------------------- internal
    def _check_open(self) -> None:
        if self._closed:
            raise FailedPrecondition(f"collection {self.name!r} is closed or was deleted")

    def check_writable(self) -> None:
        if self.read_only:
            raise FailedPrecondition(read_only_message(self.directory, "read-only file system"))

    def _check_embedding(self, embedding: Embedding, what: str) -> np.ndarray:
        return check_embedding(self.meta, embedding, what)

    def _check_sparse(self, embedding: Embedding, what: str, required: bool = True) -> Any:
        """The embedding's sparse rows as CSR for a collection with a sparse index, else None."""
        rows = getattr(embedding, "sparse", None)
        if self.meta.sparse_vocab is None:
            return None
        if rows is None:
            if required:
                raise FailedPrecondition(
                    f"collection {self.name!r} keeps a sparse index ({self.strategy!r} is a dual "
                    f"strategy); the {what} has no sparse part"
                )
            return None
        from scipy import sparse

        rows = sparse.csr_matrix(rows, dtype=np.float32)
        if rows.shape != (len(embedding), self.meta.sparse_vocab):
            raise InvalidArgument(
                f"{what}: sparse part has shape {list(rows.shape)}, expected "
                f"[{len(embedding)}, {self.meta.sparse_vocab}]"
            )
        return rows

    def _fused_search(
        self,
        queries: np.ndarray,
        q_sparse: Any,
        k: int,
        allowed: np.ndarray | None,
        weight: float | None,
        depth: int,
    ) -> tuple[np.ndarray, np.ndarray]:
        depth = max(k, depth)
        d_scores, d_seqs = self._index.search(queries, depth, allowed)
        s_scores, s_seqs = self._sparse.search(q_sparse, depth, allowed)  # type: ignore[union-attr]
        w = 0.5 if weight is None else float(weight)
        out_s = np.zeros((len(queries), k), np.float32)
        out_i = np.full((len(queries), k), -1, np.int64)
        for q in range(len(queries)):
            dense = {str(s): float(v) for v, s in zip(d_scores[q], d_seqs[q]) if s >= 0}
            sparse_run = {str(s): float(v) for v, s in zip(s_scores[q], s_seqs[q]) if s >= 0}
            for j, (seq, score) in enumerate(convex_fuse(dense, sparse_run, w, k)):
                out_s[q, j], out_i[q, j] = score, int(seq)
        return out_s, out_i

    def _apply_sparse(self, change: Any) -> None:
        """As :meth:`_apply`, for the sparse side index."""
        try:
            change()
        except Exception:
            log.exception("sparse index update failed in %r; rebuilding it", self.name)
            self._sparse = self._rebuild_sparse()

    def _rebuild_sparse(self) -> SparseIndex | None:
        """The sparse side index from the stored sparse vectors (None for dense-only)."""
        if self.meta.sparse_vocab is None:
            return None
        rows = self._store.all_payloads()
        index = SparseIndex(self.meta.sparse_vocab)
        if rows:
            seqs = np.array([r[0] for r in rows], np.int64)
            index.add(seqs, decode_sparse_rows([r[1] for r in rows], self.meta.sparse_vocab))
        return index

    def _decode(self, rows: list[tuple[int, bytes]]) -> tuple[np.ndarray, np.ndarray]:
        dtype = np.uint8 if self.output_kind == "binary" else np.float32
        width = self.dim // 8 if self.output_kind == "binary" else self.dim
        seqs = np.array([r[0] for r in rows], dtype=np.int64)
        vecs = np.frombuffer(b"".join(r[1] for r in rows), dtype=dtype).reshape(len(rows), width)
        return seqs, vecs

    def _apply(self, change: Any) -> None:
        """Apply a committed change to the index; if that fails, rebuild it from the store.

        The write is already durable, so it is not reported as failed unless the rebuild fails.
        """
        try:
            change()
        except Exception:
            log.exception("index update failed in %r; rebuilding it from the store", self.name)
            self._index = self._rebuild_index()

    def _rebuild_index(self) -> VectorIndex:
        index = create_index(self.index_kind, self.dim, self.meta.index_config)
        seqs, vecs = self._decode(list(self._store.vectors()))
        index.rebuild(seqs, vecs)
        return index

    def _open_index(self) -> VectorIndex:
        """Snapshot + replay of later changes, or a full rebuild from the stored vectors."""
        index = None
        snap_path, index_path = self.directory / SNAPSHOT_FILE, self.directory / INDEX_FILE
        if snap_path.exists() and index_path.exists():
            try:
                snap = json.loads(snap_path.read_text())
                generation = int(snap["generation"])
                loaded = load_index(index_path)
                if loaded.kind != self.index_kind or loaded.dim != self.dim:
                    raise ValueError(f"snapshot holds a {loaded.kind} index of dim {loaded.dim}")
                if generation > self._store.generation:
                    raise ValueError("snapshot is newer than the store")
                loaded.config = self.meta.index_config
                loaded.remove(self._store.removed_since(generation))
                seqs, vecs = self._decode(list(self._store.vectors(since_generation=generation)))
                loaded.add(seqs, vecs)
                if loaded.count != self._store.count():
                    raise ValueError(f"{loaded.count} vectors for {self._store.count()} documents")
                index, self._snapshot_generation = loaded, generation
            except Exception as exc:  # noqa: BLE001 - any bad snapshot: rebuild from the truth
                log.warning("index snapshot of %r unusable (%s); rebuilding", self.name, exc)
        return index if index is not None else self._rebuild_index()
