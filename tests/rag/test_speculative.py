"""The shared verifier: acceptance kernel, stats, and the loop on a tiny random Llama (fast)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from embedsvc.errors import InvalidArgument
from embedsvc.rag.speculative import (
    GenerationStats,
    SpecConfig,
    SpeculativeDecoder,
    accept_longest,
    dedupe_drafts,
)


def test_accept_longest_prefix_and_bonus():
    drafts = [[5, 6, 7], [5, 6, 9]]
    target = np.array([[5, 6, 8, 0], [5, 6, 9, 4]])
    assert accept_longest(drafts, target) == (1, 3)  # row 1 fully accepted, bonus target[1, 3]


def test_accept_longest_ties_go_to_first_row_and_zero_when_nothing_matches():
    assert accept_longest([[1, 2], [1, 3]], np.array([[1, 9, 0], [1, 9, 0]])) == (0, 1)
    assert accept_longest([[4], [5]], np.array([[6, 0], [6, 0]])) == (0, 0)


def test_accept_longest_ignores_padding_of_shorter_rows():
    # row 0 is one token long; the target agreeing with its padding must not count
    target = np.array([[3, 2, 2], [3, 7, 1]])
    assert accept_longest([[3], [3, 8]], target) == (0, 1)


def test_dedupe_drafts_keeps_order_and_limit():
    assert dedupe_drafts([[1], [2], [1], [], [3]], 2) == [[1], [2]]


def test_stats_conventions():
    s = GenerationStats(
        new_tokens=10,
        target_calls=5,
        decode_calls=4,
        drafted_tokens=20,
        accepted_tokens=6,
        wall_time_s=2.0,
    )
    assert s.mean_accepted_length == 1.5  # bonus excluded: 6 accepted over 4 decode calls
    assert s.acceptance_rate == 0.3
    assert s.calls_per_token == 0.5
    assert s.tokens_per_s == 5.0


@pytest.fixture(scope="module")
def tiny_backbone():
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
    model = LlamaForCausalLM(cfg).eval()
    return SimpleNamespace(model=model, tokenizer=SimpleNamespace(eos_token_id=63))


class OracleDrafter:
    """Proposes the true continuation (from a reference run), a wrong one, and noise."""

    name = "oracle"

    def __init__(self, prompt_len: int, reference: list[int], corrupt_at: int | None = None):
        self.prompt_len, self.reference, self.corrupt_at = prompt_len, reference, corrupt_at
        self.states: list[int] = []

    def propose(self, tokens, state):
        assert state is not None and state.ndim == 1
        self.states.append(len(tokens))
        done = len(tokens) - self.prompt_len
        true = list(self.reference[done : done + 5])
        if self.corrupt_at is not None and len(true) > self.corrupt_at:
            true[self.corrupt_at] = (true[self.corrupt_at] + 1) % 63
        return [[1, 2, 3], true, [0]] if true else []


def _greedy_reference(bb, prompt, n):
    import torch

    with torch.inference_mode():
        out = bb.model.generate(
            input_ids=torch.tensor([prompt]),
            max_new_tokens=n,
            do_sample=False,
            eos_token_id=None,
            pad_token_id=0,
        )
    return out[0, len(prompt) :].tolist()


def test_plain_loop_equals_hf_generate(tiny_backbone):
    prompt = [5, 9, 17, 3]
    ref = _greedy_reference(tiny_backbone, prompt, 20)
    dec = SpeculativeDecoder(tiny_backbone, None, SpecConfig(stop_at_eos=False))
    out, stats = dec.generate(prompt, 20)
    assert out == ref
    assert stats.target_calls == 20 and stats.accepted_tokens == 0


@pytest.mark.parametrize("verify", ["tree", "batch"])
@pytest.mark.parametrize("corrupt_at", [None, 0, 2])
def test_drafted_loop_is_token_identical(tiny_backbone, corrupt_at, verify):
    prompt = [5, 9, 17, 3]
    ref = _greedy_reference(tiny_backbone, prompt, 30)
    drafter = OracleDrafter(len(prompt), ref, corrupt_at)
    cfg = SpecConfig(stop_at_eos=False, len_drafts=5, adaptive_nodes=False, verify=verify)
    dec = SpeculativeDecoder(tiny_backbone, drafter, cfg)
    chunks = list(dec.stream(prompt, 30, stats := GenerationStats()))
    assert sum(chunks, []) == ref
    assert stats.new_tokens == 30
    if corrupt_at is None:
        # every step accepts the 5 drafted tokens + 1 bonus (less at the end of the budget)
        assert stats.target_calls < 30 / 5 + 2
        assert stats.accepted_per_step[0] == 5
    elif corrupt_at == 2:
        assert set(stats.accepted_per_step[:-1]) == {2}
    assert stats.calls_per_token == stats.target_calls / 30


def test_prompt_validation(tiny_backbone):
    dec = SpeculativeDecoder(tiny_backbone)
    with pytest.raises(InvalidArgument):
        dec.generate([], 4)
    with pytest.raises(InvalidArgument):
        dec.generate([1, 2], 1000)
