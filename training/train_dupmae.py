"""DupMAE (RetroMAE v2) pre-training and contrastive fine-tuning of MiniLM, on CPU.

Reference
    Xiao et al., "RetroMAE-2: Duplex Masked Auto-Encoder" (ACL 2023); staoxiao/RetroMAE
    ``src/pretrain/modeling_duplex.py`` (re-derived in ``embedsvc/strategies/dupmae/model.py``
    and ``trainlib/dupmae.py``).

Two sub-commands, one config model each (written to ``<out>/config.json``):

``pretrain``
    On the unlabelled Wikipedia passages (``train/wiki_en/passages_part*.jsonl``): whole-word
    masked encoder input (p=0.3) with the MLM loss, a one-layer [CLS]-conditioned enhanced decoder
    (per-row attention over a random 50% of the original tokens) reconstructing every ordinary
    token, and the bag-of-words loss (weight 0.1) on the max over ordinary positions of the
    vocabulary logits. ``L = L_dec + 0.1 L_bow + L_enc``. Before and after, the OT-recovery
    check on held-out passages: the fraction of a passage's unique ordinary tokens found among
    the top-|u| entries of its OT vector.
``finetune``
    From a pre-trained artifact: InfoNCE (in-batch + hard negative, scale 20) on NLI triplets
    (``train/nli/nli_triplets.csv``), summed over the three scores CLS-only, OT-only (top-k
    sparse SPLADE-max vectors) and CLS+OT, so each channel alone and the concatenation work.

Departures (CPU, 2 shared cores), all recorded in the manifest: LoRA (r=16 on q/k/v/attention-out
and the FFN) instead of full-encoder training, word embeddings frozen (the tied projection uses
them unchanged; the LM transform + output bias are trained), short sequences, a few hundred
steps; the decoder layer is dropped after pre-training (not needed at inference).

Every run writes ``config.json``, a resumable ``checkpoint.pt`` and ``metrics.json`` into
``--out``; ``--ship DIR`` writes the small artifact (LoRA adapter + heads + manifest).

    .venv/bin/python training/train_dupmae.py pretrain \
        --config training/configs/dupmae_pretrain.json
    .venv/bin/python training/train_dupmae.py finetune \
        --config training/configs/dupmae_finetune.json
    (add --resume to continue a killed run from its last checkpoint)
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, Field
from tqdm import tqdm

from embedsvc.checksums import sha256_file

# training-only helpers live beside the trainers (training/trainlib), not in embedsvc
sys.path.insert(0, str(Path(__file__).resolve().parent))

DATA = Path("/work/shared/data")
ROOT = Path(__file__).resolve().parents[1]


class PretrainConfig(BaseModel):
    """Everything that determines a pre-training run."""

    model_config = {"extra": "forbid"}

    seed: int = 0
    backbone: str = "minilm"
    passages: list[str] = [str(DATA / f"train/wiki_en/passages_part{i}.jsonl") for i in (1, 2)]
    train_passages: int = 4000
    #: held out for the OT-recovery check (taken from the end of the passage list)
    heldout_passages: int = 200
    max_length: int = 96
    steps: int = 300
    #: length of the LR schedule (None = steps); stopping before its end keeps the LR up, as
    #: the Text2Token reference's 100-step callback does
    schedule_steps: int | None = None
    batch_size: int = 16
    lr: float = 5e-4
    #: LR multiplier for the created LM head (transform + output bias); 1.0 = one LR for all
    head_lr_mult: float = Field(1.0, gt=0.0)
    weight_decay: float = 0.01
    warmup_frac: float = 0.1
    encoder_mask: float = 0.3
    decoder_visible: float = 0.5
    bow_weight: float = 0.1
    #: fraction of ordinary positions the decoder reconstructs per step (paper: all = 1.0)
    decoder_positions: float = Field(1.0, gt=0.0, le=1.0)
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    cls_dim: int = 192
    ot_dim: int = 192
    top_k: int = 64
    cls_weight: float = 0.5
    save_every: int = 50
    #: also measure the OT recovery on the held-out passages every N steps (0 = only before and
    #: after); logged in the history, uses no randomness, so the run itself is unchanged
    recovery_every: int = 0
    threads: int = 2
    out: str = "runs/dupmae-pretrain"
    ship: str | None = None


class FinetuneConfig(BaseModel):
    """Everything that determines a fine-tuning run."""

    model_config = {"extra": "forbid"}

    seed: int = 0
    init: str = "embedsvc/artifacts/dupmae/pretrained"
    triplets: str = str(DATA / "train/nli/nli_triplets.csv")
    max_triplets: int = 3000
    data_seed: int = 0
    max_length: int = 64
    steps: int = 150
    #: length of the LR schedule (None = steps)
    schedule_steps: int | None = None
    batch_size: int = 32
    lr: float = 2e-4
    weight_decay: float = 0.01
    warmup_frac: float = 0.1
    scale: float = 20.0
    save_every: int = 50
    threads: int = 2
    out: str = "runs/dupmae-finetune"
    ship: str | None = None
    #: serving settings written to the shipped head_config (inference-only: training scores
    #: the exact sparse OT vectors at the init artifact's weight). ``ship_cls_weight`` is chosen
    #: on SciFact *train* queries by ``training/eval_dupmae.py --tune-weight``; ``ship_ot_dim``
    #: hash buckets make the hashed OT channel close to the exact sparse one (docs/results).
    ship_cls_weight: float | None = Field(None, gt=0.0, lt=1.0)
    ship_ot_dim: int | None = Field(None, ge=8)


# ------------------------------------------------------------------------------------ helpers


def load_passages(files: list[str]) -> list[str]:
    out = []
    for f in files:
        with Path(f).open(encoding="utf-8") as fh:
            out.extend(json.loads(line)["text"] for line in fh if line.strip())
    return out


def lr_at(step: int, total: int, warmup_frac: float, peak: float) -> float:
    """Linear warm-up then linear decay (the HF default schedule the reference uses)."""
    warm = max(1, int(total * warmup_frac))
    if step < warm:
        return peak * (step + 1) / warm
    return peak * max(0.0, (total - step) / max(1, total - warm))


def rng_state() -> dict[str, Any]:
    import torch

    return {"py": random.getstate(), "np": np.random.get_state(), "torch": torch.get_rng_state()}


def set_rng_state(state: dict[str, Any]) -> None:
    import torch

    random.setstate(state["py"])
    np.random.set_state(state["np"])
    torch.set_rng_state(state["torch"])


def seed_all(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def command_line() -> str:
    return " ".join(shlex.quote(a) for a in [".venv/bin/python", *sys.argv])


# ------------------------------------------------------------------------------- pre-training


def pretrain_batch(
    seqs: list[list[int]], tok: Any, is_cont: np.ndarray, cfg: PretrainConfig, rng: Any
) -> dict[str, Any]:
    """Collate token-id lists (no specials) into encoder/decoder tensors."""
    import torch
    from trainlib.dupmae import decoder_visibility, mlm_corrupt, whole_word_mask

    cls_id, sep_id, pad_id, mask_id = (
        tok.cls_token_id,
        tok.sep_token_id,
        tok.pad_token_id,
        tok.mask_token_id,
    )
    length = max(len(s) for s in seqs) + 2
    b = len(seqs)
    enc = np.full((b, length), pad_id, dtype=np.int64)
    orig = np.full((b, length), pad_id, dtype=np.int64)
    labels = np.full((b, length), -100, dtype=np.int64)
    attn = np.zeros((b, length), dtype=np.int64)
    vis = np.zeros((b, length, length), dtype=bool)
    vis[:, :, 0] = True  # padded query rows still see [CLS] (avoids all-masked softmax rows)
    for i, s in enumerate(seqs):
        ids = np.asarray(s, dtype=np.int64)
        n = len(ids) + 2
        m = whole_word_mask(s, is_cont, cfg.encoder_mask, rng)
        corrupted, lab = mlm_corrupt(ids, m, mask_id, len(tok), rng)
        enc[i, :n] = [cls_id, *corrupted, sep_id]
        orig[i, :n] = [cls_id, *ids, sep_id]
        labels[i, 1 : n - 1] = lab
        attn[i, :n] = 1
        vis[i, :n, :n] = decoder_visibility(s, is_cont, cfg.decoder_visible, rng)
    return {
        "enc": torch.from_numpy(enc),
        "orig": torch.from_numpy(orig),
        "labels": torch.from_numpy(labels),
        "attn": torch.from_numpy(attn),
        "vis": torch.from_numpy(vis),
    }


def pretrain_loss(bert: Any, heads: Any, decoder: Any, batch: dict[str, Any], cfg: Any, tok: Any):
    """``(loss, parts)``: L_dec + bow_weight * L_bow + L_enc, as the reference sums them."""
    import torch
    import torch.nn.functional as F
    from trainlib.dupmae import bow_target, max_over_tokens_argmax

    from embedsvc.strategies.dupmae.model import ordinary_mask

    specials = (tok.cls_token_id, tok.sep_token_id)
    h = bert(input_ids=batch["enc"], attention_mask=batch["attn"]).last_hidden_state
    head = heads.lm_head
    t = head.transform(h)  # [B, L, d]
    weight, bias = head.decoder_weight, head.bias
    lab = batch["labels"]
    l_enc = F.cross_entropy(F.linear(t[lab != -100], weight, bias), lab[lab != -100])
    # BoW on the max over ordinary positions (the original text's layout = the masked input's).
    # The [B, L, V] logits are built without autograd only to find each vocab entry's arg-max
    # position; the B x V winners are recomputed with autograd: same value and gradient as
    # max_over_tokens on full logits, without the [B, L, V] backward (CPU budget).
    ordinary = ordinary_mask(batch["orig"], batch["attn"], specials)
    with torch.no_grad():
        full = F.linear(t, weight, bias)
        argpos = max_over_tokens_argmax(full, ordinary)  # [B, V]
        del full
    ot = torch.stack([(t[i][argpos[i]] * weight).sum(-1) for i in range(t.shape[0])]) + bias
    target = bow_target(batch["orig"], ordinary, weight.shape[0])
    l_bow = -(target * F.log_softmax(ot, dim=-1)).sum(dim=1).mean()
    # enhanced decoder: query = Emb(h_cls + pos), kv = [h_cls ; Emb(original)[1:]]
    cls = h[:, :1]
    emb = bert.embeddings
    query = emb(inputs_embeds=cls.expand(-1, h.shape[1], -1))
    kv = torch.cat([cls, emb(input_ids=batch["orig"])[:, 1:]], dim=1)
    dec = decoder(query, kv, batch["vis"])
    # reconstruct every ordinary token, or a random fraction of them (CPU budget; 1.0 = paper)
    targets = ordinary & (torch.rand(ordinary.shape) < cfg.decoder_positions)
    if not bool(targets.any()):  # tiny batches: never an empty (NaN) loss
        targets = ordinary
    l_dec = F.cross_entropy(head(dec[targets]), batch["orig"][targets])
    loss = l_dec + cfg.bow_weight * l_bow + l_enc
    return loss, {"dec": l_dec.item(), "bow": l_bow.item(), "enc": l_enc.item()}


def ot_recovery(bert: Any, heads: Any, tok: Any, seqs: list[list[int]], bs: int = 32) -> float:
    """Mean over passages of |top-|u|(OT) ∩ u| / |u|, u = unique ordinary tokens, unmasked input.

    The OT vector is the pre-training one (max over ordinary positions of the raw logits).
    """
    import torch
    from trainlib.dupmae import max_over_tokens

    from embedsvc.strategies.dupmae.model import ordinary_mask

    scores = []
    with torch.inference_mode():
        for i in range(0, len(seqs), bs):
            chunk = seqs[i : i + bs]
            length = max(len(s) for s in chunk) + 2
            ids = torch.full((len(chunk), length), tok.pad_token_id, dtype=torch.long)
            attn = torch.zeros_like(ids)
            for j, s in enumerate(chunk):
                ids[j, : len(s) + 2] = torch.tensor([tok.cls_token_id, *s, tok.sep_token_id])
                attn[j, : len(s) + 2] = 1
            h = bert(input_ids=ids, attention_mask=attn).last_hidden_state
            ordinary = ordinary_mask(ids, attn, (tok.cls_token_id, tok.sep_token_id))
            ot = max_over_tokens(heads.lm_head(h), ordinary)
            for j, s in enumerate(chunk):
                u = set(s) - {tok.cls_token_id, tok.sep_token_id}
                top = set(ot[j].topk(len(u)).indices.tolist())
                scores.append(len(top & u) / len(u))
    return float(np.mean(scores)) * 100.0


def run_pretrain(cfg: PretrainConfig, resume: bool) -> dict[str, Any]:
    import torch
    from trainlib.dupmae import EnhancedDecoder, continuation_table

    from embedsvc.backbones import load_backbone
    from embedsvc.strategies.dupmae.model import DupMAEHeads, lora_encoder

    torch.set_num_threads(cfg.threads)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(cfg.model_dump_json(indent=2))
    seed_all(cfg.seed)
    backbone = load_backbone(cfg.backbone)
    tok = backbone.tokenizer
    is_cont = continuation_table(tok)
    texts = load_passages(cfg.passages)
    heldout = texts[-cfg.heldout_passages :]
    train = texts[: cfg.train_passages]
    assert len(texts) >= cfg.train_passages + cfg.heldout_passages, "not enough passages"

    def ids_of(batch: list[str]) -> list[list[int]]:
        enc = tok(batch, add_special_tokens=False, truncation=True, max_length=cfg.max_length - 2)
        return [x for x in enc["input_ids"] if x]

    train_ids = ids_of(train)
    held_ids = ids_of(heldout)

    peft_model = lora_encoder(
        backbone.model, r=cfg.lora_r, alpha=cfg.lora_alpha, dropout=cfg.lora_dropout
    )
    bert = peft_model.get_base_model()
    heads = DupMAEHeads(bert.embeddings.word_embeddings, cfg.cls_dim, seed=cfg.seed)
    c = backbone.model.config
    decoder = EnhancedDecoder(c.hidden_size, c.num_attention_heads, c.intermediate_size)
    body = [p for p in peft_model.parameters() if p.requires_grad] + list(decoder.parameters())
    head_params = list(heads.lm_head.parameters())
    params = body + head_params
    opt = torch.optim.AdamW(
        [{"params": body, "mult": 1.0}, {"params": head_params, "mult": cfg.head_lr_mult}],
        lr=cfg.lr,
        weight_decay=cfg.weight_decay,
    )
    rng = np.random.default_rng(cfg.seed)
    order = np.random.default_rng(cfg.seed).permutation(len(train_ids))
    step, history, metrics = 0, [], {}
    ckpt = out / "checkpoint.pt"
    if resume and ckpt.is_file():
        state = torch.load(ckpt, weights_only=False)
        peft_model.load_state_dict(state["model"], strict=False)
        heads.load_state_dict(state["heads"])
        decoder.load_state_dict(state["decoder"])
        opt.load_state_dict(state["opt"])
        step, history, metrics = state["step"], state["history"], state["metrics"]
        rng.bit_generator.state = state["np_rng"]
        set_rng_state(state["rng"])
    else:
        peft_model.eval()
        metrics["ot_recovery_before"] = ot_recovery(bert, heads, tok, held_ids)
        tqdm.write(f"OT recovery before pre-training: {metrics['ot_recovery_before']:.1f}%")

    def save() -> None:
        lora = {k: v for k, v in peft_model.state_dict().items() if "lora_" in k}
        torch.save(
            {
                "model": lora,
                "heads": heads.state_dict(),
                "decoder": decoder.state_dict(),
                "opt": opt.state_dict(),
                "step": step,
                "history": history,
                "metrics": metrics,
                "np_rng": rng.bit_generator.state,
                "rng": rng_state(),
            },
            ckpt,
        )

    t0 = time.time()
    bar = tqdm(total=cfg.steps, initial=step, desc="dupmae pretrain", unit="step")
    peft_model.train()
    while step < cfg.steps:
        start = (step * cfg.batch_size) % len(order)
        idx = [order[(start + j) % len(order)] for j in range(cfg.batch_size)]
        batch = pretrain_batch([train_ids[i] for i in idx], tok, is_cont, cfg, rng)
        for g in opt.param_groups:
            peak = cfg.lr * g.get("mult", 1.0)
            g["lr"] = lr_at(step, cfg.schedule_steps or cfg.steps, cfg.warmup_frac, peak)
        loss, parts = pretrain_loss(bert, heads, decoder, batch, cfg, tok)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        step += 1
        history.append({"step": step, "loss": loss.item(), **parts})
        if cfg.recovery_every and step % cfg.recovery_every == 0 and step < cfg.steps:
            peft_model.eval()
            history[-1]["ot_recovery"] = ot_recovery(bert, heads, tok, held_ids)
            peft_model.train()
            tqdm.write(f"step {step}: OT recovery {history[-1]['ot_recovery']:.1f}%")
        bar.set_postfix(loss=f"{loss.item():.2f}", **{k: f"{v:.2f}" for k, v in parts.items()})
        bar.update(1)
        if step % cfg.save_every == 0 or step == cfg.steps:
            save()
    bar.close()
    peft_model.eval()
    metrics["ot_recovery_after"] = ot_recovery(bert, heads, tok, held_ids)
    metrics["train_seconds_this_session"] = round(time.time() - t0, 1)
    tqdm.write(f"OT recovery after pre-training: {metrics['ot_recovery_after']:.1f}%")
    save()
    (out / "metrics.json").write_text(
        json.dumps({"metrics": metrics, "history": history}, indent=1)
    )
    if cfg.ship:
        files = {Path(p).name: sha256_file(Path(p)) for p in cfg.passages}
        ship(
            Path(cfg.ship),
            peft_model,
            heads,
            backbone,
            head_config={
                "cls_dim": cfg.cls_dim,
                "ot_dim": cfg.ot_dim,
                "top_k": cfg.top_k,
                "cls_weight": cfg.cls_weight,
                "hash_seed": cfg.seed,
                "stage": "pretrained",
            },
            manifest={
                "stage": "pretrained",
                "data": {
                    "passages": files,
                    "train_passages": f"first {cfg.train_passages} of the files in order",
                    "heldout_passages": f"last {cfg.heldout_passages}",
                },
                "config": cfg.model_dump(mode="json"),
                "steps": step,
                "seed": cfg.seed,
                "eval": metrics,
                "final_loss": history[-1] if history else None,
            },
        )
    return metrics


def ship(
    folder: Path,
    peft_model: Any,
    heads: Any,
    backbone: Any,
    *,
    head_config: dict[str, Any],
    manifest: dict[str, Any],
) -> None:
    """Write the small artifact: LoRA adapter, heads (safetensors), head_config, manifest."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    peft_model.save_pretrained(folder / "adapter")
    (folder / "adapter" / "README.md").unlink(missing_ok=True)  # peft's boilerplate model card
    tensors = {k: v.detach().contiguous() for k, v in heads.state_dict().items()}
    save_file(tensors, folder / "heads.safetensors")
    (folder / "head_config.json").write_text(json.dumps(head_config, indent=2))
    manifest = {
        "strategy": "dupmae",
        "base_model": {"name": backbone.name, "fingerprint": backbone.fingerprint},
        **manifest,
        "command": command_line(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "files": {
            str(p.relative_to(folder)): sha256_file(p)
            for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name not in ("manifest.json", "README.md")
        },
    }
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2))


