"""``mean``: must reproduce sentence-transformers' all-MiniLM-L6-v2 vectors exactly."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from embedsvc.errors import InvalidArgument  # noqa: E402
from embedsvc.strategies import Role, create_strategy, strategy_class  # noqa: E402
from embedsvc.strategies.mean import MeanConfig, MeanPooling  # noqa: E402

STSB_DEV = Path("/work/shared/data/stsb/sts-dev.csv")
LONG_TEXT = " ".join(["A man with a hard hat is dancing on the roof of a tall building."] * 40)

pytestmark = pytest.mark.slow


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=-1, keepdims=True)
    b = b / np.linalg.norm(b, axis=-1, keepdims=True)
    return (a * b).sum(-1)


@pytest.fixture(scope="module")
def sentences() -> list[str]:
    """20 real STS-B dev sentences (column 5 = sentence1), spread over the file."""
    if not STSB_DEV.is_file():
        pytest.skip(f"{STSB_DEV} not available")
    with STSB_DEV.open(newline="", encoding="utf-8") as f:
        rows = [r for r in csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE) if len(r) > 6]
    picked = [rows[i][5] for i in range(0, len(rows), max(1, len(rows) // 20))][:20]
    assert len(picked) == 20
    return picked


@pytest.fixture(scope="module")
def mean() -> MeanPooling:
    return MeanPooling()


def test_registered_and_described() -> None:
    assert strategy_class("mean") is MeanPooling
    assert MeanPooling.output_kind == "dense"
    with pytest.raises(InvalidArgument):
        create_strategy("mean", batch_size=0)


def test_matches_sentence_transformers(mean: MeanPooling, sentences: list[str]) -> None:
    from sentence_transformers import SentenceTransformer

    reference = SentenceTransformer(str(mean.backbone.source), device="cpu")
    expected = reference.encode(sentences + [LONG_TEXT], convert_to_numpy=True)
    got = mean.encode(sentences + [LONG_TEXT])
    assert got.vectors.shape == (21, 384) and got.vectors.dtype == np.float32
    assert mean.dim == 384 and mean.max_tokens == 256
    assert _cos(got.vectors, expected).min() >= 0.9999
    np.testing.assert_allclose(np.linalg.norm(got.vectors, axis=1), 1.0, rtol=1e-5)


def test_unnormalised_is_the_same_direction(mean: MeanPooling, sentences: list[str]) -> None:
    normed = mean.encode(sentences[:5]).vectors
    raw = mean.encode(sentences[:5], normalize=False).vectors
    assert not np.allclose(np.linalg.norm(raw, axis=1), 1.0)
    assert _cos(raw, normed).min() >= 0.99999


def test_batching_and_order_do_not_change_vectors(mean: MeanPooling, sentences: list[str]) -> None:
    together = mean.encode(sentences).vectors
    one_by_one = np.stack([mean.encode([s]).vectors[0] for s in sentences[:8]])
    assert _cos(together[:8], one_by_one).min() >= 0.9999
    small_batches = MeanPooling(MeanConfig(batch_size=3))
    perm = np.random.default_rng(0).permutation(len(sentences))
    shuffled = small_batches.encode([sentences[i] for i in perm]).vectors
    assert _cos(shuffled, together[perm]).min() >= 0.9999


def test_role_does_not_matter(mean: MeanPooling, sentences: list[str]) -> None:
    q = mean.encode(sentences[:3], Role.QUERY).vectors
    p = mean.encode(sentences[:3], Role.PASSAGE).vectors
    np.testing.assert_allclose(q, p, atol=1e-6)


def test_truncation_counts_and_effect(mean: MeanPooling) -> None:
    n_long = mean.count_tokens([LONG_TEXT])[0]
    assert n_long > 256
    other_tail = LONG_TEXT + " But then something entirely unrelated happened at the end."
    emb = mean.encode(["hello world", LONG_TEXT, other_tail])
    assert emb.token_counts.tolist() == [4, 256, 256]  # [CLS] hello world [SEP]
    assert emb.truncated_tokens.tolist() == [
        0,
        n_long - 256,
        mean.count_tokens([other_tail])[0] - 256,
    ]
    # the tail past 256 tokens never reaches the model
    np.testing.assert_allclose(emb.vectors[1], emb.vectors[2], atol=1e-6)


def test_strict_mode_names_the_text(mean: MeanPooling) -> None:
    with pytest.raises(InvalidArgument) as info:
        mean.encode(["fine", "also fine", LONG_TEXT], truncate=False)
    assert info.value.field == "texts[2]"
    assert str(mean.count_tokens([LONG_TEXT])[0]) in info.value.message
    assert "256" in info.value.message
    assert len(mean.encode(["fine"], truncate=False)) == 1


def test_custom_max_length(mean: MeanPooling) -> None:
    short = MeanPooling(MeanConfig(max_length=16))
    emb = short.encode([LONG_TEXT])
    assert short.max_tokens == 16 and emb.token_counts.tolist() == [16]
    assert short.fingerprint != mean.fingerprint
    with pytest.raises(InvalidArgument):
        MeanPooling(MeanConfig(max_length=4096)).encode(["x"])  # past BERT's 512 positions


def test_empty_inputs(mean: MeanPooling) -> None:
    emb = mean.encode([])
    assert emb.vectors.shape == (0, 384) and len(emb.token_counts) == 0
    assert mean.count_tokens([]) == []
    assert np.isfinite(mean.encode([""]).vectors).all()


def test_fingerprint_is_stable(mean: MeanPooling) -> None:
    assert mean.fingerprint == MeanPooling().fingerprint and len(mean.fingerprint) == 16


@pytest.mark.slow
def test_concurrent_count_tokens_and_encode_do_not_race():
    """The engine counts tokens in request threads while the batcher encodes: one shared
    tokenizer must survive that (it keeps mutable padding/truncation state)."""
    import threading

    strategy = create_strategy("mean")
    texts = [f"sentence number {i} " + "word " * (i % 40) for i in range(64)]
    expected = strategy.count_tokens(texts)
    errors: list[BaseException] = []
    stop = threading.Event()

    def count() -> None:
        try:
            while not stop.is_set():
                assert strategy.count_tokens(texts) == expected
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=count) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        for _ in range(3):
            strategy.encode(texts)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert errors == []
