"""Text2Token training, stage 1 (data-driven targets) and stage 2 (model-derived targets).

Reference
    "Text2Token: Unsupervised Text Representation Learning with Token Target Prediction";
    GDNL-ACT/anruize_target_learn (``aa_gene_train.py``, ``aa_dataset.py``, ``genRep.py``).

Loss: ``KL(target || softmax(head(mean_pool(h_last))))`` (batchmean), LoRA on the attention
projections (r=16, alpha=32, dropout 0.05), constant LR (the reference's callback stops at step
100 of a one-epoch linear decay, so its LR stays ~flat), grad-clip 1.0, weight decay 0.

* Stage 1: target = uniform over the text's unique content tokens (``trainlib/t2t_targets.py``).
* Stage 2: starts from a *stage-1 checkpoint* (``init_step``, the reference carries step 5)
  with that adapter merged, a fresh LoRA on top; target = ``softmax((p/(p+q+1e-8))/tau)`` with
  ``p`` the frozen stage-1 model's distribution (the new adapter disabled) and ``q`` the softmax
  of the corpus-average stage-1 logits over the stage-2 training texts (computed once, cached).

Every run writes ``config.json``, ``checkpoint.pt`` (resumable), ``adapter-step-N/`` for every
``keep_steps`` entry, ``metrics.json``; ``ship`` writes the small artifact
(adapters + head for MiniLM + t2t_config.json + manifest.json). Evaluation: STS-B dev Spearman
on a seeded pair subset (``sts_pairs``; 0 = all 1500) before and after, and precision@10 of
the predicted tokens against the stage-1 target set on held-out sentences.

    .venv/bin/python training/train_text2token.py --config training/configs/t2t_smollm2_stage1.json
    .venv/bin/python training/train_text2token.py --config training/configs/t2t_smollm2_stage2.json
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


class T2TConfig(BaseModel):
    """Everything that determines a run (written to ``<out>/config.json``)."""

    model_config = {"extra": "forbid"}

    stage: int = Field(1, ge=1, le=2)
    seed: int = 0
    backbone: str = "smollm2"
    sentences: str = str(DATA / "train/wiki_en/sentences_part1.txt")
    #: training texts: a contiguous slice of the sentence file (stage 2 uses a later slice)
    text_offset: int = 0
    train_texts: int = 2000
    heldout_texts: int = 64
    max_length: int = 32
    steps: int = 30
    batch_size: int = 8
    lr: float = 1e-4
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    tau: float = 1e-4
    #: stage 2: the stage-1 run folder and which saved step to start from
    init_run: str | None = None
    init_step: int = 5
    #: stage 2: how many training texts the corpus prior is averaged over
    prior_texts: int = 256
    keep_steps: list[int] = [5]
    save_every: int = 10
    sts_file: str = str(DATA / "stsb/sts-dev.csv")
    sts_pairs: int = 200
    eval_batch: int = 32
    threads: int = 2
    out: str = "runs/t2t"
    ship: str | None = None


def read_sentences(path: Path, offset: int, n: int) -> list[str]:
    out: list[str] = []
    with Path(path).open(encoding="utf-8") as fh:
        for i, line in enumerate(fh):
            if i < offset:
                continue
            if line.strip():
                out.append(line.strip())
            if len(out) >= n:
                break
    return out


def sts_subset(path: Path, n: int) -> tuple[list[str], list[str], np.ndarray]:
    """STS-B dev pairs: all, or a seeded (0) random subset of ``n`` (CPU budget)."""
    rows = []
    with Path(path).open(encoding="utf-8") as fh:
        for rec in csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE):
            if len(rec) >= 7:
                rows.append((rec[5], rec[6], float(rec[4])))
    if 0 < n < len(rows):
        rows = random.Random(0).sample(rows, n)
    return [r[0] for r in rows], [r[1] for r in rows], np.array([r[2] for r in rows])


def embed(model: Any, tok: Any, texts: list[str], max_length: int, bs: int) -> np.ndarray:
    """``[n, d]`` mean-pooled states through the served pipeline's runner and core."""
    from embedsvc.strategies.features import pad_batch, tokenize
    from embedsvc.strategies.runner import CoreExecutor, map_batches
    from embedsvc.strategies.text2token.model import pooled_core

    assert texts, "no texts to embed"
    feats = tokenize(tok, texts, max_length)
    executor = CoreExecutor(pooled_core(model))

    def run(idx: np.ndarray) -> dict[str, np.ndarray]:
        feeds = pad_batch([feats.ids[i] for i in idx], tok.pad_token_id)
        return {"vec": executor.run(feeds)["embedding"]}

    return map_batches([len(x) for x in feats.ids], run, bs)["vec"]


