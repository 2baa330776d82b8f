"""Training losses (training only)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def contrastive_loss(
    anchor: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor | None, scale: float
) -> torch.Tensor:
    """In-batch + hard-negative InfoNCE (the reference's ``HardNegativeNLLLoss``).

    Row ``i`` of ``anchor`` must pick column ``i`` among ``[positives; hard negatives]`` of the
    whole batch; inputs are L2-normalised, so the logits are ``scale * cosine``.
    """
    candidates = positive if negative is None else torch.cat([positive, negative], dim=0)
    logits = scale * anchor @ candidates.T
    target = torch.arange(anchor.shape[0], device=anchor.device)
    return F.cross_entropy(logits, target)
