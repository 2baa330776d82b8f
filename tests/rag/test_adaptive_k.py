"""The Adaptive-k gap rule on synthetic score lists (numbers worked out by hand)."""

from __future__ import annotations

import doctest

import numpy as np
import pytest

import embedsvc.rag.adaptive_k as adaptive_k_module
from embedsvc.errors import InvalidArgument
from embedsvc.rag.adaptive_k import (
    AdaptiveKConfig,
    largest_gap_cut,
    select_adaptive_k,
    within_budget,
)

NO_BUFFER = AdaptiveKConfig(buffer=0)


def test_docstring_worked_example():
    result = doctest.testmod(adaptive_k_module, raise_on_error=False)
    assert result.attempted >= 4 and result.failed == 0


def _two_level(n_top: int, n: int) -> np.ndarray:
    """n_top scores near 0.9, then a drop to 0.3 and a slow decline (one known drop)."""
    top = 0.9 - 0.001 * np.arange(n_top)
    rest = 0.3 - 0.001 * np.arange(n - n_top)
    return np.concatenate([top, rest])


@pytest.mark.parametrize("n_top", [1, 4, 17])
def test_known_drop_returns_t_plus_one_plus_buffer(n_top):
    scores = _two_level(n_top, 100)
    assert largest_gap_cut(scores) == n_top - 1
    assert select_adaptive_k(scores, NO_BUFFER).k == n_top
    assert select_adaptive_k(scores).k == n_top + 5  # default buffer 5: t + 1 + B
    assert select_adaptive_k(scores, AdaptiveKConfig(buffer=2)).k == n_top + 2


def test_buffer_is_capped_by_the_pool():
    scores = _two_level(8, 10)
    assert select_adaptive_k(scores).k == 10


def test_unsorted_input_is_sorted_and_indices_point_into_it():
    scores = _two_level(3, 50)
    perm = np.random.default_rng(0).permutation(50)
    shuffled = scores[perm]
    result = select_adaptive_k(shuffled, NO_BUFFER)
    assert sorted(shuffled[result.indices].tolist(), reverse=True) == scores[:3].tolist()
    assert list(shuffled[result.indices]) == sorted(shuffled[result.indices], reverse=True)


def test_ascending_input_is_flipped():
    scores = _two_level(4, 40)
    assert largest_gap_cut(scores[::-1]) == largest_gap_cut(scores) == 3
    result = select_adaptive_k(scores[::-1], NO_BUFFER)
    assert result.k == 4 and set(result.indices.tolist()) == {36, 37, 38, 39}


def test_unsorted_input_to_the_cut_is_rejected():
    with pytest.raises(InvalidArgument, match="not sorted"):
        largest_gap_cut([0.5, 0.9, 0.1])


def test_ties_first_largest_drop_wins_and_equal_scores_keep_input_order():
    # two equal drops (0.4): the first one (position 1) is the cut
    scores = [1.0, 1.0, 0.6, 0.6, 0.2, 0.19, 0.18, 0.17, 0.16, 0.15, 0.14]
    assert largest_gap_cut(scores) == 1
    result = select_adaptive_k(scores, NO_BUFFER)
    assert result.indices.tolist() == [0, 1]
    # all-equal scores: no drop anywhere; the first position is the cut
    flat = np.full(20, 0.5)
    assert largest_gap_cut(flat) == 0
    assert select_adaptive_k(flat).indices.tolist() == list(range(6))


@pytest.mark.parametrize("bad", [[], [0.7], np.zeros((0,))])
def test_fewer_than_two_scores_is_invalid_argument(bad):
    with pytest.raises(InvalidArgument, match="at least 2"):
        select_adaptive_k(bad)
    with pytest.raises(InvalidArgument, match="at least 2"):
        largest_gap_cut(bad)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_scores_are_invalid_argument(bad):
    with pytest.raises(InvalidArgument, match="finite"):
        select_adaptive_k([0.9, bad, 0.1])


def test_two_scores_work():
    assert select_adaptive_k([0.2, 0.9], NO_BUFFER).indices.tolist() == [1]


def test_tail_exclusion_skips_the_steep_noisy_tail():
    # 21 scores: a 0.2 drop after position 2, a 0.5 drop at the very end (gap 19 of 0..19)
    scores = np.concatenate([[0.9, 0.89, 0.88], 0.68 - 0.01 * np.arange(17), [-0.5]])
    assert largest_gap_cut(scores, tail_fraction=0.0) == 19  # without it: the tail wins
    assert largest_gap_cut(scores) == 2  # int(20 * 0.1) = 2 trailing gaps ignored
    assert select_adaptive_k(scores, AdaptiveKConfig(tail_fraction=0.0, buffer=0)).k == 20


def test_head_exclusion_skips_the_leading_gaps():
    # a huge first drop (a near-duplicate of the query), then the real one after position 4
    scores = np.concatenate([[1.0], 0.6 - 0.01 * np.arange(4), 0.3 - 0.001 * np.arange(15)])
    assert largest_gap_cut(scores) == 0
    # n = 20: int(19 * 0.1) = 1 leading gap ignored
    assert largest_gap_cut(scores, head_fraction=0.1) == 4
    assert select_adaptive_k(scores, AdaptiveKConfig(head_fraction=0.1, buffer=0)).k == 5


def test_token_budget_stops_before_exceeding():
    scores = _two_level(6, 30)
    counts = [10, 20, 30, 5, 5, 5] + [1] * 24
    full = select_adaptive_k(scores, NO_BUFFER, counts)
    assert (full.k, full.tokens, full.budget_limited) == (6, 75, False)
    budget = select_adaptive_k(scores, AdaptiveKConfig(buffer=0, token_budget=60), counts)
    assert (budget.k, budget.tokens, budget.k_rule, budget.budget_limited) == (3, 60, 6, True)
    tight = select_adaptive_k(scores, AdaptiveKConfig(buffer=0, token_budget=9), counts)
    assert tight.k == 0 and tight.tokens == 0
    assert within_budget([3, 3, 3], None) == 3 and within_budget([3, 3, 3], 7) == 2


def test_token_budget_needs_counts_and_counts_must_match():
    with pytest.raises(InvalidArgument, match="token counts"):
        select_adaptive_k([0.9, 0.1, 0.0], AdaptiveKConfig(token_budget=5))
    with pytest.raises(InvalidArgument, match="one count per score"):
        select_adaptive_k([0.9, 0.1, 0.0], token_counts=[1, 2])


def test_config_validation():
    with pytest.raises(ValueError, match="< 1"):
        AdaptiveKConfig(head_fraction=0.5, tail_fraction=0.5)
    with pytest.raises(ValueError):
        AdaptiveKConfig(pool_size=50)
    with pytest.raises(ValueError):
        AdaptiveKConfig(buffer=-1)
    assert AdaptiveKConfig().model_dump() == {
        "head_fraction": 0.0,
        "tail_fraction": 0.1,
        "buffer": 5,
        "pool_size": 1000,
        "token_budget": None,
    }