def evaluate(model: Any, head: Any, tok: Any, cfg: T2TConfig, held: list[str], excl: set[int]):
    """STS-B (subset) Spearman x100 and token precision@10 against the stage-1 target set."""
    import torch
    from scipy.stats import spearmanr
    from trainlib.t2t_targets import content_ids

    from embedsvc.strategies.text2token.model import pooled

    res: dict[str, float] = {}
    if cfg.sts_file and cfg.sts_pairs >= 0:
        s1, s2, gold = sts_subset(Path(cfg.sts_file), cfg.sts_pairs)
        a = embed(model, tok, s1, cfg.max_length, cfg.eval_batch)
        b = embed(model, tok, s2, cfg.max_length, cfg.eval_batch)
        cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12)
        res["sts_spearman"] = float(spearmanr(cos, gold).statistic) * 100.0
        res["sts_pairs"] = len(gold)
    precs = []
    with torch.inference_mode():
        enc = tok(
            held, padding=True, truncation=True, max_length=cfg.max_length, return_tensors="pt"
        )
        logits = head(pooled(model, enc["input_ids"], enc["attention_mask"]))
        for j, text in enumerate(held):
            gold_ids = set(content_ids(text, tok, excl))
            if gold_ids:
                top = logits[j].topk(10).indices.tolist()
                precs.append(len(gold_ids.intersection(top)) / 10)
    res["token_p@10"] = float(np.mean(precs)) * 100.0
    return res


def corpus_prior(model: Any, head: Any, tok: Any, texts: list[str], cfg: T2TConfig):
    """``[V]`` mean of the frozen model's logits over ``texts`` (the stage-2 prior theta)."""
    import torch

    from embedsvc.strategies.text2token.model import pooled

    total = None
    with torch.inference_mode():
        for s in tqdm(range(0, len(texts), cfg.eval_batch), desc="corpus prior", unit="batch"):
            enc = tok(
                texts[s : s + cfg.eval_batch],
                padding=True,
                truncation=True,
                max_length=cfg.max_length,
                return_tensors="pt",
            )
            lg = head(pooled(model, enc["input_ids"], enc["attention_mask"])).float().sum(0)
            total = lg if total is None else total + lg
    return total / len(texts)


