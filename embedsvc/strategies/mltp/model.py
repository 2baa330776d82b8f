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
mean over the latents. Projections are bias-free. All sequence positions are real (one state
per layer), so no key mask is needed.

Never worse than the state it pools (issue 18): the heads read the states of the PromptEOL
prompt, and their output is ``normalize(normalize(h_L) + W_o LN(pooled) / d)`` with ``W_o``
zero-initialised (the ``1/d`` keeps Adam's first steps from swamping the unit base vector),
where ``h_L`` is the last token's state after the final norm -- exactly ``prompt_last``'s
vector. At step 0 every head therefore returns ``prompt_last``; training can
only move away from it through the learned residual (the layer mix of MLTP / the M2 head). The
``linear`` head is the same idea with a zero-initialised ``W``:
``normalize(u + W u / sqrt(d))``, ``u = normalize(h_L)``.

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
    #: residual on the last layer's (post-norm) state with a zero-initialised output
    #: projection, so the untrained head equals ``prompt_last`` (issue 18); False = the
    #: paper's head (the pooled latents are the embedding)
    residual: bool = True


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
        if cfg.residual:
            self.out_norm = nn.LayerNorm(cfg.dim)
            self.out_proj = nn.Linear(cfg.dim, cfg.dim, bias=False)
            nn.init.zeros_(self.out_proj.weight)

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
        pooled = x.mean(dim=1)
        if not self.cfg.residual:
            return F.normalize(pooled, dim=-1)
        base = F.normalize(states[:, -1, :], dim=-1)
        # 1/d: LN(pooled) has |.|_1 ~ d, so an Adam step of lr on W_o moves the residual by
        # ~lr per coordinate instead of ~lr*d, which would swamp the unit base in one step
        residual = self.out_proj(self.out_norm(pooled)) / self.cfg.dim
        return F.normalize(base + residual, dim=-1)


class LinearPooling(nn.Module):
    """(a) last token + linear projection. Residual (default): ``normalize(u + W u)``,
    ``u = normalize(h_L)``, ``W = 0`` at init; else ``normalize(W h_L)``, ``W = I`` at init.
    Both start at the plain last-token embedding."""

    def __init__(self, cfg: HeadConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.proj = nn.Linear(cfg.dim, cfg.dim, bias=False)
        with torch.no_grad():
            if cfg.residual:
                self.proj.weight.zero_()
            else:
                self.proj.weight.copy_(torch.eye(cfg.dim))

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        if not self.cfg.residual:
            return F.normalize(self.proj(states[:, -1, :]), dim=-1)
        base = F.normalize(states[:, -1, :], dim=-1)
        # 1/sqrt(d): the unit base has |.|_1 ~ sqrt(d) (same reasoning as the MLTP head)
        return F.normalize(base + self.proj(base) / self.cfg.dim**0.5, dim=-1)


def build_head(cfg: HeadConfig) -> nn.Module:
    """A freshly initialised head of ``cfg.kind`` (seed torch first for reproducibility)."""
    if cfg.kind == "linear":
        return LinearPooling(cfg)
    return CrossAttentionPooling(cfg)
