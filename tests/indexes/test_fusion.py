"""Fusion order: convex combination of min-max scores, RRF, weight tuning."""

from __future__ import annotations

import pytest

from embedsvc.indexes.fusion import convex_fuse, fuse_runs, minmax, rrf_fuse, tune_weight


def test_minmax():
    assert minmax({"a": 3.0, "b": 1.0, "c": 2.0}) == {"a": 1.0, "b": 0.0, "c": 0.5}
    assert minmax({"a": 5.0, "b": 5.0}) == {"a": 1.0, "b": 1.0}
    assert minmax({}) == {}


def test_convex_order_follows_weight():
    dense = {"d1": 0.9, "d2": 0.5, "d3": 0.1}
    sparse = {"d3": 12.0, "d2": 6.0, "d4": 3.0}
    # pure dense: dense order, sparse-only documents last (0 on the dense side)
    assert [d for d, _ in convex_fuse(dense, sparse, 1.0)][:3] == ["d1", "d2", "d3"]
    # pure sparse (d1 and d4 both 0 there: a tie, broken by id)
    assert [d for d, _ in convex_fuse(dense, sparse, 0.0)] == ["d3", "d2", "d1", "d4"]
    fused = dict(convex_fuse(dense, sparse, 0.5))
    # d2: 0.5*0.5 + 0.5*(3/9) ; d3: 0.5*0 + 0.5*1 ; d1: 0.5*1 ; d4: 0
    assert fused["d1"] == pytest.approx(0.5)
    assert fused["d2"] == pytest.approx(0.25 + 0.5 * 3 / 9)
    assert fused["d4"] == pytest.approx(0.0)
    ranked = [d for d, _ in convex_fuse(dense, sparse, 0.5)]
    assert ranked == ["d1", "d3", "d2", "d4"]  # ties (d1, d3 at 0.5) broken by id
    assert len(convex_fuse(dense, sparse, 0.5, k=2)) == 2
    with pytest.raises(ValueError):
        convex_fuse(dense, sparse, 1.5)


def test_rrf_rewards_agreement():
    a = {"x": 3.0, "y": 2.0, "z": 1.0}
    b = {"y": 9.0, "w": 8.0, "x": 1.0}
    ranked = [d for d, _ in rrf_fuse([a, b])]
    assert ranked[0] == "y"  # ranks 2 and 1
    assert ranked[1] == "x"  # ranks 1 and 3
    assert set(ranked) == {"x", "y", "z", "w"}


def test_tune_weight_picks_the_best_grid_point():
    dense = {"q": {"good": 0.2, "bad": 0.9}}
    sparse = {"q": {"good": 5.0, "bad": 1.0}}

    def score(run):  # 1 when "good" ranks first
        return float(max(run["q"], key=run["q"].get) == "good")

    best, table = tune_weight(score, dense, sparse, grid=[0.0, 0.25, 0.5, 0.75, 1.0])
    assert table[1.0] == 0.0 and table[0.0] == 1.0
    assert best == 0.25  # best score, and among the best the one nearest 0.5
    fused = fuse_runs(dense, sparse, None)
    assert set(fused["q"]) == {"good", "bad"}