def run(cfg: T2TConfig, resume: bool) -> dict[str, Any]:
    import torch
    import torch.nn.functional as F
    from safetensors.torch import load_file, save_file
    from trainlib.t2t_targets import VocabHead, data_targets, excluded_ids, model_targets

    from embedsvc.backbones import load_backbone
    from embedsvc.strategies.text2token.model import build_model, pooled

    torch.set_num_threads(cfg.threads)
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(cfg.model_dump_json(indent=2))
    backbone = load_backbone(cfg.backbone)
    tok = backbone.tokenizer
    excl = set(excluded_ids(tok))
    texts = read_sentences(
        Path(cfg.sentences), cfg.text_offset, cfg.train_texts + cfg.heldout_texts
    )
    held, train = texts[-cfg.heldout_texts :], texts[: cfg.train_texts]
    merge: list[Path] = []
    head_state = None
    init_metrics: dict[str, Any] = {}
    if cfg.stage == 2:
        if not cfg.init_run:
            raise SystemExit("stage 2 needs init_run (a stage-1 run folder)")
        init = Path(cfg.init_run)
        merge = [init / f"adapter-step-{cfg.init_step}"]
        if (merge[0] / "head.safetensors").is_file():
            head_state = load_file(merge[0] / "head.safetensors")
        init_metrics = json.loads((init / "metrics.json").read_text())["metrics"]
    lora = {"r": cfg.lora_r, "alpha": cfg.lora_alpha, "dropout": cfg.lora_dropout}
    model = build_model(backbone, merge, new_lora=lora)
    head = VocabHead(model, backbone.kind)
    if head_state is not None:
        head.load_state_dict(head_state)
    vocab = head(torch.zeros(1, backbone.hidden_size)).shape[-1]
    excl_mask = torch.zeros(vocab, dtype=torch.bool)
    excl_mask[sorted(i for i in excl if i < vocab)] = True
    train_head = backbone.kind == "encoder" and cfg.stage == 1
    params = [p for p in model.parameters() if p.requires_grad]
    if train_head:
        params += list(head.parameters())
    else:
        head.requires_grad_(False)
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    metrics: dict[str, Any] = {}
    step, history = 0, []
    ckpt = out / "checkpoint.pt"
    prior = None
    if cfg.stage == 2:
        prior_path = out / "prior.pt"
        if prior_path.is_file():
            prior = torch.load(prior_path)
        else:
            with model.disable_adapter():
                prior = corpus_prior(model, head, tok, train[: cfg.prior_texts], cfg)
            torch.save(prior, prior_path)
    if resume and ckpt.is_file():
        state = torch.load(ckpt, weights_only=False)
        model.load_state_dict(state["model"], strict=False)
        head.load_state_dict(state["head"])
        opt.load_state_dict(state["opt"])
        step, history, metrics = state["step"], state["history"], state["metrics"]
        torch.set_rng_state(state["torch_rng"])
    else:
        model.eval()
        if cfg.stage == 1:
            with model.disable_adapter():
                metrics["before"] = evaluate(model, head, tok, cfg, held, excl)
            tqdm.write(f"before (untrained): {metrics['before']}")
        else:
            metrics["stage1_final"] = init_metrics.get("after")

    def save_adapter(folder: Path) -> None:
        model.save_pretrained(folder)
        (folder / "README.md").unlink(missing_ok=True)
        if backbone.kind == "encoder":
            save_file(
                {k: v.contiguous() for k, v in head.state_dict().items()},
                folder / "head.safetensors",
            )

    def save() -> None:
        lora_sd = {k: v for k, v in model.state_dict().items() if "lora_" in k}
        torch.save(
            {
                "model": lora_sd,
                "head": head.state_dict(),
                "opt": opt.state_dict(),
                "step": step,
                "history": history,
                "metrics": metrics,
                "torch_rng": torch.get_rng_state(),
            },
            ckpt,
        )

    order = np.random.default_rng(cfg.seed).permutation(len(train))
    t0 = time.time()
    model.train()
    bar = tqdm(total=cfg.steps, initial=step, desc=f"text2token stage {cfg.stage}", unit="step")
    while step < cfg.steps:
        s = (step * cfg.batch_size) % len(order)
        batch = [train[order[(s + j) % len(order)]] for j in range(cfg.batch_size)]
        enc = tok(
            batch, padding=True, truncation=True, max_length=cfg.max_length, return_tensors="pt"
        )
        if cfg.stage == 1:
            target = data_targets(batch, tok, excl, vocab)
        else:
            with torch.no_grad(), model.disable_adapter():
                frozen = head(pooled(model, enc["input_ids"], enc["attention_mask"]))
            target = model_targets(frozen, prior, cfg.tau, excl_mask)
        keep = target.sum(1) > 0
        logp = F.log_softmax(
            head(pooled(model, enc["input_ids"], enc["attention_mask"])).float(), -1
        )
        loss = F.kl_div(logp[keep], target[keep], reduction="batchmean")
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        step += 1
        history.append({"step": step, "loss": loss.item()})
        bar.set_postfix(loss=f"{loss.item():.3f}")
        bar.update(1)
        if step in cfg.keep_steps:
            save_adapter(out / f"adapter-step-{step}")
        if step % cfg.save_every == 0 or step == cfg.steps:
            save()
    bar.close()
    model.eval()
    metrics["after"] = evaluate(model, head, tok, cfg, held, excl)
    metrics["train_seconds_this_session"] = round(time.time() - t0, 1)
    tqdm.write(f"after: {metrics['after']}")
    save()
    save_adapter(out / "adapter-final")
    (out / "metrics.json").write_text(
        json.dumps({"metrics": metrics, "history": history}, indent=1)
    )
    if cfg.ship:
        ship(cfg, backbone, out, merge, metrics)
    return metrics


