"""Traceable torch modules for the exportable strategies, and the specs that wrap them.

Each strategy's ``onnx_spec()`` calls one of the ``*_spec`` builders here with itself; the
modules re-express the strategy's forward pass without Python control flow that depends on data
(hooks, early-exit exceptions, boolean checks), so that one trace is valid for every batch.
Parity with the torch path is what ``tests/export/test_onnx.py`` checks.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch
from torch import nn

from embedsvc.export.spec import OnnxSpec
from embedsvc.strategies.base import Role

ENCODER_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
#: Llama-style MLP down projections stay fp32 in int8 exports (``OnnxSpec.int8_keep_float``)
DECODER_INT8_KEEP_FLOAT = ("mlp/down_proj/",)


class MeanPoolModule(nn.Module):
    """Encoder -> masked mean of the last hidden state (``mean``'s forward)."""

    def __init__(self, encoder: nn.Module, input_names: tuple[str, ...]) -> None:
        super().__init__()
        self.encoder = encoder
        self.input_names = input_names

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        kwargs = dict(zip(self.input_names, inputs))
        hidden = self.encoder(**kwargs).last_hidden_state
        mask = kwargs["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)


def mean_pooling_spec(strategy: Any) -> OnnxSpec:
    """The ``OnnxSpec`` of an encoder mean-pooling strategy (``embedsvc.strategies.mean``)."""
    backbone = strategy.backbone
    tok = backbone.tokenizer
    names = tuple(n for n in ENCODER_INPUTS if n in tok.model_input_names)
    limit = strategy.max_tokens

    def featurize(texts: list[str], role: Role) -> dict[str, np.ndarray]:
        enc = tok(texts, padding=True, truncation=True, max_length=limit, return_tensors="np")
        return {n: enc[n].astype(np.int64) for n in names}

    return OnnxSpec(
        module=MeanPoolModule(backbone.model.base_model, names),
        input_names=names,
        featurize=featurize,
        tokenizer=tok,
        source=backbone.source,
        source_fingerprint=backbone.fingerprint,
        batch_size=strategy.config.batch_size,
        notes=["tokenisation and truncation run in Python (tokenizer files saved beside)"],
    )


class _PrependBlock(nn.Module):
    """A decoder block whose input gets the Token Prepending overwrite first.

    The placeholder slot's state becomes the last real token's state (the block's input), which
    is what ``_decoder.last_token_states`` does with a forward pre-hook; here it is a gather and
    a ``where``, so the trace holds it for any batch.
    """

    def __init__(self, block: nn.Module, owner: DecoderStatesModule) -> None:
        super().__init__()
        self.block = block
        self._owner = [owner]  # a list: not a registered submodule (no cycle)

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        owner = self._owner[0]
        last = _gather_rows(hidden_states, owner.cur_last_idx).unsqueeze(1)
        hidden_states = torch.where(owner.cur_pst_mask, last, hidden_states)
        return self.block(hidden_states, *args, **kwargs)


class _CollectBlock(nn.Module):
    """A decoder block that records its output's last-token state (the forward hook's job)."""

    def __init__(self, block: nn.Module, owner: DecoderStatesModule, layer: int) -> None:
        super().__init__()
        self.block = block
        self.layer = layer
        self._owner = [owner]

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        out = self.block(*args, **kwargs)
        hidden = out[0] if isinstance(out, tuple) else out
        owner = self._owner[0]
        owner.collected[self.layer] = _gather_rows(hidden, owner.cur_last_idx)
        return out


def _gather_rows(hidden: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """``hidden[b, idx[b]]`` for every row b: ``[B, T, D] -> [B, D]`` (trace-safe)."""
    index = idx.view(-1, 1, 1).expand(-1, 1, hidden.shape[-1])
    return hidden.gather(1, index).squeeze(1)


class DecoderStatesModule(nn.Module):
    """Decoder LLM -> the last real token's state at ``layers`` (0..L), ``[B, len(layers), d]``.

    ``_decoder.last_token_states`` as one traceable graph. Input ids may hold the placeholder id
    (-1): its embedding is ``placeholder``. Positions and the last-token index come from the
    attention mask (left or right padding). Blocks past the deepest layer are dropped from a
    shallow copy of the decoder, whose final norm is applied to the gathered state of layer L
    only (it acts per token); the shared backbone is never modified. ``head`` (optional) maps
    the stacked states to the embedding (MLTP); without it the single layer's state is returned.
    """

    def __init__(
        self,
        model: nn.Module,
        layers: list[int],
        *,
        placeholder: torch.Tensor | None = None,
        tp_range: tuple[int, int] | None = None,
        placeholder_id: int = -1,
        head: nn.Module | None = None,
    ) -> None:
        super().__init__()
        from embedsvc.strategies._decoder import decoder_parts

        decoder, blocks, norm = decoder_parts(model)
        self.num_layers = len(blocks)
        self.layers = list(layers)
        deepest = max(self.layers)
        self.embed = model.get_input_embeddings()
        self.final_norm = norm
        self.placeholder_id = placeholder_id
        self.head = head
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
        self.cur_last_idx: torch.Tensor | None = None
        self.cur_pst_mask: torch.Tensor | None = None
        self.collected: dict[int, torch.Tensor] = {}

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        is_pst = input_ids == self.placeholder_id
        embeds = self.embed(input_ids.clamp(min=0))
        if self.placeholder is not None:
            vec = self.placeholder.to(embeds.dtype).view(1, 1, -1)
            embeds = torch.where(is_pst.unsqueeze(-1), vec, embeds)
        position_ids = (attention_mask.cumsum(dim=1) - 1).clamp(min=0)
        cols = torch.ones_like(attention_mask).cumsum(dim=1) - 1
        last_idx = torch.where(attention_mask > 0, cols, torch.full_like(cols, -1)).amax(dim=1)
        self.collected = {0: _gather_rows(embeds, last_idx)}
        self.cur_last_idx = last_idx
        self.cur_pst_mask = is_pst.unsqueeze(-1)
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
                state = self.collected[layer]
                states.append(self.final_norm(state) if layer == self.num_layers else state)
        finally:
            self.cur_last_idx = self.cur_pst_mask = None
            self.collected = {}
        stacked = torch.stack(states, dim=1)
        if self.head is not None:
            return self.head(stacked)
        return stacked[:, 0]


def prompt_last_spec(strategy: Any) -> OnnxSpec:
    """The ``OnnxSpec`` of a prompted last-token decoder strategy (``_decoder.PromptLastStrategy``).

    Token Prepending is in the graph (``_PrependBlock``); the prompt template, sentence
    pre-processing and template-preserving truncation (``strategy._fit``) stay in Python.
    """
    from embedsvc.strategies._decoder import PLACEHOLDER_ID, build_batch

    backbone = strategy.backbone
    pad = backbone.tokenizer.pad_token_id
    limit = strategy.max_tokens

    def featurize(texts: list[str], role: Role) -> dict[str, np.ndarray]:
        seqs = [strategy._fit(t, limit)[0] for t in texts]
        batch = build_batch(seqs, pad, strategy.config.padding_side)
        return {
            "input_ids": batch.ids.numpy().astype(np.int64),
            "attention_mask": batch.attention_mask.numpy().astype(np.int64),
        }

    placeholder = strategy._placeholder()
    tp_range = strategy._tp_range()
    notes = [
        "prompt template, sentence pre-processing and truncation run in Python (featurize)",
        f"placeholder id {PLACEHOLDER_ID} in input_ids marks the Token Prepending slot",
    ]
    if tp_range is not None and tp_range[1] > tp_range[0]:
        notes.append(f"Token Prepending overwrite traced into blocks {tp_range[0]}..{tp_range[1]}")
    return OnnxSpec(
        module=DecoderStatesModule(
            backbone.model,
            [strategy.output_index],
            placeholder=placeholder,
            tp_range=tp_range,
            placeholder_id=PLACEHOLDER_ID,
        ),
        input_names=("input_ids", "attention_mask"),
        featurize=featurize,
        tokenizer=backbone.tokenizer,
        source=backbone.source,
        source_fingerprint=backbone.fingerprint,
        batch_size=strategy.config.batch_size,
        notes=notes,
        int8_keep_float=DECODER_INT8_KEEP_FLOAT,
    )


def pooling_head_spec(strategy: Any, *, last_only: bool) -> OnnxSpec:
    """The ``OnnxSpec`` of a trained pooling head over a frozen decoder (``mltp``, ``m2``, ...).

    The graph holds the decoder, the per-layer last-token gather and the head (the artifact's
    weights): ``last_only`` feeds the head the last layer only (M2, EOS-linear), otherwise every
    block's state (MLTP). Tokenisation + appended EOS stay in Python (``mltp.layer_inputs``).
    """
    from embedsvc.strategies._decoder import build_batch
    from embedsvc.strategies.mltp import layer_inputs

    backbone = strategy.backbone
    tok = backbone.tokenizer
    limit = strategy.max_tokens
    num_layers = backbone.num_layers

    def featurize(texts: list[str], role: Role) -> dict[str, np.ndarray]:
        seqs = layer_inputs(tok, texts, limit)[0]
        batch = build_batch(seqs, tok.pad_token_id, strategy.config.padding_side)
        return {
            "input_ids": batch.ids.numpy().astype(np.int64),
            "attention_mask": batch.attention_mask.numpy().astype(np.int64),
        }

    layers = [num_layers] if last_only else list(range(1, num_layers + 1))
    return OnnxSpec(
        module=DecoderStatesModule(backbone.model, layers, head=strategy.head),
        input_names=("input_ids", "attention_mask"),
        featurize=featurize,
        tokenizer=tok,
        source=backbone.source,
        source_fingerprint=backbone.fingerprint,
        batch_size=strategy.config.batch_size,
        notes=[
            "tokenisation, truncation and the appended EOS run in Python (featurize)",
            f"pooling head (artifact {strategy.config.artifact!r}) is in the graph",
        ],
        int8_keep_float=DECODER_INT8_KEEP_FLOAT,
    )
