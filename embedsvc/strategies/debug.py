"""Test engines: ``debug`` (dense) and ``debug_binary`` (binary). They load no model.

They run the same pre/core/post pipeline as every strategy; their "core" is a numpy executor
(:class:`BagOfWordsExecutor`), so there is nothing for an ONNX runtime to execute or export.

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

from embedsvc.strategies.base import Role, Strategy, StrategyConfig, register_strategy
from embedsvc.strategies.features import Features

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


def _word_id(word: str) -> int:
    """A word as the token id the debug core reads: ``2 * bucket + (sign > 0)``."""
    slot, sign = _word_slot(word)
    return 2 * slot + (sign > 0)


class BagOfWordsExecutor:
    """The debug strategies' "core": a signed hashed bag of words in numpy (no model).

    ``input_ids`` hold ``2 * bucket + (sign > 0)`` per word; the output ``embedding`` is the
    unnormalised float32 ``[n, DENSE_DIM]`` bag. ``delay_ms`` imitates a model's latency.
    """

    name = "torch"  # in-process: part of no fingerprint

    def __init__(self, delay_ms: float = 0.0) -> None:
        self.delay_ms = delay_ms

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.delay_ms:
            time.sleep(self.delay_ms / 1000.0)
        ids, mask = feeds["input_ids"], feeds["attention_mask"].astype(np.float32)
        out = np.zeros((ids.shape[0], DENSE_DIM), dtype=np.float32)
        signs = np.where(ids % 2 == 1, 1.0, -1.0).astype(np.float32) * mask
        rows = np.repeat(np.arange(ids.shape[0]), ids.shape[1])
        np.add.at(out, (rows, (ids // 2).ravel()), signs.ravel())
        return {"embedding": out}


class _DebugBase(Strategy):
    """Pre: words (whitespace-separated, lower-cased for hashing), cut to ``max_length``;
    core: :class:`BagOfWordsExecutor`; post: the subclass's."""

    config_cls = DebugConfig
    config: DebugConfig

    @property
    def max_tokens(self) -> int:
        return self.config.max_length

    @property
    def model_fingerprint(self) -> str:
        key = f"{self.name}|v1|{self.config.max_length}"
        return self.digest(key)

    @property
    def batch_size(self) -> int:
        return 1 << 30  # one "forward pass" per call, as a model batcher would see it

    @property
    def executor(self) -> BagOfWordsExecutor:
        return BagOfWordsExecutor(self.config.delay_ms)

    def pre(self, texts: list[str], role: Role) -> Features:
        words = [_words(t) for t in texts]
        limit = self.max_tokens
        return Features(
            [[_word_id(w) for w in ws[:limit]] for ws in words], [len(w) for w in words]
        )

    def collate(self, ids: list[list[int]]) -> dict[str, np.ndarray]:
        width = max(1, max(len(x) for x in ids))  # an empty text is a row of padding only
        out = np.zeros((len(ids), width), dtype=np.int64)
        mask = np.zeros((len(ids), width), dtype=np.int64)
        for r, seq in enumerate(ids):
            out[r, : len(seq)] = seq
            mask[r, : len(seq)] = 1
        return {"input_ids": out, "attention_mask": mask}


@register_strategy("debug")
class DebugDense(_DebugBase):
    """Test engine: 32-d hashed bag of words (L2-normalised; an empty text gives zeros)."""

    output_kind = "dense"
    description = "test engine: hashed bag of words, 32-d dense (no model)"

    @property
    def dim(self) -> int:
        return DENSE_DIM


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

    def post(self, outputs, feeds, role, normalize):  # type: ignore[no-untyped-def]
        projected = outputs["embedding"] @ _projection()
        return np.packbits(projected > 0, axis=1).astype(np.uint8), None
