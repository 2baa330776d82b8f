"""Distil the multi-sense teacher into a truncated student (SenseDict knowledge distillation).

Student = the first ``layers`` MiniLM blocks (frozen: they *are* the teacher's lower blocks, so
nothing but the head needs shipping) + a trainable ``Linear(384, 384)`` head. For every token
that has senses in the dictionary, the target is the teacher's sense (nearest L2 centroid of
the teacher's last-layer state) and the loss is cross-entropy over **that token's own senses**
with logits ``<z, s_j> - |s_j|^2 / 2`` (techniques.md section 6 pitfall: classification over the
token's sense list, not regression onto teacher states). Tokens with one sense carry no signal
and are skipped. At inference the predicted sense vector replaces the token
(``multisense_student``).

Writes ``config.json``, a resumable ``checkpoint.pt`` and ``metrics.json`` (held-out sense
accuracy) into ``--out``; ``--ship`` writes ``embedsvc/artifacts/multisense-student/``
(``head.npz`` fp16 + ``student_config.json`` + ``manifest.json``).

    .venv/bin/python training/train_sense_student.py --out runs/student-s0 --ship
"""

from __future__ import annotations

import argparse
import hashlib
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

DATA = Path("/work/shared/data/train/wiki_en")
ROOT = Path(__file__).resolve().parents[1]
ARTIFACT = ROOT / "embedsvc" / "artifacts" / "multisense-student"


class TrainConfig(BaseModel):
    model_config = {"extra": "forbid"}

    backbone: str = "minilm"
    dictionary: str | None = None
    layers: int = Field(3, ge=1)
    #: part4: part1 built the dictionary, part2/3 trained BTR
    train_file: str = str(DATA / "passages_part4.jsonl")
    train_passages: int = 400
    eval_passages: int = 60
    max_length: int = 96
    steps: int = 300
    batch_tokens: int = 1024
    lr: float = 1e-3
    weight_decay: float = 1e-4
    seed: int = 0
    threads: int = 2
    save_every: int = 100
    out: str = "runs/sense-student"


def read_passages(path: str, skip: int, limit: int) -> list[str]:
    out = []
    with open(path, encoding="utf-8") as fh:
        for i, line in enumerate(fh):
            if i < skip or not line.strip():
                continue
            out.append(json.loads(line)["text"])
            if len(out) >= limit:
                break
    return out


def token_data(strategy: Any, texts: list[str], cfg: TrainConfig, desc: str) -> dict[str, Any]:
    """Student states, token ids and teacher sense targets of every multi-sense token."""
    import torch

    from embedsvc.backbones.layers import lower_states, upper_states
    from embedsvc.strategies.multisense.model import assign_senses

    p = strategy._load()
    bb = p["backbone"]
    xs, ids, ys = [], [], []
    counts = p["offsets"][1:] - p["offsets"][:-1]
    with torch.inference_mode():
        for lo in tqdm(range(0, len(texts), 16), desc=desc, unit="batch"):
            enc = bb.tokenizer(
                texts[lo : lo + 16],
                padding=True,
                truncation=True,
                max_length=cfg.max_length,
                return_tensors="pt",
            )
            mask = enc["attention_mask"]
            low = lower_states(bb.model, enc["input_ids"], mask, cfg.layers)
            top = upper_states(bb.model, low, mask, cfg.layers)
            keep = mask.bool() & (counts[enc["input_ids"]] > 1)
            tid = enc["input_ids"][keep]
            y = assign_senses(top[keep], tid, p["offsets"], p["centroids"], p["max_senses"])
            xs.append(low[keep])
            ids.append(tid)
            ys.append(y)
    return {"x": torch.cat(xs), "ids": torch.cat(ids), "y": torch.cat(ys)}


def accuracy(head: Any, data: dict[str, Any], p: dict[str, Any]) -> float:
    import torch

    from embedsvc.strategies.multisense.model import candidates, student_logits

    correct = 0
    with torch.inference_mode():
        for lo in range(0, data["x"].shape[0], 2048):
            sl = slice(lo, lo + 2048)
            c, v = candidates(data["ids"][sl], p["offsets"], p["centroids"], p["max_senses"])
            pred = student_logits(head(data["x"][sl]), c, v).argmax(-1)
            correct += int((pred == data["y"][sl]).sum())
    return correct / max(1, data["x"].shape[0])


