"""ONNX export of ``dupmae_dual``: one graph gives the dense channel and per-token OT weights.

The graph holds the frozen encoder, the masked mean pooling and the ``ExactTermHead`` applied
to every position (weights forced to 0 on padding, [CLS] and [SEP]); the per-id max pooling
into a sparse vector is a scatter that ONNX Runtime does not need to do: ``finalize`` runs
``pool_csr`` on the graph's ``token_weights`` and the batch's ``input_ids`` in Python, and the
runtime hands the rows back as ``Embedding.sparse`` (``OnnxSpec.sparse_vocab``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from embedsvc.export.spec import OnnxSpec
from embedsvc.indexes.sparse import csr_rows_to_bytes
from embedsvc.strategies.base import Role

ENCODER_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


class DualModule(nn.Module):
    """``(mean-pooled embedding [b, h], token weights [b, L])`` of a frozen encoder + head."""

    def __init__(self, encoder: nn.Module, head: nn.Module, names, specials) -> None:
        super().__init__()
        self.encoder, self.head, self.names = encoder, head, tuple(names)
        self.register_buffer("specials", torch.tensor(list(specials), dtype=torch.long))

    def forward(self, *inputs: torch.Tensor):
        feeds = dict(zip(self.names, inputs))
        hidden = self.encoder(**feeds).last_hidden_state
        mask = feeds["attention_mask"]
        m = mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
        ids = feeds["input_ids"]
        ordinary = (mask > 0) & (ids != self.specials[0]) & (ids != self.specials[1])
        weights = self.head(hidden) * ordinary.to(hidden.dtype)
        return pooled, weights


def dual_spec(strategy: Any) -> OnnxSpec:
    """The ``OnnxSpec`` of ``dupmae_dual`` (``embedsvc.strategies.dupmae_dual``)."""
    from embedsvc.strategies._dupmae_exact import pool_csr

    backbone = strategy.backbone
    tok = backbone.tokenizer
    names = tuple(n for n in ENCODER_INPUTS if n in tok.model_input_names)
    limit, vocab = strategy.max_tokens, strategy.sparse_vocab

    def featurize(texts: list[str], role: Role) -> dict[str, np.ndarray]:
        enc = tok(texts, padding=True, truncation=True, max_length=limit, return_tensors="np")
        return {n: enc[n].astype(np.int64) for n in names}

    def finalize(outputs, feeds, role):
        emb = outputs["embedding"]
        emb = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
        w = outputs["token_weights"]
        ids = feeds["input_ids"]
        rows, cols = np.nonzero(w > 0)
        csr = pool_csr(ids[rows, cols], w[rows, cols], rows, len(ids), vocab)
        return emb.astype(np.float32), csr_rows_to_bytes(csr)

    return OnnxSpec(
        module=DualModule(
            backbone.model.base_model, strategy.head, names, (tok.cls_token_id, tok.sep_token_id)
        ).eval(),
        input_names=names,
        featurize=featurize,
        tokenizer=tok,
        source=strategy._folder(),
        source_fingerprint=strategy.fingerprint,
        batch_size=strategy.config.batch_size,
        notes=[
            "tokenisation and truncation run in Python (tokenizer files saved beside)",
            "encoder, mean pooling and the token-weight head are in the graph; the per-id max "
            "pooling into the sparse vector runs in Python (finalize)",
            "the dense output is always unit-norm (normalize=False is ignored)",
        ],
        extra_outputs=("token_weights",),
        finalize=finalize,
        sparse_vocab=vocab,
    )
