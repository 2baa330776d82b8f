"""The vector-index contract, its config and its registry.

An index is pure compute over numpy arrays: int64 ids (the document store's ``seq``) and either
dense float32 vectors (inner product, i.e. cosine on normalised vectors) or bit-packed uint8 codes
(Hamming). It knows nothing about texts, metadata or SQLite, and it is not thread-safe: the owning
collection serialises writers against readers. One module per kind registers itself with
``@register_index_kind("name")``; the package imports every module in this folder.

What the base class does for every kind, so that kinds stay small and behave the same:

* input checks (ids unique and >= 0, dtype/shape, dense-vs-binary -> FailedPrecondition);
* a sorted array of the ids present (count, membership, "add of a present id replaces it");
* filtered search: a small allow-list is scored exactly (faster and exact, where an ANN graph or
  a few probed IVF lists would miss allowed ids); a large one goes to the kind's faiss
  ``IDSelector`` path; the result is always post-filtered so that only allowed ids come back;
* automatic maintenance: after ``add``/``remove`` a kind may ask for ``rebuild()`` (IVF retrain
  on growth, HNSW compaction of tombstones), which it does from its own stored vectors;
* ``save``/``load`` as one atomic file (a ``.npz`` bundle of serialised faiss indexes + arrays).
"""

from __future__ import annotations

import json
import os
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar, Literal

import faiss
import numpy as np
from pydantic import BaseModel, Field, ValidationError

from embedsvc.errors import FailedPrecondition, InvalidArgument, NotFound, shorten

VectorKind = Literal["dense", "binary"]
_FORMAT = 1


class IndexConfig(BaseModel):
    """Index parameters; every field has a default that works from 1 to ~10^6 vectors.

    Every field is bounded: memory and time grow with ``hnsw_m``, ``ef_*``, ``nlist``,
    ``nprobe``, ``pq_m`` and ``rerank_factor``, and a request must not be able to ask for
    gigabytes (``hnsw_m=1000000`` on 100 documents took 1 GB). The bounds are generous for real
    use; ``nlist`` and ``nprobe`` are also capped by the collection size when the index trains
    (at most one list per vector), and ``pq_m`` by the dimension (:func:`check_index_config`).
    """

    model_config = {"extra": "forbid"}

    nlist: int | None = Field(
        None, ge=1, le=65536, description="IVF lists; None: ~4*sqrt(n), at most n/39, 65536"
    )
    nprobe: int = Field(32, ge=1, le=65536, description="IVF lists scanned per query")
    hnsw_m: int = Field(32, ge=4, le=256, description="HNSW graph degree")
    ef_construction: int = Field(80, ge=8, le=4096)
    ef_search: int = Field(64, ge=1, le=4096)
    pq_m: int | None = Field(
        None, ge=1, le=1024, description="PQ sub-quantizers (<= dim); None: ~d/8 dividing d"
    )
    pq_nbits: int = Field(8, ge=1, le=16, description="bits per PQ code; reduced for few points")
    rerank_factor: int = Field(
        10, ge=1, le=100, description="IVF-PQ: candidates per result to rescore"
    )
    pq_min_train_points: int = Field(
        1024, ge=1, le=100_000_000, description="IVF-PQ below this size searches exactly"
    )
    retrain_growth: float = Field(
        4.0, gt=1.0, le=1000.0, description="retrain IVF at this many times its train size"
    )
    max_tombstone_fraction: float = Field(
        0.25, gt=0.0, le=1.0, description="HNSW: rebuild when this share of nodes is deleted"
    )
    exact_filter_threshold: int = Field(
        4096, ge=0, le=65536, description="filters allowing <= this many ids score exactly"
    )
    use_gpu: bool = Field(True, description="mirror to a GPU when faiss sees one (see gpu.py)")
    milvus_index_type: str | None = Field(
        None,
        pattern=r"^[A-Z][A-Z0-9_]{1,31}$",
        description="Milvus backend only: this Milvus index type instead of the kind's own "
        "(e.g. GPU_CAGRA, GPU_IVF_FLAT, DISKANN on a cluster); passed through unchecked",
    )


