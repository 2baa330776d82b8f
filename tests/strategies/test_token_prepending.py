"""``token_prepending`` / ``prompt_last`` on SmolLM2: the TP identities the issue asks for."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from embedsvc.errors import InvalidArgument  # noqa: E402
from embedsvc.strategies import create_strategy, strategy_class  # noqa: E402
from embedsvc.strategies.decoder.model import (  # noqa: E402
    PLACEHOLDER_ID,
    placeholder_vector,
    resolve_layer,
)
from embedsvc.strategies.decoder.prompts import TEMPLATES, preprocess_sentence  # noqa: E402
from embedsvc.strategies.features import pad_batch  # noqa: E402

SENTENCES = [
    "A man with a hard hat is dancing.",
    "A young child is riding a horse?",
    'The "cat" sat',
    "Two women are embracing while holding to go packages and talking about the weather.",
    "Dogs run.",
]


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=-1, keepdims=True)
    b = b / np.linalg.norm(b, axis=-1, keepdims=True)
    return (a * b).sum(-1)


# ---- fast: no model -------------------------------------------------------------------------


def test_preprocess_like_the_reference() -> None:
    assert preprocess_sentence("a  cat\tsat") == "a cat sat."
    assert preprocess_sentence('he said "hi".') == "he said 'hi'."
    assert preprocess_sentence("is it?") == "is it."
    assert preprocess_sentence("ends with quote'") == "ends with quote'"
    assert preprocess_sentence("") == ""


def test_templates_match_reference_vanilla_prompts() -> None:
    prefix, suffix = TEMPLATES["eol"]
    assert prefix + suffix.format(s="X.") == 'This sentence : "X." means in one word:"'
    assert set(TEMPLATES) == {"eol", "cot", "ke"}


def test_placeholder_is_deterministic_across_processes() -> None:
    vec = placeholder_vector(576, 3407, 1.0)
    assert vec.shape == (576,) and 0.8 < float(vec.std()) < 1.2  # std 1 as the reference
    code = (
        "from embedsvc.strategies.decoder.model import placeholder_vector as p;"
        "print(repr(float(p(576, 3407, 1.0).double().sum())))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert float(out.stdout.strip()) == float(vec.double().sum())


def test_batch_positions_left_and_right() -> None:
    """Positions and the last token come from the mask, whatever the padding side."""
    import torch

    from embedsvc.strategies.pooling import last_index

    left = pad_batch([[5, 6, 7], [8, 9]], pad_id=2, side="left")
    assert left["input_ids"].tolist() == [[5, 6, 7], [2, 8, 9]]
    assert last_index(torch.from_numpy(left["attention_mask"])).tolist() == [2, 2]
    right = pad_batch([[5, PLACEHOLDER_ID, 7], [8, PLACEHOLDER_ID]], pad_id=2)
    assert right["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    assert last_index(torch.from_numpy(right["attention_mask"])).tolist() == [2, 1]
    with pytest.raises(InvalidArgument):
        pad_batch([[5], []], pad_id=2)


def test_layer_indices() -> None:
    assert resolve_layer(-1, 30) == 30 and resolve_layer(-2, 30) == 29
    assert resolve_layer(23, 30) == 23
    with pytest.raises(InvalidArgument):
        resolve_layer(31, 30)


def test_config_validation() -> None:
    with pytest.raises(InvalidArgument):
        create_strategy("token_prepending", start=5, exit=2)
    assert strategy_class("prompt_last").name == "prompt_last"


# ---- slow: SmolLM2 --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tp():
    return create_strategy("token_prepending")


@pytest.mark.slow
def test_exit_equals_start_reproduces_no_tp_exactly(tp) -> None:
    """Hooks over an empty range == the same placeholder input through the plain model."""
    import torch

    from embedsvc.strategies.pooling import last_index

    off = create_strategy("token_prepending", start=2, exit=2, output_layer=-1)
    seqs = [off.prompt_ids(preprocess_sentence(s)) for s in SENTENCES]
    hooked = off.encode_ids(seqs, [30])[30]
    model = off.backbone.model
    with torch.inference_mode():
        feeds = {k: torch.from_numpy(v) for k, v in pad_batch(seqs, 2).items()}
        ids, mask = feeds["input_ids"], feeds["attention_mask"]
        embeds = model.get_input_embeddings()(ids.clamp(min=0))
        vec = off._placeholder().view(1, 1, -1)
        embeds = torch.where((ids == PLACEHOLDER_ID).unsqueeze(-1), vec, embeds)
        hidden = model.model(
            inputs_embeds=embeds,
            attention_mask=mask,
            position_ids=(mask.cumsum(1) - 1).clamp(min=0),
        ).last_hidden_state
        plain = hidden[torch.arange(len(seqs)), last_index(mask)].numpy()
    np.testing.assert_array_equal(hooked, plain)
    # and TP really changes the vector when the range is not empty
    on = create_strategy("token_prepending", start=1, exit=4, output_layer=-1)
    assert _cos(on.encode_ids(seqs, [30])[30], plain).min() < 0.9999


@pytest.mark.slow
def test_padding_side_and_batch_invariance(tp) -> None:
    right = tp.encode(SENTENCES).vectors
    left = create_strategy("token_prepending", padding_side="left").encode(SENTENCES).vectors
    single = np.stack([tp.encode([s]).vectors[0] for s in SENTENCES])
    assert _cos(right, left).min() >= 0.9999
    assert _cos(right, single).min() >= 0.9999
    np.testing.assert_allclose(np.linalg.norm(right, axis=1), 1.0, atol=1e-5)


@pytest.mark.slow
def test_does_not_touch_the_shared_backbone_and_exits_early(tp) -> None:
    model = tp.backbone.model
    rows = model.get_input_embeddings().weight.shape[0]
    vocab = len(tp.backbone.tokenizer)
    calls = []
    last = model.model.layers[-1].register_forward_hook(lambda *a: calls.append(1))
    try:
        tp.encode(SENTENCES[:2])
    finally:
        last.remove()
    assert tp.output_index < 30 and not calls  # blocks past the output layer never ran
    assert model.get_input_embeddings().weight.shape[0] == rows
    assert len(tp.backbone.tokenizer) == vocab
    assert not model.model.layers[0]._forward_pre_hooks  # hooks are removed after the call
    # prompt_last on the same backbone is the placeholder-free prompt
    pl = create_strategy("prompt_last")
    assert PLACEHOLDER_ID not in pl.prompt_ids("A cat.")
    assert tp.prompt_ids("A cat.").count(PLACEHOLDER_ID) == 1
    assert len(tp.prompt_ids("A cat.")) == len(pl.prompt_ids("A cat.")) + 1


@pytest.mark.slow
def test_token_limits(tp) -> None:
    short = create_strategy("token_prepending", max_length=24)
    long_text = "a dog runs in the park " * 20
    emb = short.encode([long_text, "A cat."])
    assert emb.token_counts.tolist()[0] == 24 and emb.truncated_tokens[0] > 0
    assert emb.truncated_tokens[1] == 0
    with pytest.raises(InvalidArgument):
        short.encode([long_text], truncate=False)
    assert tp.count_tokens(["A cat."]) == [len(tp.prompt_ids("A cat."))]


@pytest.mark.slow
def test_eval_harness_path(tmp_path) -> None:
    """`embedsvc eval sts` code path: evaluate_sts on a tiny STS-B-format file."""
    from embedsvc.eval.sts import evaluate_sts

    rows = [
        ("A man is playing a guitar.", "A man plays the guitar.", 4.8),
        ("A woman is slicing onions.", "A man is playing a flute.", 0.2),
        ("A dog runs on the beach.", "A dog is running along the shore.", 4.2),
        ("Kids are playing football.", "A cat sleeps on the sofa.", 0.4),
    ]
    path = tmp_path / "sts.csv"
    path.write_text(
        "".join(f"g\tx\t2012\t{i:04d}\t{s}\t{a}\t{b}\n" for i, (a, b, s) in enumerate(rows))
    )
    for name in ("token_prepending", "prompt_last"):
        res = evaluate_sts(create_strategy(name), path, cache_dir=tmp_path, use_cache=False)
        assert res["n_pairs"] == 4 and -100 <= res["spearman"] <= 100
