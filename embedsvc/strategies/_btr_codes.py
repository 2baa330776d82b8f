"""Pure tensor code of BTR binary token representations (no file I/O, no model loading).

The pieces, in the order a passage meets them:

* ``lower_states`` / ``upper_states``: MiniLM split at the cut layer ``k`` (embeddings + blocks
  ``0..k-1`` on the passage alone; blocks ``k..L-1`` on reconstructed states with the original
  attention mask).
* ``Calibration``: per-dimension centre ``c`` (binarisation threshold) and magnitude ``a``,
  plus a zero-initialised low-rank adapter; these are the only trained parameters.
* ``encode_tokens``: bits ``b = [h - c >= 0]`` and a per-token fp16 scale
  ``s = <|h - c|, a> / <a, a>`` (the least-squares scale of ``a * sign`` towards ``h - c``).
* ``Calibration.reconstruct``: ``h_hat = c' + s * a * (2b - 1)``, then ``h_hat + U V h_hat``.
* ``pack_bits`` / ``unpack_bits``: numpy packbits order, 48 bytes per 384-d token.

Why these choices (the BTR paper released no code): sign alone drops the per-dimension offsets
and magnitudes that the next block's attention and LayerNorm depend on (MiniLM states have
dimensions with means far from 0), so we binarise around a per-dimension median (balanced bits)
and restore magnitude with one stored per-dimension vector and one fp16 scale per token. The
adapter lets training absorb the systematic part of the quantisation error without touching the
backbone, so the artifact stays tiny.
"""

from __future__ import annotations

import numpy as np

try:  # torch is needed for everything but packing; keep import of this module cheap otherwise
    import torch
    from torch import nn
except ImportError:  # pragma: no cover - torch is a hard dependency of the package
    torch = None  # type: ignore[assignment]
    nn = None  # type: ignore[assignment]


def pack_bits(bits: np.ndarray) -> np.ndarray:
    """bool/0-1 ``[..., d]`` -> uint8 ``[..., d/8]`` (numpy packbits, big-endian bit order)."""
    return np.packbits(np.asarray(bits, dtype=bool), axis=-1)


def unpack_bits(codes: np.ndarray, dim: int) -> np.ndarray:
    """uint8 ``[..., d/8]`` -> bool ``[..., d]``; inverse of :func:`pack_bits`."""
    return np.unpackbits(np.asarray(codes, dtype=np.uint8), axis=-1, count=dim).astype(bool)


def fit_calibration(states: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-dimension ``(centre, magnitude)`` from sampled non-pad token states ``[N, d]``.

    Centre = median (each bit is 1 half the time: maximum information per bit); magnitude =
    mean absolute deviation from it (the L2-optimal per-dimension value for ``a * sign``).
    """
    x = np.asarray(states, dtype=np.float32)
    centre = np.median(x, axis=0)
    mag = np.abs(x - centre).mean(axis=0)
    return centre.astype(np.float32), np.maximum(mag, 1e-6).astype(np.float32)


def binarize_ste(x):
    """Straight-through sign: forward ``±1``, backward the gradient of ``tanh(x)``."""
    t = torch.tanh(x)
    return torch.where(x >= 0, 1.0, -1.0).to(x.dtype) + t - t.detach()


def binarize_hashnet(x, beta: float):
    """HashNet continuation ``tanh(beta * x)`` (beta annealed upward towards sign)."""
    return torch.tanh(beta * x)


class Calibration(nn.Module if nn is not None else object):  # type: ignore[misc]
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


def _mask4d(model, hidden, attention_mask):
    from transformers.masking_utils import create_bidirectional_mask

    return create_bidirectional_mask(
        config=model.config, inputs_embeds=hidden, attention_mask=attention_mask
    )


def lower_states(model, input_ids, attention_mask, cut: int, token_type_ids=None):
    """Embeddings + blocks ``0..cut-1`` of a BertModel: the states BTR binarises."""
    h = model.embeddings(input_ids=input_ids, token_type_ids=token_type_ids)
    mask = _mask4d(model, h, attention_mask)
    for layer in model.encoder.layer[:cut]:
        h = layer(h, mask)
    return h


def upper_states(model, hidden, attention_mask, cut: int):
    """Blocks ``cut..L-1`` on (reconstructed) states, with the passage's own attention mask."""
    mask = _mask4d(model, hidden, attention_mask)
    for layer in model.encoder.layer[cut:]:
        hidden = layer(hidden, mask)
    return hidden


def masked_mean(hidden, attention_mask):
    m = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)


def sentence_bits(pooled, proj_centre, projection):
    """Sentence code bits ``[(e - mu) P^T >= 0]``: ``pooled`` [n, d] -> bool [n, bits]."""
    return ((pooled - proj_centre) @ projection.t()) >= 0


def fit_projection(
    embeddings: np.ndarray, bits: int, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """``(centre [d], projection [bits, d])`` for sentence codes: PCA to ``bits`` directions,
    then a random rotation so that variance is spread over all bits (the first step of ITQ);
    centring makes each bit balanced. Needs ``bits <= d``."""
    x = np.asarray(embeddings, dtype=np.float64)
    mu = x.mean(0)
    _, _, vt = np.linalg.svd(x - mu, full_matrices=False)
    pcs = vt[:bits]
    rng = np.random.default_rng(seed)
    if pcs.shape[0] < bits:  # fewer samples than bits (tiny runs): fill with random directions
        extra = rng.standard_normal((bits - pcs.shape[0], x.shape[1])) / np.sqrt(x.shape[1])
        pcs = np.concatenate([pcs, extra])
    q, _ = np.linalg.qr(rng.standard_normal((bits, bits)))
    return mu.astype(np.float32), (q @ pcs).astype(np.float32)
