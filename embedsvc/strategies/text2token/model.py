"""Text2Token model pieces: a LoRA copy of the backbone, mean pooling, the vocabulary logits.

Reference
    GDNL-ACT/anruize_target_learn ``genRep.py`` (model, pooling, LoRA) and ``aa_gene_train.py``
    (KL loss), re-derived. Mean pooling of the last hidden state over non-pad tokens, no prompt;
    ``logits = lm_head(pooled)``; LoRA on the attention projections only.

Inputs-Outputs
    :func:`build_model` -- shared backbone + adapter folders to merge (+ an optional new LoRA)
    -> a private copy (the process-wide backbone is never modified). :func:`pooled` -- model +
    batch -> ``[B, d]`` masked mean of the last hidden state (SmolLM2: after the final RMSNorm,
    like ``hidden_states[-1]`` in the reference). The training-only vocabulary head is in
    ``training/trainlib/t2t_targets.py``.

Hyper-parameters
    LoRA r, alpha, dropout (reference: 16, 32, 0.05); targets: SmolLM2/Llama
    ``q_proj k_proj v_proj o_proj``, BERT ``query key value attention.output.dense``.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from embedsvc.strategies.core import MeanPoolCore

DECODER_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]
ENCODER_TARGETS = ["query", "key", "value", "attention.output.dense"]


def lora_targets(kind: str) -> list[str]:
    return DECODER_TARGETS if kind == "decoder" else ENCODER_TARGETS


def build_model(
    backbone: Any,
    merge: Sequence[Path] = (),
    *,
    new_lora: dict[str, Any] | None = None,
) -> nn.Module:
    """A copy of ``backbone.model`` with the adapters in ``merge`` merged in order, then
    (optionally) a fresh trainable LoRA (``new_lora``: r, alpha, dropout) -> a PeftModel."""
    from peft import LoraConfig, PeftModel, get_peft_model

    model = copy.deepcopy(backbone.model)
    for folder in merge:
        model = PeftModel.from_pretrained(model, str(folder)).merge_and_unload()
    if new_lora is not None:
        cfg = LoraConfig(
            r=int(new_lora["r"]),
            lora_alpha=int(new_lora["alpha"]),
            lora_dropout=float(new_lora["dropout"]),
            target_modules=lora_targets(backbone.kind),
        )
        model = get_peft_model(model, cfg)
    return model


def body(model: nn.Module) -> nn.Module:
    """The transformer without an LM head (LlamaModel / BertModel), LoRA layers included."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.model if hasattr(base, "lm_head") else base


def is_causal(model: nn.Module) -> bool:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return hasattr(base, "lm_head")


def pooled_core(model: nn.Module, notes: tuple[str, ...] = ()) -> MeanPoolCore:
    """The served core: the body (LoRA merged or not) + masked mean of its last hidden state
    (SmolLM2: after the final RMSNorm, like ``hidden_states[-1]`` in the reference)."""
    return MeanPoolCore(body(model), decoder=is_causal(model), notes=notes)


def pooled(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """``[B, d]``: the served core's forward on a (training) model, gradients kept."""
    return pooled_core(model)(input_ids, attention_mask)