def index_param_ranges() -> dict[str, str]:
    """``{"hnsw_m": "4..256", ...}``: each bounded parameter's accepted range, for messages."""
    ranges = {}
    for name, info in IndexConfig.model_fields.items():
        bounds = {
            k: getattr(m, k) for m in info.metadata for k in ("ge", "gt", "le") if hasattr(m, k)
        }
        if "le" not in bounds:
            continue
        if "gt" in bounds:
            ranges[name] = f"more than {bounds['gt']}, at most {bounds['le']}"
        else:
            ranges[name] = f"{bounds.get('ge', '')}..{bounds['le']}"
    return ranges


def check_index_config(params: IndexConfig | dict[str, Any] | None, dim: int) -> IndexConfig:
    """``params`` as a valid :class:`IndexConfig` for a ``dim``-wide index, or InvalidArgument
    naming each bad field, what was given (shortened) and the accepted range."""
    if isinstance(params, IndexConfig):
        config = params
    else:
        try:
            config = IndexConfig(**(params or {}))
        except ValidationError as exc:
            ranges, problems, fields = index_param_ranges(), [], []
            for error in exc.errors():
                name = ".".join(str(p) for p in error.get("loc", ())) or "index_params"
                fields.append(name)
                if error.get("type") == "extra_forbidden":
                    known = ", ".join(IndexConfig.model_fields)
                    problems.append(f"unknown index parameter {shorten(name)}; known: {known}")
                    continue
                problem = f"index parameter {name}={shorten(error.get('input'), 40)}"
                if error.get("type", "").startswith(("greater_than", "less_than")):
                    problem += " is out of range"
                else:
                    problem += f": {error.get('msg', 'invalid')}"
                if name in ranges:
                    problem += f": use {ranges[name]}"
                problems.append(problem)
            raise InvalidArgument(
                "; ".join(problems[:5]), field=f"index_params.{fields[0]}" if fields else None
            ) from None
    if config.pq_m is not None and config.pq_m > dim:
        raise InvalidArgument(
            f"index parameter pq_m={config.pq_m} is out of range: use 1..{dim} (at most the "
            f"dimension, {dim}; best a divisor of it)",
            field="index_params.pq_m",
        )
    return config


