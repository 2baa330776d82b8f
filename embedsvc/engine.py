"""The engine: strategies + batcher + collections behind one set of plain Python calls.

This is the layer every transport uses (gRPC today; the CLI in-process): it validates requests
against the configured limits, routes texts through the cross-request :class:`Batcher`, and
reads/writes collections. It raises :mod:`embedsvc.errors` exceptions only; turning them into
status codes is the transport's job.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from embedsvc import telemetry
from embedsvc.batching import Batcher, SearchBatcher
from embedsvc.collections.manager import CollectionManager
from embedsvc.collections.store import validate_filter
from embedsvc.config import ServiceConfig
from embedsvc.errors import InvalidArgument
from embedsvc.indexes import index_kind_class
from embedsvc.runtimes import serving_strategy
from embedsvc.runtimes.base import runtime_of
from embedsvc.strategies import Embedding, Role, Strategy, available_strategies, get_strategy

log = logging.getLogger(__name__)

DEFAULT_STRATEGY = "mean"


@dataclass
class Document:
    id: str
    text: str
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass
class UpsertCounts:
    received: int = 0
    inserted: int = 0
    updated: int = 0
    unchanged: int = 0

    def __iadd__(self, other: UpsertCounts) -> UpsertCounts:
        self.received += other.received
        self.inserted += other.inserted
        self.updated += other.updated
        self.unchanged += other.unchanged
        return self


@dataclass
class StrategyInfo:
    name: str
    description: str
    kind: str
    dim: int
    max_tokens: int
    loaded: bool
    #: what executes it under this service's runtime: torch | onnx | onnx-int8, "refused ..."
    #: where the int8 gate refuses it, "none (model-free)" for the debug engines
    runtime: str = "torch"


class Engine:
    """What the service does, as a library."""

    def __init__(
        self,
        config: ServiceConfig | None = None,
        collections: bool = True,
        encoder: Any = None,
    ) -> None:
        """``collections=False``: an embedding-only engine that owns no data folder (a Ray Serve
        embedding replica). ``encoder``: a callable with ``Batcher.encode``'s signature that runs
        the forward passes elsewhere (the Ray Serve collection replica hands them to the
        embedding replicas); validation and token counting stay here."""
        self.config = config or ServiceConfig()
        # strategies load their backbones through default_cache_dir(); point it at ours
        os.environ["EMBEDSVC_CACHE_DIR"] = str(self.config.cache_dir)
        self.batcher = Batcher(self.config.batching)
        self.search_batcher = (
            SearchBatcher(self.config.batching) if self.config.batching.batch_searches else None
        )
        self.collections = (
            CollectionManager(self.config.data_dir, milvus=self.config.milvus)
            if collections
            else None
        )
        self.encoder = encoder
        self._loaded: set[str] = set()
        #: strategies that have answered a request (their model is loaded)
        self._warm: set[str] = set()
        self._load_lock = threading.Lock()

    # -- strategies ----------------------------------------------------------------------------

    def strategy(self, name: str | None) -> Strategy:
        """The shared instance of ``name`` (default ``mean``); NotFound lists valid names."""
        name = name or DEFAULT_STRATEGY
        # torch: the shared instance; onnx | onnx-int8: an instance whose executor runs the
        # exported core (exported at start-up, never here)
        strategy = serving_strategy(name, self.config)
        with self._load_lock:
            self._loaded.add(name)
        return strategy

    def preload(self) -> None:
        """Load the configured strategies' models now, so the first request is not slow."""
        from embedsvc.export.startup import prepare

        for name in self.config.preload_strategies:
            prepare(name, self.config)  # the ONNX export, when the runtime needs one
            strategy = self.strategy(name)
            strategy.encode(["warm-up"], Role.QUERY)
            self._warm.add(strategy.name)

    def list_strategies(self) -> list[StrategyInfo]:
        infos = []
        for name, cls in available_strategies().items():
            loaded = name in self._loaded
            dim = max_tokens = 0
            if loaded:
                inst = get_strategy(name)
                dim, max_tokens = inst.dim, inst.max_tokens
            runtime = runtime_of(cls, self.config.runtime)
            infos.append(
                StrategyInfo(
                    name, cls.description, cls.output_kind, dim, max_tokens, loaded, runtime
                )
            )
        return infos

    # -- embedding -----------------------------------------------------------------------------

    def _validate_texts(self, texts: list[str], what: str, limit: int) -> None:
        if not texts:
            raise InvalidArgument(f"{what} is empty; send at least one text", field=what)
        if len(texts) > limit:
            raise InvalidArgument(
                f"{len(texts)} {what} in one call; the limit is {limit}: split the request",
                field=what,
            )
        max_chars = self.config.limits.max_text_chars
        for i, text in enumerate(texts):
            if not text or not text.strip():
                raise InvalidArgument(
                    f"{what}[{i}] is empty; every text needs at least one non-space character",
                    field=f"{what}[{i}]",
                )
            if len(text) > max_chars:
                raise InvalidArgument(
                    f"{what}[{i}] has {len(text)} characters; the limit is {max_chars}",
                    field=f"{what}[{i}]",
                )

    def _encode(
        self,
        strategy: Strategy,
        texts: list[str],
        role: Role,
        normalize: bool,
        strict: bool,
        what: str = "texts",
    ) -> Embedding:
        future, tokenize = self._submit(strategy, texts, role, normalize, strict, what, True)
        return self._finish(future.result(), strategy, tokenize, len(texts))

    def _submit(
        self,
        strategy: Strategy,
        texts: list[str],
        role: Role,
        normalize: bool,
        strict: bool,
        what: str = "texts",
        on_caller: bool = False,
    ) -> tuple[Future, float]:
        """Count tokens on the calling thread, queue the texts: (the batcher's future, seconds
        spent tokenising). ``on_caller``: a blocking caller may run the forward itself."""
        started = time.perf_counter()
        counts = strategy.count_tokens(texts, role)
        tokenize = time.perf_counter() - started
        if strict:
            for i, n in enumerate(counts):
                if n > strategy.max_tokens:
                    raise InvalidArgument(
                        f"{what}[{i}] has {n} tokens; strategy {strategy.name!r} takes at most "
                        f"{strategy.max_tokens}: shorten it, or leave strict_length off to "
                        "truncate",
                        field=f"{what}[{i}]",
                    )
        tokens = sum(min(n, strategy.max_tokens) for n in counts)
        if self.encoder is not None:  # forwards run elsewhere (a Ray embedding replica)
            future: Future = Future()
            try:
                future.set_result(self.encoder(strategy, texts, role, normalize, tokens))
            except BaseException as exc:  # noqa: BLE001 - handed to the caller through the future
                future.set_exception(exc)
            return future, tokenize
        future = self.batcher.submit(strategy, texts, role, normalize, tokens, on_caller)
        return future, tokenize

    def _finish(self, emb: Embedding, strategy: Strategy, tokenize: float, n: int) -> Embedding:
        emb.timings["tokenize"] = tokenize
        telemetry.record_stages(emb.timings, strategy=strategy.name, batch_size=n)
        self._warm.add(strategy.name)
        return emb

    def embed(
        self,
        texts: list[str],
        strategy: str | None = None,
        role: Role = Role.QUERY,
        normalize: bool = True,
        strict: bool = False,
    ) -> Embedding:
        self._validate_texts(texts, "texts", self.config.limits.max_texts_per_request)
        return self._encode(self.strategy(strategy), texts, role, normalize, strict)

    def is_warm(self, strategy: str | None) -> bool:
        """``strategy`` has answered a request already (its model is loaded)."""
        return (strategy or DEFAULT_STRATEGY) in self._warm

    async def embed_async(
        self,
        texts: list[str],
        strategy: str | None = None,
        role: Role = Role.QUERY,
        normalize: bool = True,
        strict: bool = False,
    ) -> Embedding:
        """:meth:`embed` for an event loop without a thread hop: validation and the token count
        run on the calling (loop) thread, the forward on the batcher's worker, and the loop
        serves other requests meanwhile. Meant for small requests of a warm strategy (a cold
        one loads its model in the first call, which would block the loop)."""
        if self.encoder is not None:  # a remote forward blocks: keep it off the loop
            return await asyncio.to_thread(self.embed, texts, strategy, role, normalize, strict)
        self._validate_texts(texts, "texts", self.config.limits.max_texts_per_request)
        strat = self.strategy(strategy)
        future, tokenize = self._submit(strat, texts, role, normalize, strict)
        emb = await asyncio.wrap_future(future)
        return self._finish(emb, strat, tokenize, len(texts))

    # -- collections ---------------------------------------------------------------------------

    def create_collection(
        self,
        name: str,
        strategy: str | None = None,
        index_kind: str | None = None,
        index_params: dict[str, Any] | None = None,
        backend: str | None = None,
    ):
        """A new collection of ``strategy`` on ``backend`` (faiss, the default, or milvus)."""
        strat = self.strategy(strategy)
        kind = index_kind or ("binary" if strat.output_kind == "binary" else "flat")
        return self.collections.create(
            name,
            strategy=strat.name,
            output_kind=strat.output_kind,
            dim=strat.dim,
            index_kind=kind,
            index_config=index_params or None,
            backend=backend or "faiss",
            # only dual strategies pass it, so backends without a sparse side index still work
            **(
                {"sparse_vocab": sparse} if (sparse := getattr(strat, "sparse_vocab", None)) else {}
            ),
        )

    def upsert(self, collection: str, documents: list[Document]) -> UpsertCounts:
        """Embed and durably store ``documents``; returns only after the commit."""
        coll = self.collections.get(collection)
        counts = UpsertCounts(received=len(documents))
        if not documents:
            return counts
        if len(documents) > self.config.limits.max_texts_per_request:
            raise InvalidArgument(
                f"{len(documents)} documents in one message; the limit is "
                f"{self.config.limits.max_texts_per_request}: send smaller chunks",
                field="documents",
            )
        latest: dict[str, Document] = {}
        for i, doc in enumerate(documents):
            if not doc.id:
                raise InvalidArgument(
                    f"documents[{i}] has no id; every document needs a unique string id",
                    field=f"documents[{i}].id",
                )
            latest[doc.id] = doc  # the last copy of a repeated id wins
        docs = list(latest.values())
        self._validate_texts([d.text for d in docs], "documents.text", len(docs))
        # Skip re-embedding what is already stored identically: re-sending a file (a resumed
        # batch job, a retried stream) costs a lookup, not a forward pass.
        stored = coll.get([d.id for d in docs])
        todo = [
            d
            for d, old in zip(docs, stored)
            if old is None or old.text != d.text or old.metadata != (d.metadata or {})
        ]
        counts.unchanged = len(documents) - len(todo)
        if todo:
            strat = self.strategy(coll.strategy)
            emb = self._encode(strat, [d.text for d in todo], Role.PASSAGE, True, False)
            result = coll.upsert(
                [d.id for d in todo], [d.text for d in todo], [d.metadata for d in todo], emb
            )
            counts.inserted, counts.updated = result.inserted, result.updated
            counts.unchanged += result.unchanged
        return counts

    def delete(self, collection: str, ids: list[str]) -> int:
        if not ids:
            raise InvalidArgument("ids is empty; name at least one document id", field="ids")
        limit = self.config.limits.max_ids_per_request
        if len(ids) > limit:
            raise InvalidArgument(
                f"{len(ids):,} ids in one Delete; the limit is {limit:,}: split the request",
                field="ids",
            )
        return self.collections.get(collection).delete(ids)

    def search(
        self,
        collection: str,
        queries: list[str],
        top_k: int = 10,
        filter: dict[str, Any] | None = None,
        timings: dict[str, float] | None = None,
    ):
        """Nearest documents for each query, best first: ``list[list[Hit]]``.

        ``timings``, when given, receives seconds per stage (queue, tokenize, inference, search).
        """
        limits = self.config.limits
        if top_k < 0 or top_k > limits.max_top_k:
            raise InvalidArgument(
                f"top_k={top_k} is out of range; use 1..{limits.max_top_k}", field="top_k"
            )
        coll = self.collections.get(collection)
        self._validate_texts(queries, "queries", limits.max_queries_per_search)
        if filter:
            validate_filter(filter)  # before the search batcher groups requests by filter
        strat = self.strategy(coll.strategy)
        emb = self._encode(strat, queries, Role.QUERY, True, False, what="queries")
        started = time.perf_counter()
        k = top_k or 10
        # two-stage search: a strategy that rescores gets a deeper candidate list first
        rescore_depth = int(getattr(strat, "rescore_depth", 0) or 0)
        depth = max(k, rescore_depth)
        if getattr(emb, "sparse", None) is not None:  # dual strategy: fused dense + sparse
            hits = coll.search(
                emb, depth, filter or None, fusion_weight=getattr(strat, "fusion_weight", None)
            )
        elif (
            self.search_batcher is not None
            and index_kind_class(coll.index_kind).gains_from_batching
        ):
            hits = self.search_batcher.search(coll, emb, depth, filter or None)
        else:
            hits = coll.search(emb, depth, filter or None)
        if rescore_depth > 0:
            hits = self._rescore(strat, coll, queries, hits, k)
        searched = time.perf_counter() - started
        telemetry.record_stages({"search": searched}, collection=collection, top_k=k)
        if timings is not None:
            timings.update(emb.timings, search=searched)
        return hits

    @staticmethod
    def _rescore(strat: Strategy, coll: Any, queries: list[str], hits: list, k: int) -> list:
        """Re-score each query's candidates with ``strat.rescore`` on their stored payloads;
        a row with any candidate lacking a payload keeps its first-stage order."""
        stored = coll.payloads([h.id for row in hits for h in row])
        todo = [i for i, row in enumerate(hits) if row and all(h.id in stored for h in row)]
        if todo:
            scores = strat.rescore(
                [queries[i] for i in todo], [[stored[h.id] for h in hits[i]] for i in todo]
            )
            for i, sc in zip(todo, scores, strict=True):
                for h, s in zip(hits[i], sc, strict=True):
                    h.score = float(s)
                hits[i] = sorted(hits[i], key=lambda h: -h.score)
        return [row[:k] for row in hits]

    def close(self) -> None:
        """Finish queued work and checkpoint every collection (graceful shutdown)."""
        self.batcher.close()
        if self.search_batcher is not None:
            self.search_batcher.close()
        if self.collections is not None:
            self.collections.close()
