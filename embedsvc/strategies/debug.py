"""Test engines: ``debug`` (dense) and ``debug_binary`` (binary). They load no model.

Having no core module, they are the one kind of strategy that writes ``encode`` itself instead
of the pre/core/post stages (there is nothing for a runtime to execute or export).

Like infinity's debug engine, these exist so that server, batching, caching, index and error tests
run in milliseconds. They are deterministic across processes and platforms (words are hashed with
blake2b, never Python's salted ``hash()``), and texts that share words get similar vectors, so a
search over them returns sensible neighbours. Never use them for real retrieval.

A token is a whitespace-separated word (lower-cased for hashing); the limit is ``max_length``
words (64 by default) with the same truncation semantics as ``mean``: by default extra words are
dropped and reported in ``truncated_tokens``; with ``truncate=False`` an over-long text raises
``InvalidArgument`` naming ``texts[i]``.
"""

from __future__ import annotations

import hashlib
import time
from functools import lru_cache

import numpy as np
from pydantic import Field

from embedsvc.strategies.features import apply_token_limit, check_texts
from embedsvc.strategies.base import Embedding, Role, Strategy, StrategyConfig, register_strategy

DENSE_DIM = 32
BINARY_BITS = 256


class DebugConfig(StrategyConfig):
    #: the token (word) limit, as a model's max length
    max_length: int = Field(64, ge=1)
    #: sleep this long per encode call, to imitate a model's latency in batching tests
    delay_ms: float = Field(0.0, ge=0)


def _words(text: str) -> list[str]:
    return text.split()


@lru_cache(maxsize=65536)
def _word_slot(word: str) -> tuple[int, float]:
    """Deterministic (bucket, sign) of a word: the hashing trick over ``DENSE_DIM`` buckets."""
    digest = hashlib.blake2b(word.lower().encode("utf-8"), digest_size=8).digest()
    value = int.from_bytes(digest, "little")
    return value % DENSE_DIM, (1.0 if (value >> 32) & 1 else -1.0)


def _bag_of_words(texts: list[str], limit: int) -> np.ndarray:
    """Signed hashed bag of (at most ``limit``) words: float32 ``[n, DENSE_DIM]``, unnormalised."""
    out = np.zeros((len(texts), DENSE_DIM), dtype=np.float32)
    for row, text in enumerate(texts):
        for word in _words(text)[:limit]:
            slot, sign = _word_slot(word)
            out[row, slot] += sign
    return out


@lru_cache(maxsize=1)
def _projection() -> np.ndarray:
    """A fixed ``DENSE_DIM x BINARY_BITS`` +-1 matrix derived from blake2b (no RNG to drift)."""
    need = DENSE_DIM * BINARY_BITS // 8
    stream = b"".join(
        hashlib.blake2b(
            b"embedsvc-debug-binary", digest_size=64, salt=i.to_bytes(16, "little")
        ).digest()
        for i in range(need // 64)
    )
    bits = np.unpackbits(np.frombuffer(stream, dtype=np.uint8))
    return (bits.astype(np.float32) * 2 - 1).reshape(DENSE_DIM, BINARY_BITS)


class _DebugBase(Strategy):
    config_cls = DebugConfig
    config: DebugConfig

    @property
    def max_tokens(self) -> int:
        return self.config.max_length

    @property
    def model_fingerprint(self) -> str:
        key = f"{self.name}|v1|{self.config.max_length}"
        return hashlib.sha256(key.encode()).hexdigest()[:16]

    def count_tokens(self, texts: list[str], role: Role = Role.PASSAGE) -> list[int]:
        return [len(_words(t)) for t in check_texts(texts)]

    def _prepare(
        self, texts: list[str], truncate: bool
    ) -> tuple[list[str], np.ndarray, np.ndarray]:
        texts = check_texts(texts)
        seen, truncated = apply_token_limit(self.count_tokens(texts), self.max_tokens, truncate)
        if self.config.delay_ms:
            time.sleep(self.config.delay_ms / 1000.0)
        return texts, seen, truncated


@register_strategy("debug")
class DebugDense(_DebugBase):
    """Test engine: 32-d hashed bag of words (L2-normalised; an empty text gives zeros)."""

    output_kind = "dense"
    description = "test engine: hashed bag of words, 32-d dense (no model)"

    @property
    def dim(self) -> int:
        return DENSE_DIM

    def encode(
        self,
        texts: list[str],
        role: Role = Role.PASSAGE,
        *,
        normalize: bool = True,
        truncate: bool = True,
    ) -> Embedding:
        texts, seen, truncated = self._prepare(texts, truncate)
        vectors = _bag_of_words(texts, self.max_tokens)
        if normalize:
            norms = np.linalg.norm(vectors, axis=1, keepdims=True)
            vectors = vectors / np.where(norms > 0, norms, 1.0)
        return Embedding("dense", vectors.astype(np.float32), DENSE_DIM, seen, truncated)


@register_strategy("debug_binary")
class DebugBinary(_DebugBase):
    """Test engine: 256-bit sign codes of a fixed projection of the ``debug`` bag of words.

    A random-hyperplane hash of the dense vector, so Hamming distance tracks the dense cosine.
    ``normalize`` has no effect on sign bits.
    """

    output_kind = "binary"
    description = "test engine: 256-bit sign hash of a bag of words (no model)"

    @property
    def dim(self) -> int:
        return BINARY_BITS

    def encode(
        self,
        texts: list[str],
        role: Role = Role.PASSAGE,
        *,
        normalize: bool = True,
        truncate: bool = True,
    ) -> Embedding:
        texts, seen, truncated = self._prepare(texts, truncate)
        projected = _bag_of_words(texts, self.max_tokens) @ _projection()
        codes = np.packbits(projected > 0, axis=1)
        return Embedding("binary", codes.astype(np.uint8), BINARY_BITS, seen, truncated)
