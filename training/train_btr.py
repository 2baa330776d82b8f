"""Train the BTR calibration (and a low-rank adapter) that restores quality of binary token codes.

The backbone (MiniLM) stays frozen. Per passage: lower blocks ``0..cut-1`` give the states that
are binarised; the trainable :class:`~embedsvc.strategies.btr.model.Calibration` turns bits +
per-token scales back into states; the frozen upper blocks run on them. The objective distils
the float model's upper-layer output from that binary path (``1 - cos`` of the pooled sentence
embedding + ``token_weight`` x ``1 - cos`` per token state), with a straight-through sign
(``--binarizer ste``, default) or HashNet's ``tanh(beta x)`` with ``beta = sqrt(1 + gamma step)``
(``--binarizer hashnet``; evaluation always uses the hard sign).

The sentence-code projection (PCA -> random rotation, ``bits`` wide) is fitted on the float
pooled embeddings of the same passages. Every run writes ``config.json``, a resumable
``checkpoint.pt`` and ``metrics.json`` into ``--out``; ``--ship`` writes the small artifact
``embedsvc/artifacts/btr/`` (``btr.npz`` + ``btr_config.json`` + ``manifest.json``).

    .venv/bin/python training/train_btr.py --out runs/btr-s0 --ship
    .venv/bin/python training/train_btr.py --config runs/btr-s0/config.json --resume
"""

from __future__ import annotations

import argparse
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

DATA = Path("/work/shared/data/train/wiki_en")
ROOT = Path(__file__).resolve().parents[1]
ARTIFACT = ROOT / "embedsvc" / "artifacts" / "btr"


class TrainConfig(BaseModel):
    """Everything that determines a run (written to ``<out>/config.json``)."""

    model_config = {"extra": "forbid"}

    backbone: str = "minilm"
    cut: int = Field(4, ge=1)
    rank: int = Field(32, ge=0)
    bits: int = Field(256, ge=8)
    binarizer: str = Field("ste", pattern="^(ste|hashnet)$")
    gamma: float = 0.1
    #: training passages (part2: part1 builds the sense dictionary) and held-out ones (part3)
    train_file: str = str(DATA / "passages_part2.jsonl")
    eval_file: str = str(DATA / "passages_part3.jsonl")
    train_passages: int = 600
    eval_passages: int = 100
    max_length: int = 128
    steps: int = 200
    batch_size: int = 8
    lr: float = 2e-3
    token_weight: float = 0.5
    seed: int = 0
    threads: int = 2
    save_every: int = 50
    out: str = "runs/btr"


def read_passages(path: str, limit: int) -> list[str]:
    out = []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                out.append(json.loads(line)["text"])
            if len(out) >= limit:
                break
    return out


def precompute(bb: Any, texts: list[str], cfg: TrainConfig, desc: str) -> list[dict[str, Any]]:
    """Per batch-of-one-passage tensors: ids, mask, cut states, final states, pooled embedding.

    The frozen backbone means these never change, so they are computed once (no grad)."""
    import torch

    from embedsvc.backbones.layers import lower_states, upper_states
    from embedsvc.strategies.pooling import masked_mean

    items = []
    with torch.inference_mode():
        for lo in tqdm(range(0, len(texts), 16), desc=desc, unit="batch"):
            enc = bb.tokenizer(
                texts[lo : lo + 16],
                padding=True,
                truncation=True,
                max_length=cfg.max_length,
                return_tensors="pt",
            )
            low = lower_states(bb.model, enc["input_ids"], enc["attention_mask"], cfg.cut)
            top = upper_states(bb.model, low, enc["attention_mask"], cfg.cut)
            pooled = masked_mean(top, enc["attention_mask"])
            for i in range(low.shape[0]):
                n = int(enc["attention_mask"][i].sum())
                items.append(
                    {
                        "low": low[i, :n].clone(),
                        "top": top[i, :n].clone(),
                        "pooled": pooled[i].clone(),
                    }
                )
    return items


