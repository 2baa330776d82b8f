"""Trainable pooling heads over a frozen decoder's last-token states (pure tensors in/out).

Three heads, compared in issue 3 with the same data, steps and seeds:

* ``linear`` -- (a) EOS-last + a linear projection: ``normalize(W h_L)``, ``W`` initialised
  to the identity so training starts from the plain EOS-last (M1) embedding.
* ``m2`` -- last-layer trainable pooling (the paper's M2): the cross-attention head below fed
  the last layer's last-token state only (a length-1 sequence, no layer embedding).
* ``mltp`` -- Multi-Layers Trainable Pooling (the paper's M3): the last-token state of every
  block stacked into an ``L``-long sequence, plus a learned layer embedding, attended by
  learned latent queries.

The cross-attention head follows yixuantt/PoolingAndAttn ``PerceiverResampler`` (re-derived):
``X = CrossAttn(LN_c(Q0), LN_a(H)) + Q0``; ``X = FF(LN(X)) + X`` with a GEGLU feed-forward;
mean over the latents; L2-normalise. Projections are bias-free. All sequence positions are
real (one state per layer), so no key mask is needed.

Input of every head: ``[B, L, d]`` states (the ``linear``/``m2`` heads read ``[:, -1]``).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, Field
from torch import nn

HeadKind = Literal["linear", "m2", "mltp"]


class HeadConfig(BaseModel):
    """Sizes of a pooling head. Defaults are CPU-sized; the paper's are in ``PAPER``."""

    model_config = {"extra": "forbid"}

    kind: HeadKind = "mltp"
    #: hidden size of the decoder (576 for SmolLM2-135M)
    dim: int = Field(576, ge=1)
    #: number of stacked layer states (blocks of the decoder; 30 for SmolLM2)
    num_layers: int = Field(30, ge=1)
    heads: int = Field(4, ge=1)
    dim_head: int = Field(32, ge=1)
    num_latents: int = Field(8, ge=1)
    #: GEGLU hidden = ff_mult * dim (paper: 4)
    ff_mult: int = Field(1, ge=1)


#: the reference's sizes (Mistral-7B, d=4096): 32 heads x 2048 dims, 768 latents, FF x4
PAPER = {"heads": 32, "dim_head": 2048, "num_latents": 768, "ff_mult": 4}


class GEGLUFeedForward(nn.Module):
    """Pre-norm GEGLU MLP: ``Linear(d, 2m) -> x * gelu(gate) -> Linear(m, d)``, ``m = mult*d``."""

    def __init__(self, dim: int, mult: int) -> None:
        super().__init__()
        inner = dim * mult
        self.norm = nn.LayerNorm(dim)
        self.proj_in = nn.Linear(dim, inner * 2, bias=False)
        self.proj_out = nn.Linear(inner, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        value, gate = self.proj_in(self.norm(x)).chunk(2, dim=-1)
        return self.proj_out(value * F.gelu(gate))


class LatentCrossAttention(nn.Module):
    """Learned latents (queries) attend over a context sequence (keys/values), pre-norm."""

    def __init__(self, dim: int, heads: int, dim_head: int) -> None:
        super().__init__()
        inner = heads * dim_head
        self.heads = heads
        self.norm_latents = nn.LayerNorm(dim)
        self.norm_context = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim, inner * 2, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)

    def forward(self, latents: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        b, n, _ = latents.shape
        q = self.to_q(self.norm_latents(latents))
        k, v = self.to_kv(self.norm_context(context)).chunk(2, dim=-1)

        def split(t: torch.Tensor) -> torch.Tensor:  # [B, T, h*e] -> [B, h, T, e]
            return t.view(b, t.shape[1], self.heads, -1).transpose(1, 2)

        out = F.scaled_dot_product_attention(split(q), split(k), split(v))
        return self.to_out(out.transpose(1, 2).reshape(b, n, -1))


class CrossAttentionPooling(nn.Module):
    """The MLTP / M2 head: ``[B, L, d]`` -> L2-normalised ``[B, d]``."""

    def __init__(self, cfg: HeadConfig) -> None:
        super().__init__()
        self.cfg = cfg
        seq = cfg.num_layers if cfg.kind == "mltp" else 1
        # M2 has one position, so a "layer embedding" would be a constant bias: the reference
        # leaves it out and so do we.
        self.layer_embedding = nn.Embedding(seq, cfg.dim) if cfg.kind == "mltp" else None
        self.latents = nn.Parameter(torch.randn(cfg.num_latents, cfg.dim))
        self.attn = LatentCrossAttention(cfg.dim, cfg.heads, cfg.dim_head)
        self.ff = GEGLUFeedForward(cfg.dim, cfg.ff_mult)

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        if self.cfg.kind == "m2":
            context = states[:, -1:, :]
        else:
            if states.shape[1] != self.cfg.num_layers:
                raise ValueError(
                    f"expected {self.cfg.num_layers} layer states, got {states.shape[1]}"
                )
            context = states + self.layer_embedding.weight.unsqueeze(0)
        latents = self.latents.unsqueeze(0).expand(states.shape[0], -1, -1)
        x = self.attn(latents, context) + latents
        x = self.ff(x) + x
        return F.normalize(x.mean(dim=1), dim=-1)


class LinearPooling(nn.Module):
    """(a) EOS-last + linear projection, identity-initialised: ``normalize(W h_L)``."""

    def __init__(self, cfg: HeadConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.proj = nn.Linear(cfg.dim, cfg.dim, bias=False)
        with torch.no_grad():
            self.proj.weight.copy_(torch.eye(cfg.dim))

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.proj(states[:, -1, :]), dim=-1)


def build_head(cfg: HeadConfig) -> nn.Module:
    """A freshly initialised head of ``cfg.kind`` (seed torch first for reproducibility)."""
    if cfg.kind == "linear":
        return LinearPooling(cfg)
    return CrossAttentionPooling(cfg)
