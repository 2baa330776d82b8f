"""DupMAE pre-training pieces (pure tensors in/out): used by ``train_dupmae.py`` only.

Reference
    staoxiao/RetroMAE (``src/pretrain/modeling_duplex.py``, ``data.py``, ``enhancedDecoder.py``),
    re-derived. The served model pieces are ``embedsvc/strategies/dupmae/model.py``.

Inputs-Outputs
    * :func:`whole_word_mask` -- token ids of one text (no specials) -> bool mask of whole words.
    * :func:`mlm_corrupt` -- ids + mask -> (corrupted ids, labels with -100 off the mask).
    * :func:`decoder_visibility` -- one text's word structure -> ``[n, n]`` bool "row i may see
      column j" matrix of the enhanced decoder (random 50% of words, never itself).
    * :func:`bow_target` -- ``[B, L]`` ids + ordinary-token mask -> ``[B, V]`` rows summing to 1.
    * :func:`max_over_tokens` / :func:`splade_max` -- ``[B, L, V]`` logits + mask -> ``[B, V]``.
    * :class:`EnhancedDecoder` -- the one-layer [CLS]-conditioned decoder.

Hyper-parameters
    Encoder mask ratio 0.3, decoder visibility ratio 0.5 (run defaults of the reference).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn


def continuation_table(tokenizer) -> np.ndarray:
    """``[V]`` bool: vocab id is a WordPiece continuation (``##x``), i.e. not a word start."""
    table = np.zeros(len(tokenizer), dtype=bool)
    for tok, idx in tokenizer.get_vocab().items():
        if tok.startswith("##") and idx < len(table):
            table[idx] = True
    return table


def word_groups(ids: Sequence[int], is_cont: np.ndarray) -> list[list[int]]:
    """Positions of ``ids`` grouped into whole words (a ``##`` piece joins the previous word)."""
    groups: list[list[int]] = []
    for pos, tok in enumerate(ids):
        if groups and is_cont[tok]:
            groups[-1].append(pos)
        else:
            groups.append([pos])
    return groups


def whole_word_mask(
    ids: Sequence[int], is_cont: np.ndarray, prob: float, rng: np.random.Generator
) -> np.ndarray:
    """Bool mask over ``ids`` covering whole words, about ``round(len * prob)`` tokens (>= 1).

    As in HF's whole-word collator that the reference uses: words are taken in random order
    until the token budget is reached; a word that would overshoot it is skipped.
    """
    n = len(ids)
    mask = np.zeros(n, dtype=bool)
    if n == 0 or prob <= 0:
        return mask
    budget = max(1, int(round(n * prob)))
    groups = word_groups(ids, is_cont)
    covered = 0
    for g in rng.permutation(len(groups)):
        word = groups[int(g)]
        if covered + len(word) > budget:
            continue
        mask[word] = True
        covered += len(word)
        if covered >= budget:
            break
    return mask


def mlm_corrupt(
    ids: np.ndarray, mask: np.ndarray, mask_id: int, vocab_size: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """BERT's 80/10/10 corruption of the masked positions; labels are -100 elsewhere."""
    labels = np.where(mask, ids, -100)
    out = ids.copy()
    roll = rng.random(len(ids))
    out[mask & (roll < 0.8)] = mask_id
    rand = mask & (roll >= 0.8) & (roll < 0.9)
    out[rand] = rng.integers(0, vocab_size, size=int(rand.sum()))
    return out, labels


def decoder_visibility(
    ids: Sequence[int],
    is_cont: np.ndarray,
    prob: float,
    rng: np.random.Generator,
    samples: int = 32,
) -> np.ndarray:
    """``[n+2, n+2]`` bool visibility for ``[CLS] ids [SEP]``: row i sees column j when True.

    The enhanced decoder's per-row attention: ``samples`` whole-word masks with ratio ``prob``
    are drawn; each row picks one at random and also hides its own position, so row i sees a
    random ~50% of the *unmasked original* tokens but never the token it must predict. [CLS]
    (column 0, the sentence embedding) and [SEP] are never masked (specials are not words).
    """
    n = len(ids)
    total = n + 2
    pool = np.ones((max(1, min(samples, total)), total), dtype=bool)
    for s in range(pool.shape[0]):
        pool[s, 1 : n + 1] = ~whole_word_mask(ids, is_cont, prob, rng)
    pick = rng.integers(0, pool.shape[0], size=total)
    vis = pool[pick].copy()
    vis[np.arange(total), np.arange(total)] = False
    vis[:, 0] = True  # [CLS] carries the sentence; row 0 (never a target) may see itself
    return vis


def bow_target(ids: torch.Tensor, ordinary: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """``[B, V]`` bag-of-words target: uniform over the *unique* ordinary tokens of each row.

    ``ordinary`` is ``[B, L]`` bool (False for padding, [CLS], [SEP]). The reference assigns
    ``1/len(tokens)`` per token (so rows with repeats sum below 1); we normalise over unique
    tokens so each row is a distribution (same argmax set, the loss is a proper cross-entropy).
    """
    counts = torch.zeros(ids.shape[0], vocab_size, dtype=torch.float32, device=ids.device)
    # non-ordinary positions add 0 (into column 0), so they never receive mass
    counts.scatter_add_(1, ids.masked_fill(~ordinary, 0), ordinary.float())
    target = (counts > 0).float()
    return target / target.sum(dim=1, keepdim=True).clamp(min=1.0)


def max_over_tokens(logits: torch.Tensor, ordinary: torch.Tensor) -> torch.Tensor:
    """``[B, V]`` max over ordinary positions of ``[B, L, V]`` logits (others can never win).

    Padding, [CLS] and [SEP] are filled with the dtype's lowest value before the max; a row
    with no ordinary token returns zeros.
    """
    low = torch.finfo(logits.dtype).min
    filled = logits.masked_fill(~ordinary.unsqueeze(-1), low)
    out = filled.max(dim=1).values
    return torch.where(ordinary.any(dim=1, keepdim=True), out, torch.zeros_like(out))


def max_over_tokens_argmax(logits: torch.Tensor, ordinary: torch.Tensor) -> torch.Tensor:
    """``[B, V]`` position where :func:`max_over_tokens` takes each vocab entry's max."""
    low = torch.finfo(logits.dtype).min
    return logits.masked_fill(~ordinary.unsqueeze(-1), low).argmax(dim=1)


def splade_max(logits: torch.Tensor, ordinary: torch.Tensor) -> torch.Tensor:
    """SPLADE-max activation ``max_i log(1 + relu(z_iv))`` over ordinary positions, ``[B, V]``."""
    act = torch.log1p(torch.relu(logits)) * ordinary.unsqueeze(-1).to(logits.dtype)
    return act.max(dim=1).values


class EnhancedDecoder(nn.Module):
    """One post-LN transformer layer with separate query and key/value streams (per-row mask).

    Query_i = Emb(h_cls at position i) = LN(h_cls + pos_i + type_0); keys/values =
    ``[h_cls ; Emb(original ids)[1:]]``. Each row attends only where ``visible`` is True.
    """

    def __init__(self, hidden: int, heads: int, ffn: int, eps: float = 1e-12) -> None:
        super().__init__()
        self.heads = heads
        self.attn = nn.MultiheadAttention(hidden, heads, batch_first=True)
        self.norm1 = nn.LayerNorm(hidden, eps=eps)
        self.ff = nn.Sequential(nn.Linear(hidden, ffn), nn.GELU(), nn.Linear(ffn, hidden))
        self.norm2 = nn.LayerNorm(hidden, eps=eps)
        for mod in self.modules():  # BERT init
            if isinstance(mod, nn.Linear):
                nn.init.normal_(mod.weight, std=0.02)
                if mod.bias is not None:
                    nn.init.zeros_(mod.bias)
        nn.init.normal_(self.attn.in_proj_weight, std=0.02)
        nn.init.zeros_(self.attn.in_proj_bias)

    def forward(self, query: torch.Tensor, kv: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
        blocked = (~visible).repeat_interleave(self.heads, dim=0)  # [B*heads, L, L]
        att, _ = self.attn(query, kv, kv, attn_mask=blocked, need_weights=False)
        x = self.norm1(query + att)
        return self.norm2(x + self.ff(x))


def sparse_from_topk(values: torch.Tensor, indices: torch.Tensor, vocab: int) -> torch.Tensor:
    """``[B, V]`` dense copy of a top-k vector (training scores it exactly, without hashing)."""
    out = torch.zeros(values.shape[0], vocab, dtype=values.dtype, device=values.device)
    return out.scatter(1, indices, values)