def half_precision(path: Path) -> None:
    """Store an adapter's float32 tensors as float16: halves the committed artifact (PEFT casts
    them back to the model's dtype when it loads them; cosine to the fp32 adapter's embeddings
    is checked by ``tests/training/test_text2token_trainer.py``)."""
    import torch
    from safetensors.torch import load_file, save_file

    tensors = load_file(path)
    save_file(
        {k: v.half() if v.dtype == torch.float32 else v for k, v in tensors.items()},
        path,
        metadata={"format": "pt"},
    )


def ship(cfg: T2TConfig, backbone: Any, out: Path, merge: list[Path], metrics: dict) -> None:
    """Artifact: ``adapters/0..n`` (merged in order at load), head for MiniLM, configs."""
    import shutil

    folder = Path(cfg.ship)
    if folder.exists():
        shutil.rmtree(folder)
    (folder / "adapters").mkdir(parents=True)
    chain = [*merge, out / "adapter-final"]
    for i, src in enumerate(chain):
        shutil.copytree(src, folder / "adapters" / str(i))
        half_precision(folder / "adapters" / str(i) / "adapter_model.safetensors")
    last_head = out / "adapter-final" / "head.safetensors"
    if last_head.is_file():
        shutil.copy(last_head, folder / "head.safetensors")
    (folder / "t2t_config.json").write_text(
        json.dumps({"stage": cfg.stage, "adapters": len(chain), "pooling": "mean"}, indent=2)
    )
    files = {
        str(p.relative_to(folder)): sha256_file(p) for p in sorted(folder.rglob("*")) if p.is_file()
    }
    manifest = {
        "strategy": "text2token",
        "stage": cfg.stage,
        "base_model": {"name": backbone.name, "fingerprint": backbone.fingerprint},
        "data": {
            Path(cfg.sentences).name: sha256_file(Path(cfg.sentences)),
            "slice": f"lines from {cfg.text_offset}: {cfg.train_texts} train, "
            f"{cfg.heldout_texts} held out",
        },
        "config": cfg.model_dump(mode="json"),
        "steps": cfg.steps,
        "seed": cfg.seed,
        "eval": metrics,
        "command": " ".join(shlex.quote(a) for a in [".venv/bin/python", *sys.argv]),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "files": files,
    }
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--set", nargs="*", default=[], help="overrides key=value (JSON values)")
    args = parser.parse_args(argv)
    values: dict[str, Any] = json.loads(args.config.read_text()) if args.config else {}
    for item in args.set:
        key, _, raw = item.partition("=")
        try:
            values[key] = json.loads(raw)
        except json.JSONDecodeError:
            values[key] = raw
    print(json.dumps(run(T2TConfig(**values), args.resume), indent=2))


if __name__ == "__main__":
    main()
