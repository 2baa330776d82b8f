"""REST drafter (the baseline): exact suffix matching over the datastore's token stream.

Reference
    He et al., "REST: Retrieval-Based Speculative Decoding" (NAACL 2024);
    FasterDecoding/REST@50a5fc1 ``DraftRetriever/src/lib.rs`` (suffix array + search + trie) and
    ``rest/model/utils.py``. Re-derived on numpy; see techniques.md 7b.

Algorithm (one step)
    1. Query = the last ``max_suffix`` = 16 tokens of the context, the newest token included.
    2. For m = 16, 15, ..., 2: binary-search the suffix array for ``query[-m:]``; the first m
       with any occurrence wins (the longest match).
    3. Continuations: the ``len_drafts`` tokens after each of up to ``max_occurrences`` = 5000
       occurrences (in suffix-array order, as REST's ``k``).
    4. Rank and keep ``num_drafts`` = 10 distinct continuations.

Simplification (documented)
    REST builds a trie of the continuations weighted by how often each prefix occurs, keeps the
    64 heaviest nodes and verifies them as one tree with tree attention. We verify drafts as a
    batch (the same verifier as DReSD, as DReSD's own ``RestSearch`` baseline does), so we keep
    whole paths: distinct continuations sorted by the trie weights of their prefixes, compared
    lexicographically (count of the 1-token prefix, then of the 2-token prefix, ...), i.e. the
    paths through the heaviest trie nodes first. No match = no draft (REST would verify a dummy
    token, which costs the same forward and is never accepted).

Data
    The stream is the datastore's ``tokens.npy`` (all sequences concatenated without
    separators, as REST's datastore); the suffix array is built once in numpy by prefix
    doubling (O(n log^2 n); ~1 s for 100k tokens) and cached beside it as ``suffix_array.npy``.
"""

from __future__ import annotations

import bisect
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from pydantic import BaseModel, Field


class RESTConfig(BaseModel):
    max_suffix: int = Field(16, ge=1)
    min_suffix: int = Field(2, ge=1)
    max_occurrences: int = Field(5000, ge=1)
    num_drafts: int = Field(10, ge=1)
    len_drafts: int = Field(10, ge=1)


def suffix_array(tokens: Sequence[int] | np.ndarray) -> np.ndarray:
    """Start positions of all suffixes of ``tokens`` in lexicographic order (prefix doubling).

    A suffix that is a proper prefix of another sorts first (as Python list comparison).

    >>> suffix_array([3, 1, 3, 1]).tolist()  # suffixes: 3131, 131, 31, 1
    [3, 1, 2, 0]
    """
    arr = np.asarray(tokens, dtype=np.int64)
    n = len(arr)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    rank = np.unique(arr, return_inverse=True)[1].astype(np.int64)
    sa = np.argsort(rank, kind="stable")
    k = 1
    while k < n:
        second = np.zeros(n, dtype=np.int64)
        second[: n - k] = rank[k:] + 1  # 0 = past the end, before every token
        key = rank * (n + 1) + second
        sa = np.argsort(key, kind="stable")
        ks = key[sa]
        new = np.empty(n, dtype=np.int64)
        new[sa] = np.concatenate([[0], np.cumsum(ks[1:] != ks[:-1])])
        rank = new
        if rank[sa[-1]] == n - 1:  # all ranks distinct: sorted
            break
        k *= 2
    return sa


