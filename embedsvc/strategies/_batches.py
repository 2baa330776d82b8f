"""Length-sorted tokenised batches: the one batching loop every tokenizer-driven strategy uses."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np


def length_sorted_batches(
    tokenizer: Any, texts: Sequence[str], counts: Sequence[int], batch_size: int, max_length: int
) -> Iterator[tuple[np.ndarray, Any]]:
    """``(row indices, padded "pt" encoding)`` per batch, longest texts first.

    Sorting by token count (as sentence-transformers does) makes each batch pad to similar
    lengths; callers write each batch's output back to ``out[indices]``.
    """
    order = np.argsort(-np.asarray(counts), kind="stable")
    for start in range(0, len(texts), batch_size):
        idx = order[start : start + batch_size]
        enc = tokenizer(
            [texts[i] for i in idx],
            padding=True,
            truncation=True,
            max_length=max_length,
            return_tensors="pt",
        )
        yield idx, enc
