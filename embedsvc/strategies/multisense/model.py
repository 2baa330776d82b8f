"""Multi-sense model code: the sense table, nearest-sense assignment and the served core.

A :class:`SenseTable` holds every token's senses in one flat matrix: token ``v`` owns rows
``offsets[v]:offsets[v+1]`` of ``centroids`` (zero rows = the token was never seen while
building, so its states pass through unchanged). Assignment is vectorised: each occurrence is
compared with a padded block of at most ``max_senses`` candidate rows, so there is no Python
loop over tokens.

Why L2 and not the reference's dot product: the centroids are k-means means, and k-means cells
are L2 Voronoi cells; with L2 a sense vector is always its own nearest sense (replacement is
idempotent), which a dot-product argmax does not guarantee when norms differ.

Building a dictionary (sampling, k-means) is the trainer's: ``training/trainlib/senses.py``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from embedsvc.backbones.layers import lower_states
from embedsvc.strategies.core import CoreModule
from embedsvc.strategies.pooling import masked_mean

#: occurrences compared per block; bounds the [chunk, max_senses, d] candidate tensor
_CHUNK = 2048


@dataclass
class SenseTable:
    """Flat sense dictionary: ``offsets`` int64 [V+1], ``centroids`` float [S, d]."""

    offsets: np.ndarray
    centroids: np.ndarray

    @property
    def vocab_size(self) -> int:
        return int(self.offsets.shape[0] - 1)

    @property
    def num_senses(self) -> int:
        return int(self.centroids.shape[0])

    @property
    def max_senses(self) -> int:
        counts = np.diff(self.offsets)
        return int(counts.max()) if counts.size else 0

    def senses_of(self, token_id: int) -> np.ndarray:
        return self.centroids[self.offsets[token_id] : self.offsets[token_id + 1]]

    def counts(self) -> np.ndarray:
        return np.diff(self.offsets)


def candidates(token_ids, offsets, centroids, max_senses: int):
    """Padded sense block of each token (any leading shape ``[...]``): ``(cands [..., m, d]
    float32, valid [..., m])``; tokens without senses have no valid row."""
    import torch

    starts = offsets[token_ids]
    counts = offsets[token_ids + 1] - starts
    ar = torch.arange(max_senses, device=token_ids.device)
    idx = (starts.unsqueeze(-1) + ar).clamp(max=max(0, centroids.shape[0] - 1))
    return centroids[idx].float(), ar < counts.unsqueeze(-1)


def student_logits(z, cands, valid):
    """Nearest-centroid logits ``<z, s> - |s|^2/2`` over each token's own senses.

    ``z`` [..., d], ``cands`` [..., m, d], ``valid`` bool [..., m] -> [..., m] (invalid = -inf)."""
    logits = (cands * z.unsqueeze(-2)).sum(-1) - 0.5 * (cands * cands).sum(-1)
    return logits.masked_fill(~valid, float("-inf"))


def nearest(states, cands, valid):
    """The teacher's pick: local index of the L2-nearest valid sense, ``[...]``."""
    dist = ((cands - states.unsqueeze(-2)) ** 2).sum(-1)
    return dist.masked_fill(~valid, float("inf")).argmin(-1)


def assign_senses(states, token_ids, offsets, centroids, max_senses: int):
    """Local sense index (0..k-1) of each occurrence, -1 where the token has no senses.

    Inputs: ``states`` float [n, d], ``token_ids`` long [n], ``offsets`` long [V+1],
    ``centroids`` float [S, d] (torch tensors). Output: long [n]. Chunked, so that millions of
    occurrences (building the student's labels) never hold one huge candidate tensor.
    """
    import torch

    n = states.shape[0]
    out = torch.full((n,), -1, dtype=torch.long, device=states.device)
    if n == 0 or centroids.shape[0] == 0 or max_senses == 0:
        return out
    for lo in range(0, n, _CHUNK):
        hi = min(n, lo + _CHUNK)
        cands, valid = candidates(token_ids[lo:hi], offsets, centroids, max_senses)
        best = nearest(states[lo:hi], cands.to(states.dtype), valid)
        out[lo:hi] = torch.where(valid.any(-1), best, torch.full_like(best, -1))
    return out


