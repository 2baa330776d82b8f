"""BTR's model code (pure tensors, no file I/O) and its core.

The pieces, in the order a passage meets them:

* ``embedsvc.backbones.layers.lower_states`` / ``upper_states``: MiniLM split at the cut layer
  ``k`` (embeddings + blocks ``0..k-1`` on the passage alone; blocks ``k..L-1`` on
  reconstructed states with the original attention mask).
* ``Calibration``: per-dimension centre ``c`` (binarisation threshold) and magnitude ``a``,
  plus a zero-initialised low-rank adapter; these are the only trained parameters.
* ``encode_tokens``: bits ``b = [h - c >= 0]`` and a per-token fp16 scale
  ``s = <|h - c|, a> / <a, a>`` (the least-squares scale of ``a * sign`` towards ``h - c``).
* ``Calibration.reconstruct``: ``h_hat = c' + s * a * (2b - 1)``, then ``h_hat + U V h_hat``.
* ``pack_bits`` / ``unpack_bits`` (in ``__init__``): numpy packbits order, 48 bytes per
  384-d token.
* :class:`BTRCore`: the served core (split encoder, sentence-code projection, token codes).

The fitting of the calibration and of the projection is the trainer's
(``training/trainlib/btr.py``).

Why these choices (the BTR paper released no code): sign alone drops the per-dimension offsets
and magnitudes that the next block's attention and LayerNorm depend on (MiniLM states have
dimensions with means far from 0), so we binarise around a per-dimension median (balanced bits)
and restore magnitude with one stored per-dimension vector and one fp16 scale per token. The
adapter lets training absorb the systematic part of the quantisation error without touching the
backbone, so the artifact stays tiny.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from embedsvc.backbones.layers import lower_states, upper_states
from embedsvc.strategies.core import CoreModule
from embedsvc.strategies.pooling import masked_mean


def binarize_ste(x):
    """Straight-through sign: forward ``±1``, backward the gradient of ``tanh(x)``."""
    t = torch.tanh(x)
    return torch.where(x >= 0, 1.0, -1.0).to(x.dtype) + t - t.detach()


def binarize_hashnet(x, beta: float):
    """HashNet continuation ``tanh(beta * x)`` (beta annealed upward towards sign)."""
    return torch.tanh(beta * x)


class Calibration(nn.Module):
    """The trainable calibration: centre, magnitude, reconstruction offset and a low-rank adapter.

    ``rank=0`` means no adapter (pure calibrated sign).
    """

    def __init__(self, centre: np.ndarray, magnitude: np.ndarray, rank: int = 0) -> None:
        super().__init__()
        d = int(centre.shape[0])
        self.dim, self.rank = d, rank
        self.centre = nn.Parameter(torch.as_tensor(centre, dtype=torch.float32).clone())
        # stored as log so that the magnitude stays positive during training
        self.log_mag = nn.Parameter(torch.log(torch.as_tensor(magnitude, dtype=torch.float32)))
        self.offset = nn.Parameter(torch.zeros(d))
        if rank > 0:
            self.down = nn.Parameter(torch.randn(rank, d) * (1.0 / d**0.5))
            self.up = nn.Parameter(torch.zeros(d, rank))  # zero: starts as pure calibration

    @property
    def magnitude(self):
        return self.log_mag.exp()

    def token_scale(self, x):
        """Least-squares per-token scale of ``a * sign(x)`` towards ``x`` (x = h - centre)."""
        a = self.magnitude
        return (x.abs() * a).sum(-1) / (a * a).sum()

    def encode(self, h):
        """``(bits bool [..., d], scale [...])`` of float states ``h`` (no gradient)."""
        x = h - self.centre
        return x >= 0, self.token_scale(x)

    def reconstruct(self, signs, scale):
        """States from ``signs`` (±1 float, or a differentiable surrogate) and token scales."""
        h = self.centre + self.offset + scale.unsqueeze(-1) * self.magnitude * signs
        if self.rank > 0:
            h = h + (h @ self.down.t()) @ self.up.t()
        return h

    def roundtrip(self, h, mode: str = "sign", beta: float = 1.0):
        """Binarise and reconstruct in one differentiable step (training and evaluation)."""
        x = h - self.centre
        if mode == "ste":
            signs = binarize_ste(x / self.magnitude)
        elif mode == "hashnet":
            signs = binarize_hashnet(x / self.magnitude, beta)
        else:
            signs = torch.where(x >= 0, 1.0, -1.0).to(h.dtype)
        return self.reconstruct(signs, self.token_scale(x))


def naive_roundtrip(h):
    """The uncalibrated baseline: every state becomes ``sign(h)`` (±1, no scale, no centre)."""
    return torch.where(h >= 0, 1.0, -1.0).to(h.dtype)


def sentence_bits(pooled, proj_centre, projection):
    """Sentence code bits ``[(e - mu) P^T >= 0]``: ``pooled`` [n, d] -> bool [n, bits]."""
    return ((pooled - proj_centre) @ projection.t()) >= 0


class BTRCore(CoreModule):
    """One forward gives everything BTR serves: ``projection`` ``[B, bits]`` (the sentence
    code is its sign), ``token_bits`` bool ``[B, T, d]`` and ``token_scales`` ``[B, T]`` (the
    calibrated cut-layer codes stored as payloads) and ``pooled`` ``[B, d]`` (the normalised
    float embedding: the query side of re-ranking)."""

    output_names = ("projection", "token_bits", "token_scales", "pooled")
    token_outputs = ("token_bits", "token_scales")

    def __init__(
        self,
        model: nn.Module,
        cut: int,
        calib: Calibration,
        proj_centre: torch.Tensor,
        projection: torch.Tensor,
        input_names: tuple[str, ...],
        notes: tuple[str, ...] = (),
    ) -> None:
        super().__init__()
        self.model = model
        self.cut = int(cut)
        self.calib = calib
        self.register_buffer("proj_centre", proj_centre.detach().clone().float())
        self.register_buffer("projection", projection.detach().clone().float())
        self.input_names = input_names
        self.notes = notes

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        kw = dict(zip(self.input_names, inputs))
        ids, mask = kw["input_ids"], kw["attention_mask"]
        low = lower_states(self.model, ids, mask, self.cut, kw.get("token_type_ids"))
        pooled = masked_mean(upper_states(self.model, low, mask, self.cut), mask)
        pooled = F.normalize(pooled, dim=-1)
        proj = (pooled - self.proj_centre) @ self.projection.t()
        bits, scales = self.calib.encode(low)
        return proj, bits, scales, pooled
