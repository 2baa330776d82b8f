"""SQLite document store: the source of truth of a collection.

One row per document: ``seq`` (INTEGER PRIMARY KEY AUTOINCREMENT, never reused) is the int64 id
the vector index knows the document by; ``id`` is the caller's string id. The vector is kept as
raw bytes so the index can always be rebuilt from here.

Durability: WAL journal + ``synchronous=FULL`` means a transaction is on disk when ``COMMIT``
returns, so callers acknowledge a write only after the store method returns. Every write
transaction bumps ``generation`` (a committed-write counter) and stamps the rows it touched with
it; deletions leave ``(seq, generation)`` in ``removed``. A derived index snapshot taken at
generation G can therefore be brought up to date by replaying ``changes_since(G)``.

Not thread-safe by itself beyond one internal mutex per call; the collection orders writes.
"""

from __future__ import annotations

import contextlib
import json
import math
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from embedsvc.collections.storage import read_only_uri
from embedsvc.errors import InvalidArgument, shorten

_SCHEMA = """
CREATE TABLE IF NOT EXISTS docs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    text TEXT NOT NULL,
    metadata TEXT NOT NULL DEFAULT '{}',
    vector BLOB NOT NULL,
    gen INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS docs_gen ON docs(gen);
CREATE TABLE IF NOT EXISTS removed (seq INTEGER PRIMARY KEY, gen INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS state (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS payloads (seq INTEGER PRIMARY KEY, data BLOB NOT NULL);
INSERT OR IGNORE INTO state(key, value) VALUES ('generation', 0);
"""
_CHUNK = 500  # ids per IN (...) clause


@dataclass
class Document:
    seq: int
    id: str
    text: str
    metadata: dict[str, Any]


@dataclass
class UpsertOutcome:
    """What an upsert changed; ``vector_seqs[i]`` got ``vector_rows[i]`` (index must follow)."""

    inserted: int = 0
    updated: int = 0
    unchanged: int = 0
    vector_seqs: list[int] = field(default_factory=list)
    vector_rows: list[int] = field(default_factory=list)
    generation: int = 0


