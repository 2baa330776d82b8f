"""Shared token-limit semantics, so every strategy truncates and refuses the same way."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from embedsvc.errors import InvalidArgument


def check_texts(texts: Sequence[object]) -> list[str]:
    """``texts`` as a list of str; anything else is the caller's error, named by index."""
    out = list(texts)
    for i, text in enumerate(out):
        if not isinstance(text, str):
            raise InvalidArgument(
                f"texts[{i}] is a {type(text).__name__}, expected a string", field=f"texts[{i}]"
            )
    return out  # type: ignore[return-value]


def apply_token_limit(
    counts: Sequence[int], limit: int, truncate: bool
) -> tuple[np.ndarray, np.ndarray]:
    """``(token_counts, truncated_tokens)`` for texts of untruncated length ``counts``.

    With ``truncate=False`` the first over-long text raises ``InvalidArgument`` naming its index
    (``field="texts[i]"``) and its length against the limit, instead of silently losing its tail.
    """
    arr = np.asarray(counts, dtype=np.int64).reshape(-1)
    over = np.flatnonzero(arr > limit)
    if not truncate and over.size:
        i = int(over[0])
        raise InvalidArgument(
            f"texts[{i}] is {int(arr[i])} tokens long, over this strategy's limit of {limit} "
            f"tokens ({over.size} text(s) too long); shorten it or allow truncation",
            field=f"texts[{i}]",
        )
    seen = np.minimum(arr, limit)
    return seen, arr - seen


def count_with_specials(tokenizer: object, texts: Sequence[object]) -> list[int]:
    """Untruncated token counts of ``texts``, special tokens included (tokenizer only)."""
    texts = check_texts(texts)
    if not texts:
        return []
    ids = tokenizer(  # type: ignore[operator]
        texts, add_special_tokens=True, return_attention_mask=False, verbose=False
    )["input_ids"]
    return [len(x) for x in ids]