class SuffixIndex:
    """Exact pattern search over a token stream via its suffix array."""

    def __init__(self, tokens: Sequence[int] | np.ndarray, sa: np.ndarray | None = None) -> None:
        self.tokens: list[int] = [int(t) for t in tokens]
        self.sa: list[int] = (suffix_array(self.tokens) if sa is None else sa).tolist()

    def find(self, pattern: Sequence[int]) -> tuple[int, int]:
        """Half-open range ``[lo, hi)`` of suffix-array rows whose suffix starts with ``pattern``.

        >>> idx = SuffixIndex([5, 6, 7, 5, 6, 8])
        >>> lo, hi = idx.find([5, 6])
        >>> sorted(idx.sa[lo:hi])
        [0, 3]
        >>> idx.find([6, 5])[1] - idx.find([6, 5])[0]
        0
        """
        pat, m, toks = list(pattern), len(pattern), self.tokens
        lo = bisect.bisect_left(self.sa, pat, key=lambda i: toks[i : i + m])
        hi = bisect.bisect_right(self.sa, pat, lo=lo, key=lambda i: toks[i : i + m])
        return lo, hi

    def longest_match(
        self, context: Sequence[int], max_len: int = 16, min_len: int = 2
    ) -> tuple[int, list[int]]:
        """(m, start positions) of the longest suffix of ``context`` (m in max..min) found.

        Returns ``(0, [])`` when even ``min_len`` tokens do not occur.

        >>> SuffixIndex([1, 2, 3, 9, 2, 3, 4]).longest_match([7, 2, 3])
        (2, [4, 1])
        """
        for m in range(min(max_len, len(context)), min_len - 1, -1):
            lo, hi = self.find(context[-m:])
            if hi > lo:
                return m, self.sa[lo:hi]
        return 0, []

    def continuations(self, starts: Sequence[int], m: int, length: int) -> list[tuple[int, ...]]:
        """The ``length`` tokens after each match (shorter at the end of the stream; no empties)."""
        toks = self.tokens
        out = [tuple(toks[s + m : s + m + length]) for s in starts]
        return [c for c in out if c]


def rank_continuations(conts: Sequence[tuple[int, ...]], limit: int) -> list[list[int]]:
    """Distinct continuations ordered by trie weight of their prefixes, heaviest first.

    Ties keep first-seen order.

    >>> rank_continuations([(1, 2), (3, 4), (1, 5), (1, 2)], 10)
    [[1, 2], [1, 5], [3, 4]]
    """
    return rank_weighted(conts, limit)[0]


def rank_weighted(
    conts: Sequence[tuple[int, ...]], limit: int
) -> tuple[list[list[int]], list[float]]:
    """:func:`rank_continuations` plus how often each kept continuation occurred.

    >>> rank_weighted([(1, 2), (3, 4), (1, 5), (1, 2)], 2)
    ([[1, 2], [1, 5]], [2.0, 1.0])
    """
    counts = Counter(conts)
    weight: Counter[tuple[int, ...]] = Counter()
    for c, k in counts.items():
        for j in range(1, len(c) + 1):
            weight[c[:j]] += k
    distinct = list(counts)
    distinct.sort(key=lambda c: [-weight[c[:j]] for j in range(1, len(c) + 1)])
    kept = distinct[:limit]
    return [list(c) for c in kept], [float(counts[c]) for c in kept]


class RESTDrafter:
    """REST drafts from the same token stream as a DReSD :class:`Datastore`."""

    name = "rest"

    def __init__(self, index: SuffixIndex, config: RESTConfig | None = None) -> None:
        self.index = index
        self.config = config or RESTConfig()

    @classmethod
    def from_datastore(cls, datastore: object, config: RESTConfig | None = None) -> RESTDrafter:
        """Use (and cache) the suffix array of ``datastore.tokens`` in its folder."""
        folder = Path(datastore.folder)  # type: ignore[attr-defined]
        tokens = datastore.tokens  # type: ignore[attr-defined]
        path = folder / "suffix_array.npy"
        sa = np.load(path) if path.is_file() else None
        if sa is None or len(sa) != len(tokens):
            sa = suffix_array(tokens)
            try:
                tmp = folder / ".suffix_array.tmp.npy"
                np.save(tmp, sa)
                tmp.replace(path)
            except OSError:
                pass  # read-only datastore: rebuild next time
        return cls(SuffixIndex(tokens, sa), config)

    def propose_weighted(
        self, tokens: Sequence[int], state: np.ndarray | None = None
    ) -> tuple[list[list[int]], list[float]]:
        """Top ``num_drafts`` distinct continuations and their occurrence counts (trie weights)."""
        cfg = self.config
        m, starts = self.index.longest_match(
            list(tokens[-cfg.max_suffix :]), cfg.max_suffix, cfg.min_suffix
        )
        if not m:
            return [], []
        conts = self.index.continuations(starts[: cfg.max_occurrences], m, cfg.len_drafts)
        return rank_weighted(conts, cfg.num_drafts)

    def propose(self, tokens: Sequence[int], state: np.ndarray | None = None) -> list[list[int]]:
        return self.propose_weighted(tokens, state)[0]
