"""Adaptive-k: how many passages to hand a reader, read off the retrieval score distribution.

Reference
    Taguchi, Maekawa, Bhutani, "Efficient Context Selection for Long-Context QA: No Tuning, No
    Iteration, Just Adaptive-k" (EMNLP 2025); megagonlabs/adaptive-k-retrieval@fc86f12
    (``retriever.py``: ``find_threshold_largest_gap``, ``adaptive_retrieve``). The QA runs use
    ``largest_gap`` with no head exclusion, a 10% tail exclusion and a buffer of 5.

The rule
    1. Sort the scores of the *whole* candidate pool (or a top-N, N >= 100) descending.
    2. ``gaps = diff(sorted)`` (all <= 0). Ignore the first ``int((n - 1) * head_fraction)`` gaps
       and the last ``int((n - 1) * tail_fraction)`` (the steepest drop is usually in the noisy
       tail, which is why it is excluded); the cut ``t`` is the position of the first largest drop.
    3. Keep positions ``0..t + buffer`` inclusive: ``k = min(n, t + 1 + buffer)``.
    4. Optionally stop adding passages (best first) once a token budget would be exceeded.

Inputs / outputs
    Plain numpy: a 1-d float array of similarity scores (higher = more relevant) in, indices
    into that array out. Invalid input (fewer than two scores, NaN/inf, unsorted input where
    sorted input is required) raises :class:`embedsvc.errors.InvalidArgument`, which the server
    maps to INVALID_ARGUMENT.

Hyper-parameters (:class:`AdaptiveKConfig`)
    ``head_fraction`` 0.0 (HoloBench used 0.05), ``tail_fraction`` 0.1, ``buffer`` 5,
    ``pool_size`` 1000 (the top-N scored when the pool is a collection; >= 100),
    ``token_budget`` None (no budget).

Worked example (also run as a unit test through ``tests/rag/test_adaptive_k.py``)::

    >>> import numpy as np
    >>> scores = np.array([0.90, 0.88, 0.86, 0.50, 0.48, 0.46, 0.44, 0.42, 0.40, 0.38, 0.0])
    >>> # n = 11: gaps has 10 entries, the tail excludes int(10 * 0.1) = 1 of them (the 0.38 ->
    >>> # 0.0 drop, the largest in absolute terms). The largest remaining drop is 0.86 -> 0.50,
    >>> # at position t = 2, so without a buffer k = t + 1 = 3 ...
    >>> largest_gap_cut(scores)
    2
    >>> select_adaptive_k(scores, AdaptiveKConfig(buffer=0)).k
    3
    >>> # ... and with the default buffer of 5, k = 2 + 1 + 5 = 8.
    >>> select_adaptive_k(scores).k
    8
    >>> # A budget of 25 tokens with 10 tokens per passage keeps the best two.
    >>> select_adaptive_k(scores, AdaptiveKConfig(token_budget=25), token_counts=[10] * 11).k
    2
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from pydantic import BaseModel, Field, model_validator

from embedsvc.errors import InvalidArgument

#: the reference's QA settings
DEFAULT_TAIL_FRACTION = 0.1
DEFAULT_BUFFER = 5
#: the documented top-N a collection-backed pool is cut from (the issue asks for N >= 100)
DEFAULT_POOL_SIZE = 1000
MIN_POOL_SIZE = 100


class AdaptiveKConfig(BaseModel):
    """Adaptive-k hyper-parameters (defaults = the reference's QA runs)."""

    model_config = {"extra": "forbid"}

    head_fraction: float = Field(
        0.0, ge=0.0, lt=1.0, description="fraction of the leading gaps never taken as the cut"
    )
    tail_fraction: float = Field(
        DEFAULT_TAIL_FRACTION,
        ge=0.0,
        lt=1.0,
        description="fraction of the trailing gaps never taken as the cut (noisy tail)",
    )
    buffer: int = Field(DEFAULT_BUFFER, ge=0, description="extra passages kept after the cut")
    pool_size: int = Field(
        DEFAULT_POOL_SIZE,
        ge=MIN_POOL_SIZE,
        description="top-N candidates scored when the pool is a collection (whole pool if smaller)",
    )
    token_budget: int | None = Field(
        None, ge=1, description="stop adding passages once this many tokens would be exceeded"
    )

    @model_validator(mode="after")
    def _window_not_empty(self) -> AdaptiveKConfig:
        # int((n-1)h) + int((n-1)t) <= (n-1)(h+t) < n-1 keeps at least one gap to choose from
        if self.head_fraction + self.tail_fraction >= 1.0:
            raise ValueError(
                f"head_fraction + tail_fraction must be < 1 (got {self.head_fraction} + "
                f"{self.tail_fraction}): nothing would be left to cut at"
            )
        return self


@dataclass(frozen=True)
class AdaptiveKResult:
    """What :func:`select_adaptive_k` chose.

    ``indices``: the chosen positions of the *input* array, best first (``len == k``).
    ``cut``: position of the largest drop in the sorted scores (0-based, before the buffer).
    ``k_rule``: how many the gap rule + buffer kept, before the token budget.
    ``tokens``: total tokens of the chosen passages (0 when no token counts were given).
    ``order``: every input position sorted by score, best first (ties keep input order).
    """

    indices: np.ndarray
    cut: int
    k_rule: int
    tokens: int
    order: np.ndarray

    @property
    def k(self) -> int:
        return int(self.indices.shape[0])

    @property
    def budget_limited(self) -> bool:
        return self.k < self.k_rule


def _as_scores(scores: Sequence[float] | np.ndarray, what: str = "scores") -> np.ndarray:
    arr = np.asarray(scores, dtype=np.float64)
    if arr.ndim != 1:
        raise InvalidArgument(f"{what} must be a 1-d list of numbers, got shape {arr.shape}")
    if arr.shape[0] < 2:
        raise InvalidArgument(
            f"Adaptive-k needs at least 2 scores to find a drop, got {arr.shape[0]}: "
            "use a larger candidate pool",
            field=what,
        )
    if not np.all(np.isfinite(arr)):
        bad = int(np.flatnonzero(~np.isfinite(arr))[0])
        raise InvalidArgument(f"{what}[{bad}] is {arr[bad]}; scores must be finite", field=what)
    return arr


def _descending(arr: np.ndarray) -> np.ndarray:
    """Sorted input in descending order: descending as is, ascending flipped, else an error."""
    gaps = np.diff(arr)
    if np.all(gaps <= 0):
        return arr  # descending (all-equal counts as descending)
    if np.all(gaps >= 0):
        return arr[::-1]
    raise InvalidArgument(
        "scores are not sorted; sort them first or call select_adaptive_k, which sorts",
        field="scores",
    )


def largest_gap_cut(
    sorted_scores: Sequence[float] | np.ndarray,
    head_fraction: float = 0.0,
    tail_fraction: float = DEFAULT_TAIL_FRACTION,
) -> int:
    """Position ``t`` (0-based, in descending order) of the first largest drop.

    Input must be sorted, descending or ascending (ascending is flipped, as the reference does).
    The drop between positions ``t`` and ``t + 1`` is the largest among gaps
    ``int((n-1)·head) .. n-2-int((n-1)·tail)``; on ties the first (highest-ranked) one wins.
    """
    if not (0.0 <= head_fraction < 1.0 and 0.0 <= tail_fraction < 1.0):
        raise InvalidArgument("head_fraction and tail_fraction must be in [0, 1)")
    if head_fraction + tail_fraction >= 1.0:
        raise InvalidArgument("head_fraction + tail_fraction must be < 1")
    arr = _descending(_as_scores(sorted_scores))
    n = arr.shape[0]
    gaps = np.diff(arr)  # n - 1 values, all <= 0
    head = int((n - 1) * head_fraction)
    tail = int((n - 1) * tail_fraction)
    window = gaps[head : gaps.shape[0] - tail]
    return int(np.argmin(window)) + head  # argmin returns the first minimum


def select_adaptive_k(
    scores: Sequence[float] | np.ndarray,
    config: AdaptiveKConfig | None = None,
    token_counts: Sequence[int] | np.ndarray | None = None,
) -> AdaptiveKResult:
    """Adaptive-k over a candidate pool's scores, in any order.

    ``scores[i]`` is candidate ``i``'s similarity; ``token_counts[i]`` its length in the reader's
    (or the collection strategy's) tokens, needed only for a token budget or a token total.
    The pool is sorted descending (stable, so equal scores keep input order), cut with
    :func:`largest_gap_cut`, extended by the buffer, then trimmed to the budget: passages are
    added best first and adding stops at the first one that would exceed it (so the total never
    exceeds the budget, and a first passage longer than the budget gives k = 0).
    """
    config = config or AdaptiveKConfig()
    arr = _as_scores(scores)
    n = arr.shape[0]
    counts: np.ndarray | None = None
    if token_counts is not None:
        counts = np.asarray(token_counts, dtype=np.int64)
        if counts.shape != (n,):
            raise InvalidArgument(
                f"token_counts has shape {counts.shape}; need one count per score ({n})",
                field="token_counts",
            )
        if np.any(counts < 0):
            raise InvalidArgument("token_counts must be >= 0", field="token_counts")
    elif config.token_budget is not None:
        raise InvalidArgument(
            "a token budget needs the passages' token counts", field="token_budget"
        )
    order = np.argsort(-arr, kind="stable")
    cut = largest_gap_cut(arr[order], config.head_fraction, config.tail_fraction)
    k_rule = min(n, cut + 1 + config.buffer)
    chosen = order[:k_rule]
    tokens = 0
    if counts is not None:
        keep = within_budget(counts[chosen], config.token_budget)
        chosen = chosen[:keep]
        tokens = int(counts[chosen].sum())
    return AdaptiveKResult(indices=chosen, cut=cut, k_rule=k_rule, tokens=tokens, order=order)


def within_budget(token_counts: Sequence[int] | np.ndarray, budget: int | None) -> int:
    """How many passages (taken in the given order) fit in ``budget`` tokens.

    Adding stops at the first passage that would exceed the budget, so the total never exceeds
    it; ``None`` means no budget (all of them).
    """
    counts = np.asarray(token_counts, dtype=np.int64)
    if budget is None:
        return int(counts.shape[0])
    return int(np.searchsorted(np.cumsum(counts), budget, side="right"))
