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
    * :func:`pool_torch` -- (ids ``[t]``, weights ``[t]``, owner ``[t]``) -> dense
      ``[n, vocab]`` rows, the max weight per (text, id): the training form.
    * :func:`pool_csr` -- the same as a ``scipy.sparse`` CSR: the serving/indexing form.

Hyper-parameters
    ``hidden`` 384 (MiniLM), ``inner`` 64; initialised to weight 1 for every token (the last
    layer is zero, its bias 1), i.e. the *untrained* channel is binary term matching.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import sparse
from torch import nn


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


def pool_torch(
    ids: torch.Tensor, weights: torch.Tensor, owner: torch.Tensor, n: int, vocab: int
) -> torch.Tensor:
    """``[n, vocab]`` max over each text's tokens of the weight per vocabulary id (0 elsewhere)."""
    flat = owner * vocab + ids.long()
    out = torch.zeros(n * vocab, dtype=weights.dtype)
    out = out.scatter_reduce(0, flat, weights, reduce="amax", include_self=True)
    return out.view(n, vocab)


def pool_csr(
    ids: np.ndarray, weights: np.ndarray, owner: np.ndarray, n: int, vocab: int
) -> sparse.csr_matrix:
    """:func:`pool_torch` as a CSR without the dense intermediate; zero weights are dropped."""
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
