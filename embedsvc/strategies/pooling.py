"""The one set of pooling functions every strategy uses (core: torch; post: numpy).

Conventions: ``hidden`` is ``[B, T, d]``, ``attention_mask`` ``[B, T]`` with 1 for real tokens
(left or right padding); every function is traceable (no data-dependent Python control flow),
so the module ONNX exports is the module torch serves.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def masked_mean(hidden: Any, attention_mask: Any) -> Any:
    """Mean of the real tokens' states, ``[B, d]`` (sentence-transformers' mean pooling)."""
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)


def last_index(attention_mask: Any) -> Any:
    """``[B]`` column of each row's last real token (left or right padding)."""
    import torch

    cols = torch.ones_like(attention_mask).cumsum(dim=1) - 1
    return torch.where(attention_mask > 0, cols, torch.full_like(cols, -1)).amax(dim=1)


def gather_rows(hidden: Any, index: Any) -> Any:
    """``hidden[b, index[b]]`` for every row: ``[B, T, d] -> [B, d]``."""
    idx = index.view(-1, 1, 1).expand(-1, 1, hidden.shape[-1])
    return hidden.gather(1, idx).squeeze(1)


def last_token(hidden: Any, attention_mask: Any) -> Any:
    """The last real token's state of each row, ``[B, d]``."""
    return gather_rows(hidden, last_index(attention_mask))


def normalize(x: Any) -> Any:
    """L2-normalise the last axis of a torch tensor (``F.normalize``: eps 1e-12)."""
    import torch.nn.functional as F

    return F.normalize(x, p=2.0, dim=-1)


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """L2-normalise the rows of a numpy array (the post stage's ``normalize``)."""
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return (x / np.maximum(norms, 1e-12)).astype(np.float32, copy=False)