def canonical_metadata(metadata: dict[str, Any] | None, where: str = "metadata") -> str:
    """Metadata as canonical JSON (sorted keys), so that equal metadata compares equal."""
    if metadata is None:
        return "{}"
    if not isinstance(metadata, dict):
        raise InvalidArgument(f"{where} must be a JSON object, got {type(metadata).__name__}")
    try:
        return json.dumps(metadata, sort_keys=True, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InvalidArgument(f"{where} is not JSON-serialisable: {exc}", field=where) from exc


#: how deep a filter value may nest lists and objects, and how many keys a filter may have
MAX_FILTER_DEPTH = 16
MAX_FILTER_KEYS = 64
#: integers SQLite can hold (a larger one would overflow inside the query)
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


def validate_filter(filter: Any) -> None:
    """InvalidArgument unless ``filter`` is a metadata filter this store can run: an object of
    at most ``MAX_FILTER_KEYS`` keys whose values are JSON (no NaN/Infinity), nested at most
    ``MAX_FILTER_DEPTH`` deep, with integers in the 64-bit range."""
    if not isinstance(filter, dict):
        raise InvalidArgument("filter must be an object of metadata key -> value", field="filter")
    if len(filter) > MAX_FILTER_KEYS:
        raise InvalidArgument(
            f"filter has {len(filter)} keys; the limit is {MAX_FILTER_KEYS}", field="filter"
        )
    stack: list[tuple[Any, str, int]] = [(v, str(k), 1) for k, v in filter.items()]
    while stack:  # iterative: a deep value must not exhaust the interpreter's stack
        value, where, depth = stack.pop()
        where = where if len(where) <= 100 else where[:100] + "..."
        if depth > MAX_FILTER_DEPTH:
            raise InvalidArgument(
                f"filter value at {where!r} nests deeper than {MAX_FILTER_DEPTH} levels",
                field="filter",
            )
        if isinstance(value, bool) or value is None or isinstance(value, str):
            continue
        if isinstance(value, int):
            if not INT64_MIN <= value <= INT64_MAX:
                raise InvalidArgument(
                    f"filter value at {where!r} is an integer outside the 64-bit range "
                    f"({INT64_MIN}..{INT64_MAX})",
                    field="filter",
                )
        elif isinstance(value, float):
            if not math.isfinite(value):
                raise InvalidArgument(
                    f"filter value at {where!r} is {value}; NaN and Infinity are not JSON",
                    field="filter",
                )
        elif isinstance(value, list):
            stack.extend((v, f"{where}[{i}]", depth + 1) for i, v in enumerate(value))
        elif isinstance(value, dict):
            stack.extend((v, f"{where}.{k}", depth + 1) for k, v in value.items())
        else:
            raise InvalidArgument(
                f"filter value at {where!r} must be a string, number, boolean, null, list or "
                f"object, got {type(value).__name__}",
                field="filter",
            )


def filter_sql(filter: dict[str, Any]) -> tuple[str, list[Any]]:
    """``{"lang": "en", "source.year": 2020}`` -> a WHERE clause of typed equalities.

    Keys are top-level metadata keys; a dot walks into nested objects. ``None`` matches JSON null,
    booleans match only booleans and numbers only numbers (SQLite would equate true and 1).
    """
    validate_filter(filter)
    clauses: list[str] = []
    params: list[Any] = []
    for key, value in filter.items():
        parts = key.split(".") if isinstance(key, str) else []
        # SQLite's JSON path parser refuses quotes and control characters inside a key
        if not parts or any(not p or '"' in p or not p.isprintable() for p in parts):
            raise InvalidArgument(
                f"bad filter key {shorten(key)}: keys are printable text without '\"'",
                field="filter",
            )
        path = "$" + "".join(f'."{p}"' for p in parts)
        if value is None:
            clauses.append("json_type(metadata, ?) = 'null'")
            params.append(path)
        elif isinstance(value, bool):
            clauses.append("json_type(metadata, ?) = ?")
            params += [path, "true" if value else "false"]
        elif isinstance(value, (int, float)):
            clauses.append(
                "json_type(metadata, ?) IN ('integer', 'real') AND json_extract(metadata, ?) = ?"
            )
            params += [path, path, value]
        elif isinstance(value, str):
            clauses.append("json_type(metadata, ?) = 'text' AND json_extract(metadata, ?) = ?")
            params += [path, path, value]
        elif isinstance(value, (list, dict)):
            clauses.append("json_extract(metadata, ?) = json(?)")
            params += [path, json.dumps(value, separators=(",", ":"))]
        else:
            raise InvalidArgument(f"bad filter value for {shorten(key)}", field="filter")
    return (" AND ".join(f"({c})" for c in clauses) or "1"), params


class DocStore:
    def __init__(self, path: str | Path, read_only: bool = False) -> None:
        """Open (creating) the store; ``read_only`` opens an existing one on a read-only mount
        (:func:`embedsvc.collections.storage.read_only_uri`), where writes fail."""
        self.path = Path(path)
        self.read_only = read_only
        target, uri = str(self.path), False
        if read_only:
            target, uri = read_only_uri(self.path), True
        self._conn = sqlite3.connect(target, check_same_thread=False, isolation_level=None, uri=uri)
        self._lock = threading.Lock()
        if read_only:
            return
        with self._lock:
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=FULL")
            self._conn.executescript(_SCHEMA)

    # ------------------------------------------------------------------ reads
    @property
    def generation(self) -> int:
        with self._lock:
            return self._generation()

    def _generation(self) -> int:
        row = self._conn.execute("SELECT value FROM state WHERE key = 'generation'").fetchone()
        return int(row[0])

    def count(self) -> int:
        with self._lock:
            return int(self._conn.execute("SELECT COUNT(*) FROM docs").fetchone()[0])

    def docs_by_seq(self, seqs: Sequence[int]) -> dict[int, Document]:
        out: dict[int, Document] = {}
        with self._lock:
            for chunk in _chunks(list(seqs)):
                marks = ",".join("?" * len(chunk))
                for seq, id_, text, meta in self._conn.execute(
                    f"SELECT seq, id, text, metadata FROM docs WHERE seq IN ({marks})", chunk
                ):
                    out[seq] = Document(seq, id_, text, json.loads(meta))
        return out

    def docs_by_id(self, ids: Sequence[str]) -> dict[str, Document]:
        out: dict[str, Document] = {}
        with self._lock:
            for chunk in _chunks(list(ids)):
                marks = ",".join("?" * len(chunk))
                for seq, id_, text, meta in self._conn.execute(
                    f"SELECT seq, id, text, metadata FROM docs WHERE id IN ({marks})", chunk
                ):
                    out[id_] = Document(seq, id_, text, json.loads(meta))
        return out

    def filter_seqs(self, filter: dict[str, Any]) -> np.ndarray:
        """The seqs of documents whose metadata matches ``filter`` (see ``filter_sql``)."""
        where, params = filter_sql(filter)
        with self._lock:
            rows = self._conn.execute(f"SELECT seq FROM docs WHERE {where}", params).fetchall()
        return np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))

    def vectors(self, since_generation: int | None = None) -> Iterator[tuple[int, bytes]]:
        """(seq, vector bytes) of every document, or of those written after a generation."""
        sql, params = "SELECT seq, vector FROM docs", []
        if since_generation is not None:
            sql, params = sql + " WHERE gen > ?", [since_generation]
        with self._lock:
            rows = self._conn.execute(sql + " ORDER BY seq", params).fetchall()
        yield from rows

    def all_payloads(self) -> list[tuple[int, bytes]]:
        """(seq, payload bytes) of every live document that has one, by seq."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT p.seq, p.data FROM payloads p JOIN docs d ON d.seq = p.seq ORDER BY p.seq"
            ).fetchall()
        return [(int(seq), bytes(data)) for seq, data in rows]

    def payloads_by_id(self, ids: Sequence[str]) -> dict[str, bytes]:
        """Stored strategy payloads (``Embedding.payloads``) by document id; absent if none."""
        out: dict[str, bytes] = {}
        with self._lock:
            for chunk in _chunks(list(ids)):
                marks = ",".join("?" * len(chunk))
                for id_, data in self._conn.execute(
                    f"SELECT d.id, p.data FROM docs d JOIN payloads p ON p.seq = d.seq "
                    f"WHERE d.id IN ({marks})",
                    chunk,
                ):
                    out[id_] = bytes(data)
        return out

    def removed_since(self, generation: int) -> np.ndarray:
        with self._lock:
            rows = self._conn.execute(
                "SELECT seq FROM removed WHERE gen > ?", (generation,)
            ).fetchall()
        return np.array([r[0] for r in rows], dtype=np.int64)

    # ----------------------------------------------------------------- writes
    def upsert(
        self,
        ids: Sequence[str],
        texts: Sequence[str],
        metadatas: Sequence[str],
        vectors: Sequence[bytes],
        payloads: Sequence[bytes] | None = None,
    ) -> UpsertOutcome:
        """Insert or update documents in one durable transaction (metadata as canonical JSON).

        ``payloads`` (optional, one per document) are written in the same transaction.
        """
        out = UpsertOutcome()
        with self._lock, self._transaction() as cur:
            existing: dict[str, tuple] = {}
            for chunk in _chunks(list(ids)):
                marks = ",".join("?" * len(chunk))
                for row in cur.execute(
                    f"SELECT id, seq, text, metadata, vector FROM docs WHERE id IN ({marks})", chunk
                ):
                    existing[row[0]] = row[1:]
            gen = self._generation() + 1
            for row, (id_, text, meta, vec) in enumerate(
                zip(ids, texts, metadatas, vectors, strict=True)
            ):
                old = existing.get(id_)
                if old is None:
                    cur.execute(
                        "INSERT INTO docs(id, text, metadata, vector, gen) VALUES (?, ?, ?, ?, ?)",
                        (id_, text, meta, vec, gen),
                    )
                    out.inserted += 1
                    out.vector_seqs.append(int(cur.lastrowid))
                    out.vector_rows.append(row)
                    if payloads is not None:
                        cur.execute(
                            "INSERT OR REPLACE INTO payloads(seq, data) VALUES (?, ?)",
                            (int(cur.lastrowid), payloads[row]),
                        )
                    continue
                seq, old_text, old_meta, old_vec = old
                if (old_text, old_meta, bytes(old_vec)) == (text, meta, vec):
                    out.unchanged += 1
                    continue
                cur.execute(
                    "UPDATE docs SET text = ?, metadata = ?, vector = ?, gen = ? WHERE seq = ?",
                    (text, meta, vec, gen, seq),
                )
                out.updated += 1
                if payloads is not None:
                    cur.execute(
                        "INSERT OR REPLACE INTO payloads(seq, data) VALUES (?, ?)",
                        (seq, payloads[row]),
                    )
                if bytes(old_vec) != vec:
                    out.vector_seqs.append(int(seq))
                    out.vector_rows.append(row)
            if out.inserted or out.updated:
                cur.execute("UPDATE state SET value = ? WHERE key = 'generation'", (gen,))
                out.generation = gen
            else:
                out.generation = gen - 1
        return out

    def delete(self, ids: Sequence[str]) -> list[int]:
        """Delete documents by id in one durable transaction; returns the seqs deleted."""
        seqs: list[int] = []
        with self._lock, self._transaction() as cur:
            for chunk in _chunks(list(ids)):
                marks = ",".join("?" * len(chunk))
                seqs += [
                    r[0] for r in cur.execute(f"SELECT seq FROM docs WHERE id IN ({marks})", chunk)
                ]
            if seqs:
                gen = self._generation() + 1
                for chunk in _chunks(seqs):
                    marks = ",".join("?" * len(chunk))
                    cur.execute(f"DELETE FROM docs WHERE seq IN ({marks})", chunk)
                    cur.execute(f"DELETE FROM payloads WHERE seq IN ({marks})", chunk)
                cur.executemany(
                    "INSERT OR REPLACE INTO removed(seq, gen) VALUES (?, ?)",
                    [(s, gen) for s in seqs],
                )
                cur.execute("UPDATE state SET value = ? WHERE key = 'generation'", (gen,))
        return seqs

    def prune_removed(self, upto_generation: int) -> None:
        """Forget deletions already reflected in a durable index snapshot."""
        with self._lock, self._transaction() as cur:
            cur.execute("DELETE FROM removed WHERE gen <= ?", (upto_generation,))

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def _transaction(self) -> _Transaction:
        return _Transaction(self._conn)


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT (durable on return), ROLLBACK on any exception."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def __enter__(self) -> sqlite3.Cursor:
        self._cur = self._conn.cursor()
        self._cur.execute("BEGIN IMMEDIATE")
        return self._cur

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if not exc_type:
            self._cur.execute("COMMIT")  # a failed COMMIT (a full disk) is rolled back by SQLite
            return
        # SQLite may have rolled back already (e.g. SQLITE_FULL): keep the original error
        with contextlib.suppress(sqlite3.Error):
            self._cur.execute("ROLLBACK")


def _chunks(items: list) -> Iterator[list]:
    for start in range(0, len(items), _CHUNK):
        yield items[start : start + _CHUNK]
