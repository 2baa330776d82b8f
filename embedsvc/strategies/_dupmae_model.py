"""DupMAE building blocks (pure tensors in/out), shared by the ``dupmae`` strategy and its trainer.

Reference
    Xiao et al., "RetroMAE-2: Duplex Masked Auto-Encoder For Pre-Training Retrieval-Oriented
    Language Models" (ACL 2023; arXiv 2211.08769 "RetroMAE v2"). Official pre-training code
    staoxiao/RetroMAE (``src/pretrain/modeling_duplex.py``, ``data.py``, ``enhancedDecoder.py``),
    read and re-derived here, not copied. The paper's inference/fine-tuning code was never
    released (RetroMAE issues #17, #29); the representation below follows the paper's text and
    the maintainer's SPLADE pointer (see ``embedsvc/strategies/dupmae.py``).

Inputs-Outputs
    * :func:`whole_word_mask` -- token ids of one text (no specials) -> bool mask of whole words.
    * :func:`mlm_corrupt` -- ids + mask -> (corrupted ids, labels with -100 off the mask).
    * :func:`decoder_visibility` -- one text's word structure -> ``[n, n]`` bool "row i may see
      column j" matrix of the enhanced decoder (random 50% of words, never itself).
    * :func:`bow_target` -- ``[B, L]`` ids + ordinary-token mask -> ``[B, V]`` rows summing to 1.
    * :func:`max_over_tokens` / :func:`splade_max` -- ``[B, L, V]`` logits + mask -> ``[B, V]``.
    * :class:`TiedLMHead` -- BERT LM-prediction head whose decoder *is* the word embeddings.
    * :class:`EnhancedDecoder` -- the one-layer [CLS]-conditioned decoder (query stream from
      [CLS] + positions, key/value stream from [CLS] + original token embeddings).
    * :func:`hash_topk` -- sparse top-k (values, vocab ids) -> dense signed-hash buckets.

Hyper-parameters
    Encoder mask ratio 0.3, decoder visibility ratio 0.5 (run defaults of the reference);
    the BoW loss weight (0.1) lives in the trainer; the decoder layer copies the encoder's sizes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
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


class TiedLMHead(nn.Module):
    """BERT LM-prediction head: dense + GELU + LayerNorm, then the *word-embedding* matrix.

    MiniLM ships no MLM head, so the transform is fresh; the decoder weight is not a copy but
    the embedding module's own parameter (read at call time), so the two stay tied.
    """

    def __init__(self, word_embeddings: nn.Embedding, eps: float = 1e-12) -> None:
        super().__init__()
        d = word_embeddings.embedding_dim
        self.word_embeddings = [word_embeddings]  # a list: not registered twice as a submodule
        self.dense = nn.Linear(d, d)
        self.norm = nn.LayerNorm(d, eps=eps)
        self.bias = nn.Parameter(torch.zeros(word_embeddings.num_embeddings))
        nn.init.normal_(self.dense.weight, std=0.02)
        nn.init.zeros_(self.dense.bias)

    @property
    def decoder_weight(self) -> torch.Tensor:
        return self.word_embeddings[0].weight

    def transform(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.norm(F.gelu(self.dense(hidden)))

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return F.linear(self.transform(hidden), self.decoder_weight, self.bias)


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


def hash_buckets(vocab_size: int, dim: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed signed hash of vocab ids: ``(bucket [V] long, sign [V] float)``."""
    gen = np.random.default_rng(seed)
    bucket = torch.from_numpy(gen.integers(0, dim, size=vocab_size)).long()
    sign = torch.from_numpy(gen.choice([-1.0, 1.0], size=vocab_size)).float()
    return bucket, sign


def hash_topk(
    values: torch.Tensor, indices: torch.Tensor, bucket: torch.Tensor, sign: torch.Tensor, dim: int
) -> torch.Tensor:
    """``[B, dim]``: each kept (vocab id, weight) added with its sign into its bucket.

    Signed feature hashing keeps inner products in expectation (collisions add zero-mean
    noise), which is how the sparse OT vector enters a *dense* FAISS inner-product index.
    """
    out = torch.zeros(values.shape[0], dim, dtype=values.dtype, device=values.device)
    return out.scatter_add(1, bucket[indices], values * sign[indices].to(values.dtype))


def init_orthogonal(linear: nn.Linear, seed: int) -> None:
    """Random orthonormal rows (a JL-style reduction that preserves inner products on average)."""
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(linear.in_features, linear.out_features, generator=gen)
    q, _ = torch.linalg.qr(w)
    with torch.no_grad():
        linear.weight.copy_(q.T * math.sqrt(linear.in_features / linear.out_features))
        if linear.bias is not None:
            linear.bias.zero_()


