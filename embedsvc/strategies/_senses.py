"""Pure tensor code of multi-sense dictionaries (no file I/O, no model loading).

A :class:`SenseTable` holds every token's senses in one flat matrix: token ``v`` owns rows
``offsets[v]:offsets[v+1]`` of ``centroids`` (zero rows = the token was never seen while
building, so its states pass through unchanged). Assignment is vectorised: each occurrence is
compared with a padded block of at most ``max_senses`` candidate rows, so there is no Python
loop over tokens.

Why L2 and not the reference's dot product: the centroids are k-means means, and k-means cells
are L2 Voronoi cells; with L2 a sense vector is always its own nearest sense (replacement is
idempotent), which a dot-product argmax does not guarantee when norms differ.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: occurrences compared per block; bounds the [chunk, max_senses, d] candidate tensor
_CHUNK = 2048


@dataclass
class SenseTable:
    """Flat sense dictionary: ``offsets`` int64 [V+1], ``centroids`` float [S, d]."""

    offsets: np.ndarray
    centroids: np.ndarray

    @property
    def vocab_size(self) -> int:
        return int(self.offsets.shape[0] - 1)

    @property
    def num_senses(self) -> int:
        return int(self.centroids.shape[0])

    @property
    def max_senses(self) -> int:
        counts = np.diff(self.offsets)
        return int(counts.max()) if counts.size else 0

    def senses_of(self, token_id: int) -> np.ndarray:
        return self.centroids[self.offsets[token_id] : self.offsets[token_id + 1]]

    def counts(self) -> np.ndarray:
        return np.diff(self.offsets)


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


def assign_senses(states, token_ids, offsets, centroids, max_senses: int):
    """Local sense index (0..k-1) of each occurrence, -1 where the token has no senses.

    Inputs: ``states`` float [n, d], ``token_ids`` long [n], ``offsets`` long [V+1],
    ``centroids`` float [S, d] (torch tensors). Output: long [n].
    """
    import torch

    n = states.shape[0]
    out = torch.full((n,), -1, dtype=torch.long, device=states.device)
    if n == 0 or centroids.shape[0] == 0 or max_senses == 0:
        return out
    starts = offsets[token_ids]
    counts = offsets[token_ids + 1] - starts
    ar = torch.arange(max_senses, device=states.device)
    for lo in range(0, n, _CHUNK):
        hi = min(n, lo + _CHUNK)
        idx = (starts[lo:hi, None] + ar).clamp(max=centroids.shape[0] - 1)
        valid = ar[None, :] < counts[lo:hi, None]
        cand = centroids[idx].to(states.dtype)  # [c, m, d]
        dist = ((cand - states[lo:hi, None, :]) ** 2).sum(-1)
        dist = dist.masked_fill(~valid, float("inf"))
        best = dist.argmin(-1)
        out[lo:hi] = torch.where(counts[lo:hi] > 0, best, torch.full_like(best, -1))
    return out


def replace_with_senses(hidden, input_ids, attention_mask, offsets, centroids, max_senses: int):
    """Replace each non-pad token state by its nearest sense of the same token.

    Inputs: ``hidden`` [B, T, d], ``input_ids`` [B, T], ``attention_mask`` [B, T].
    Outputs: ``(replaced [B, T, d], sense_ids [B, T])``; padding positions and tokens without
    senses keep their states, and their sense id is -1.
    """
    import torch

    flat_h = hidden.reshape(-1, hidden.shape[-1])
    flat_ids = input_ids.reshape(-1)
    keep = attention_mask.reshape(-1).bool()
    sense = torch.full_like(flat_ids, -1)
    pos = keep.nonzero(as_tuple=True)[0]
    local = assign_senses(flat_h[pos], flat_ids[pos], offsets, centroids, max_senses)
    sense[pos] = local
    out = flat_h.clone()
    has = local >= 0
    rows = offsets[flat_ids[pos][has]] + local[has]
    out[pos[has]] = centroids[rows].to(out.dtype)
    return out.reshape(hidden.shape), sense.reshape(input_ids.shape)


def masked_mean(hidden, attention_mask):
    """Mean over non-pad positions: [B, T, d], [B, T] -> [B, d] (the sentence-transformers pool)."""
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)


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