# -------------------------------------------------------------------------------- fine-tuning


def load_triplets(path: Path, limit: int, data_seed: int) -> list[tuple[str, str, str]]:
    """A fixed random subset (``data_seed``, independent of the training seed) of the triplets."""
    with Path(path).open(newline="", encoding="utf-8") as fh:
        rows = [
            (r["sent0"], r["sent1"], r["hard_neg"])
            for r in csv.DictReader(fh)
            if r.get("sent0") and r.get("sent1") and r.get("hard_neg")
        ]
    random.Random(data_seed).shuffle(rows)
    return rows[:limit] if limit > 0 else rows


def channel_scores(model: Any, texts: list[str], max_length: int):
    """``(cls [n, c] unit, ot [n, V] unit top-k sparse)`` with gradients, for the loss."""
    import torch.nn.functional as F
    from trainlib.dupmae import sparse_from_topk

    from embedsvc.strategies.dupmae.model import ordinary_mask, ot_topk

    tok = model["tok"]
    enc = tok(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    h = model["bert"](
        input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]
    ).last_hidden_state
    heads = model["heads"]
    cls = F.normalize(heads.cls_reduce(h[:, 0]), dim=-1)
    ordinary = ordinary_mask(
        enc["input_ids"], enc["attention_mask"], (tok.cls_token_id, tok.sep_token_id)
    )
    values, indices = ot_topk(h, ordinary, heads.lm_head, model["top_k"])
    return cls, sparse_from_topk(values, indices, len(tok))


