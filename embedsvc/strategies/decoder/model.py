"""The decoder core: a causal LM -> the last real token's state at chosen layers (+ a head).

Used by ``prompt_last``, ``token_prepending`` and the trained pooling heads (``mltp``, ``m2``,
``eos_linear``). Works on any Hugging Face causal LM whose decoder exposes ``layers`` (a list of
blocks) and ``norm`` (the final norm) -- Llama, Mistral, Qwen2/3, Gemma, SmolLM -- and never
mutates the shared backbone: the placeholder token of Token Prepending is injected through
``inputs_embeds`` instead of resizing the embedding matrix, and the per-block interventions are
wrapper blocks in a shallow copy of the decoder.

Conventions (the Hugging Face ``hidden_states`` ones): layer ``0`` is the embedding output, layer
``i`` the output of block ``i`` (1-based), and layer ``L`` (the last) has the final norm applied.
Negative layers count from the end (``-1`` = ``L``, ``-2`` = output of the penultimate block,
before the final norm), as the Token Prepending reference writes them.

Padding: rows may be left- or right-padded; position ids are derived from the attention mask
(``cumsum - 1``) and the "last token" of a row is its last real (unmasked) position, so a text
gets the same vector whatever else shares its batch. The module has no data-dependent Python
control flow, so the one trace ONNX export takes is valid for every batch.
"""

from __future__ import annotations

import copy
import threading
from typing import Any

import torch
from torch import nn

from embedsvc.errors import InvalidArgument
from embedsvc.strategies.core import CoreModule
from embedsvc.strategies.pooling import gather_rows, last_index

#: id used in ``pre``'s ids for the placeholder slot (never looked up in the vocabulary)
PLACEHOLDER_ID = -1
#: Llama-style MLP down projections stay fp32 in int8 exports (``CoreModule.int8_keep_float``)
DECODER_INT8_KEEP_FLOAT = ("mlp/down_proj/",)


def placeholder_vector(dim: int, seed: int, scale: float) -> torch.Tensor:
    """The placeholder's input embedding: ``scale * randn(dim)`` from a seeded CPU generator.

    The reference draws ``torch.randn(d)`` (std 1, not the model's init scale) unseeded on CPU;
    a private generator makes it identical in every process and independent of global RNG state.
    """
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    return torch.randn(dim, generator=gen, dtype=torch.float32) * float(scale)


def resolve_layer(layer: int, num_layers: int) -> int:
    """A layer index in ``0..L`` from a possibly negative one (``-1`` -> ``L``)."""
    resolved = layer + num_layers + 1 if layer < 0 else layer
    if not 0 <= resolved <= num_layers:
        raise InvalidArgument(
            f"layer {layer} out of range for a decoder with {num_layers} blocks "
            f"(valid: 0..{num_layers} or -{num_layers + 1}..-1)",
            field="output_layer",
        )
    return resolved


def decoder_parts(model: Any) -> tuple[Any, Any, Any]:
    """``(decoder, blocks, final_norm)`` of a causal LM (``model.model`` for Llama-likes)."""
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else model.base_model
    blocks = getattr(decoder, "layers", None)
    norm = getattr(decoder, "norm", None)
    if blocks is None or norm is None:
        raise InvalidArgument(
            f"{type(decoder).__name__} has no `layers`/`norm`; only Llama-style decoders "
            "(Llama, Mistral, Qwen, Gemma, SmolLM, ...) are supported",
            field="backbone",
        )
    return decoder, blocks, norm


class _PrependBlock(nn.Module):
    """A decoder block whose input gets the Token Prepending overwrite first: the placeholder
    slot's state becomes the last real token's state (the block's input)."""

    def __init__(self, block: nn.Module, owner: DecoderStatesCore) -> None:
        super().__init__()
        self.block = block
        self._owner = [owner]  # a list: not a registered submodule (no cycle)

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        call = self._owner[0]._call
        last = gather_rows(hidden_states, call.last_idx).unsqueeze(1)
        hidden_states = torch.where(call.pst_mask, last, hidden_states)
        return self.block(hidden_states, *args, **kwargs)


