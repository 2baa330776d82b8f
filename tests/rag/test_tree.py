"""Draft trees: the trie, the tree attention mask, greedy acceptance, and the KV-cache commit."""

from __future__ import annotations

import numpy as np
import pytest

from embedsvc.rag.tree import DraftTree, accept_tree, ancestor_mask, build_tree


def _ancestors(parents, i):
    out = {i}
    while parents[i] >= 0:
        i = parents[i]
        out.add(i)
    return out


def _random_drafts(rng, n=8, depth=6, vocab=5):
    return [rng.integers(0, vocab, size=rng.integers(1, depth + 1)).tolist() for _ in range(n)]


@pytest.mark.parametrize("seed", range(5))
def test_each_node_attends_exactly_to_its_ancestors(seed):
    rng = np.random.default_rng(seed)
    tree = build_tree(99, _random_drafts(rng))
    mask = ancestor_mask(tree.parents)
    for i in range(len(tree)):
        assert set(np.flatnonzero(mask[i])) == _ancestors(tree.parents, i)
        assert tree.depths[i] == len(_ancestors(tree.parents, i)) - 1


@pytest.mark.parametrize("seed", range(5))
def test_trie_holds_every_draft_prefix_once_and_budget_keeps_ancestors(seed):
    rng = np.random.default_rng(seed)
    drafts = _random_drafts(rng)
    tree = build_tree(99, drafts)
    paths = set()
    for i in range(1, len(tree)):
        path = []
        j = i
        while j > 0:
            path.append(tree.tokens[j])
            j = tree.parents[j]
        paths.add(tuple(reversed(path)))
    prefixes = {tuple(d[:k]) for d in drafts for k in range(1, len(d) + 1)}
    assert paths == prefixes and len(paths) == tree.num_draft_tokens
    for budget in (1, 3, 7):
        small = build_tree(99, drafts, budget)
        assert small.num_draft_tokens == min(budget, tree.num_draft_tokens)
        assert all(small.parents[i] < i for i in range(1, len(small)))


def test_budget_prefers_shared_prefixes_then_shallow_nodes():
    tree = build_tree(0, [[1, 2, 3], [1, 2, 4], [5, 6]], budget=3)
    assert tree.tokens == [0, 1, 5, 2]  # (1) and (1, 2) have weight 2; then depth 1 beats depth 3


def test_accept_tree_walks_the_target_argmax():
    tree = DraftTree(tokens=[9, 1, 5, 2, 3], parents=[-1, 0, 0, 1, 3], depths=[0, 1, 1, 2, 3])
    assert accept_tree(tree, [1, 2, 0, 3, 8]) == ([1, 3, 4], 8)  # all of 1 -> 2 -> 3, bonus 8
    assert accept_tree(tree, [5, 0, 7, 0, 0]) == ([2], 7)
    assert accept_tree(tree, [1, 6, 0, 0, 0]) == ([1], 6)  # 6 is not a child: stop, bonus 6
    assert accept_tree(tree, [4, 0, 0, 0, 0]) == ([], 4)


@pytest.fixture(scope="module")
def tiny_model():
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
    )
    return LlamaForCausalLM(cfg).eval()


def _sequential(model, ids):
    """Final-norm states of a plain causal forward over ``ids``."""
    import torch

    with torch.inference_mode():
        return model.model(input_ids=torch.tensor([ids])).last_hidden_state[0]


def test_tree_forward_equals_each_path_fed_alone(tiny_model):
    import torch

    from embedsvc.rag.verify import TreeVerifier

    prompt = [3, 17, 22, 5, 9]
    tree = build_tree(prompt[-1], [[1, 2, 3], [1, 4], [6, 7, 8, 9], [6, 10]])
    ver = TreeVerifier(tiny_model)
    with torch.inference_mode():
        ver.prefill(prompt[:-1])
        hidden, pred = ver.forward_tree(tree)
    for i in range(len(tree)):
        path = []
        j = i
        while j >= 0:
            path.append(tree.tokens[j])
            j = tree.parents[j]
        ref = _sequential(tiny_model, prompt[:-1] + path[::-1])[-1]
        torch.testing.assert_close(hidden[i], ref, atol=1e-5, rtol=1e-4)
        with torch.inference_mode():
            assert pred[i] == int(tiny_model.lm_head(ref).argmax())


@pytest.mark.parametrize("draft_path", [[0], [1, 3], [2, 6], [2, 5, 8], [1, 3, 7]])
def test_commit_keeps_exactly_the_accepted_path_in_the_cache(tiny_model, draft_path):
    import torch

    from embedsvc.rag.verify import TreeVerifier

    prompt = [3, 17, 22, 5, 9]
    tree = build_tree(prompt[-1], [[1, 2, 3], [1, 4], [6, 7, 8], [6, 11]])
    # nodes by depth: 1:(1) 2:(6) 3:(1,2) 4:(1,4) 5:(6,7) 6:(6,11) 7:(1,2,3) 8:(6,7,8)
    assert all(tree.parents[b] == a for a, b in zip([0, *draft_path], draft_path) if b)
    path = [i for i in draft_path if i > 0]
    ver = TreeVerifier(tiny_model)
    with torch.inference_mode():
        ver.prefill(prompt[:-1])
        ver.forward_tree(tree)
        ver.commit(path)
        kept = prompt + [tree.tokens[i] for i in path]
        assert ver.past == len(kept)
        ref = ver.__class__(tiny_model)
        ref.prefill(kept)
        for mine, theirs in zip(ver.cache.layers, ref.cache.layers, strict=True):
            torch.testing.assert_close(mine.keys, theirs.keys, atol=1e-5, rtol=1e-4)
            torch.testing.assert_close(mine.values, theirs.values, atol=1e-5, rtol=1e-4)
        # and decoding goes on exactly as from a fresh prefill
        state, nxt = ver.step(7)
        ref_state, ref_nxt = ref.step(7)
        torch.testing.assert_close(state, ref_state, atol=1e-5, rtol=1e-4)
        assert nxt == ref_nxt
