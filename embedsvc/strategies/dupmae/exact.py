"""DupMAE's exact ordinary-token channel: per-token weights, max-pooled per vocabulary id.

Reference
    The OT channel of Xiao et al., "RetroMAE-2 / DupMAE" (ACL 2023) decodes ordinary-token
    states into vocabulary space. This module starts that channel as *exact term matching*
    (each ordinary token contributes only to its own vocabulary entry, uniCOIL-style: Lin & Ma,
    "A Few Brief Notes on DeepImpact, COIL, and a Conceptual Framework for Information
    Retrieval Techniques", arXiv 2106.14807), weighted from its contextual state, so it begins
    as a term matcher and training moves it towards what relevance needs. No hashing: the
    vector is exactly sparse over the 30,522-word vocabulary.

Inputs-Outputs
    * :class:`ExactTermHead` -- token states ``[t, h]`` -> non-negative weights ``[t]``
      (``relu`` of a small MLP, or a linear map with ``inner=0``).
    * :func:`pool_csr` -- (ids ``[t]``, weights ``[t]``, owner ``[t]``) -> ``scipy.sparse``
      CSR ``[n, vocab]``, the max weight per (text, id): the serving/indexing form (the
      trainer's dense torch form is ``training/trainlib/dupmae_exact.py``).
    * :class:`DualCore` -- the served core of ``dupmae_dual``: frozen encoder -> mean pooling
      (``embedding``) and the head's weight of every position (``token_weights``, 0 on padding,
      [CLS] and [SEP]). The per-id max into the sparse vector runs in ``post`` (``pool_csr``).

Hyper-parameters
    ``hidden`` 384 (MiniLM), ``inner`` 64; initialised to weight 1 for every token (the last
    layer is zero, its bias 1), i.e. the *untrained* channel is binary term matching.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from scipy import sparse
from torch import nn

from embedsvc.strategies.core import CoreModule
from embedsvc.strategies.dupmae.model import ordinary_mask
from embedsvc.strategies.pooling import masked_mean


class ExactTermHead(nn.Module):
    """Non-negative weight of each ordinary token from its contextual state."""

    def __init__(self, hidden: int = 384, inner: int = 64) -> None:
        super().__init__()
        self.hidden, self.inner = hidden, inner
        if inner > 0:
            self.net = nn.Sequential(nn.Linear(hidden, inner), nn.GELU(), nn.Linear(inner, 1))
        else:
            self.net = nn.Sequential(nn.Linear(hidden, 1))
        last = self.net[-1]
        assert isinstance(last, nn.Linear)
        nn.init.zeros_(last.weight)
        nn.init.ones_(last.bias)

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.net(states).squeeze(-1))


def pool_csr(
    ids: np.ndarray, weights: np.ndarray, owner: np.ndarray, n: int, vocab: int
) -> sparse.csr_matrix:
    """``[n, vocab]`` CSR: the max over each text's tokens of the weight per vocabulary id,
    without a dense intermediate; zero weights are dropped."""
    ids = np.asarray(ids, np.int64)
    weights = np.asarray(weights, np.float32)
    owner = np.asarray(owner, np.int64)
    keep = weights > 0
    ids, weights, owner = ids[keep], weights[keep], owner[keep]
    key = owner * vocab + ids
    order = np.lexsort((-weights, key))  # per key, the largest weight first
    key, weights = key[order], weights[order]
    first = np.ones(len(key), bool)
    first[1:] = key[1:] != key[:-1]
    key, weights = key[first], weights[first]
    return sparse.csr_matrix((weights, (key // vocab, key % vocab)), shape=(n, vocab))


class DualCore(CoreModule):
    """``(mean-pooled embedding [b, h], token weights [b, L])`` of a frozen encoder + head.

    The embedding is the ``mean`` strategy's (same masked mean of the same encoder); the
    weights are ``ExactTermHead`` of every position, zeroed on padding, [CLS] and [SEP].
    """

    output_names = ("embedding", "token_weights")
    token_outputs = ("token_weights",)
    notes = (
        "tokenisation and truncation run in Python (tokenizer files saved beside)",
        "encoder, mean pooling and the token-weight head are in the graph; normalisation and "
        "the per-id max pooling into the sparse vector run in Python (post)",
    )

    def __init__(
        self,
        encoder: nn.Module,
        head: ExactTermHead,
        input_names: tuple[str, ...],
        specials: tuple[int, ...],
    ) -> None:
        super().__init__()
        self.encoder, self.head = encoder, head
        self.input_names = tuple(input_names)
        self.specials = tuple(int(s) for s in specials)

    def forward(self, *inputs: torch.Tensor) -> Any:
        feeds: dict[str, Any] = dict(zip(self.input_names, inputs))
        hidden = self.encoder(**feeds).last_hidden_state
        mask = feeds["attention_mask"]
        pooled = masked_mean(hidden, mask)
        ordinary = ordinary_mask(feeds["input_ids"], mask, self.specials)
        weights = self.head(hidden) * ordinary.to(hidden.dtype)
        return pooled, weights
