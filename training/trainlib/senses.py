"""Building a sense dictionary (training only): per-token sampling and k-means."""

from __future__ import annotations

import numpy as np

from embedsvc.strategies.multisense.model import SenseTable


def table_from_lists(vocab_size: int, per_token: dict[int, np.ndarray], dim: int) -> SenseTable:
    """Build a table from ``{token_id: [k, d] senses}`` (tokens absent = no senses)."""
    counts = np.zeros(vocab_size, dtype=np.int64)
    for tok, senses in per_token.items():
        counts[tok] = senses.shape[0]
    offsets = np.zeros(vocab_size + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    centroids = np.zeros((int(offsets[-1]), dim), dtype=np.float32)
    for tok, senses in per_token.items():
        centroids[offsets[tok] : offsets[tok + 1]] = senses
    return SenseTable(offsets, centroids)


def sample_keep(counts: np.ndarray, token_ids: np.ndarray, cap: int, rng: np.random.Generator):
    """Reservoir-free per-token sampling: keep an occurrence of token v with probability
    ``cap / (count_v + 1)`` (the reference's ``randint(0, count) < cap``), so each token
    contributes about ``min(count, cap)`` samples in one streaming pass."""
    c = counts[token_ids]
    return rng.integers(0, c + 1) < cap


def senses_for(n: int, max_k: int) -> int:
    """How many senses a token with ``n`` sampled occurrences gets: ``min(max_k, n)``; a token
    seen at most ``max_k`` times keeps its raw occurrences as senses (the reference's rule)."""
    return int(min(max_k, n))


def kmeans(
    x: np.ndarray, k: int, iters: int = 20, seed: int = 0, init: str = "random"
) -> tuple[np.ndarray, np.ndarray]:
    """Lloyd's k-means in numpy: ``(centroids [k, d], assignment [n])``.

    Why not faiss.Kmeans: per call it costs ~0.2 s of thread start-up on a loaded box, and a
    dictionary runs thousands of small (n <= 1000, k <= 20) problems. Initialisation: a seeded
    sample of distinct points (``random``, what the shipped dictionary used) or k-means++
    (``kmeans++``: D^2 seeding, fewer merged clusters); an empty cluster is re-seeded with the
    point farthest from its centroid, so exactly ``k`` senses come out.
    """
    rng = np.random.default_rng(seed)
    x = np.asarray(x, dtype=np.float32)
    n = x.shape[0]
    x2 = (x * x).sum(1, keepdims=True)
    if init == "kmeans++":
        chosen = [int(rng.integers(n))]
        best = ((x - x[chosen[0]]) ** 2).sum(1)
        for _ in range(1, k):
            p = best / best.sum() if best.sum() > 0 else None
            nxt = int(rng.choice(n, p=p))
            chosen.append(nxt)
            best = np.minimum(best, ((x - x[nxt]) ** 2).sum(1))
        cents = x[chosen].copy()
    else:
        cents = x[rng.choice(n, size=k, replace=False)].copy()
    assign = np.zeros(n, dtype=np.int64)
    for _ in range(iters):
        d = x2 - 2.0 * x @ cents.T + (cents * cents).sum(1)[None, :]
        new = d.argmin(1)
        counts = np.bincount(new, minlength=k)
        for j in np.flatnonzero(counts == 0):
            far = int(d[np.arange(n), new].argmax())
            new[far] = j
            d[far, :] = 0.0
            counts = np.bincount(new, minlength=k)
        onehot = np.zeros((n, k), dtype=np.float32)
        onehot[np.arange(n), new] = 1.0
        # (np.add.at is ~100x slower); stay float32 so BLAS never casts
        cents = (onehot.T @ x) / np.maximum(counts, 1).astype(np.float32)[:, None]
        if np.array_equal(new, assign):
            break
        assign = new
    return cents, assign
