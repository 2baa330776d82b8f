"""DReSD: draft filtering (pure), projection, and token identity to greedy on SmolLM2 (slow)."""

from __future__ import annotations

import numpy as np
import pytest

from embedsvc.rag.datastore import Projection, read_corpus
from embedsvc.rag.dresd import DReSDConfig, DReSDDrafter, filter_drafts


def test_filter_keeps_matching_first_token_and_shifts_by_one():
    values = np.array([[7, 1, 2, 3], [8, 4, 5, 6], [7, 9, 9, 9]])
    assert filter_drafts(values, 7, num_drafts=10, len_drafts=3) == [[1, 2, 3], [9, 9, 9]]


def test_filter_order_dedupe_and_limits():
    values = np.array([[7, 1, 2], [7, 1, 2], [7, 3, 4], [7, 5, 6], [-1, -1, -1]])
    assert filter_drafts(values, 7, num_drafts=2, len_drafts=1) == [[1], [3]]
    assert filter_drafts(values, 4) == []  # nothing predicts the last token: no draft


def test_filter_never_matches_missing_neighbours():
    assert filter_drafts(np.full((3, 4), -1), 7) == []


def test_projection_is_orthonormal_and_unit_norm():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(500, 16)) * np.arange(1, 17)
    proj = Projection.fit(x.astype(np.float32), dim=4)
    assert proj.components.shape == (16, 4)
    np.testing.assert_allclose(proj.components.T @ proj.components, np.eye(4), atol=1e-4)
    np.testing.assert_allclose(np.linalg.norm(proj(x[:10]), axis=1), 1.0, atol=1e-5)


class FakeStore:
    def __init__(self, values):
        self.values, self.queries = values, []

    def search(self, states, k):
        self.queries.append((states.copy(), k))
        return np.zeros((1, len(self.values))), self.values[None]


def test_drafter_queries_with_the_given_state_and_filters_on_last_token():
    store = FakeStore(np.array([[3, 4, 5, 6], [2, 8, 8, 8], [3, 4, 5, 7]]))
    drafter = DReSDDrafter(store, DReSDConfig(top_k=50, len_drafts=2))  # type: ignore[arg-type]
    state = np.arange(4, dtype=np.float32)
    assert drafter.propose([9, 3], state) == [[4, 5]]
    np.testing.assert_array_equal(store.queries[0][0], state[None])
    assert drafter.propose([9, 3], None) == []


def test_read_corpus_formats(tmp_path):
    import gzip
    import json

    (tmp_path / "a.json").write_text(
        json.dumps([{"instruction": "Q", "input": "x", "output": "A"}])
    )
    assert read_corpus(tmp_path / "a.json") == [("Q\n\nx", "A")]
    conv = {"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "yo"}]}
    (tmp_path / "b.jsonl").write_text(json.dumps(conv) + "\n")
    assert read_corpus(tmp_path / "b.jsonl") == [("hi", "yo")]
    with gzip.open(tmp_path / "c.jsonl.gz", "wt") as fh:
        fh.write(json.dumps({"task_id": "t", "prompt": "def f():"}) + "\n")
    assert read_corpus(tmp_path / "c.jsonl.gz") == [("def f():", None)]
    (tmp_path / "d.jsonl").write_text(json.dumps({"question_id": 1, "turns": ["t1", "t2"]}) + "\n")
    assert read_corpus(tmp_path / "d.jsonl") == [("t1", None)]


@pytest.mark.slow
def test_datastore_layout(spec_datastore):
    ds = spec_datastore
    m = ds.manifest
    assert m["keys"] == len(ds) == len(ds.values) == m["tokens"] - m["sequences"]
    assert ds.values.shape[1] == 20 and ds.projection.components.shape[1] == 64
    # value[0] of each key is the token after the key's position
    first = ds.tokens[ds.offsets[0] : ds.offsets[1]]
    np.testing.assert_array_equal(ds.values[: len(first) - 1, 0], first[1:])
    assert m["lookup_ms_top50"] < 5.0


@pytest.mark.slow
def test_dresd_is_token_identical_to_greedy(spec_backbone, spec_references, spec_datastore):
    from embedsvc.rag.speculative import SpecConfig, SpeculativeDecoder

    # 4 rows instead of 10 keeps the test cheap on 2 cores; identity does not depend on it
    dec = SpeculativeDecoder(spec_backbone, DReSDDrafter(spec_datastore), SpecConfig(num_drafts=4))
    accepted = []
    for ids, ref in spec_references:
        out, stats = dec.generate(ids, len(ref))
        assert out == ref
        accepted.append(stats.accepted_tokens)
    assert accepted[0] > 0  # prompt 0's own answer is in the datastore: drafts get accepted


class _IdentityProjection:
    def __call__(self, states):
        x = np.atleast_2d(states).astype(np.float32)
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    components = np.zeros((3, 3))


class _SelfStore:
    """A datastore with one useless neighbour: drafts can only come from the request."""

    projection = _IdentityProjection()

    def search(self, states, k):
        return np.array([[0.0]]), np.array([[[-1] * 20]])


def test_request_local_keys_retrieve_the_continuation_of_the_most_similar_state():
    from embedsvc.rag.dresd import DReSDConfig, DReSDDrafter

    drafter = DReSDDrafter(_SelfStore(), DReSDConfig(self_keys=True, len_drafts=2)).new_request()
    tokens = [5, 7, 1, 2, 8, 7, 3, 4, 9, 7]  # token 7 follows positions 0, 4 and 8
    states = np.eye(3, dtype=np.float32)[[0, 1, 0, 0, 2, 1, 0, 0, 2]]  # states of tokens[:-1]
    drafter.observe(tokens[:5], states[:4])  # incremental, as the decoder does
    drafter.observe(tokens, states[4:])
    # query like position 4's state: its continuation after 7 is [3, 4]; then position 0's
    drafts, weights = drafter.propose_weighted(tokens, np.array([0.0, 0.1, 1.0]))
    assert drafts[0] == [3, 4] and [1, 2] in drafts and weights == [1.0] * len(drafts)
    with pytest.raises(RuntimeError):
        drafter.observe(tokens + [1, 1], states[:1])  # keys must cover tokens[:-1]


def test_min_score_skips_drafting_when_the_nearest_key_is_far():
    store = FakeStore(np.array([[3, 4, 5, 6]]))
    drafter = DReSDDrafter(store, DReSDConfig(min_score=0.5))  # type: ignore[arg-type]
    assert drafter.propose_weighted([3], np.ones(4, dtype=np.float32)) == ([], [])
    drafter.config.min_score = -1.0
    assert drafter.propose_weighted([3], np.ones(4, dtype=np.float32))[0] == [[4, 5, 6]]


@pytest.mark.slow
def test_dresd_self_keys_is_token_identical_to_greedy(
    spec_backbone, spec_references, spec_datastore
):
    from embedsvc.rag.speculative import SpecConfig, SpeculativeDecoder

    drafter = DReSDDrafter(spec_datastore, DReSDConfig(self_keys=True))
    dec = SpeculativeDecoder(spec_backbone, drafter, SpecConfig())
    for ids, ref in spec_references:
        out, _ = dec.generate(ids, len(ref))
        assert out == ref
