"""The embedding cache: a second run does not encode; any key change does."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import numpy as np

from embedsvc.eval.cache import cached_encode, texts_digest
from embedsvc.strategies.base import Embedding, Role, Strategy


class Counting(Strategy):
    """Test double that counts encode calls; vectors depend on text, role and fingerprint."""

    name: ClassVar[str] = "counting"
    output_kind: ClassVar[str] = "dense"

    dim = 3
    max_tokens = 512

    def __init__(self, fingerprint: str = "v1") -> None:
        super().__init__()
        self._fp = fingerprint
        self.calls = 0
        self.texts_seen = 0

    @property
    def model_fingerprint(self) -> str:
        return self._fp

    def count_tokens(self, texts, role=Role.PASSAGE):
        return [len(t) for t in texts]

    def encode(self, texts, role=Role.PASSAGE, *, normalize=True, truncate=True):
        self.calls += 1
        self.texts_seen += len(texts)
        r = 1.0 if role == Role.QUERY else 2.0
        v = np.array([[len(t), r, len(self._fp)] for t in texts], dtype=np.float32)
        n = np.zeros(len(texts), dtype=np.int64)
        return Embedding("dense", v, 3, n, n)


TEXTS = ["short", "a much longer text", "mid text", ""] * 100  # 400 texts: two chunks


def test_second_run_hits_cache(tmp_path: Path) -> None:
    s = Counting()
    first = cached_encode(s, TEXTS, Role.PASSAGE, cache_dir=tmp_path)
    assert s.calls >= 2 and s.texts_seen == len(TEXTS)
    # input order is kept although encoding happens in length-sorted chunks
    assert first[:, 0].tolist() == [len(t) for t in TEXTS]
    s.calls = 0
    second = cached_encode(s, TEXTS, Role.PASSAGE, cache_dir=tmp_path)
    assert s.calls == 0
    np.testing.assert_array_equal(first, second)
    files = list((tmp_path / "embeddings").iterdir())
    assert len(files) == 1 and files[0].suffix == ".npy"  # no temporary left behind


def test_key_covers_role_fingerprint_and_texts(tmp_path: Path) -> None:
    s = Counting()
    cached_encode(s, TEXTS, Role.PASSAGE, cache_dir=tmp_path)
    s.calls = 0
    cached_encode(s, TEXTS, Role.QUERY, cache_dir=tmp_path)
    assert s.calls > 0
    s.calls = 0
    cached_encode(s, TEXTS[:-1], Role.PASSAGE, cache_dir=tmp_path)
    assert s.calls > 0
    other = Counting("v2-retrained")
    out = cached_encode(other, TEXTS, Role.PASSAGE, cache_dir=tmp_path)
    assert other.calls > 0 and out[0, 2] == len("v2-retrained")
    assert len(list((tmp_path / "embeddings").iterdir())) == 4


def test_no_cache_and_corrupt_entry(tmp_path: Path) -> None:
    s = Counting()
    cached_encode(s, TEXTS, Role.PASSAGE, cache_dir=tmp_path, use_cache=False)
    assert not (tmp_path / "embeddings").exists()
    cached_encode(s, TEXTS, Role.PASSAGE, cache_dir=tmp_path)
    (entry,) = (tmp_path / "embeddings").iterdir()
    entry.write_bytes(b"garbage")
    s.calls = 0
    again = cached_encode(s, TEXTS, Role.PASSAGE, cache_dir=tmp_path)
    assert s.calls > 0 and again.shape == (len(TEXTS), 3)


def test_digest_is_unambiguous() -> None:
    assert texts_digest(["ab", "c"]) != texts_digest(["a", "bc"])
    assert texts_digest([]) != texts_digest([""])
