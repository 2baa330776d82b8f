"""Semantic textual similarity: how well a strategy's similarity ranks sentence pairs.

The score is Spearman x100 between the model's pair similarity and the gold score, as in
SentEval / MTEB; Pearson x100 is reported beside it. Dense strategies use cosine similarity;
binary ones use the Hamming similarity ``1 - 2h/bits`` (the cosine of the +-1 vectors), which is
what a binary index would rank by.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import pearsonr, spearmanr

from embedsvc.errors import InvalidArgument
from embedsvc.eval.cache import cached_encode
from embedsvc.eval.data import read_sts
from embedsvc.strategies.base import Role, Strategy

# popcount of every byte value, for Hamming distances on packed bits
_POPCOUNT = np.unpackbits(np.arange(256, dtype=np.uint8)[:, None], axis=1).sum(1)


def cosine_pairs(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity (a zero vector has similarity 0 with anything)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    dots = np.einsum("ij,ij->i", a, b)
    return np.divide(dots, norms, out=np.zeros_like(dots), where=norms > 0)


def hamming_pairs(a: np.ndarray, b: np.ndarray, bits: int) -> np.ndarray:
    """Row-wise ``1 - 2 * hamming / bits`` of bit-packed uint8 codes."""
    h = _POPCOUNT[np.bitwise_xor(a.astype(np.uint8), b.astype(np.uint8))].sum(axis=1)
    return 1.0 - 2.0 * h / bits


def pair_similarities(strategy: Strategy, s1: list[str], s2: list[str], **cache: Any) -> np.ndarray:
    """Similarity of each pair; each distinct sentence is encoded once.

    STS is symmetric, so both sides get the same role: QUERY, following the MTEB convention for
    instruction/prefix models on symmetric tasks (for symmetric strategies it makes no difference).
    """
    unique = list(dict.fromkeys(s1 + s2))
    pos = {s: i for i, s in enumerate(unique)}
    vecs = cached_encode(strategy, unique, Role.QUERY, desc="sts sentences", **cache)
    a = vecs[[pos[s] for s in s1]]
    b = vecs[[pos[s] for s in s2]]
    if strategy.output_kind == "binary":
        return hamming_pairs(a, b, strategy.dim)
    return cosine_pairs(a, b)


def evaluate_sts(strategy: Strategy, path: str | Path, **cache: Any) -> dict[str, Any]:
    """Spearman and Pearson (x100) of the strategy's similarity against the gold scores.

    ``cache`` is passed to :func:`embedsvc.eval.cache.cached_encode` (``cache_dir``,
    ``use_cache``).
    """
    start = time.perf_counter()
    pairs = read_sts(path)
    if len(pairs) < 2:
        raise InvalidArgument(f"{path}: need at least 2 pairs for a correlation")
    sims = pair_similarities(strategy, pairs.sentences1, pairs.sentences2, **cache)
    gold = np.asarray(pairs.scores, dtype=np.float64)
    spearman = float(spearmanr(sims, gold).statistic) * 100.0
    pearson = float(pearsonr(sims, gold).statistic) * 100.0
    return {
        "task": "sts",
        "strategy": strategy.name,
        "file": str(pairs.path),
        "format": pairs.format,
        "n_pairs": len(pairs),
        "spearman": spearman,
        "pearson": pearson,
        "seconds": time.perf_counter() - start,
    }