class _CollectBlock(nn.Module):
    """A decoder block that records its output's last-token state."""

    def __init__(self, block: nn.Module, owner: DecoderStatesCore, layer: int) -> None:
        super().__init__()
        self.block = block
        self.layer = layer
        self._owner = [owner]

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        out = self.block(*args, **kwargs)
        hidden = out[0] if isinstance(out, tuple) else out
        call = self._owner[0]._call
        call.collected[self.layer] = gather_rows(hidden, call.last_idx)
        return out


class DecoderStatesCore(CoreModule):
    """Decoder LLM -> the last real token's state at ``layers`` (0..L).

    Output ``embedding``: ``head(states [B, len(layers), d])`` when a head is given (MLTP, M2,
    EOS-linear), else the single layer's state ``[B, d]``, else all of them ``[B, n, d]``.
    Input ids may hold ``PLACEHOLDER_ID``: its embedding is ``placeholder``. Blocks in
    ``tp_range = (start, exit)`` get the Token Prepending overwrite before they run; blocks past
    the deepest layer are dropped from a shallow copy of the decoder (early exit), whose final
    norm is applied to the gathered state of layer L only (it acts per token). Thread-safe: the
    per-call state lives in a thread-local.
    """

    int8_keep_float = DECODER_INT8_KEEP_FLOAT

    def __init__(
        self,
        model: nn.Module,
        layers: list[int],
        *,
        placeholder: torch.Tensor | None = None,
        tp_range: tuple[int, int] | None = None,
        head: nn.Module | None = None,
        notes: tuple[str, ...] = (),
    ) -> None:
        super().__init__()
        decoder, blocks, norm = decoder_parts(model)
        self.num_layers = len(blocks)
        self.layers = [resolve_layer(int(x), self.num_layers) for x in layers]
        deepest = max(self.layers)
        self.embed = model.get_input_embeddings()
        self.final_norm = norm
        self.head = head
        self.notes = notes
        if placeholder is not None:
            self.register_buffer("placeholder", placeholder.detach().clone().float())
        else:
            self.placeholder = None
        start, stop = tp_range if tp_range is not None else (0, 0)
        wrapped = []
        for i, block in enumerate(list(blocks)[:deepest]):
            if start <= i < stop:
                block = _PrependBlock(block, self)
            if i + 1 in self.layers:
                block = _CollectBlock(block, self, i + 1)
            wrapped.append(block)
        dec = copy.copy(decoder)  # shares parameters; own module table
        dec._modules = dict(decoder._modules)
        dec.layers = nn.ModuleList(wrapped)
        dec.norm = nn.Identity()
        self.decoder = dec
        self._call = threading.local()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        is_pst = input_ids == PLACEHOLDER_ID
        embeds = self.embed(input_ids.clamp(min=0))
        if self.placeholder is not None:
            vec = self.placeholder.to(embeds.dtype).view(1, 1, -1)
            embeds = torch.where(is_pst.unsqueeze(-1), vec, embeds)
        position_ids = (attention_mask.cumsum(dim=1) - 1).clamp(min=0)
        call = self._call
        call.last_idx = last_index(attention_mask)
        call.pst_mask = is_pst.unsqueeze(-1)
        call.collected = {0: gather_rows(embeds, call.last_idx)}
        try:
            if max(self.layers) > 0:
                self.decoder(
                    inputs_embeds=embeds,
                    attention_mask=attention_mask,
                    position_ids=position_ids,
                    use_cache=False,
                )
            states = []
            for layer in self.layers:
                state = call.collected[layer]
                states.append(self.final_norm(state) if layer == self.num_layers else state)
        finally:
            call.last_idx = call.pst_mask = None
            call.collected = {}
        stacked = torch.stack(states, dim=1)
        if self.head is not None:
            return self.head(stacked)
        return stacked[:, 0] if len(self.layers) == 1 else stacked
