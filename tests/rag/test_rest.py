"""REST: suffix array and matching on toy token lists (pure), identity to greedy (slow)."""

from __future__ import annotations

import numpy as np
import pytest

from embedsvc.rag.rest import (
    RESTConfig,
    RESTDrafter,
    SuffixIndex,
    rank_continuations,
    suffix_array,
)


def test_suffix_array_matches_naive_sort():
    rng = np.random.default_rng(1)
    for n, vocab in [(1, 3), (2, 1), (50, 2), (300, 7)]:
        toks = rng.integers(0, vocab, n).tolist()
        naive = sorted(range(n), key=lambda i: toks[i:])
        assert suffix_array(toks).tolist() == naive


def test_find_and_longest_match():
    #        0  1  2  3  4  5  6  7  8
    toks = [1, 2, 3, 4, 9, 2, 3, 5, 2]
    idx = SuffixIndex(toks)
    lo, hi = idx.find([2, 3])
    assert sorted(idx.sa[lo:hi]) == [1, 5]
    m, starts = idx.longest_match([7, 1, 2, 3], max_len=16, min_len=2)
    assert (m, starts) == (3, [0])  # [1, 2, 3] beats [2, 3]
    assert idx.longest_match([8, 8], max_len=16, min_len=2) == (0, [])
    assert idx.longest_match([4, 2], max_len=1, min_len=1)[0] == 1  # only length 1 allowed


def test_continuations_and_ranking():
    toks = [1, 2, 3, 4, 1, 2, 3, 5, 1, 2, 6]
    idx = SuffixIndex(toks)
    m, starts = idx.longest_match([0, 1, 2], max_len=16, min_len=2)
    assert m == 2
    conts = idx.continuations(starts, m, 2)
    assert sorted(conts) == [(3, 4), (3, 5), (6,)]
    # prefix (3,) occurs twice: both paths through it rank before (6,)
    assert rank_continuations(conts, 10)[-1] == [6]
    assert len(rank_continuations(conts, 1)) == 1


def test_drafter_proposes_what_follows_the_longest_match():
    toks = [5, 6, 7, 8, 9, 5, 6, 1, 2]
    drafter = RESTDrafter(SuffixIndex(toks), RESTConfig(len_drafts=3))
    assert drafter.propose([0, 5, 6, 7]) == [[8, 9, 5]]
    assert drafter.propose([0, 4]) == []  # no 2-token match: no draft


@pytest.mark.slow
def test_rest_is_token_identical_to_greedy(spec_backbone, spec_references, spec_datastore):
    from embedsvc.rag.speculative import SpecConfig, SpeculativeDecoder

    drafter = RESTDrafter.from_datastore(spec_datastore)
    assert (spec_datastore.folder / "suffix_array.npy").is_file()
    dec = SpeculativeDecoder(spec_backbone, drafter, SpecConfig(num_drafts=4))
    accepted = []
    for ids, ref in spec_references:
        out, stats = dec.generate(ids, len(ref))
        assert out == ref
        accepted.append(stats.accepted_tokens)
    assert accepted[0] > 0
