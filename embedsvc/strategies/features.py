"""The pre stage's toolkit: texts in, token ids (tokenised once) and their real counts out.

Every strategy's ``pre`` returns :class:`Features`: per text the token ids the core sees (already
cut to the strategy's limit) and the untruncated count the limit is checked against. The
:class:`~embedsvc.strategies.runner.Runner` pads batches of those ids with :func:`pad_batch`; no
text is tokenised twice on its way through the pipeline.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from embedsvc.errors import InvalidArgument


@dataclass
class Features:
    """What ``pre`` hands to the runner for ``n`` texts."""

    #: per text, the ids the core sees (within the limit; may hold strategy-private ids < 0)
    ids: list[list[int]]
    #: per text, the untruncated length (what the limit and the batcher's budget count)
    counts: np.ndarray

    def __post_init__(self) -> None:
        self.counts = np.asarray(self.counts, dtype=np.int64).reshape(-1)


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


def special_layout(tokenizer: Any) -> tuple[int, int]:
    """``(prefix, suffix)``: how many special tokens the tokenizer puts before/after a text."""
    with_specials = list(tokenizer("a", add_special_tokens=True)["input_ids"])
    plain = list(tokenizer("a", add_special_tokens=False)["input_ids"])
    prefix = with_specials.index(plain[0]) if plain else 0
    return prefix, len(with_specials) - prefix - len(plain)


def tokenize(tokenizer: Any, texts: Sequence[str], limit: int) -> Features:
    """Tokenise once, special tokens included, and cut each text to ``limit`` tokens.

    The cut drops the text's tail and keeps the tokenizer's own specials, exactly what
    ``tokenizer(texts, truncation=True, max_length=limit)`` returns (``[CLS] ... [SEP]``).
    """
    if not texts:
        return Features([], np.zeros(0, np.int64))
    full = tokenizer(
        list(texts),
        add_special_tokens=True,
        return_attention_mask=False,
        return_token_type_ids=False,
        verbose=False,  # no "longer than the maximum" warning: truncation is reported
    )["input_ids"]
    prefix, suffix = special_layout(tokenizer)
    keep = max(0, limit - prefix - suffix)
    ids = []
    for seq in full:
        seq = list(seq)
        if len(seq) > limit:
            seq = seq[: prefix + keep] + (seq[len(seq) - suffix :] if suffix else [])
        ids.append(seq)
    return Features(ids, [len(s) for s in full])


def pad_batch(
    seqs: Sequence[Sequence[int]],
    pad_id: int,
    names: Sequence[str] = ("input_ids", "attention_mask"),
    side: Literal["left", "right"] = "right",
) -> dict[str, np.ndarray]:
    """One padded int64 batch named by ``names`` (input_ids, attention_mask, token_type_ids)."""
    if not seqs:
        raise InvalidArgument("no token sequences to batch")
    width = max(len(s) for s in seqs)
    ids = np.full((len(seqs), width), int(pad_id), dtype=np.int64)
    mask = np.zeros((len(seqs), width), dtype=np.int64)
    for r, seq in enumerate(seqs):
        n = len(seq)
        if n == 0:
            raise InvalidArgument("empty token sequence")
        cols = slice(width - n, width) if side == "left" else slice(0, n)
        ids[r, cols] = seq
        mask[r, cols] = 1
    out = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
    return {n: out[n] for n in names}