def run_finetune(cfg: FinetuneConfig, resume: bool) -> dict[str, Any]:
    import torch
    import torch.nn.functional as F
    from safetensors.torch import load_file

    from embedsvc.backbones import load_backbone
    from embedsvc.strategies.dupmae.model import DupMAEHeads, lora_encoder

    torch.set_num_threads(cfg.threads)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(cfg.model_dump_json(indent=2))
    seed_all(cfg.seed)
    init = Path(cfg.init)
    init_manifest = json.loads((init / "manifest.json").read_text())
    head_cfg = json.loads((init / "head_config.json").read_text())
    backbone = load_backbone(init_manifest["base_model"]["name"])
    peft_model = lora_encoder(backbone.model, adapter_dir=str(init / "adapter"), trainable=True)
    bert = peft_model.get_base_model()
    heads = DupMAEHeads(bert.embeddings.word_embeddings, head_cfg["cls_dim"])
    heads.load_state_dict(load_file(init / "heads.safetensors"))
    model = {"bert": bert, "heads": heads, "tok": backbone.tokenizer, "top_k": head_cfg["top_k"]}
    w = float(head_cfg["cls_weight"])
    rows = load_triplets(Path(cfg.triplets), cfg.max_triplets, cfg.data_seed)
    params = [p for p in peft_model.parameters() if p.requires_grad] + list(heads.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    order = np.random.default_rng(cfg.seed).permutation(len(rows))
    step, history = 0, []
    ckpt = out / "checkpoint.pt"
    if resume and ckpt.is_file():
        state = torch.load(ckpt, weights_only=False)
        peft_model.load_state_dict(state["model"], strict=False)
        heads.load_state_dict(state["heads"])
        opt.load_state_dict(state["opt"])
        step, history = state["step"], state["history"]
        set_rng_state(state["rng"])

    def save() -> None:
        lora = {k: v for k, v in peft_model.state_dict().items() if "lora_" in k}
        torch.save(
            {
                "model": lora,
                "heads": heads.state_dict(),
                "opt": opt.state_dict(),
                "step": step,
                "history": history,
                "rng": rng_state(),
            },
            ckpt,
        )

    def info_nce(scores: torch.Tensor) -> torch.Tensor:
        # rows = anchors; columns = [positives ; hard negatives]; the diagonal is the positive
        return F.cross_entropy(scores * cfg.scale, torch.arange(scores.shape[0]))

    t0 = time.time()
    peft_model.train()
    bar = tqdm(total=cfg.steps, initial=step, desc="dupmae finetune", unit="step")
    while step < cfg.steps:
        start = (step * cfg.batch_size) % len(order)
        batch = [rows[order[(start + j) % len(order)]] for j in range(cfg.batch_size)]
        anchors = [r[0] for r in batch]
        docs = [r[1] for r in batch] + [r[2] for r in batch]
        for g in opt.param_groups:
            g["lr"] = lr_at(step, cfg.schedule_steps or cfg.steps, cfg.warmup_frac, cfg.lr)
        qc, qo = channel_scores(model, anchors, cfg.max_length)
        dc, do = channel_scores(model, docs, cfg.max_length)
        s_cls, s_ot = qc @ dc.T, qo @ do.T
        parts = {
            "cls": info_nce(s_cls),
            "ot": info_nce(s_ot),
            "both": info_nce(w * s_cls + (1 - w) * s_ot),
        }
        loss = sum(parts.values())
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        step += 1
        history.append(
            {"step": step, "loss": float(loss), **{k: float(v) for k, v in parts.items()}}
        )
        bar.set_postfix(**{k: f"{float(v):.2f}" for k, v in parts.items()})
        bar.update(1)
        if step % cfg.save_every == 0 or step == cfg.steps:
            save()
    bar.close()
    metrics = {"train_seconds_this_session": round(time.time() - t0, 1)}
    (out / "metrics.json").write_text(
        json.dumps({"metrics": metrics, "history": history}, indent=1)
    )
    if cfg.ship:
        ship(
            Path(cfg.ship),
            peft_model,
            heads,
            backbone,
            head_config={
                **head_cfg,
                "stage": "finetuned",
                "cls_weight": cfg.ship_cls_weight or head_cfg["cls_weight"],
                "ot_dim": cfg.ship_ot_dim or head_cfg["ot_dim"],
            },
            manifest={
                "stage": "finetuned",
                "init": {
                    "artifact": cfg.init,
                    "manifest_sha256": sha256_file(init / "manifest.json"),
                },
                "data": {
                    "triplets": {Path(cfg.triplets).name: sha256_file(Path(cfg.triplets))},
                    "subset": f"{cfg.max_triplets} rows shuffled with data_seed {cfg.data_seed}",
                },
                "config": cfg.model_dump(mode="json"),
                "steps": step,
                "seed": cfg.seed,
                "eval": metrics,
                "final_loss": history[-1] if history else None,
            },
        )
    return metrics


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["pretrain", "finetune"])
    parser.add_argument("--config", type=Path, help="JSON config (fields of the command's model)")
    parser.add_argument("--resume", action="store_true", help="continue from <out>/checkpoint.pt")
    parser.add_argument("--set", nargs="*", default=[], help="overrides key=value (JSON values)")
    args = parser.parse_args(argv)
    cls = PretrainConfig if args.command == "pretrain" else FinetuneConfig
    values: dict[str, Any] = json.loads(args.config.read_text()) if args.config else {}
    for item in args.set:
        key, _, raw = item.partition("=")
        try:
            values[key] = json.loads(raw)
        except json.JSONDecodeError:
            values[key] = raw
    cfg = cls(**values)
    run = run_pretrain if args.command == "pretrain" else run_finetune
    print(json.dumps(run(cfg, args.resume), indent=2))


if __name__ == "__main__":
    main()
