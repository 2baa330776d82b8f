"""Text2Token target distributions over the vocabulary (pure functions, tensors in/out).

Reference
    "Text2Token: Unsupervised Text Representation Learning with Token Target Prediction";
    research code GDNL-ACT/anruize_target_learn (``aa_dataset.py`` data-driven targets,
    ``aa_gene_train.py`` model-derived targets), read and re-derived, not copied.

Inputs-Outputs
    * :func:`excluded_ids` -- tokenizer -> sorted ids that never receive target mass: special
      tokens (and SmolLM2's 0-16 / BERT's ``[unused*]``), whitespace-only tokens, and the
      single-token spellings of the stopwords (a stopword can also come back as a piece of a
      longer word, e.g. "the" + "ory"; excluding its id keeps the "no stopword mass" promise).
    * :func:`content_ids` -- one text -> its unique content token ids (stage 1).
    * :func:`data_targets` -- texts -> ``[B, V]`` uniform rows over content ids (stage 1).
    * :func:`model_targets` -- frozen-model logits + corpus-prior logits -> ``[B, V]``
      ``softmax((p / (p + q + 1e-8)) / tau)`` with excluded ids masked out (stage 2).

Hyper-parameters
    ``tau`` = 1e-4 for mean pooling (the reference scripts); the stopword list is NLTK's
    English list (179 words) plus the punctuation ``! , . ?`` the reference also drops.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

#: NLTK's English stopword list (nltk.corpus.stopwords.words("english"), 179 words)
STOPWORDS = frozenset(
    [
        "i",
        "me",
        "my",
        "myself",
        "we",
        "our",
        "ours",
        "ourselves",
        "you",
        "you're",
        "you've",
        "you'll",
        "you'd",
        "your",
        "yours",
        "yourself",
        "yourselves",
        "he",
        "him",
        "his",
        "himself",
        "she",
        "she's",
        "her",
        "hers",
        "herself",
        "it",
        "it's",
        "its",
        "itself",
        "they",
        "them",
        "their",
        "theirs",
        "themselves",
        "what",
        "which",
        "who",
        "whom",
        "this",
        "that",
        "that'll",
        "these",
        "those",
        "am",
        "is",
        "are",
        "was",
        "were",
        "be",
        "been",
        "being",
        "have",
        "has",
        "had",
        "having",
        "do",
        "does",
        "did",
        "doing",
        "a",
        "an",
        "the",
        "and",
        "but",
        "if",
        "or",
        "because",
        "as",
        "until",
        "while",
        "of",
        "at",
        "by",
        "for",
        "with",
        "about",
        "against",
        "between",
        "into",
        "through",
        "during",
        "before",
        "after",
        "above",
        "below",
        "to",
        "from",
        "up",
        "down",
        "in",
        "out",
        "on",
        "off",
        "over",
        "under",
        "again",
        "further",
        "then",
        "once",
        "here",
        "there",
        "when",
        "where",
        "why",
        "how",
        "all",
        "any",
        "both",
        "each",
        "few",
        "more",
        "most",
        "other",
        "some",
        "such",
        "no",
        "nor",
        "not",
        "only",
        "own",
        "same",
        "so",
        "than",
        "too",
        "very",
        "s",
        "t",
        "can",
        "will",
        "just",
        "don",
        "don't",
        "should",
        "should've",
        "now",
        "d",
        "ll",
        "m",
        "o",
        "re",
        "ve",
        "y",
        "ain",
        "aren",
        "aren't",
        "couldn",
        "couldn't",
        "didn",
        "didn't",
        "doesn",
        "doesn't",
        "hadn",
        "hadn't",
        "hasn",
        "hasn't",
        "haven",
        "haven't",
        "isn",
        "isn't",
        "ma",
        "mightn",
        "mightn't",
        "mustn",
        "mustn't",
        "needn",
        "needn't",
        "shan",
        "shan't",
        "shouldn",
        "shouldn't",
        "wasn",
        "wasn't",
        "weren",
        "weren't",
        "won",
        "won't",
        "wouldn",
        "wouldn't",
    ]
)
PUNCT = frozenset({"!", ",", ".", "?"})
_NON_WORD = re.compile(r"[\W_]+")


def excluded_ids(tokenizer: Any) -> list[int]:
    """Vocab ids that must never carry target mass (see the module docstring)."""
    vocab = tokenizer.get_vocab()
    out = set(int(i) for i in tokenizer.all_special_ids)
    for tok, idx in vocab.items():
        bare = tok.replace("Ġ", " ").replace("▁", " ").replace("Ċ", "\n")
        if not bare.strip():
            out.add(idx)  # whitespace-only pieces (SmolLM2's "Ġ", Mistral's bare "▁")
        elif tok.startswith("[") and tok.endswith("]"):
            out.add(idx)  # BERT's [PAD] [UNK] [CLS] [SEP] [MASK] and the [unusedN] slots
        elif tok.startswith("<|") and tok.endswith("|>"):
            out.add(idx)  # chat-template specials
    # SmolLM2 (GPT-2 BPE): ids 0-16 are its special / repo-meta tokens
    if len(vocab) == 49152 and tokenizer.convert_ids_to_tokens(0) == "<|endoftext|>":
        out.update(range(17))
    for word in STOPWORDS | PUNCT:
        for spelling in (word, " " + word, word.capitalize(), " " + word.capitalize()):
            ids = tokenizer(spelling, add_special_tokens=False)["input_ids"]
            if len(ids) == 1:
                out.add(int(ids[0]))
    return sorted(out)


def content_words(text: str) -> list[str]:
    """The text stripped to words (``[\\W_]+`` -> space) without stopwords / punctuation."""
    words = _NON_WORD.sub(" ", text).split()
    return [w for w in words if w.lower() not in STOPWORDS and w not in PUNCT]


def content_ids(text: str, tokenizer: Any, excluded: set[int]) -> list[int]:
    """Unique content token ids of ``text`` in first-seen order (stage-1 target support)."""
    words = content_words(text)
    if not words:
        return []
    ids = tokenizer(" ".join(words), add_special_tokens=False)["input_ids"]
    seen: dict[int, None] = {}
    for i in ids:
        if i not in excluded:
            seen.setdefault(int(i), None)
    return list(seen)


def data_targets(
    texts: Sequence[str], tokenizer: Any, excluded: set[int], vocab_size: int
) -> torch.Tensor:
    """``[B, V]`` stage-1 targets: uniform ``1/n`` over each text's unique content ids.

    A text with no content token gets an all-zero row (it then adds nothing to the KL sum);
    callers drop such rows (``rows.sum(1) > 0``).
    """
    out = torch.zeros(len(texts), vocab_size)
    for row, text in enumerate(texts):
        ids = content_ids(text, tokenizer, excluded)
        if ids:
            out[row, ids] = 1.0 / len(ids)
    return out


def model_targets(
    logits: torch.Tensor, prior_logits: torch.Tensor, tau: float, excluded: torch.Tensor
) -> torch.Tensor:
    """``[B, V]`` stage-2 targets from the frozen stage-1 model (see the module docstring).

    ``p = softmax(logits)``, ``q = softmax(prior_logits)`` (corpus-average logits), contrast
    ``r = p / (p + q + 1e-8)`` (near 1 where the text's probability beats the prior), then a
    sharp ``softmax(r / tau)``. Excluded ids are set to -inf before the final softmax.
    """
    p = torch.softmax(logits.float(), dim=-1)
    q = torch.softmax(prior_logits.float(), dim=-1).expand_as(p)
    r = p / (p + q + 1e-8)
    scaled = (r / tau).masked_fill(excluded.bool().unsqueeze(0), float("-inf"))
    return torch.softmax(scaled, dim=-1)


class VocabHead(nn.Module):
    """Pooled state -> vocabulary logits (the decoder's tied lm_head, or a created BERT head)."""

    def __init__(self, model: nn.Module, kind: str) -> None:
        super().__init__()
        from embedsvc.strategies.dupmae.model import TiedLMHead

        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        self.kind = kind
        if kind == "decoder":
            self.lm_head = [base.lm_head]  # not registered: it is the (frozen) backbone's
            self.bert_head = None
        else:
            self.lm_head = None
            self.bert_head = TiedLMHead(base.embeddings.word_embeddings)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.bert_head is not None:
            return self.bert_head(x)
        return self.lm_head[0](x)