def collate(items: list[dict[str, Any]]):
    import torch

    n = max(x["low"].shape[0] for x in items)
    d = items[0]["low"].shape[1]
    low = torch.zeros(len(items), n, d)
    top = torch.zeros(len(items), n, d)
    mask = torch.zeros(len(items), n, dtype=torch.long)
    for i, x in enumerate(items):
        k = x["low"].shape[0]
        low[i, :k], top[i, :k], mask[i, :k] = x["low"], x["top"], 1
    pooled = torch.stack([x["pooled"] for x in items])
    return low, top, mask, pooled


def evaluate(bb: Any, calib: Any, items: list[dict[str, Any]], cut: int) -> dict[str, float]:
    """Cosine of the pooled embedding recomputed from codes to the float one: naive sign,
    calibrated (statistics only) and the current (trained) calibration."""
    import torch
    import torch.nn.functional as F

    from embedsvc.backbones.layers import upper_states
    from embedsvc.strategies.btr.model import naive_roundtrip
    from embedsvc.strategies.pooling import masked_mean

    cos: dict[str, list[float]] = {"naive": [], "current": []}
    with torch.inference_mode():
        for lo in range(0, len(items), 16):
            low, _, mask, pooled = collate(items[lo : lo + 16])
            for name, h in (("naive", naive_roundtrip(low)), ("current", calib.roundtrip(low))):
                out = masked_mean(upper_states(bb.model, h, mask, cut), mask)
                cos[name] += F.cosine_similarity(out, pooled, dim=-1).tolist()
    return {
        f"{k}_{stat}": float(f(v))
        for k, v in cos.items()
        for stat, f in (("mean_cos", np.mean), ("median_cos", np.median))
    }


def train(cfg: TrainConfig, *, resume: bool = False, ship: bool = False, command: str = "") -> dict:
    import torch
    import torch.nn.functional as F
    from trainlib.btr import fit_calibration, fit_projection

    from embedsvc.backbones import load_backbone
    from embedsvc.backbones.layers import upper_states
    from embedsvc.strategies.btr.model import Calibration
    from embedsvc.strategies.pooling import masked_mean

    torch.set_num_threads(cfg.threads)
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(cfg.model_dump_json(indent=2))
    start = time.time()

    bb = load_backbone(cfg.backbone)
    for p in bb.model.parameters():
        p.requires_grad_(False)
    train_items = precompute(
        bb, read_passages(cfg.train_file, cfg.train_passages), cfg, "train states"
    )
    eval_items = precompute(bb, read_passages(cfg.eval_file, cfg.eval_passages), cfg, "eval states")

    flat = torch.cat([x["low"] for x in train_items]).numpy()
    centre, mag = fit_calibration(flat)
    proj_centre, projection = fit_projection(
        torch.stack([x["pooled"] for x in train_items]).numpy(), cfg.bits, cfg.seed
    )
    calib = Calibration(centre, mag, cfg.rank)
    init = {"init_centre": centre, "init_mag": mag}  # shipped: the statistics-only ablation
    metrics: dict[str, Any] = {"calibrated": evaluate(bb, calib, eval_items, cfg.cut)}
    opt = torch.optim.Adam(calib.parameters(), lr=cfg.lr)
    step = 0
    ckpt = out / "checkpoint.pt"
    if resume and ckpt.is_file():
        state = torch.load(ckpt, weights_only=False)
        calib.load_state_dict(state["calib"])
        opt.load_state_dict(state["opt"])
        step = int(state["step"])
        torch.set_rng_state(state["torch_rng"])
        random.setstate(state["py_rng"])

    def save_ckpt() -> None:
        tmp = ckpt.with_suffix(".tmp")
        torch.save(
            {
                "calib": calib.state_dict(),
                "opt": opt.state_dict(),
                "step": step,
                "torch_rng": torch.get_rng_state(),
                "py_rng": random.getstate(),
            },
            tmp,
        )
        tmp.replace(ckpt)

    losses: list[float] = []
    bar = tqdm(total=cfg.steps, initial=step, desc="train", unit="step")
    while step < cfg.steps:
        # cosine decay to 10% of lr: a short run should still settle
        lr = cfg.lr * (0.1 + 0.9 * 0.5 * (1 + np.cos(np.pi * step / cfg.steps)))
        for g in opt.param_groups:
            g["lr"] = lr
        batch = random.sample(train_items, min(cfg.batch_size, len(train_items)))
        low, top, mask, pooled = collate(batch)
        beta = float(np.sqrt(1 + cfg.gamma * step))
        h = calib.roundtrip(low, mode=cfg.binarizer, beta=beta)
        pred = upper_states(bb.model, h, mask, cfg.cut)
        sent = 1 - F.cosine_similarity(masked_mean(pred, mask), pooled, dim=-1).mean()
        tok_cos = F.cosine_similarity(pred, top, dim=-1)
        tok = ((1 - tok_cos) * mask).sum() / mask.sum()
        loss = sent + cfg.token_weight * tok
        opt.zero_grad()
        loss.backward()
        opt.step()
        step += 1
        losses.append(loss.item())
        bar.update(1)
        bar.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}")
        if step % cfg.save_every == 0 or step == cfg.steps:
            save_ckpt()
    bar.close()
    metrics["trained"] = evaluate(bb, calib, eval_items, cfg.cut)
    metrics["final_loss"] = float(np.mean(losses[-20:])) if losses else None
    metrics["seconds"] = round(time.time() - start, 1)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    print(json.dumps(metrics, indent=2))
    if ship:
        ship_artifact(cfg, calib, proj_centre, projection, bb, metrics, command, ARTIFACT, init)
    return metrics


