"""Context selection over a collection: the Engine-level calls behind SelectContext and Search.

Reference
    Adaptive-k (:mod:`embedsvc.rag.adaptive_k`) applied to a collection: the pool is the
    question's top-``pool_size`` documents (the whole collection when smaller), exactly as a
    ``Search`` with ``top_k = pool_size`` would return them.

Inputs / outputs
    An :class:`~embedsvc.engine.Engine`, a collection name, question text(s); out come the chosen
    passages (id, score, text, metadata, token count), best first, with k, the cut position and
    the total context tokens. Token counts use the collection strategy's tokenizer
    (``strategy.count_tokens``, passage role, untruncated). Errors are
    :mod:`embedsvc.errors` exceptions (fewer than 2 candidates -> InvalidArgument).

Hyper-parameters
    :class:`~embedsvc.rag.adaptive_k.AdaptiveKConfig`; request fields override its defaults.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import ValidationError

from embedsvc.errors import InvalidArgument
from embedsvc.rag.adaptive_k import AdaptiveKConfig, select_adaptive_k, within_budget
from embedsvc.strategies.base import Role

if TYPE_CHECKING:
    from embedsvc.collections.collection import Hit
    from embedsvc.engine import Engine


@dataclass
class ContextPassage:
    id: str
    score: float
    text: str
    metadata: dict[str, Any] = field(default_factory=dict)
    token_count: int = 0


@dataclass
class ContextSelection:
    """What :func:`select_context` chose for one question (passages best first)."""

    passages: list[ContextPassage]
    pool_size: int
    cut_index: int
    k_before_budget: int
    strategy: str

    @property
    def k(self) -> int:
        return len(self.passages)

    @property
    def total_tokens(self) -> int:
        return sum(p.token_count for p in self.passages)


def adaptive_k_config(
    *,
    buffer: int | None = None,
    pool_size: int | None = None,
    token_budget: int | None = None,
    head_fraction: float | None = None,
    tail_fraction: float | None = None,
) -> AdaptiveKConfig:
    """A config from request fields (None = default); bad values become InvalidArgument."""
    values = {
        "buffer": buffer,
        "pool_size": pool_size,
        "token_budget": token_budget,
        "head_fraction": head_fraction,
        "tail_fraction": tail_fraction,
    }
    try:
        return AdaptiveKConfig(**{k: v for k, v in values.items() if v is not None})
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err.get("loc", ())) or None
        raise InvalidArgument(
            f"Adaptive-k {where or 'settings'}: {err['msg']}", field=where
        ) from None


def similarity(kind: str, query: np.ndarray, docs: np.ndarray) -> np.ndarray:
    """Scores of ``docs`` for one ``query``, higher is better.

    Dense: inner product (cosine for normalised vectors). Binary (bit-packed uint8):
    ``1 - 2 * hamming / bits``, the same ordering a Hamming index gives.
    """
    if kind == "binary":
        bits = docs.shape[1] * 8
        ham = np.unpackbits(np.bitwise_xor(docs, query[None, :]), axis=1).sum(axis=1)
        return 1.0 - 2.0 * ham.astype(np.float64) / bits
    return docs.astype(np.float64) @ np.asarray(query, dtype=np.float64)


def _pool_size(engine: Engine, config: AdaptiveKConfig) -> int:
    limit = engine.config.limits.max_top_k
    if "pool_size" not in config.model_fields_set:
        return min(config.pool_size, limit)  # the default never exceeds the server's limit
    if config.pool_size > limit:
        raise InvalidArgument(
            f"pool_size={config.pool_size} exceeds this server's limit of {limit}",
            field="pool_size",
        )
    return config.pool_size


def _cut(
    engine: Engine,
    hits: list[Hit],
    scores: np.ndarray,
    config: AdaptiveKConfig,
    count_strategy: str,
    collection: str,
) -> tuple[list[ContextPassage], int, int]:
    """Adaptive-k over one query's pool; returns (passages, cut index, k before the budget)."""
    if len(hits) < 2:
        raise InvalidArgument(
            f"Adaptive-k needs at least 2 candidates, but only {len(hits)} document(s) of "
            f"collection {collection!r} matched: add documents or widen the filter",
            field="collection",
        )
    rule = config.model_copy(update={"token_budget": None})
    sel = select_adaptive_k(scores, rule)
    chosen = [hits[i] for i in sel.indices.tolist()]
    chosen_scores = scores[sel.indices]
    counts = engine.strategy(count_strategy).count_tokens([h.text for h in chosen], Role.PASSAGE)
    keep = within_budget(counts, config.token_budget)
    passages = [
        ContextPassage(h.id, float(s), h.text, h.metadata, int(n))
        for h, s, n in zip(chosen[:keep], chosen_scores[:keep], counts[:keep], strict=True)
    ]
    return passages, sel.cut, sel.k_rule


def select_context(
    engine: Engine,
    question: str,
    collection: str,
    *,
    strategy: str | None = None,
    config: AdaptiveKConfig | None = None,
    filter: dict[str, Any] | None = None,
) -> ContextSelection:
    """Adaptive-k context for ``question`` from ``collection``.

    ``strategy`` (optional) re-scores the retrieved pool with another strategy's query and
    passage embeddings; the pool itself always comes from the collection's index.
    """
    config = config or AdaptiveKConfig()
    if not isinstance(question, str) or not question.strip():
        raise InvalidArgument("question is empty; send the question text", field="question")
    coll = engine.collections.get(collection)
    n = _pool_size(engine, config)
    hits = engine.search(collection, [question], top_k=n, filter=filter)[0]
    scored_by = coll.strategy
    scores = np.asarray([h.score for h in hits], dtype=np.float64)
    if strategy and strategy != coll.strategy and len(hits) >= 2:
        q = engine.embed([question], strategy=strategy, role=Role.QUERY)
        d = engine.embed([h.text for h in hits], strategy=strategy, role=Role.PASSAGE)
        scores = similarity(q.kind, q.vectors[0], d.vectors)
        scored_by = strategy
    elif strategy:
        engine.strategy(strategy)  # unknown names are NotFound, even when nothing is re-scored
    passages, cut, k_rule = _cut(engine, hits, scores, config, coll.strategy, collection)
    return ContextSelection(passages, len(hits), cut, k_rule, scored_by)


def adaptive_search(
    engine: Engine,
    collection: str,
    queries: list[str],
    config: AdaptiveKConfig | None = None,
    filter: dict[str, Any] | None = None,
) -> list[list[ContextPassage]]:
    """``Search`` with Adaptive-k: each query's hits are the cut of its top ``pool_size``."""
    config = config or AdaptiveKConfig()
    coll = engine.collections.get(collection)
    n = _pool_size(engine, config)
    results = engine.search(collection, queries, top_k=n, filter=filter)
    out = []
    for hits in results:
        scores = np.asarray([h.score for h in hits], dtype=np.float64)
        out.append(_cut(engine, hits, scores, config, coll.strategy, collection)[0])
    return out
