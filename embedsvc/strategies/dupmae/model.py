"""DupMAE model pieces the served strategy runs (pure tensors in/out) and its core.

Reference
    Xiao et al., "RetroMAE-2: Duplex Masked Auto-Encoder For Pre-Training Retrieval-Oriented
    Language Models" (ACL 2023; arXiv 2211.08769 "RetroMAE v2"). Official pre-training code
    staoxiao/RetroMAE (``src/pretrain/modeling_duplex.py``), read and re-derived here, not
    copied. The pre-training-only pieces (whole-word masking, MLM corruption, the enhanced
    decoder, the bag-of-words target) live with the trainer: ``training/trainlib/dupmae.py``.

Inputs-Outputs
    * :class:`TiedLMHead` -- BERT LM-prediction head whose decoder *is* the word embeddings.
    * :func:`ot_topk` -- hidden states + ordinary-token mask -> top-k (weights, vocab ids) of
      the SPLADE-max OT vector (trainer and core share it).
    * :func:`hash_topk` -- sparse top-k (values, vocab ids) -> dense signed-hash buckets.
    * :class:`DupMAECore` -- the served core: merged encoder -> CLS and hashed OT channels.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from embedsvc.strategies.core import CoreModule


class TiedLMHead(nn.Module):
    """BERT LM-prediction head: dense + GELU + LayerNorm, then the *word-embedding* matrix.

    MiniLM ships no MLM head, so the transform is fresh; the decoder weight is not a copy but
    the embedding module's own parameter (read at call time), so the two stay tied.
    """

    def __init__(self, word_embeddings: nn.Embedding, eps: float = 1e-12) -> None:
        super().__init__()
        d = word_embeddings.embedding_dim
        self.word_embeddings = [word_embeddings]  # a list: not registered twice as a submodule
        self.dense = nn.Linear(d, d)
        self.norm = nn.LayerNorm(d, eps=eps)
        self.bias = nn.Parameter(torch.zeros(word_embeddings.num_embeddings))
        nn.init.normal_(self.dense.weight, std=0.02)
        nn.init.zeros_(self.dense.bias)

    @property
    def decoder_weight(self) -> torch.Tensor:
        return self.word_embeddings[0].weight

    def transform(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.norm(F.gelu(self.dense(hidden)))

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return F.linear(self.transform(hidden), self.decoder_weight, self.bias)


def hash_buckets(vocab_size: int, dim: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed signed hash of vocab ids: ``(bucket [V] long, sign [V] float)``."""
    gen = np.random.default_rng(seed)
    bucket = torch.from_numpy(gen.integers(0, dim, size=vocab_size)).long()
    sign = torch.from_numpy(gen.choice([-1.0, 1.0], size=vocab_size)).float()
    return bucket, sign


def hash_topk(
    values: torch.Tensor, indices: torch.Tensor, bucket: torch.Tensor, sign: torch.Tensor, dim: int
) -> torch.Tensor:
    """``[B, dim]``: each kept (vocab id, weight) added with its sign into its bucket.

    Signed feature hashing keeps inner products in expectation (collisions add zero-mean
    noise), which is how the sparse OT vector enters a *dense* FAISS inner-product index.
    """
    out = torch.zeros(values.shape[0], dim, dtype=values.dtype, device=values.device)
    return out.scatter_add(1, bucket[indices], values * sign[indices].to(values.dtype))


def init_orthogonal(linear: nn.Linear, seed: int) -> None:
    """Random orthonormal rows (a JL-style reduction that preserves inner products on average)."""
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(linear.in_features, linear.out_features, generator=gen)
    q, _ = torch.linalg.qr(w)
    with torch.no_grad():
        linear.weight.copy_(q.T * math.sqrt(linear.in_features / linear.out_features))
        if linear.bias is not None:
            linear.bias.zero_()


# ---------------------------------------------------------------------------------------------
# The model around the encoder: LoRA copy of the backbone, heads, and the inference vector.

#: LoRA targets in MiniLM/BERT: attention q/k/v, attention output, FFN in/out ("dense" names)
LORA_TARGETS = ["query", "key", "value", "dense"]


def ordinary_mask(
    ids: torch.Tensor, attention: torch.Tensor, specials: Sequence[int]
) -> torch.Tensor:
    """``[B, L]`` bool: real (unpadded) positions that are not [CLS]/[SEP]/other specials."""
    keep = attention > 0
    for sid in specials:
        keep = keep & (ids != sid)
    return keep


def lora_encoder(
    model: nn.Module,
    *,
    r: int = 16,
    alpha: int = 32,
    dropout: float = 0.05,
    adapter_dir: str | None = None,
    trainable: bool = True,
) -> nn.Module:
    """A LoRA-wrapped *copy* of ``model`` (the process-wide backbone is shared: never mutate it)."""
    import copy

    from peft import LoraConfig, PeftModel, get_peft_model

    base = copy.deepcopy(model)
    if adapter_dir is not None:
        return PeftModel.from_pretrained(base, adapter_dir, is_trainable=trainable)
    cfg = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=LORA_TARGETS)
    return get_peft_model(base, cfg)