class VectorIndex(ABC):
    """One searchable set of (id, vector) pairs. Subclasses implement the ``_``-methods."""

    kind: ClassVar[str]
    input_kind: ClassVar[VectorKind] = "dense"
    #: True when one FAISS call over many queries costs much less than the queries one by one
    #: (a GEMM over a flat index). The server's ``SearchBatcher`` only merges searches of such
    #: kinds: for graph/list kinds a batch costs the sum of its queries, and funnelling them
    #: through one worker would lose the RPC threads' parallelism.
    gains_from_batching: ClassVar[bool] = False

    def __init__(self, dim: int, config: IndexConfig | None = None) -> None:
        if dim <= 0 or (self.input_kind == "binary" and dim % 8):
            raise InvalidArgument(
                f"index kind {self.kind!r}: bad dimension {dim}"
                + (
                    " (binary codes need a multiple of 8 bits)"
                    if self.input_kind == "binary"
                    else ""
                )
            )
        self.dim = int(dim)
        self.config = config if config is not None else IndexConfig()
        self._ids = np.zeros(0, dtype=np.int64)  # sorted ids present
        self._init_empty()

    # ----------------------------------------------------------------- kind hooks
    @abstractmethod
    def _init_empty(self) -> None:
        """Reset to an empty index."""

    @abstractmethod
    def _add(self, ids: np.ndarray, x: np.ndarray) -> None:
        """Add new ids (guaranteed absent) with their vectors."""

    @abstractmethod
    def _remove(self, ids: np.ndarray) -> None:
        """Remove ids (guaranteed present)."""

    @abstractmethod
    def _search(
        self, q: np.ndarray, k: int, allowed: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """ANN search; ``allowed`` (sorted, present ids) restricts the result. Raw faiss output."""

    @abstractmethod
    def _vectors(self, ids: np.ndarray) -> np.ndarray:
        """Stored vectors (or codes) of present ids, in the order given."""

    @abstractmethod
    def _state(self) -> dict[str, np.ndarray]:
        """Arrays that ``_restore`` needs (serialised faiss indexes as uint8 arrays)."""

    @abstractmethod
    def _restore(self, state: dict[str, np.ndarray], extra: dict[str, Any]) -> None:
        """Inverse of ``_state`` (+ ``_extra``)."""

    def _extra(self) -> dict[str, Any]:
        """JSON scalars saved beside the arrays (e.g. the training size)."""
        return {}

    def needs_rebuild(self) -> bool:
        """True when retraining/compaction would restore quality (checked after each mutation)."""
        return False

    def _train(self, x: np.ndarray) -> None:  # noqa: B027 - optional hook
        """Train on ``x`` (called by ``rebuild`` before adding); flat kinds need nothing."""

    def _on_mutation(self) -> None:  # noqa: B027 - optional hook
        """Called after every add/remove (GPU mirrors go stale here)."""

    # ----------------------------------------------------------------- public API
    @property
    def count(self) -> int:
        return int(self._ids.size)

    @property
    def ids(self) -> np.ndarray:
        """Sorted ids present (a copy)."""
        return self._ids.copy()

    def contains(self, ids: np.ndarray) -> np.ndarray:
        ids = np.asarray(ids, dtype=np.int64)
        if self._ids.size == 0:
            return np.zeros(ids.shape, dtype=bool)
        pos = np.clip(np.searchsorted(self._ids, ids), 0, self._ids.size - 1)
        return self._ids[pos] == ids

    def add(self, ids: np.ndarray, vectors: Any) -> None:
        """Add ``vectors`` under ``ids``; an id already present is replaced (upsert)."""
        ids = _check_ids(ids)
        x = self._check_vectors(vectors, "vectors")
        if x.shape[0] != ids.size:
            raise InvalidArgument(f"{ids.size} ids but {x.shape[0]} vectors")
        if ids.size == 0:
            return
        present = self.contains(ids)
        if present.any():
            self._remove(ids[present])
            self._ids = np.setdiff1d(self._ids, ids[present], assume_unique=True)
        self._add(ids, x)
        self._ids = np.union1d(self._ids, ids)
        self._on_mutation()
        if self.needs_rebuild():
            self.rebuild()

    def remove(self, ids: np.ndarray) -> int:
        """Remove ``ids``; absent ids are ignored. Returns how many were removed."""
        ids = np.unique(np.asarray(ids, dtype=np.int64).reshape(-1))
        ids = ids[self.contains(ids)]
        if ids.size == 0:
            return 0
        self._remove(ids)
        self._ids = np.setdiff1d(self._ids, ids, assume_unique=True)
        self._on_mutation()
        if self.needs_rebuild():
            self.rebuild()
        return int(ids.size)

    def rebuild(self, ids: np.ndarray | None = None, vectors: Any = None) -> None:
        """Start over (training where the kind needs it) from ``ids``/``vectors``.

        Without arguments the index rebuilds from its own stored vectors: every kind keeps them
        (flat storage, IVF direct map, IVF-PQ float store, HNSW storage).
        """
        if ids is None:
            ids = self._ids.copy()
            x = self._vectors(ids) if ids.size else self._empty_vectors()
        else:
            ids = _check_ids(ids)
            x = self._check_vectors(vectors, "vectors")
            if x.shape[0] != ids.size:
                raise InvalidArgument(f"{ids.size} ids but {x.shape[0]} vectors")
        self._ids = np.zeros(0, dtype=np.int64)
        self._init_empty()
        if ids.size:
            self._train(x)
            self._add(ids, x)
            self._ids = np.sort(ids)
        self._on_mutation()

    def search(
        self, queries: Any, k: int, allowed_ids: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` per query: ``(scores [nq, k] float32, ids [nq, k] int64)``, higher is better.

        Missing results are id -1 with score -inf. ``allowed_ids`` restricts results to those ids
        (ids not in the index are ignored); only allowed ids are ever returned.
        """
        if k < 1:
            raise InvalidArgument(f"k must be >= 1, got {k}", field="k")
        q = self._check_vectors(queries, "queries")
        nq = q.shape[0]
        allowed = None
        if allowed_ids is not None:
            allowed = np.unique(np.asarray(allowed_ids, dtype=np.int64).reshape(-1))
            allowed = allowed[self.contains(allowed)]
        if nq == 0 or self.count == 0 or (allowed is not None and allowed.size == 0):
            return _empty_result(nq, k)
        if allowed is not None and allowed.size <= self.config.exact_filter_threshold:
            scores, labels = self._exact(q, k, allowed)
        else:
            dist, labels = self._search(q, k, allowed)
            scores = self._scores(dist, labels)
        return _keep_only(scores, labels, allowed if allowed is not None else self._ids, k)

    def save(self, path: str | Path) -> None:
        """Write the index to ``path`` atomically (tmp file, fsync, rename, fsync dir)."""
        path = Path(path)
        meta = {
            "format": _FORMAT,
            "kind": self.kind,
            "dim": self.dim,
            "config": self.config.model_dump(),
            "extra": self._extra(),
        }
        arrays = dict(self._state())
        arrays["__ids"] = self._ids
        arrays["__meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
        write_atomic(path, lambda f: np.savez(f, **arrays))

    @classmethod
    def load(cls, path: str | Path) -> VectorIndex:
        """Read an index written by ``save`` (any kind: the file says which)."""
        with np.load(Path(path), allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in npz.files}
        meta = json.loads(arrays.pop("__meta").tobytes().decode())
        if meta.get("format") != _FORMAT:
            raise FailedPrecondition(f"index file {path} has unknown format {meta.get('format')}")
        kind_cls = index_kind_class(meta["kind"])
        if cls is not VectorIndex and not issubclass(kind_cls, cls):
            raise FailedPrecondition(f"index file {path} holds kind {meta['kind']!r}")
        index = kind_cls(meta["dim"], IndexConfig(**meta["config"]))
        index._ids = arrays.pop("__ids").astype(np.int64)
        index._restore(arrays, meta.get("extra", {}))
        return index

    # ----------------------------------------------------------------- helpers
    def _empty_vectors(self) -> np.ndarray:
        if self.input_kind == "binary":
            return np.zeros((0, self.dim // 8), dtype=np.uint8)
        return np.zeros((0, self.dim), dtype=np.float32)

    def _check_vectors(self, vectors: Any, what: str) -> np.ndarray:
        kind = getattr(vectors, "kind", None)
        arr = getattr(vectors, "vectors", vectors)
        arr = np.asarray(arr)
        if kind is None:
            kind = "binary" if arr.dtype == np.uint8 else "dense"
        if kind != self.input_kind:
            need = "binary codes (a strategy with binary output)"
            if self.input_kind == "dense":
                need = "dense float vectors (a strategy with dense output)"
            raise FailedPrecondition(
                f"index kind {self.kind!r} needs {need}, got {kind} {what}; use index kind "
                f"{'binary' if kind == 'binary' else 'flat, ivf, hnsw or ivfpq'} for {kind} output"
            )
        if arr.ndim == 1:
            arr = arr.reshape(1, -1)
        width = self.dim // 8 if self.input_kind == "binary" else self.dim
        if arr.ndim != 2 or arr.shape[1] != width:
            unit = "bytes" if self.input_kind == "binary" else "floats"
            raise InvalidArgument(
                f"{what} must have shape [n, {width}] ({unit}) for this {self.dim}-d index, "
                f"got {list(arr.shape)}"
            )
        if self.input_kind == "binary":
            return np.ascontiguousarray(arr, dtype=np.uint8)
        if not np.issubdtype(arr.dtype, np.floating):
            raise InvalidArgument(f"{what} must be floating point, got {arr.dtype}")
        arr = np.ascontiguousarray(arr, dtype=np.float32)
        if not np.isfinite(arr).all():
            raise InvalidArgument(f"{what} contain NaN or infinite values")
        return arr

    def _scores(self, dist: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """faiss distances -> scores where higher is better; -inf for missing results."""
        if self.input_kind == "binary":
            scores = 1.0 - 2.0 * dist.astype(np.float32) / self.dim
        else:
            scores = dist.astype(np.float32, copy=True)
        scores[labels < 0] = -np.inf
        return scores.astype(np.float32)

    def _exact(self, q: np.ndarray, k: int, allowed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Brute force over the allowed ids' stored vectors (a throw-away flat index)."""
        x = self._vectors(allowed)
        if self.input_kind == "binary":
            flat: Any = faiss.IndexBinaryFlat(self.dim)
        else:
            flat = faiss.IndexFlatIP(self.dim)
        flat.add(x)
        dist, pos = flat.search(q, min(k, allowed.size))
        labels = np.where(pos >= 0, allowed[np.clip(pos, 0, None)], -1)
        return self._scores(dist, labels), labels


# --------------------------------------------------------------------- registry
_REGISTRY: dict[str, type[VectorIndex]] = {}


def register_index_kind(name: str):
    """Class decorator: make ``cls`` available as index kind ``name``."""

    def wrap(cls: type[VectorIndex]) -> type[VectorIndex]:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"index kind {name!r} registered twice")
        cls.kind = name
        _REGISTRY[name] = cls
        return cls

    return wrap


def available_index_kinds() -> dict[str, type[VectorIndex]]:
    return dict(sorted(_REGISTRY.items()))


def index_kind_class(name: str) -> type[VectorIndex]:
    try:
        return _REGISTRY[name]
    except KeyError:
        valid = ", ".join(sorted(_REGISTRY)) or "(none)"
        raise NotFound(
            f"unknown index kind {name!r}; valid kinds: {valid}", field="index_kind"
        ) from None


def create_index(kind: str, dim: int, config: IndexConfig | dict | None = None) -> VectorIndex:
    """A new empty index of ``kind``."""
    if isinstance(config, dict):
        try:
            config = IndexConfig(**config)
        except Exception as exc:  # pydantic.ValidationError: bad user config
            raise InvalidArgument(f"bad index config: {exc}", field="index_config") from exc
    return index_kind_class(kind)(dim, config)


def load_index(path: str | Path) -> VectorIndex:
    return VectorIndex.load(path)


# --------------------------------------------------------------------- helpers
def write_atomic(path: Path, write: Any) -> None:
    """Write a file so that a crash leaves either the old or the new content, never half."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    fsync_dir(path.parent)


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def serialize(index: Any) -> np.ndarray:
    if isinstance(index, faiss.IndexBinary):
        return faiss.serialize_index_binary(index)
    return faiss.serialize_index(index)


def _check_ids(ids: Any) -> np.ndarray:
    arr = np.asarray(ids)
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise InvalidArgument(f"ids must be integers, got {arr.dtype}")
    arr = arr.astype(np.int64).reshape(-1)
    if arr.size and arr.min() < 0:
        raise InvalidArgument("ids must be >= 0 (-1 marks a missing result)")
    if np.unique(arr).size != arr.size:
        raise InvalidArgument("ids must be unique within one call")
    return arr


def _empty_result(nq: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    return np.full((nq, k), -np.inf, dtype=np.float32), np.full((nq, k), -1, dtype=np.int64)


def _keep_only(
    scores: np.ndarray, labels: np.ndarray, allowed: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Drop labels outside sorted ``allowed`` and pad each row to ``k`` (stable order)."""
    labels = labels.astype(np.int64)
    pos = np.clip(np.searchsorted(allowed, labels), 0, max(allowed.size - 1, 0))
    keep = (labels >= 0) & (allowed[pos] == labels) if allowed.size else labels < -1
    out_s, out_i = _empty_result(labels.shape[0], k)
    for row in range(labels.shape[0]):
        sel = np.flatnonzero(keep[row])[:k]
        out_s[row, : sel.size] = scores[row, sel]
        out_i[row, : sel.size] = labels[row, sel]
    return out_s, out_i
