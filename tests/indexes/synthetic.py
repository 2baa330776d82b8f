"""Synthetic data for index tests: clustered unit vectors, and sign codes of them."""

from __future__ import annotations

import numpy as np

N, D, BITS = 3000, 64, 256


def clustered(n: int, d: int, seed: int = 0, centres: int = 40) -> np.ndarray:
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((centres, d)).astype(np.float32)
    x = c[rng.integers(0, centres, n)] + 0.6 * rng.standard_normal((n, d)).astype(np.float32)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def binary_codes(x: np.ndarray, bits: int = BITS, seed: int = 1) -> np.ndarray:
    proj = np.random.default_rng(seed).standard_normal((x.shape[1], bits)).astype(np.float32)
    return np.packbits(x @ proj > 0, axis=1)


def exact_scores(kind: str, q: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Reference scores [nq, n] computed with numpy, same convention as the indexes."""
    if kind != "binary":
        return q @ x.T
    ham = np.unpackbits(q[:, None, :] ^ x[None, :, :], axis=2).sum(axis=2)
    return 1.0 - 2.0 * ham / (x.shape[1] * 8)
