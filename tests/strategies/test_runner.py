"""The pipeline every strategy shares: pre (tokenise once), the runner's batches, post."""

from __future__ import annotations

import numpy as np
import pytest

from embedsvc.errors import InvalidArgument
from embedsvc.strategies import Role, create_strategy, get_strategy
from embedsvc.strategies.features import apply_token_limit, pad_batch, tokenize
from embedsvc.strategies.runner import Runner, length_sorted_batches, map_batches


def test_batches_are_longest_first_and_respect_rows_and_token_budget() -> None:
    lengths = [3, 10, 1, 10, 7, 2]
    batches = list(length_sorted_batches(lengths, batch_size=4))
    assert [b.tolist() for b in batches] == [[1, 3, 4, 0], [5, 2]]  # stable among equals
    budget = list(length_sorted_batches(lengths, batch_size=4, token_budget=20))
    # the longest row pads the batch: 2 rows of 10, then 2 of 7 (14), then the rest (3 x 3)
    assert [b.tolist() for b in budget] == [[1, 3], [4, 0], [5, 2]]
    assert sorted(i for b in budget for i in b.tolist()) == list(range(6))
    # a row longer than the budget still runs, alone
    assert [b.tolist() for b in length_sorted_batches([50, 1], 4, token_budget=10)] == [[0], [1]]


def test_map_batches_writes_back_in_the_callers_order() -> None:
    lengths = [1, 5, 3]
    out = map_batches(
        lengths,
        lambda idx: {"x": np.asarray(idx, np.int64) * 10, "rows": [f"r{i}" for i in idx]},
        batch_size=2,
    )
    assert out["x"].tolist() == [0, 10, 20]
    assert out["rows"] == ["r0", "r1", "r2"]


def test_pad_batch_left_right_and_names() -> None:
    right = pad_batch([[5, 6, 7], [8]], pad_id=0, names=("input_ids", "attention_mask"))
    assert right["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert right["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    left = pad_batch([[5, 6, 7], [8]], pad_id=2, side="left")
    assert left["input_ids"].tolist() == [[5, 6, 7], [2, 2, 8]]
    tt = pad_batch([[1]], 0, names=("input_ids", "token_type_ids"))
    assert set(tt) == {"input_ids", "token_type_ids"} and tt["token_type_ids"].tolist() == [[0]]
    with pytest.raises(InvalidArgument):
        pad_batch([[1], []], 0)


def test_token_limit_semantics() -> None:
    seen, cut = apply_token_limit([3, 12, 10], 10, truncate=True)
    assert seen.tolist() == [3, 10, 10] and cut.tolist() == [0, 2, 0]
    with pytest.raises(InvalidArgument, match=r"texts\[1\]") as info:
        apply_token_limit([3, 12], 10, truncate=False)
    assert info.value.field == "texts[1]"


def test_debug_runs_the_pipeline_with_its_numpy_executor() -> None:
    debug = get_strategy("debug")
    texts = ["the cat sat on the mat", "stocks fell", "a " * 70]
    emb = debug.encode(texts)
    assert emb.vectors.shape == (3, 32) and emb.truncated_tokens.tolist() == [0, 0, 6]
    # one text alone gets the vector it gets in a batch (batch invariance)
    np.testing.assert_array_equal(debug.encode(texts[1:2]).vectors[0], emb.vectors[1])
    assert debug.count_tokens(texts) == [6, 2, 70]


@pytest.mark.slow
def test_tokenise_once_equals_the_tokenizers_own_truncation() -> None:
    """``pre`` tokenises each text once and cuts it itself: the ids are exactly what
    ``tokenizer(texts, truncation=True, max_length=limit)`` gives (specials kept)."""
    tok = get_strategy("mean").backbone.tokenizer
    texts = ["A man is playing a guitar.", "x", "word " * 300, 'He said "hi" ü', ""]
    for limit in (5, 256):
        feats = tokenize(tok, texts, limit)
        ref = tok(texts, truncation=True, max_length=limit, verbose=False)["input_ids"]
        assert feats.ids == [list(r) for r in ref]
        full = tok(texts, verbose=False)["input_ids"]
        assert feats.counts.tolist() == [len(f) for f in full]


@pytest.mark.slow
def test_the_served_core_is_what_the_runner_runs() -> None:
    """One forward: ``encode`` is the runner over pre -> core -> post, and ``outputs`` reads the
    same core's raw outputs (no second copy of any forward)."""
    mean = create_strategy("mean")
    texts = ["A plane is taking off.", "A man is playing a large flute.", "ok"]
    emb = mean.encode(texts, Role.PASSAGE, normalize=False)
    raw, seen, _ = Runner(mean).outputs(texts, Role.PASSAGE)
    np.testing.assert_array_equal(emb.vectors, raw["embedding"])
    assert seen.tolist() == emb.token_counts.tolist()
    assert mean.executor.core is mean.core  # the module export traces is the one torch serves
