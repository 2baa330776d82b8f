"""``prompt_last``: the last token of a PromptEOL-style prompt, no Token Prepending.

Reference
    Jiang et al. 2023, "Scaling Sentence Embeddings with Large Language Models" (PromptEOL), as
    the Token Prepending reference (fuyuchenIfyw/token_prepending, ``evaluate.py``) runs it for
    its vanilla baseline: the prompt ``This sentence : "{s}" means in one word:"`` and the final
    quote's hidden state as the sentence embedding.

Inputs-Outputs
    Texts (role ignored: the embedding is symmetric) -> float32 ``[n, d]`` (d = 576 for SmolLM2),
    L2-normalised unless ``normalize=False``. Sentences are pre-processed as the reference does
    (see ``prompts.preprocess_sentence``); a text too long for ``max_length`` loses its tail,
    never the template.

Hyper-parameters
    ``template`` (eol | cot | ke), ``output_layer`` (default -1: after the final norm, the
    paper's vanilla setting; any 0..L or negative index), ``backbone`` (default ``smollm2``,
    any local causal-LM folder), ``batch_size``, ``padding_side``, ``max_length``. This is the
    "no TP" row of the Token Prepending comparison (``docs/results/issue3.md``).
"""

from __future__ import annotations

from embedsvc.strategies.base import register_strategy
from embedsvc.strategies.decoder.prompts import PromptLastConfig, PromptLastStrategy


@register_strategy("prompt_last")
class PromptLast(PromptLastStrategy):
    """PromptEOL last-token embedding of a decoder LLM (the no-TP baseline)."""

    config_cls = PromptLastConfig
    description = "last token of a PromptEOL-style prompt on a decoder LLM (no Token Prepending)"
    int8_sts_delta = -0.98  # int8 - fp32 STS-B dev, measured in issue 7
    config: PromptLastConfig