def train(cfg: TrainConfig, *, resume: bool = False, ship: bool = False, command: str = "") -> dict:
    import torch
    import torch.nn.functional as F

    from embedsvc.strategies.multisense import MultiSense, MultiSenseConfig
    from embedsvc.strategies.multisense.model import candidates, student_logits

    torch.set_num_threads(cfg.threads)
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(cfg.model_dump_json(indent=2))
    start = time.time()
    teacher = MultiSense(MultiSenseConfig(backbone=cfg.backbone, dictionary=cfg.dictionary))
    p = teacher._load()
    texts = read_passages(cfg.train_file, 0, cfg.train_passages + cfg.eval_passages)
    tr = token_data(teacher, texts[: cfg.train_passages], cfg, "train tokens")
    ev = token_data(teacher, texts[cfg.train_passages :], cfg, "eval tokens")
    d = teacher.dim
    head = torch.nn.Linear(d, d)
    with torch.no_grad():  # identity start: student states already live near teacher space
        head.weight.copy_(torch.eye(d))
        head.bias.zero_()
    opt = torch.optim.AdamW(head.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    metrics: dict[str, Any] = {"tokens_train": int(tr["x"].shape[0])}
    metrics["acc_identity_head"] = accuracy(head, ev, p)
    step, ckpt = 0, out / "checkpoint.pt"
    if resume and ckpt.is_file():
        st = torch.load(ckpt, weights_only=False)
        head.load_state_dict(st["head"])
        opt.load_state_dict(st["opt"])
        step = int(st["step"])
        torch.set_rng_state(st["torch_rng"])
    n = tr["x"].shape[0]
    bar = tqdm(total=cfg.steps, initial=step, desc="train", unit="step")
    losses: list[float] = []
    while step < cfg.steps:
        for g in opt.param_groups:
            g["lr"] = cfg.lr * 0.5 * (1 + np.cos(np.pi * step / cfg.steps))
        idx = torch.randint(0, n, (min(cfg.batch_tokens, n),))
        c, v = candidates(tr["ids"][idx], p["offsets"], p["centroids"], p["max_senses"])
        logits = student_logits(head(tr["x"][idx]), c, v)
        loss = F.cross_entropy(logits, tr["y"][idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        step += 1
        losses.append(loss.item())
        bar.update(1)
        bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}")
        if step % cfg.save_every == 0 or step == cfg.steps:
            tmp = ckpt.with_suffix(".tmp")
            torch.save(
                {
                    "head": head.state_dict(),
                    "opt": opt.state_dict(),
                    "step": step,
                    "torch_rng": torch.get_rng_state(),
                },
                tmp,
            )
            tmp.replace(ckpt)
    bar.close()
    metrics["acc_trained_head"] = accuracy(head, ev, p)
    metrics["final_loss"] = float(np.mean(losses[-20:])) if losses else None
    metrics["seconds"] = round(time.time() - start, 1)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    print(json.dumps(metrics, indent=2))
    if ship:
        ship_artifact(cfg, head, p, metrics, command, ARTIFACT)
    return metrics


def ship_artifact(
    cfg: TrainConfig, head: Any, p: dict[str, Any], metrics: dict, command: str, directory: Path
) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    np.savez(
        directory / "head.npz",
        weight=head.weight.detach().numpy().astype(np.float16),
        bias=head.bias.detach().numpy().astype(np.float16),
    )
    (directory / "student_config.json").write_text(json.dumps({"layers": cfg.layers}, indent=2))
    manifest = {
        "kind": "multisense-student-head",
        "base_model": cfg.backbone,
        "base_fingerprint": p["backbone"].fingerprint,
        "dictionary": p["dict"].manifest.get("config", {}).get("out_name"),
        "dictionary_manifest_sha256": hashlib.sha256(
            json.dumps(p["dict"].manifest, sort_keys=True).encode()
        ).hexdigest(),
        "data": [{"path": cfg.train_file, "sha256": sha256_file(Path(cfg.train_file))}],
        "steps": cfg.steps,
        "seed": cfg.seed,
        "config": cfg.model_dump(),
        "eval": metrics,
        "weights_sha256": sha256_file(directory / "head.npz"),
        "command": command,
    }
    (directory / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return directory


def parse_args(argv: list[str] | None = None) -> tuple[TrainConfig, bool, bool]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", type=Path, help="JSON config file (flags override it)")
    ap.add_argument("--resume", action="store_true", help="continue from <out>/checkpoint.pt")
    ap.add_argument("--ship", action="store_true", help="write the student artifact when done")
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
