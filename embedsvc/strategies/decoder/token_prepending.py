"""``token_prepending``: Token Prepending (TP) on a decoder LLM, training-free.

Reference
    Fu et al., ACL 2025, "Token Prepending: A Training-Free Approach for Eliciting Better
    Sentence Embeddings from LLMs" (arXiv 2412.11556); official code
    fuyuchenIfyw/token_prepending (``evaluate.py``, ``senllm/modeling_llama.py``). Re-derived,
    not copied.

    A causal LM's sentence tokens cannot see the tokens after them. TP puts a placeholder token
    right before the sentence in the prompt (``This sentence : <PST> "{s}" means in one
    word:"``) and, before each block ``i`` in ``[start, exit)``, overwrites the placeholder's
    hidden state with the last token's state (the input to that block), so every later sentence
    token can attend to a summary of the whole sentence. The embedding is the last token's state
    at ``output_layer`` (an intermediate layer: blocks after it are not run).

Inputs-Outputs
    Texts (role ignored) -> float32 ``[n, d]``, L2-normalised unless ``normalize=False``.
    Pre-processing, templates and truncation are those of ``prompt_last``.

Hyper-parameters
    ``start``/``exit``: 0-based block range of the prepending (``exit == start`` disables it);
    ``output_layer``: hidden-state index (0..L, negatives count from the end, -1 = after the
    final norm). Defaults were chosen on half A of STS-B dev for SmolLM2-135M
    (``benchmarks/tp_layer_search.py``; results in ``docs/results/issue3.md``); the paper's
    Llama-2-7B setting is start=1, exit=7, output_layer=27 of 32.
    ``placeholder_seed``/``placeholder_scale``: the placeholder's input embedding is
    ``scale * randn(d)`` from a CPU generator seeded with ``seed`` -- std 1 as the reference
    (which leaves it unseeded); it only matters for the blocks before ``start``. It is fed
    through ``inputs_embeds``, so the shared backbone's vocabulary is never resized.
    ``template``, ``backbone``, ``batch_size``, ``padding_side``, ``max_length`` as
    ``prompt_last``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field, model_validator

from embedsvc.strategies.base import register_strategy
from embedsvc.strategies.decoder.model import placeholder_vector
from embedsvc.strategies.decoder.prompts import PromptLastConfig, PromptLastStrategy


class TokenPrependingConfig(PromptLastConfig):
    #: first block (0-based) before which the placeholder is overwritten
    start: int = Field(1, ge=0)
    #: first block after the range (exclusive); exit == start turns TP off
    exit: int = Field(2, ge=0)
    #: hidden-state index of the embedding (chosen with start/exit on the 750 pairs of half A of
    #: STS-B dev: 28 of 30; docs/results/issue3.md)
    output_layer: int = 28
    placeholder_seed: int = 3407
    placeholder_scale: float = Field(1.0, gt=0)

    @model_validator(mode="after")
    def _range(self) -> TokenPrependingConfig:
        if self.exit < self.start:
            raise ValueError(f"exit ({self.exit}) must be >= start ({self.start})")
        return self


@register_strategy("token_prepending")
class TokenPrepending(PromptLastStrategy):
    """PromptEOL + Token Prepending in blocks [start, exit) + early-exit output layer."""

    config_cls = TokenPrependingConfig
    description = "Token Prepending (training-free) on a decoder LLM's PromptEOL last token"
    int8_sts_delta = +0.62  # int8 - fp32 STS-B dev, measured in issue 7
    config: TokenPrependingConfig
    use_placeholder = True

    def __init__(
        self, config: TokenPrependingConfig | None = None, *, cache_dir: Path | None = None
    ):
        super().__init__(config, cache_dir=cache_dir)
        self._vector: Any | None = None

    def _placeholder(self) -> Any:
        if self._vector is None:
            self._vector = placeholder_vector(
                self.dim, self.config.placeholder_seed, self.config.placeholder_scale
            )
        return self._vector

    def _tp_range(self) -> tuple[int, int] | None:
        return (self.config.start, self.config.exit)

    def save(self, directory: Path) -> None:
        """Config plus the placeholder vector itself (so it survives an RNG change)."""
        import numpy as np

        super().save(directory)
        np.save(directory / "placeholder.npy", self._placeholder().numpy())
