"""BTR fitting (training only): the calibration statistics and the sentence-code projection."""

from __future__ import annotations

import numpy as np


def fit_calibration(states: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-dimension ``(centre, magnitude)`` from sampled non-pad token states ``[N, d]``.

    Centre = median (each bit is 1 half the time: maximum information per bit); magnitude =
    mean absolute deviation from it (the L2-optimal per-dimension value for ``a * sign``).
    """
    x = np.asarray(states, dtype=np.float32)
    centre = np.median(x, axis=0)
    mag = np.abs(x - centre).mean(axis=0)
    return centre.astype(np.float32), np.maximum(mag, 1e-6).astype(np.float32)


def fit_projection(
    embeddings: np.ndarray, bits: int, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """``(centre [d], projection [bits, d])`` for sentence codes: PCA to ``bits`` directions,
    then a random rotation so that variance is spread over all bits (the first step of ITQ);
    centring makes each bit balanced. Needs ``bits <= d``."""
    x = np.asarray(embeddings, dtype=np.float64)
    mu = x.mean(0)
    _, _, vt = np.linalg.svd(x - mu, full_matrices=False)
    pcs = vt[:bits]
    rng = np.random.default_rng(seed)
    if pcs.shape[0] < bits:  # fewer samples than bits (tiny runs): fill with random directions
        extra = rng.standard_normal((bits - pcs.shape[0], x.shape[1])) / np.sqrt(x.shape[1])
        pcs = np.concatenate([pcs, extra])
    q, _ = np.linalg.qr(rng.standard_normal((bits, bits)))
    return mu.astype(np.float32), (q @ pcs).astype(np.float32)
