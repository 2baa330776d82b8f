"""DReSD drafter: dense retrieval of continuations by the decoder's own hidden state.

Reference
    Gritta et al., "DReSD: Dense Retrieval for Speculative Decoding" (2025);
    huawei-noah/HEBO@00ba1ac ``dresd.py`` (class ``DReSD``), ``spec_dec_dresd.py``. Re-derived.

Algorithm (one step)
    1. Query = the final-norm hidden state of the position that produced the newest token
       (NOT the state of the newest token itself: that one predicts the *next* token, one off).
    2. z-score -> PCA 64 -> L2 (the datastore's stored projection), top ``top_k`` = 50 by inner
       product.
    3. Keep neighbours whose ``value[0]`` equals the newest token (their key state predicted the
       same token ours did), in neighbour order; drafts = ``value[1 : 1 + len_drafts]``.
    4. Up to ``num_drafts`` = 10 drafts; none surviving = no draft this step (plain decode).

Inputs / outputs
    :meth:`DReSDDrafter.propose` takes the token list and the raw state [d] (float32) and returns
    a list of drafts (token lists). Verification lives in :mod:`embedsvc.rag.speculative`.

Deviations (each one a config switch; the defaults that differ are named in the bench report)
    * Exact duplicate drafts are removed before the ``num_drafts`` cut (the reference cuts
      first); with tree verification a duplicate instead adds weight to its trie path
      (:meth:`DReSDDrafter.propose_weighted`), which only changes which nodes a node budget keeps.
    * ``min_score``: no draft when the nearest neighbour's inner product is below it (skip
      drafting when not confident; the reference always drafts when a neighbour survives).
    * ``self_keys`` (NOT in the paper): the request's own final-norm states are added as keys for
      the duration of the request (key = state of position i, projected like the datastore's;
      value = the tokens after it in this request). They are searched exactly (a few hundred
      keys) and merged with the datastore's neighbours by the same inner-product score, then
      filtered and shifted exactly as the datastore's neighbours. It is dense retrieval from the
      prompt and the text generated so far, i.e. "prompt lookup" done DReSD's way.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from pydantic import BaseModel, Field

from embedsvc.rag.datastore import Datastore
from embedsvc.rag.speculative import dedupe_drafts


class DReSDConfig(BaseModel):
    top_k: int = Field(50, ge=1, description="neighbours fetched before the filter (reference 50)")
    num_drafts: int = Field(10, ge=1)
    len_drafts: int = Field(10, ge=1, description="<= value_len - 1 of the datastore")
    min_score: float | None = Field(
        None, description="no draft when the best neighbour's score is below (None = off)"
    )
    self_keys: bool = Field(
        False, description="also retrieve from the request's own states (not in the paper)"
    )
    self_top_k: int = Field(20, ge=1, description="request-local neighbours merged in")


def filter_weighted(
    values: np.ndarray, last_token: int, num_drafts: int = 10, len_drafts: int = 10
) -> tuple[list[list[int]], list[float]]:
    """As :func:`filter_drafts`, with the number of neighbours behind each distinct draft.

    >>> import numpy as np
    >>> vals = np.array([[7, 1, 2, 3], [8, 4, 5, 6], [7, 1, 2, 3], [7, 9, 9, 9]])
    >>> filter_weighted(vals, last_token=7, len_drafts=2)
    ([[1, 2], [9, 9]], [2.0, 1.0])
    """
    keep = np.asarray(values)
    keep = keep[keep[:, 0] == last_token][:, 1 : 1 + len_drafts]
    order: dict[tuple[int, ...], float] = {}
    for row in keep.tolist():
        key = tuple(t for t in row)
        if key:
            if key not in order and len(order) == num_drafts:
                continue
            order[key] = order.get(key, 0.0) + 1.0
    return [list(k) for k in order], list(order.values())


def filter_drafts(
    values: np.ndarray, last_token: int, num_drafts: int = 10, len_drafts: int = 10
) -> list[list[int]]:
    """Drafts from retrieved values: rows whose first token is ``last_token``, shifted by one.

    ``values`` [k, N] are the neighbours' next-token windows in neighbour order (best first).

    >>> import numpy as np
    >>> vals = np.array([[7, 1, 2, 3], [8, 4, 5, 6], [7, 1, 2, 3], [7, 9, 9, 9]])
    >>> filter_drafts(vals, last_token=7, num_drafts=10, len_drafts=2)
    [[1, 2], [9, 9]]
    >>> filter_drafts(vals, last_token=5)
    []
    """
    keep = values[np.asarray(values)[:, 0] == last_token]
    return dedupe_drafts(keep[:, 1 : 1 + len_drafts].tolist(), num_drafts)


class DReSDDrafter:
    """Drafts from a :class:`Datastore` queried with the decoder's final-norm state."""

    name = "dresd"

    def __init__(self, datastore: Datastore, config: DReSDConfig | None = None) -> None:
        self.datastore = datastore
        self.config = config or DReSDConfig()

    def new_request(self) -> DReSDDrafter | RequestDReSD:
        """A per-request drafter when request-local keys are on (they hold request state)."""
        return RequestDReSD(self) if self.config.self_keys else self

    def _neighbours(self, state: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        scores, values = self.datastore.search(
            np.asarray(state, dtype=np.float32)[None], self.config.top_k
        )
        return scores[0], values[0]

    def propose_weighted(
        self, tokens: Sequence[int], state: np.ndarray | None
    ) -> tuple[list[list[int]], list[float]]:
        if state is None or not len(tokens):
            return [], []
        scores, values = self._neighbours(state)
        cfg = self.config
        if cfg.min_score is not None and (not len(scores) or scores[0] < cfg.min_score):
            return [], []
        return filter_weighted(values, int(tokens[-1]), cfg.num_drafts, cfg.len_drafts)

    def propose(self, tokens: Sequence[int], state: np.ndarray | None) -> list[list[int]]:
        if state is None or not len(tokens):
            return []
        _, values = self._neighbours(state)
        cfg = self.config
        return filter_drafts(values, int(tokens[-1]), cfg.num_drafts, cfg.len_drafts)


class RequestDReSD:
    """DReSD for one request, with its own states as extra keys (``self_keys``; see above)."""

    name = "dresd"

    def __init__(self, parent: DReSDDrafter) -> None:
        self.parent = parent
        self.config = parent.config
        dim = parent.datastore.projection.components.shape[1]
        self.keys = np.zeros((0, dim), dtype=np.float32)

    def observe(self, tokens: Sequence[int], states: np.ndarray) -> None:
        """Add the states of the newest positions; afterwards keys cover ``tokens[:-1]``."""
        self.keys = np.concatenate([self.keys, self.parent.datastore.projection(states)])
        if len(self.keys) != len(tokens) - 1:
            raise RuntimeError(f"{len(self.keys)} request keys for {len(tokens)} tokens")

    def _local(self, tokens: Sequence[int], query: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Request-local (scores, values): positions i < n - 2 whose next token is the newest."""
        cfg = self.config
        toks = np.asarray(tokens, dtype=np.int64)
        n, width = len(toks), cfg.len_drafts + 1
        cand = np.flatnonzero(toks[1 : n - 1] == toks[-1])  # i with tokens[i + 1] == newest
        cand = cand[cand < len(self.keys)]
        if not len(cand):
            return np.zeros(0, np.float32), np.zeros((0, width), np.int64)
        scores = self.keys[cand] @ query
        top = np.argsort(-scores, kind="stable")[: cfg.self_top_k]
        cand, scores = cand[top], scores[top]
        pad = np.concatenate([toks, np.full(width, -1)])
        values = pad[(cand + 1)[:, None] + np.arange(width)[None, :]]
        return scores, values

    def propose_weighted(
        self, tokens: Sequence[int], state: np.ndarray | None
    ) -> tuple[list[list[int]], list[float]]:
        if state is None or not len(tokens):
            return [], []
        cfg = self.config
        scores, values = self.parent._neighbours(state)
        query = self.parent.datastore.projection(np.asarray(state, dtype=np.float32)[None])[0]
        s_loc, v_loc = self._local(tokens, query)
        scores = np.concatenate([scores, s_loc])
        width = cfg.len_drafts + 1
        values = np.concatenate([values[:, :width], v_loc[:, :width].astype(values.dtype)], axis=0)
        if cfg.min_score is not None and (not len(scores) or scores.max() < cfg.min_score):
            return [], []
        order = np.argsort(-scores, kind="stable")
        drafts, weights = filter_weighted(
            values[order], int(tokens[-1]), cfg.num_drafts, cfg.len_drafts
        )
        drafts = [[t for t in d if t >= 0] for d in drafts]  # request values end at its end
        return [d for d in drafts if d], [w for d, w in zip(drafts, weights, strict=True) if d]

    def propose(self, tokens: Sequence[int], state: np.ndarray | None) -> list[list[int]]:
        return self.propose_weighted(tokens, state)[0]
