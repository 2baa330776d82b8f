"""What strategies return: the :class:`Embedding` of texts, and the :class:`Role` of a text."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Literal

import numpy as np

OutputKind = Literal["dense", "binary"]


class Role(str, Enum):
    """Who the text is: a search query or a stored passage (some strategies treat them apart)."""

    QUERY = "query"
    PASSAGE = "passage"


@dataclass
class Embedding:
    """What a strategy returns for ``n`` texts.

    ``vectors`` is float32 ``[n, dim]`` for ``dense`` and uint8 ``[n, dim // 8]`` (bit-packed,
    ``numpy.packbits`` order) for ``binary``. ``token_counts[i]`` is how many tokens of text ``i``
    the model saw; ``truncated_tokens[i]`` how many were dropped to fit the model's limit.
    """

    kind: OutputKind
    vectors: np.ndarray
    dim: int
    token_counts: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    truncated_tokens: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    #: seconds spent per stage (queue, tokenize, inference), filled in by the serving path
    timings: dict[str, float] = field(default_factory=dict)
    #: optional per-text bytes a collection stores beside each document and hands back to
    #: ``Strategy.rescore`` (e.g. BTR token codes); None for strategies without one
    payloads: list[bytes] | None = None
    #: optional second, sparse view of the same texts (``scipy.sparse`` CSR ``[n, vocab]``,
    #: non-negative weights per vocabulary id) for dual strategies such as ``dupmae_dual``;
    #: collections index it beside the dense vectors and fuse both at search time
    sparse: Any = None

    def __len__(self) -> int:
        return int(self.vectors.shape[0])

    @staticmethod
    def empty(kind: OutputKind, dim: int) -> Embedding:
        """The embedding of no texts (``[0, dim]`` floats or ``[0, dim // 8]`` packed bits)."""
        if kind == "binary":
            vectors = np.zeros((0, dim // 8), np.uint8)
        else:
            vectors = np.zeros((0, dim), np.float32)
        none = np.zeros(0, dtype=np.int64)
        return Embedding(kind, vectors, dim, none, none.copy())

    def slice(self, start: int, stop: int) -> Embedding:
        return Embedding(
            self.kind,
            self.vectors[start:stop],
            self.dim,
            self.token_counts[start:stop],
            self.truncated_tokens[start:stop],
            payloads=None if self.payloads is None else self.payloads[start:stop],
            sparse=None if self.sparse is None else self.sparse[start:stop],
        )

    @staticmethod
    def concat(parts: list[Embedding]) -> Embedding:
        if not parts:
            raise ValueError("nothing to concatenate")
        first = parts[0]
        return Embedding(
            first.kind,
            np.concatenate([p.vectors for p in parts]),
            first.dim,
            np.concatenate([p.token_counts for p in parts]),
            np.concatenate([p.truncated_tokens for p in parts]),
            payloads=(
                None
                if any(p.payloads is None for p in parts)
                else [x for p in parts for x in p.payloads]  # type: ignore[union-attr]
            ),
            sparse=(
                None
                if any(p.sparse is None for p in parts)
                else vstack_sparse([p.sparse for p in parts])
            ),
        )


def vstack_sparse(parts: list[Any]) -> Any:
    """Stack ``scipy.sparse`` rows into one CSR (the sparse view of concatenated texts)."""
    from scipy import sparse

    return sparse.vstack(parts, format="csr")
