"""Creates, opens, lists and deletes collections under one data folder.

Layout: ``data_dir/<name>/{meta.json, docs.sqlite, index.faiss, index.json}``. Creation builds
the folder under a temporary name and renames it into place, and deletion renames it away before
removing it, so a crash never leaves a half-made collection visible. Collections open lazily on
first ``get`` and stay open until ``delete``/``close``.

Collections created with ``backend="milvus"`` live in Milvus instead (``milvus.MilvusCatalog``:
their settings and documents both; no folder here), so ``list``/``get`` consult Milvus too
(only once a Milvus URI is configured or the embedded ``data_dir/milvus.db`` exists, so the
default FAISS-only service never imports pymilvus).

A data folder has one owning process: the manager holds the folder's lock (``ownership``) from
construction to ``close``, and a second manager on the same folder is refused with
:class:`~embedsvc.collections.ownership.DataDirOwned`, naming the owner.
"""

from __future__ import annotations

import contextlib
import logging
import re
import shutil
import threading
import uuid
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from embedsvc.collections.collection import DOCS_FILE, META_FILE, Collection, CollectionMeta
from embedsvc.collections.ownership import DataDirLock
from embedsvc.collections.storage import storage_guarded
from embedsvc.collections.store import DocStore
from embedsvc.config import MilvusConfig
from embedsvc.errors import (
    AlreadyExists,
    EmbedsvcError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    shorten,
)
from embedsvc.indexes import IndexConfig, available_index_kinds
from embedsvc.indexes.base import check_index_config, fsync_dir, write_atomic

log = logging.getLogger(__name__)

_NAME = re.compile(r"[A-Za-z0-9_.\-]{1,64}")
_TMP_PREFIX = ".tmp-"
_DELETED_PREFIX = ".deleted-"


class UnreadableCollection(FailedPrecondition):
    """A collection whose ``meta.json`` does not validate: it can be deleted, not opened."""


def validate_name(name: Any) -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name) or name.startswith("."):
        raise InvalidArgument(
            f"bad collection name {shorten(name)}: use 1-64 letters, digits, '_', '-' or '.', "
            "not starting with '.'",
            field="name",
        )
    return name


