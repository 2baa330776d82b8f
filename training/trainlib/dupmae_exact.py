"""Training form of ``dupmae_dual``'s exact OT channel: the per-id max pooling in torch.

The served form is ``embedsvc.strategies.dupmae.exact.pool_csr`` (same values as a CSR);
the trainer needs the dense, differentiable ``[n, vocab]`` rows.
"""

from __future__ import annotations

import torch


def pool_torch(
    ids: torch.Tensor, weights: torch.Tensor, owner: torch.Tensor, n: int, vocab: int
) -> torch.Tensor:
    """``[n, vocab]`` max over each text's tokens of the weight per vocabulary id (0 elsewhere)."""
    flat = owner * vocab + ids.long()
    out = torch.zeros(n * vocab, dtype=weights.dtype)
    out = out.scatter_reduce(0, flat, weights, reduce="amax", include_self=True)
    return out.view(n, vocab)
