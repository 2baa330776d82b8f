"""The core stage: one ``nn.Module`` per strategy, the only forward pass.

A core takes the padded int64 batch that the runner builds from ``pre``'s ids (named by
``input_names``) and returns float/int/bool tensors named by ``output_names``. The torch
executor calls it under ``inference_mode``; ``embedsvc export`` traces the very same instance to
ONNX, so there is no second copy of any forward to keep equal.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from embedsvc.strategies.pooling import masked_mean

#: what an encoder's tokenizer may feed (``model_input_names`` picks the ones it has)
ENCODER_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


class CoreModule(nn.Module):
    """Base of every strategy's core (subclasses set the names and write ``forward``)."""

    #: the int64 ``[batch, sequence]`` inputs, in ``forward``'s argument order
    input_names: tuple[str, ...] = ("input_ids", "attention_mask")
    #: ``forward``'s outputs in order (a single tensor or a tuple); axis 0 is the batch
    output_names: tuple[str, ...] = ("embedding",)
    #: outputs with a per-token axis 1 (``[batch, sequence, ...]``), e.g. BTR's token codes
    token_outputs: tuple[str, ...] = ()
    #: node-name fragments of MatMuls that stay float32 in the int8 model. Decoders set their
    #: MLP down projections: their inputs carry the large activation outliers of LLMs, and one
    #: int8 scale per tensor for them wrecks the embedding (see docs/results/issue7.md)
    int8_keep_float: tuple[str, ...] = ()
    #: what the manifest says about the graph (what runs in Python before/after it)
    notes: tuple[str, ...] = ()

    def outputs(self, *inputs: Any) -> dict[str, Any]:
        """``forward`` with its outputs named."""
        out = self(*inputs)
        if not isinstance(out, tuple):
            out = (out,)
        return dict(zip(self.output_names, out, strict=True))


class MeanPoolCore(CoreModule):
    """A transformer -> masked mean of its last hidden state (``mean``, ``text2token``).

    ``decoder``: the body of a causal LM (no LM head); positions ``0..T-1`` are passed (what
    the model defaults to without a cache, for right-padded rows) so the graph has no
    data-dependent position code, and no cache is built.
    """

    notes = ("tokenisation and truncation run in Python (tokenizer files saved beside)",)

    def __init__(
        self,
        body: nn.Module,
        input_names: tuple[str, ...] = ("input_ids", "attention_mask"),
        *,
        decoder: bool = False,
        notes: tuple[str, ...] = (),
    ) -> None:
        super().__init__()
        self.body = body
        self.input_names = input_names
        self.decoder = decoder
        self.notes = (*self.notes, *notes)

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        kwargs: dict[str, Any] = dict(zip(self.input_names, inputs))
        if self.decoder:
            kwargs["position_ids"] = torch.ones_like(kwargs["input_ids"]).cumsum(dim=1) - 1
            kwargs["use_cache"] = False
        hidden = self.body(**kwargs).last_hidden_state
        return masked_mean(hidden, kwargs["attention_mask"])