class CollectionManager:
    def __init__(
        self,
        data_dir: str | Path,
        checkpoint_interval_s: float | None = None,
        milvus: MilvusConfig | None = None,
    ) -> None:
        """Open and own ``data_dir`` (created if missing), or raise ``DataDirOwned`` at once if
        another process (or manager) owns it; with an interval, snapshot in the background.
        ``milvus``: where ``backend="milvus"`` collections live (default: embedded, here)."""
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        #: taken before anything is touched: the leftovers below may be a live owner's work
        self.owner_lock = DataDirLock(self.data_dir)
        self._lock = threading.RLock()
        self._open: dict[str, Any] = {}
        self._closed = False
        self._milvus_config = milvus or MilvusConfig()
        self._milvus: Any = None  # MilvusCatalog, made on first need (imports nothing before)
        for leftover in self.data_dir.iterdir():  # crashed creates/deletes
            if leftover.name.startswith((_TMP_PREFIX, _DELETED_PREFIX)):
                shutil.rmtree(leftover, ignore_errors=True)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if checkpoint_interval_s:
            self._thread = threading.Thread(
                target=self._checkpoint_loop,
                args=(checkpoint_interval_s,),
                daemon=True,
                name="embedsvc-checkpoint",
            )
            self._thread.start()

    @storage_guarded("data_dir")
    def create(
        self,
        name: str,
        strategy: str,
        output_kind: str,
        dim: int,
        index_kind: str,
        index_config: IndexConfig | dict[str, Any] | None = None,
        backend: str = "faiss",
        sparse_vocab: int | None = None,
    ) -> Any:
        """A new empty collection; its settings are fixed from now on. ``backend``: ``faiss``
        (files in this folder) or ``milvus`` (see ``embedsvc.collections.milvus``).
        ``sparse_vocab``: keep a sparse side index of that width (dual strategies)."""
        validate_name(name)
        if backend not in ("faiss", "milvus"):
            raise InvalidArgument(
                f"unknown collection backend {backend!r}; valid backends: faiss, milvus",
                field="backend",
            )
        if not isinstance(strategy, str) or not strategy:
            raise InvalidArgument("strategy must be a non-empty name", field="strategy")
        if output_kind not in ("dense", "binary"):
            raise InvalidArgument(
                f"output kind must be 'dense' or 'binary', got {output_kind!r}", field="output_kind"
            )
        if not isinstance(dim, int) or dim < 1 or (output_kind == "binary" and dim % 8):
            raise InvalidArgument(
                f"bad dimension {dim!r}: a positive integer"
                + (", a multiple of 8 bits for binary codes" if output_kind == "binary" else ""),
                field="dim",
            )
        kinds = available_index_kinds()
        if index_kind not in kinds:
            raise InvalidArgument(
                f"unknown index kind {shorten(index_kind)}; valid kinds: {', '.join(kinds)}",
                field="index_kind",
            )
        needs = kinds[index_kind].input_kind
        if needs != output_kind:
            fitting = ", ".join(k for k, c in kinds.items() if c.input_kind == output_kind)
            raise FailedPrecondition(
                f"index kind {index_kind!r} needs a strategy with {needs} output, but strategy "
                f"{strategy!r} gives {output_kind}; use one of: {fitting}",
                field="index_kind",
            )
        config = check_index_config(index_config, dim)  # bounded: InvalidArgument naming the field
        if sparse_vocab is not None and backend != "faiss":
            raise InvalidArgument(
                "a dual strategy's sparse side index (sparse_vocab) is kept by FAISS collections "
                "only; use backend faiss",
                field="backend",
            )
        if config.milvus_index_type and backend != "milvus":
            raise InvalidArgument(
                "milvus_index_type applies to Milvus collections only (backend: milvus)",
                field="index_config",
            )
        meta = CollectionMeta(
            name=name,
            strategy=strategy,
            output_kind=output_kind,
            dim=dim,
            index_kind=index_kind,
            index_config=config,
            sparse_vocab=sparse_vocab,
            backend=backend,
        )
        with self._lock:
            self._check_open()
            final = self.data_dir / name
            if final.exists() or (
                (backend == "milvus" or self._catalog().in_use)
                and self._catalog().meta(name) is not None
            ):
                raise AlreadyExists(f"collection {name!r} already exists", field="name")
            if backend == "milvus":
                collection = self._catalog().create(meta)
                self._open[name] = collection
                return collection
            tmp = self.data_dir / f"{_TMP_PREFIX}{name}-{uuid.uuid4().hex[:8]}"
            tmp.mkdir()
            try:
                DocStore(tmp / DOCS_FILE).close()
                write_atomic(
                    tmp / META_FILE, lambda f: f.write(meta.model_dump_json(indent=2).encode())
                )
                tmp.rename(final)
                fsync_dir(self.data_dir)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            collection = Collection(final, meta)
            self._open[name] = collection
            return collection

    @storage_guarded("data_dir")
    def get(self, name: str) -> Any:
        """The open ``Collection`` (FAISS) or ``MilvusCollection`` named ``name``."""
        with self._lock:
            self._check_open()
            collection = self._open.get(name)
            if collection is not None:
                return collection
            meta_path = self.data_dir / name / META_FILE
            valid = isinstance(name, str) and bool(_NAME.fullmatch(name))
            if valid and not meta_path.is_file():
                meta = self._catalog().meta(name)
                if meta is not None:
                    collection = self._catalog().open(meta)
                    self._open[name] = collection
                    return collection
            if not valid or not meta_path.is_file():
                existing = ", ".join(self.list()) or "(none)"
                raise NotFound(
                    f"no collection named {shorten(name)}; existing collections: {existing}",
                    field="name",
                )
            try:
                meta = CollectionMeta.model_validate_json(meta_path.read_text())
            except ValidationError as exc:  # e.g. index parameters past today's bounds
                problems = "; ".join(
                    f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg')}"
                    for e in exc.errors()[:3]
                )
                raise UnreadableCollection(
                    f"collection {name!r} cannot be opened: its {META_FILE} is not valid "
                    f"({problems}); delete the collection and create it again",
                    field="name",
                ) from None
            collection = Collection(self.data_dir / name, meta)
            self._open[name] = collection
            return collection

    @storage_guarded("data_dir")
    def list(self) -> list[str]:
        with self._lock:
            local = {
                p.name
                for p in self.data_dir.iterdir()
                if not p.name.startswith(".") and (p / META_FILE).is_file()
            }
            return sorted(local | set(self._catalog().names()))

    @storage_guarded("data_dir")
    def delete(self, name: str) -> None:
        """Remove a collection and its files; handles still held on it start failing."""
        with self._lock:
            try:
                collection = self.get(name)
            except UnreadableCollection:
                collection = None  # removed without opening it
            if collection is not None:
                if getattr(collection, "read_only", False):
                    collection.check_writable()  # raises, leaving the collection open
                collection.close(checkpoint=False)
                del self._open[name]
                if collection.meta.backend == "milvus":
                    self._catalog().drop(name)
                    return
            gone = self.data_dir / f"{_DELETED_PREFIX}{name}-{uuid.uuid4().hex[:8]}"
            (self.data_dir / name).rename(gone)
            fsync_dir(self.data_dir)
            shutil.rmtree(gone, ignore_errors=True)

    def checkpoint(self) -> None:
        """Snapshot every open collection that changed since its last snapshot."""
        with self._lock:
            collections = list(self._open.values())
        for collection in collections:
            with contextlib.suppress(FailedPrecondition):  # closed or deleted meanwhile
                collection.checkpoint()

    def close(self) -> None:
        """Snapshot and close every open collection."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        with self._lock:
            if self._closed:
                return
            try:
                for collection in self._open.values():
                    collection.close()
            finally:
                self._open.clear()
                self._closed = True
                if self._milvus is not None:
                    self._milvus.close()
                self.owner_lock.release()

    def __enter__(self) -> CollectionManager:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _check_open(self) -> None:
        if self._closed:
            raise FailedPrecondition("the collection manager is closed")

    def _catalog(self) -> Any:
        if self._milvus is None:
            from embedsvc.collections.milvus import MilvusCatalog

            self._milvus = MilvusCatalog(self._milvus_config, self.data_dir)
        return self._milvus

    def _checkpoint_loop(self, interval: float) -> None:
        while not self._stop.wait(interval):
            try:
                self.checkpoint()
            except EmbedsvcError as exc:  # a full disk: the store holds every write; retry later
                log.warning("background checkpoint failed: %s", exc.message)
