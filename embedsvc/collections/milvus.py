"""Collections on Milvus (``backend: milvus``): Milvus holds the documents and is their truth.

One embedsvc collection is one Milvus collection (``<prefix><name>``, ``-`` and ``.`` escaped)
with the fields ``id`` (VARCHAR primary key), ``vector`` (FLOAT_VECTOR, or BINARY_VECTOR for
binary strategies), ``text``, ``metadata`` (JSON) and ``payload`` (a strategy's rescoring payload,
base64). Its settings (``CollectionMeta``) are the Milvus collection's description, so every
embedsvc process pointing at one Milvus sees the same collections; nothing is copied into SQLite
or FAISS files here.

Where Milvus runs: ``milvus.uri`` in the config. None = the embedded milvus-lite database
``<data_dir>/milvus.db`` (milvus-lite 2.5, which runs Milvus's own C++ engine, segcore and
knowhere, as a child process on a Unix socket; one process per file, which the data folder's
owner lock already guarantees). ``http://host:19530`` = a Milvus standalone or cluster.

Index kinds map onto Milvus index types: ``flat`` -> FLAT, ``ivf`` -> IVF_FLAT (nlist, nprobe),
``hnsw`` -> HNSW (M, efConstruction, ef), ``ivfpq`` -> IVF_PQ, ``binary`` -> BIN_FLAT (Hamming);
``index_config.milvus_index_type`` overrides the type (GPU_CAGRA, GPU_IVF_FLAT, DISKANN, ...).
milvus-lite builds only FLAT, IVF_FLAT and BIN_FLAT; it refuses the others, which this module
reports as FAILED_PRECONDITION: they are passed through for a cluster and not exercised here.

Scores are the FAISS backend's: inner product for dense vectors, ``1 - 2 * hamming / bits`` for
binary codes. Reads use the configured consistency level (Strong by default: a search sees every
acknowledged write, as with FAISS).

Durability is Milvus's: a write is acknowledged after Milvus accepted it, i.e. after it is in
Milvus's write-ahead log (the message queue of a cluster: Pulsar, Kafka or Woodpecker; the local
database file for milvus-lite). An insert or delete request is applied whole; an upsert is a
delete plus an insert of the same rows in one request. ``checkpoint`` is a no-op: Milvus flushes
segments to object storage by itself.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import logging
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from embedsvc.collections.collection import (
    CollectionMeta,
    Hit,
    UpsertResult,
    check_documents,
    check_embedding,
)
from embedsvc.collections.milvus_filter import expressible, filter_expression, string_literal
from embedsvc.collections.store import Document, canonical_metadata
from embedsvc.config import MilvusConfig
from embedsvc.errors import (
    EmbedsvcError,
    FailedPrecondition,
    InvalidArgument,
    Unavailable,
)
from embedsvc.strategies.base import Embedding

log = logging.getLogger(__name__)

EMBEDDED_FILE = "milvus.db"
MAX_VARCHAR = 65_535  # bytes, Milvus's VARCHAR limit
MAX_ID = 512
_DESCRIPTION_TAG = "embedsvc:"
_ESCAPES = {"_": "__", "-": "_d", ".": "_p"}
_CHUNK = 500  # ids per `id in [...]` expression
_OUTPUT = ["text", "metadata"]

#: embedsvc index kind -> (Milvus index type, build params, search params) from an IndexConfig
_KINDS = {
    "flat": lambda c, d: ("FLAT", {}, {}),
    "ivf": lambda c, d: ("IVF_FLAT", {"nlist": c.nlist or 128}, {"nprobe": c.nprobe}),
    "hnsw": lambda c, d: (
        "HNSW",
        {"M": c.hnsw_m, "efConstruction": c.ef_construction},
        {"ef": c.ef_search},
    ),
    "ivfpq": lambda c, d: (
        "IVF_PQ",
        {"nlist": c.nlist or 128, "m": c.pq_m or _divisor(d), "nbits": c.pq_nbits},
        {"nprobe": c.nprobe},
    ),
    "binary": lambda c, d: ("BIN_FLAT", {}, {}),
}


def _divisor(dim: int) -> int:
    m = max(1, dim // 8)
    while dim % m:
        m -= 1
    return m


def milvus_name(prefix: str, name: str) -> str:
    """An injective map of embedsvc names (``[A-Za-z0-9_.-]``) onto Milvus names."""
    return prefix + "".join(_ESCAPES.get(c, c) for c in name)


def embedsvc_name(prefix: str, milvus: str) -> str | None:
    """The inverse of :func:`milvus_name`; None for a Milvus collection that is not ours."""
    if not milvus.startswith(prefix):
        return None
    out, rest = [], iter(milvus[len(prefix) :])
    back = {v[1]: k for k, v in _ESCAPES.items()}
    for c in rest:
        out.append(back.get(next(rest, ""), "?") if c == "_" else c)
    return "".join(out)


def index_spec(meta: CollectionMeta) -> tuple[str, str, dict, dict]:
    """(metric, Milvus index type, build params, search params) of a collection."""
    index_type, build, search = _KINDS[meta.index_kind](meta.index_config, meta.dim)
    if meta.index_config.milvus_index_type:
        index_type, build, search = meta.index_config.milvus_index_type, {}, {}
    metric = "HAMMING" if meta.output_kind == "binary" else "IP"
    return metric, index_type, build, search


def ids_expression(ids: Sequence[str]) -> str:
    """``id in ["a", "b"]`` with escaped literals (pymilvus' own ``ids=`` quotes nothing)."""
    return f"id in [{', '.join(string_literal(i) for i in ids)}]"


@contextlib.contextmanager
def milvus_errors(what: str) -> Iterator[None]:
    """Milvus failures as embedsvc errors with a message a person can act on."""
    try:
        yield
    except EmbedsvcError:
        raise
    except Exception as exc:
        from pymilvus.exceptions import MilvusException

        if not isinstance(exc, MilvusException):
            raise
        message = str(getattr(exc, "message", "") or exc).strip()
        if "index type" in message.lower():
            raise FailedPrecondition(
                f"{what}: Milvus refused the index type ({message}); milvus-lite builds FLAT, "
                "IVF_FLAT and BIN_FLAT only: use index kind flat, ivf or binary there, or a "
                "Milvus cluster for hnsw, ivfpq and GPU index types",
                field="index_kind",
            ) from None
        if "invalid" in message.lower() or "exceed" in message.lower():
            raise InvalidArgument(f"{what}: Milvus refused it: {message}") from None
        raise Unavailable(f"{what}: Milvus failed: {message}") from None


def _connect(uri: str, config: MilvusConfig) -> Any:
    try:
        from pymilvus import MilvusClient
    except ImportError as exc:  # pragma: no cover - the extra is missing
        raise FailedPrecondition(
            "a Milvus collection needs the milvus extra: pip install 'embedsvc[milvus]'"
        ) from exc
    kwargs: dict[str, Any] = {"uri": uri, "timeout": config.timeout_s}
    if config.token:
        kwargs["token"] = config.token
    if config.db_name:
        kwargs["db_name"] = config.db_name
    try:
        return MilvusClient(**kwargs)
    except Exception as exc:  # noqa: BLE001 - any connection failure
        raise Unavailable(f"cannot reach Milvus at {uri}: {exc}") from None


class MilvusCatalog:
    """The Milvus collections of one embedsvc process; connects on first use."""

    def __init__(self, config: MilvusConfig, data_dir: Path) -> None:
        self.config = config
        self.embedded = config.uri is None
        self.uri = config.uri or str(Path(data_dir).absolute() / EMBEDDED_FILE)
        self._client: Any = None
        self._lock = threading.Lock()

    @property
    def in_use(self) -> bool:
        """Whether Milvus may hold collections: a configured URI, or an embedded file exists."""
        return not self.embedded or Path(self.uri).exists() or self._client is not None

    @property
    def client(self) -> Any:
        with self._lock:
            if self._client is None:
                self._client = _connect(self.uri, self.config)
            return self._client

    def milvus_name(self, name: str) -> str:
        return milvus_name(self.config.collection_prefix, name)

    def names(self) -> list[str]:
        if not self.in_use:
            return []
        with milvus_errors("listing Milvus collections"):
            found = self.client.list_collections(timeout=self.config.timeout_s)
        names = (embedsvc_name(self.config.collection_prefix, m) for m in found)
        return sorted(n for n in names if n is not None and self.meta(n) is not None)

    def meta(self, name: str) -> CollectionMeta | None:
        """The stored settings of ``name``, or None when Milvus has no such collection."""
        if not self.in_use:
            return None
        target = self.milvus_name(name)
        with milvus_errors(f"reading collection {name!r}"):
            if not self.client.has_collection(target, timeout=self.config.timeout_s):
                return None
            description = self.client.describe_collection(target, timeout=self.config.timeout_s)
        text = description.get("description") or ""
        if not text.startswith(_DESCRIPTION_TAG):
            return None
        return CollectionMeta.model_validate_json(text[len(_DESCRIPTION_TAG) :])

    def create(self, meta: CollectionMeta) -> MilvusCollection:
        from pymilvus import DataType, MilvusClient

        metric, index_type, build, _ = index_spec(meta)
        schema = MilvusClient.create_schema(
            auto_id=False,
            enable_dynamic_field=False,
            description=_DESCRIPTION_TAG + meta.model_dump_json(),
        )
        schema.add_field("id", DataType.VARCHAR, is_primary=True, max_length=MAX_ID)
        vector_type = (
            DataType.BINARY_VECTOR if meta.output_kind == "binary" else DataType.FLOAT_VECTOR
        )
        schema.add_field("vector", vector_type, dim=meta.dim)
        schema.add_field("text", DataType.VARCHAR, max_length=MAX_VARCHAR)
        schema.add_field("metadata", DataType.JSON)
        schema.add_field("payload", DataType.VARCHAR, max_length=MAX_VARCHAR)
        # what an upsert compares to skip identical rows (a growing segment with an IVF interim
        # index cannot return its raw vectors)
        schema.add_field("digest", DataType.VARCHAR, max_length=64)
        target = self.milvus_name(meta.name)
        client = self.client
        index = client.prepare_index_params()
        index.add_index("vector", index_type=index_type, metric_type=metric, params=build)
        with milvus_errors(f"creating collection {meta.name!r}"):
            try:
                client.create_collection(
                    target,
                    schema=schema,
                    index_params=index,
                    consistency_level=self.config.consistency_level,
                    timeout=self.config.timeout_s,
                )
            except Exception:
                with contextlib.suppress(Exception):  # no half-made collection stays visible
                    client.drop_collection(target, timeout=self.config.timeout_s)
                raise
        return MilvusCollection(self, meta)

    def open(self, meta: CollectionMeta) -> MilvusCollection:
        return MilvusCollection(self, meta)

    def drop(self, name: str) -> None:
        with milvus_errors(f"deleting collection {name!r}"):
            self.client.drop_collection(self.milvus_name(name), timeout=self.config.timeout_s)

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                with contextlib.suppress(Exception):
                    self._client.close()
                self._client = None


class MilvusCollection:
    """The ``Collection`` interface (upsert, delete, search, get, ...) over one Milvus
    collection; the manager creates and opens these."""

    directory = None  # no files of its own

    def __init__(self, catalog: MilvusCatalog, meta: CollectionMeta) -> None:
        self.catalog = catalog
        self.meta = meta
        self.milvus_name = catalog.milvus_name(meta.name)
        self._closed = False
        self._write_lock = threading.Lock()  # upsert's read-compare-write is one step
        self._metric, self._index_type, _, self._search_params = index_spec(meta)

    # ------------------------------------------------------------- properties
    name = property(lambda self: self.meta.name)
    strategy = property(lambda self: self.meta.strategy)
    output_kind = property(lambda self: self.meta.output_kind)
    dim = property(lambda self: self.meta.dim)
    index_kind = property(lambda self: self.meta.index_kind)

    @property
    def count(self) -> int:
        self._check_open()
        with milvus_errors(f"counting collection {self.name!r}"):
            rows = self._client.query(
                self.milvus_name, filter="", output_fields=["count(*)"], **self._read_opts()
            )
        return int(rows[0]["count(*)"])

    # ------------------------------------------------------------------ writes
    def upsert(
        self,
        ids: Sequence[str],
        texts: Sequence[str],
        metadatas: Sequence[dict[str, Any] | None] | None,
        embedding: Embedding,
    ) -> UpsertResult:
        """Insert new ids, update changed ones, skip identical ones; acknowledged by Milvus
        when it returns."""
        self._check_open()
        ids, texts = list(ids), list(texts)
        metas = list(metadatas) if metadatas is not None else [None] * len(ids)
        check_documents(ids, texts, metas, embedding)
        vectors = check_embedding(self.meta, embedding, "embedding")
        payloads = getattr(embedding, "payloads", None)
        if payloads is not None and len(payloads) != len(ids):
            raise InvalidArgument(f"{len(payloads)} payloads for {len(ids)} documents")
        meta_json = [canonical_metadata(m, f"metadatas[{i}]") for i, m in enumerate(metas)]
        encoded = [base64.b64encode(p).decode() if p else "" for p in (payloads or [b""] * 0)]
        for i, (id_, text) in enumerate(zip(ids, texts, strict=True)):
            if not expressible(id_):
                raise InvalidArgument(
                    "a Milvus collection cannot take document ids with line breaks (Milvus "
                    "expressions cannot name them)",
                    field=f"ids[{i}]",
                )
            if len(id_.encode()) > MAX_ID:
                raise InvalidArgument(
                    f"document id of {len(id_.encode())} bytes: a Milvus collection takes ids "
                    f"of at most {MAX_ID} bytes",
                    field=f"ids[{i}]",
                )
            if len(text.encode()) > MAX_VARCHAR or (encoded and len(encoded[i]) > MAX_VARCHAR):
                raise InvalidArgument(
                    f"texts[{i}] (or its payload) is over {MAX_VARCHAR:,} bytes, the most a "
                    "Milvus VARCHAR field stores: split the document",
                    field=f"texts[{i}]",
                )
        if not ids:
            return UpsertResult(0, 0, 0)
        with self._write_lock:
            self._check_open()
            stored = self._rows(ids, ["text", "metadata", "digest"])
            rows, inserted, updated = [], 0, 0
            for i, id_ in enumerate(ids):
                old = stored.get(id_)
                vector = vectors[i]
                payload = encoded[i] if encoded else ""
                digest = hashlib.sha256(vector.tobytes() + payload.encode()).hexdigest()
                if old is not None:
                    same = (
                        old["text"] == texts[i]
                        and canonical_metadata(old["metadata"]) == meta_json[i]
                        and old["digest"] == digest
                    )
                    if same:
                        continue
                    updated += 1
                else:
                    inserted += 1
                rows.append(
                    {
                        "id": id_,
                        "vector": vector.tobytes()
                        if self.output_kind == "binary"
                        else vector.tolist(),
                        "text": texts[i],
                        "metadata": json.loads(meta_json[i]),
                        "payload": payload,
                        "digest": digest,
                    }
                )
            if rows:
                with milvus_errors(f"writing to collection {self.name!r}"):
                    self._client.upsert(self.milvus_name, rows, timeout=self._timeout)
        return UpsertResult(inserted, updated, len(ids) - inserted - updated)

    def delete(self, ids: Sequence[str]) -> int:
        """Delete documents by id (unknown ids are ignored); returns how many were deleted."""
        self._check_open()
        ids = list(dict.fromkeys(ids))
        if not ids:
            return 0
        with self._write_lock:
            self._check_open()
            found = list(self._rows(ids, ["id"]))
            for chunk in _chunks(found):
                with milvus_errors(f"deleting from collection {self.name!r}"):
                    self._client.delete(
                        self.milvus_name, filter=ids_expression(chunk), timeout=self._timeout
                    )
        return len(found)

    # ------------------------------------------------------------------- reads
    def search(
        self, query_embedding: Embedding, k: int, filter: dict[str, Any] | None = None
    ) -> list[list[Hit]]:
        """Best ``k`` documents per query, best first; ``filter`` = metadata equalities."""
        self._check_open()
        if k < 1:
            raise InvalidArgument(f"k must be >= 1, got {k}", field="k")
        queries = check_embedding(self.meta, query_embedding, "query embedding")
        expression = filter_expression(filter)
        binary = self.output_kind == "binary"
        data = [q.tobytes() for q in queries] if binary else queries.tolist()
        params = dict(self._search_params)
        if "ef" in params:
            params["ef"] = max(params["ef"], k)
        with milvus_errors(f"searching collection {self.name!r}"):
            results = self._client.search(
                self.milvus_name,
                data=data,
                anns_field="vector",
                filter=expression,
                limit=k,
                output_fields=_OUTPUT,
                search_params={"metric_type": self._metric, "params": params},
                **self._read_opts(),
            )
        out = []
        for row in results:
            hits = []
            for hit in row:
                entity = hit.get("entity", {})
                distance = float(hit["distance"])
                score = 1.0 - 2.0 * distance / self.dim if binary else distance
                hits.append(
                    Hit(str(hit["id"]), score, entity.get("text", ""), entity.get("metadata") or {})
                )
            out.append(hits)
        return out

    def get(self, ids: Sequence[str]) -> list[Document | None]:
        """Stored documents by id, None where unknown."""
        self._check_open()
        found = self._rows(list(ids), ["text", "metadata"])
        return [
            Document(0, i, found[i]["text"], found[i]["metadata"] or {}) if i in found else None
            for i in ids
        ]

    def payloads(self, ids: Sequence[str]) -> dict[str, bytes]:
        """The strategy payloads stored with these documents (``Embedding.payloads``)."""
        self._check_open()
        rows = self._rows(list(ids), ["payload"])
        return {i: base64.b64decode(r["payload"]) for i, r in rows.items() if r["payload"]}

    def describe(self) -> dict[str, Any]:
        self._check_open()
        count = self.count
        return {
            "name": self.name,
            "strategy": self.strategy,
            "output_kind": self.output_kind,
            "dim": self.dim,
            "index_kind": self.index_kind,
            "index_config": self.meta.index_config.model_dump(),
            "backend": "milvus",
            "milvus_collection": self.milvus_name,
            "milvus_index_type": self._index_type,
            "milvus_uri": self.catalog.uri,
            "count": count,
            "index_count": count,
            "created_at": self.meta.created_at,
        }

    # --------------------------------------------------------------- lifecycle
    def checkpoint(self) -> bool:
        """Nothing to snapshot: Milvus persists its own segments."""
        self._check_open()
        return False

    def close(self, checkpoint: bool = True) -> None:  # noqa: ARG002 - same signature as FAISS
        self._closed = True

    # ---------------------------------------------------------------- internal
    @property
    def _client(self) -> Any:
        return self.catalog.client

    @property
    def _timeout(self) -> float:
        return self.catalog.config.timeout_s

    def _read_opts(self) -> dict[str, Any]:
        return {
            "timeout": self._timeout,
            "consistency_level": self.catalog.config.consistency_level,
        }

    def _check_open(self) -> None:
        if self._closed:
            raise FailedPrecondition(f"collection {self.name!r} is closed or was deleted")

    def _rows(self, ids: list[str], fields: list[str]) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        # an id no expression can name cannot have been stored
        wanted = [i for i in dict.fromkeys(ids) if isinstance(i, str) and i and expressible(i)]
        for chunk in _chunks(wanted):
            with milvus_errors(f"reading collection {self.name!r}"):
                rows = self._client.query(
                    self.milvus_name,
                    filter=ids_expression(chunk),
                    output_fields=[f for f in fields if f != "id"] or ["id"],
                    **self._read_opts(),
                )
            out.update((r["id"], r) for r in rows)
        return out


def _chunks(items: list) -> Iterator[list]:
    for start in range(0, len(items), _CHUNK):
        yield items[start : start + _CHUNK]