def ship_artifact(
    cfg: TrainConfig,
    calib: Any,
    proj_centre: np.ndarray,
    projection: np.ndarray,
    bb: Any,
    metrics: dict,
    command: str,
    directory: Path,
    extra: dict[str, np.ndarray] | None = None,
) -> Path:
    """Write the small, committed artifact the ``btr`` strategy loads."""
    directory.mkdir(parents=True, exist_ok=True)
    arrays = {k: v.detach().float().numpy() for k, v in calib.state_dict().items()}
    arrays["proj_centre"] = proj_centre
    arrays["projection"] = projection
    arrays.update(extra or {})
    np.savez(directory / "btr.npz", **arrays)
    (directory / "btr_config.json").write_text(
        json.dumps({"cut": cfg.cut, "rank": cfg.rank, "bits": cfg.bits}, indent=2)
    )
    manifest = {
        "kind": "btr-calibration",
        "base_model": cfg.backbone,
        "base_fingerprint": bb.fingerprint,
        "data": [
            {
                "path": cfg.train_file,
                "sha256": sha256_file(Path(cfg.train_file)),
                "passages": cfg.train_passages,
            },
            {
                "path": cfg.eval_file,
                "sha256": sha256_file(Path(cfg.eval_file)),
                "passages": cfg.eval_passages,
            },
        ],
        "steps": cfg.steps,
        "seed": cfg.seed,
        "config": cfg.model_dump(),
        "eval": metrics,
        "weights_sha256": sha256_file(directory / "btr.npz"),
        "command": command,
    }
    (directory / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return directory


def parse_args(argv: list[str] | None = None) -> tuple[TrainConfig, bool, bool]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", type=Path, help="JSON config file (flags override it)")
    ap.add_argument("--resume", action="store_true", help="continue from <out>/checkpoint.pt")
    ap.add_argument("--ship", action="store_true", help="write embedsvc/artifacts/btr when done")
    for name, f in TrainConfig.model_fields.items():
        typ = {int: int, float: float}.get(f.annotation, str)  # type: ignore[arg-type]
        ap.add_argument("--" + name.replace("_", "-"), type=typ, default=None)
    args = ap.parse_args(argv)
    base: dict[str, Any] = json.loads(args.config.read_text()) if args.config else {}
    for name in TrainConfig.model_fields:
        v = getattr(args, name)
        if v is not None:
            base[name] = v
    return TrainConfig(**base), args.resume, args.ship


def main(argv: list[str] | None = None) -> None:
    cfg, resume, ship = parse_args(argv)
    cmd = " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv])
    train(cfg, resume=resume, ship=ship, command=cmd)


if __name__ == "__main__":
    main()