# ---------------------------------------------------------------------------------------------
# The model around the encoder: LoRA copy of the backbone, heads, and the inference vector.

#: LoRA targets in MiniLM/BERT: attention q/k/v, attention output, FFN in/out ("dense" names)
LORA_TARGETS = ["query", "key", "value", "dense"]


def ordinary_mask(
    ids: torch.Tensor, attention: torch.Tensor, specials: Sequence[int]
) -> torch.Tensor:
    """``[B, L]`` bool: real (unpadded) positions that are not [CLS]/[SEP]/other specials."""
    keep = attention.bool()
    for sid in specials:
        keep &= ids != sid
    return keep


def lora_encoder(
    model: nn.Module,
    *,
    r: int = 16,
    alpha: int = 32,
    dropout: float = 0.05,
    adapter_dir: str | None = None,
    trainable: bool = True,
) -> nn.Module:
    """A LoRA-wrapped *copy* of ``model`` (the process-wide backbone is shared: never mutate it)."""
    import copy

    from peft import LoraConfig, PeftModel, get_peft_model

    base = copy.deepcopy(model)
    if adapter_dir is not None:
        return PeftModel.from_pretrained(base, adapter_dir, is_trainable=trainable)
    cfg = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=LORA_TARGETS)
    return get_peft_model(base, cfg)


class DupMAEHeads(nn.Module):
    """What inference needs beside the encoder: the tied LM head and the [CLS] reduction."""

    def __init__(self, word_embeddings: nn.Embedding, cls_dim: int, seed: int = 0) -> None:
        super().__init__()
        self.lm_head = TiedLMHead(word_embeddings)
        self.cls_reduce = nn.Linear(word_embeddings.embedding_dim, cls_dim, bias=False)
        init_orthogonal(self.cls_reduce, seed)


def ot_topk(
    hidden: torch.Tensor, ordinary: torch.Tensor, head: TiedLMHead, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-``k`` (weights, vocab ids) of the SPLADE-max OT vector, weights L2-normalised.

    The full ``[B, L, V]`` logits are computed without autograd only to find, per row, the
    top-k vocab ids and the position where each one's max is reached; the k winning logits
    are then recomputed with autograd. Values and gradients equal the naive version's (a max
    passes its gradient to the arg-max only) at a fraction of the backward cost on CPU.
    """
    t = head.transform(hidden)  # [B, L, d]
    weight, bias = head.decoder_weight, head.bias
    with torch.no_grad():
        act = torch.log1p(torch.relu(F.linear(t, weight, bias)))
        act = act * ordinary.unsqueeze(-1).to(act.dtype)
        ot, argpos = act.max(dim=1)  # [B, V]
        _, indices = ot.topk(min(k, ot.shape[1]), dim=1)
        pos = argpos.gather(1, indices)  # [B, k]
    rows = torch.arange(t.shape[0], device=t.device).unsqueeze(1)
    z = (t[rows, pos] * weight[indices]).sum(-1) + bias[indices]
    # rows without an ordinary token (empty text) get zeros, as the max over nothing would
    values = torch.log1p(torch.relu(z)) * ordinary.any(dim=1, keepdim=True).to(z.dtype)
    return F.normalize(values, dim=1), indices


def sparse_from_topk(values: torch.Tensor, indices: torch.Tensor, vocab: int) -> torch.Tensor:
    """``[B, V]`` dense copy of a top-k vector (training scores it exactly, without hashing)."""
    out = torch.zeros(values.shape[0], vocab, dtype=values.dtype, device=values.device)
    return out.scatter(1, indices, values)


def combine(
    cls_vec: torch.Tensor | None, ot_vec: torch.Tensor | None, cls_weight: float
) -> torch.Tensor:
    """Concatenate unit-norm channels scaled by ``sqrt(w)`` and ``sqrt(1-w)``.

    Then ``<x, y> = w * cos_cls + (1 - w) * cos_ot`` and the result is unit-norm: one vector
    for a FAISS inner-product (= cosine) index. A single channel is returned as is.
    """
    if ot_vec is None:
        assert cls_vec is not None
        return cls_vec
    if cls_vec is None:
        return ot_vec
    return torch.cat([cls_vec * math.sqrt(cls_weight), ot_vec * math.sqrt(1.0 - cls_weight)], 1)
