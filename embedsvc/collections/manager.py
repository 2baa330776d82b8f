"""Creates, opens, lists and deletes collections under one data folder.

Layout: ``data_dir/<name>/{meta.json, docs.sqlite, index.faiss, index.json}``. Creation builds
the folder under a temporary name and renames it into place, and deletion renames it away before
removing it, so a crash never leaves a half-made collection visible. Collections open lazily on
first ``get`` and stay open until ``delete``/``close``.

A data folder has one owning process: the manager holds the folder's lock (``ownership``) from
construction to ``close``, and a second manager on the same folder is refused with
:class:`~embedsvc.collections.ownership.DataDirOwned`, naming the owner.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import threading
import uuid
from pathlib import Path
from typing import Any

from embedsvc.collections.collection import DOCS_FILE, META_FILE, Collection, CollectionMeta
from embedsvc.collections.ownership import DataDirLock
from embedsvc.collections.store import DocStore
from embedsvc.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from embedsvc.indexes import IndexConfig, available_index_kinds
from embedsvc.indexes.base import fsync_dir, write_atomic

_NAME = re.compile(r"[A-Za-z0-9_.\-]{1,64}")
_TMP_PREFIX = ".tmp-"
_DELETED_PREFIX = ".deleted-"


def validate_name(name: Any) -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name) or name.startswith("."):
        raise InvalidArgument(
            f"bad collection name {name!r}: use 1-64 letters, digits, '_', '-' or '.', "
            "not starting with '.'",
            field="name",
        )
    return name


class CollectionManager:
    def __init__(self, data_dir: str | Path, checkpoint_interval_s: float | None = None) -> None:
        """Open and own ``data_dir`` (created if missing), or raise ``DataDirOwned`` at once if
        another process (or manager) owns it; with an interval, snapshot in the background."""
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        #: taken before anything is touched: the leftovers below may be a live owner's work
        self.owner_lock = DataDirLock(self.data_dir)
        self._lock = threading.RLock()
        self._open: dict[str, Collection] = {}
        self._closed = False
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

    def create(
        self,
        name: str,
        strategy: str,
        output_kind: str,
        dim: int,
        index_kind: str,
        index_config: IndexConfig | dict[str, Any] | None = None,
        sparse_vocab: int | None = None,
    ) -> Collection:
        """A new empty collection; its settings are fixed from now on.

        ``sparse_vocab``: keep a sparse side index of that width (dual strategies)."""
        validate_name(name)
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
                f"unknown index kind {index_kind!r}; valid kinds: {', '.join(kinds)}",
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
        try:
            config = (
                index_config
                if isinstance(index_config, IndexConfig)
                else IndexConfig(**(index_config or {}))
            )
        except Exception as exc:  # pydantic.ValidationError: bad user config
            raise InvalidArgument(f"bad index config: {exc}", field="index_config") from exc
        meta = CollectionMeta(
            name=name,
            strategy=strategy,
            output_kind=output_kind,
            dim=dim,
            index_kind=index_kind,
            index_config=config,
            sparse_vocab=sparse_vocab,
        )
        with self._lock:
            self._check_open()
            final = self.data_dir / name
            if final.exists():
                raise AlreadyExists(f"collection {name!r} already exists", field="name")
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

    def get(self, name: str) -> Collection:
        with self._lock:
            self._check_open()
            collection = self._open.get(name)
            if collection is not None:
                return collection
            meta_path = self.data_dir / name / META_FILE
            if not isinstance(name, str) or not _NAME.fullmatch(name) or not meta_path.is_file():
                existing = ", ".join(self.list()) or "(none)"
                raise NotFound(
                    f"no collection named {name!r}; existing collections: {existing}", field="name"
                )
            meta = CollectionMeta.model_validate_json(meta_path.read_text())
            collection = Collection(self.data_dir / name, meta)
            self._open[name] = collection
            return collection

    def list(self) -> list[str]:
        with self._lock:
            return sorted(
                p.name
                for p in self.data_dir.iterdir()
                if not p.name.startswith(".") and (p / META_FILE).is_file()
            )

    def delete(self, name: str) -> None:
        """Remove a collection and its files; handles still held on it start failing."""
        with self._lock:
            collection = self.get(name)
            collection.close(checkpoint=False)
            del self._open[name]
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
                self.owner_lock.release()

    def __enter__(self) -> CollectionManager:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _check_open(self) -> None:
        if self._closed:
            raise FailedPrecondition("the collection manager is closed")

    def _checkpoint_loop(self, interval: float) -> None:
        while not self._stop.wait(interval):
            self.checkpoint()