def replace_with_senses(hidden, input_ids, attention_mask, offsets, centroids, max_senses: int):
    """Replace each non-pad token state by its nearest sense of the same token.

    Inputs: ``hidden`` [B, T, d], ``input_ids`` [B, T], ``attention_mask`` [B, T].
    Outputs: ``(replaced [B, T, d], sense_ids [B, T])``; padding positions and tokens without
    senses keep their states, and their sense id is -1.
    """
    import torch

    flat_h = hidden.reshape(-1, hidden.shape[-1])
    flat_ids = input_ids.reshape(-1)
    keep = attention_mask.reshape(-1).bool()
    sense = torch.full_like(flat_ids, -1)
    pos = keep.nonzero(as_tuple=True)[0]
    local = assign_senses(flat_h[pos], flat_ids[pos], offsets, centroids, max_senses)
    sense[pos] = local
    out = flat_h.clone()
    has = local >= 0
    rows = offsets[flat_ids[pos][has]] + local[has]
    out[pos[has]] = centroids[rows].to(out.dtype)
    return out.reshape(hidden.shape), sense.reshape(input_ids.shape)


class MultiSenseCore(CoreModule):
    """Encoder (or the student's first blocks + head) -> every real token replaced by its
    nearest sense of the same token -> masked mean (``embedding``), and the local sense id of
    each token (``sense_ids``, -1 = no senses / padding / no replacement).

    The sense dictionary is in the module: ``offsets`` int64 ``[V+1]`` and ``centroids`` fp16
    ``[S, d]`` (cast to float32 after the gather). The teacher picks the L2-nearest sense
    (:func:`nearest`), the student the best of :func:`student_logits` over its head output.
    """

    output_names = ("embedding", "sense_ids")
    token_outputs = ("sense_ids",)

    def __init__(
        self,
        model: nn.Module,
        offsets: np.ndarray,
        centroids: np.ndarray,
        max_senses: int,
        *,
        replace: bool,
        student_layers: int | None,
        head: nn.Module | None,
        input_names: tuple[str, ...],
        notes: tuple[str, ...] = (),
    ) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("offsets", torch.from_numpy(np.asarray(offsets, dtype=np.int64)))
        self.register_buffer(
            "centroids", torch.from_numpy(np.ascontiguousarray(centroids, dtype=np.float16))
        )
        self.max_senses = int(max_senses)
        self.replace = bool(replace) and self.max_senses > 0 and centroids.shape[0] > 0
        self.student_layers = student_layers
        self.head = head
        self.input_names = input_names
        self.notes = notes

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        kw = dict(zip(self.input_names, inputs))
        ids, mask = kw["input_ids"], kw["attention_mask"]
        if self.student_layers is None:
            hidden = self.model(input_ids=ids, attention_mask=mask).last_hidden_state
        else:
            # only the first blocks run: that is the student's whole speed-up
            tt = kw.get("token_type_ids")
            hidden = lower_states(self.model, ids, mask, self.student_layers, tt)
        if not self.replace:
            return masked_mean(hidden, mask), torch.full_like(ids, -1)
        states = hidden if self.head is None else self.head(hidden)
        cands, valid = candidates(ids, self.offsets, self.centroids, self.max_senses)
        if self.head is None:
            best = nearest(states, cands, valid)
        else:
            best = student_logits(states, cands, valid).argmax(-1)
        picked = cands.gather(2, best[..., None, None].expand(-1, -1, 1, cands.shape[-1]))
        has = valid.any(-1) & (mask > 0)
        out = torch.where(has.unsqueeze(-1), picked.squeeze(2), states)
        return masked_mean(out, mask), torch.where(has, best, torch.full_like(best, -1))