class DupMAEHeads(nn.Module):
    """What inference needs beside the encoder: the tied LM head and the [CLS] reduction."""

    def __init__(self, word_embeddings: nn.Embedding, cls_dim: int, seed: int = 0) -> None:
        super().__init__()
        self.lm_head = TiedLMHead(word_embeddings)
        self.cls_reduce = nn.Linear(word_embeddings.embedding_dim, cls_dim, bias=False)
        init_orthogonal(self.cls_reduce, seed)


def ot_topk(
    hidden: torch.Tensor, ordinary: torch.Tensor, head: TiedLMHead, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-``k`` (weights, vocab ids) of the SPLADE-max OT vector, weights L2-normalised.

    The full ``[B, L, V]`` logits are computed without autograd only to find, per row, the
    top-k vocab ids and the position where each one's max is reached; the k winning logits
    are then recomputed with autograd. Values and gradients equal the naive version's (a max
    passes its gradient to the arg-max only) at a fraction of the backward cost on CPU.
    """
    t = head.transform(hidden)  # [B, L, d]
    weight, bias = head.decoder_weight, head.bias
    k = min(int(k), int(weight.shape[0]))  # a Python int: TopK's k is a graph constant
    with torch.no_grad():
        act = torch.log1p(torch.relu(F.linear(t, weight, bias)))
        act = act * ordinary.unsqueeze(-1).to(act.dtype)
        ot, argpos = act.max(dim=1)  # [B, V]
        _, indices = ot.topk(k, dim=1)
        pos = argpos.gather(1, indices)  # [B, k]
    rows = t.gather(1, pos.unsqueeze(-1).expand(-1, -1, t.shape[-1]))  # [B, k, d]
    z = (rows * weight[indices]).sum(-1) + bias[indices]
    # rows without an ordinary token (empty text) get zeros, as the max over nothing would
    values = torch.log1p(torch.relu(z)) * ordinary.any(dim=1, keepdim=True).to(z.dtype)
    return F.normalize(values, dim=1), indices


def combine(
    cls_vec: torch.Tensor | None, ot_vec: torch.Tensor | None, cls_weight: float
) -> torch.Tensor:
    """Concatenate unit-norm channels scaled by ``sqrt(w)`` and ``sqrt(1-w)``.

    Then ``<x, y> = w * cos_cls + (1 - w) * cos_ot`` and the result is unit-norm: one vector
    for a FAISS inner-product (= cosine) index. A single channel is returned as is.
    """
    if ot_vec is None:
        assert cls_vec is not None
        return cls_vec
    if cls_vec is None:
        return ot_vec
    return torch.cat([cls_vec * math.sqrt(cls_weight), ot_vec * math.sqrt(1.0 - cls_weight)], 1)


class DupMAECore(CoreModule):
    """Merged encoder -> ``cls`` (``normalize(cls_reduce(h[CLS]))``) and, unless only the CLS
    channel is served, the OT channel: tied LM head over every position, ``log1p(relu(.))``,
    max over ordinary positions, top-k (``ot_values``, ``ot_ids``), signed-hashed into
    ``ot_dim`` buckets and normalised (``ot``). ``post`` combines the channels."""

    def __init__(
        self,
        encoder: nn.Module,
        heads: DupMAEHeads,
        bucket: torch.Tensor,
        sign: torch.Tensor,
        *,
        top_k: int,
        ot_dim: int,
        specials: tuple[int, ...],
        cls_only: bool,
        notes: tuple[str, ...] = (),
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.heads = heads
        self.register_buffer("bucket", bucket.detach().clone().long())
        self.register_buffer("sign", sign.detach().clone().float())
        self.top_k = int(top_k)
        self.ot_dim = int(ot_dim)
        self.specials = tuple(int(s) for s in specials)
        self.cls_only = cls_only
        self.output_names = ("cls",) if cls_only else ("cls", "ot", "ot_values", "ot_ids")
        self.notes = notes

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> Any:
        # no token_type_ids from the tokenizer: BERT's are zeros (passed, so the graph has them)
        h = self.encoder(
            input_ids=input_ids,
            attention_mask=attention_mask,
            token_type_ids=torch.zeros_like(input_ids),
        ).last_hidden_state
        cls = F.normalize(self.heads.cls_reduce(h[:, 0]), dim=-1)
        if self.cls_only:
            return cls
        ordinary = ordinary_mask(input_ids, attention_mask, self.specials)
        values, indices = ot_topk(h, ordinary, self.heads.lm_head, self.top_k)
        ot = F.normalize(hash_topk(values, indices, self.bucket, self.sign, self.ot_dim), dim=-1)
        return cls, ot, values, indices
