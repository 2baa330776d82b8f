"""Text2Token targets: rows sum to 1, no mass on stopwords/specials; stage-2 sharpening."""

from __future__ import annotations

import pytest
import torch
from trainlib.t2t_targets import (
    STOPWORDS,
    content_ids,
    content_words,
    data_targets,
    excluded_ids,
    model_targets,
)

TEXTS = [
    "The theory of relativity, proposed by Albert Einstein, was revolutionary!",
    "It is what it is.",  # stopwords only: empty target row
    "Cats and dogs: cats chase dogs.",
]


def test_content_words_drop_stopwords_and_punctuation() -> None:
    assert content_words("The cat, the dog and I!") == ["cat", "dog"]


def _tokenizer(name: str):
    from transformers import AutoTokenizer

    from embedsvc.backbones import backbone_path

    return AutoTokenizer.from_pretrained(backbone_path(name), local_files_only=True)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["minilm", "smollm2"])
def test_data_targets_rows_sum_to_one_no_stopword_or_special_mass(name: str) -> None:
    tok = _tokenizer(name)
    excl = set(excluded_ids(tok))
    vocab = len(tok)
    t = data_targets(TEXTS, tok, excl, vocab)
    sums = t.sum(1)
    assert sums[0] == pytest.approx(1.0) and sums[2] == pytest.approx(1.0)
    assert sums[1] == 0.0  # no content: dropped by the trainer
    assert float(t[:, sorted(excl)].sum()) == 0.0
    for sid in tok.all_special_ids:
        assert float(t[:, sid].sum()) == 0.0
    for word in ("the", "of", "by", "and", "was"):
        for spelling in (word, " " + word):
            ids = tok(spelling, add_special_tokens=False)["input_ids"]
            if len(ids) == 1:
                assert float(t[:, ids[0]].sum()) == 0.0
    # repeated words count once: "cats", "dogs", "chase" -> uniform over their unique ids
    ids = content_ids(TEXTS[2], tok, excl)
    assert len(ids) == len(set(ids))
    assert torch.allclose(t[2, ids], torch.full((len(ids),), 1.0 / len(ids)))


def test_model_targets_are_sharp_distributions_without_excluded_mass() -> None:
    torch.manual_seed(0)
    logits = torch.randn(3, 50)
    prior = torch.randn(50)
    excl = torch.zeros(50, dtype=torch.bool)
    excl[:5] = True
    logits[:, 2] = 4.0  # an excluded id the model likes still gets no mass
    t = model_targets(logits, prior, 1e-4, excl)
    assert torch.allclose(t.sum(1), torch.ones(3))
    assert float(t[:, :5].sum()) == 0.0
    # the mass sits on the id whose probability most exceeds the prior
    p, q = torch.softmax(logits, -1), torch.softmax(prior, -1)
    r = (p / (p + q + 1e-8)).masked_fill(excl, -1)
    assert torch.equal(t.argmax(1), r.argmax(1))
    assert float(t.max(1).values.min()) > 0.5


def test_stopword_list_is_nltk_size() -> None:
    assert len(STOPWORDS) == 179
