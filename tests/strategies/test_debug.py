"""The ``debug`` and ``debug_binary`` test engines: deterministic, cheap, word-similar."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from embedsvc.errors import InvalidArgument
from embedsvc.strategies import create_strategy, get_strategy, strategy_class

CAT = "the cat sat on the mat"
CAT2 = "a cat sat on the mat today"
STOCKS = "stocks fell sharply after the report"


def _hamming(a: np.ndarray, b: np.ndarray) -> int:
    return int(np.unpackbits(a ^ b).sum())


def test_registered_with_kinds_and_dims() -> None:
    dense, binary = get_strategy("debug"), get_strategy("debug_binary")
    assert (dense.output_kind, dense.dim, dense.max_tokens) == ("dense", 32, 64)
    assert (binary.output_kind, binary.dim, binary.max_tokens) == ("binary", 256, 64)
    assert "test engine" in (strategy_class("debug").__doc__ or "").lower()


def test_dense_shape_norm_and_similarity() -> None:
    emb = get_strategy("debug").encode([CAT, CAT2, STOCKS, ""])
    v = emb.vectors
    assert v.dtype == np.float32 and v.shape == (4, 32) and emb.kind == "dense"
    np.testing.assert_allclose(np.linalg.norm(v[:3], axis=1), 1.0, rtol=1e-6)
    assert not v[3].any()  # empty text: zero vector, not NaN
    assert v[0] @ v[1] > v[0] @ v[2] + 0.2
    assert emb.token_counts.tolist() == [6, 7, 6, 0]
    assert emb.truncated_tokens.tolist() == [0, 0, 0, 0]


def test_dense_unnormalised_is_word_counts() -> None:
    raw = get_strategy("debug").encode(["word word word"], normalize=False).vectors[0]
    assert np.abs(raw).sum() == 3.0


def test_binary_codes_track_word_overlap() -> None:
    emb = get_strategy("debug_binary").encode([CAT, CAT2, STOCKS, CAT])
    c = emb.vectors
    assert c.dtype == np.uint8 and c.shape == (4, 32) and emb.kind == "binary"
    assert _hamming(c[0], c[3]) == 0
    assert _hamming(c[0], c[1]) < _hamming(c[0], c[2])


@pytest.mark.parametrize("name", ["debug", "debug_binary"])
def test_truncation_semantics(name: str) -> None:
    engine = get_strategy(name)
    long_a = " ".join(f"w{i}" for i in range(100))
    long_b = " ".join(f"w{i}" for i in range(64)) + " completely different tail"
    emb = engine.encode(["short text", long_a, long_b])
    assert emb.token_counts.tolist() == [2, 64, 64]
    assert emb.truncated_tokens.tolist() == [0, 36, 3]
    np.testing.assert_array_equal(emb.vectors[1], emb.vectors[2])  # tails were dropped
    assert engine.count_tokens(["short text", long_a]) == [2, 100]

    with pytest.raises(InvalidArgument) as info:
        engine.encode(["short text", long_a], truncate=False)
    assert info.value.field == "texts[1]"
    assert "100" in info.value.message and "64" in info.value.message


@pytest.mark.parametrize("name", ["debug", "debug_binary"])
def test_empty_list_and_bad_input(name: str) -> None:
    engine = get_strategy(name)
    emb = engine.encode([])
    assert len(emb) == 0 and emb.vectors.shape == (0, 32)  # 32 floats or 32 code bytes
    with pytest.raises(InvalidArgument) as info:
        engine.encode(["ok", 3])  # type: ignore[list-item]
    assert info.value.field == "texts[1]"


def test_config_max_length() -> None:
    engine = create_strategy("debug", max_length=3)
    assert engine.encode(["a b c d e"]).truncated_tokens.tolist() == [2]
    with pytest.raises(InvalidArgument):
        create_strategy("debug", nonsense=1)


_SCRIPT = """
import sys
from embedsvc.strategies import get_strategy
texts = ["the cat sat on the mat", "stocks fell"]
sys.stdout.write(get_strategy("debug").encode(texts).vectors.tobytes().hex() + "\\n")
sys.stdout.write(get_strategy("debug_binary").encode(texts).vectors.tobytes().hex() + "\\n")
"""


def test_deterministic_across_processes() -> None:
    root = Path(__file__).resolve().parents[2]
    outs = []
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed, "PYTHONPATH": str(root)}
        run = subprocess.run(
            [sys.executable, "-c", _SCRIPT], env=env, capture_output=True, text=True, check=True
        )
        outs.append(run.stdout)
    texts = ["the cat sat on the mat", "stocks fell"]
    here = (
        get_strategy("debug").encode(texts).vectors.tobytes().hex()
        + "\n"
        + get_strategy("debug_binary").encode(texts).vectors.tobytes().hex()
        + "\n"
    )
    assert outs[0] == outs[1] == here
