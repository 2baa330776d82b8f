"""Train a pooling head over a frozen decoder LLM: MLTP, M2 or (a) EOS-last + linear.

The three heads of issue 3 are trained by this one command with the same data, steps and seeds
(``--head mltp|m2|linear``). The decoder is frozen (the paper also trains LoRA: a documented
deviation), so its per-layer last-token states of every training/eval text are computed once
and cached under ``<cache>/pooling_states/`` keyed by backbone fingerprint + input format +
sha256 of the text list; training then only runs the small head.

Loss: in-batch + hard-negative InfoNCE with scale 20 (the reference's HardNegativeNLLLoss) on
(anchor, positive, hard negative) NLI triplets. Every run writes ``config.json`` (all settings),
a resumable ``checkpoint.pt`` (head, optimizer, schedule, RNG, step) and ``metrics.json`` into
``--out``; ``--ship NAME`` writes the small artifact ``embedsvc/artifacts/NAME/`` (float16
head + head_config.json + manifest.json with base model, data sha256s, steps, seed, scores,
command) that the ``mltp`` / ``m2`` / ``eos_linear`` strategies load.

    .venv/bin/python training/train_pooling_head.py --head mltp --seed 0 --out runs/mltp-s0
    .venv/bin/python training/train_pooling_head.py --config runs/mltp-s0/config.json --resume
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
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


class TrainConfig(BaseModel):
    """Everything that determines a run (written to ``<out>/config.json``)."""

    model_config = {"extra": "forbid"}

    head: str = Field("mltp", pattern="^(mltp|m2|linear)$")
    seed: int = 0
    backbone: str = "smollm2"
    triplets: str = str(DATA / "train/nli/nli_triplets.csv")
    #: how many triplets (a fixed, seed-independent random subset: data_seed)
    max_triplets: int = 1000
    data_seed: int = 0
    steps: int = 150
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_frac: float = 0.1
    scale: float = 20.0
    heads: int = 4
    dim_head: int = 32
    num_latents: int = 8
    ff_mult: int = 1
    max_length: int = 64
    save_every: int = 100
    threads: int = 2
    out: str = "runs/pooling-head"
    cache_dir: str | None = None
    #: evaluation files (empty string = skip)
    sts_file: str = str(DATA / "stsb/sts-dev.csv")
    scifact_dir: str = str(DATA / "scifact")
    scifact_docs: int = 250
    scifact_doc_tokens: int = 96


def load_triplets(path: Path, limit: int, data_seed: int) -> list[tuple[str, str, str]]:
    """A fixed random subset (``data_seed``, independent of the training seed) of the triplets."""
    import csv

    with Path(path).open(newline="", encoding="utf-8") as fh:
        rows = [
            (r["sent0"], r["sent1"], r["hard_neg"])
            for r in csv.DictReader(fh)
            if r.get("sent0") and r.get("sent1") and r.get("hard_neg")
        ]
    random.Random(data_seed).shuffle(rows)
    return rows[:limit] if limit > 0 else rows


def cached_states(
    backbone: Any, texts: list[str], cache: Path, max_length: int, *, reverse: bool = False
) -> np.ndarray:
    """``[n, L, d]`` float16 per-layer last-token states of ``texts`` (+EOS), cached on disk.

    Computed in chunks that are saved (atomically) as they finish, so a killed run resumes
    where it stopped, and two processes can fill one cache (``reverse`` walks the chunks from
    the end, so a helper process meets the trainer in the middle instead of duplicating it).
    """
    from embedsvc.eval.cache import texts_digest
    from embedsvc.strategies.mltp import layer_inputs, layer_states

    key = hashlib.sha256(
        f"{backbone.fingerprint}|text+eos|last-token-all-blocks|{max_length}|"
        f"{texts_digest(texts)}".encode()
    ).hexdigest()[:24]
    folder = cache / "pooling_states" / key
    final = folder / "states.npy"
    if final.is_file():
        return np.load(final, mmap_mode="r")
    folder.mkdir(parents=True, exist_ok=True)
    chunk = 256
    starts = list(range(0, len(texts), chunk))
    parts: dict[int, np.ndarray] = {}
    bar = tqdm(total=len(texts), desc=f"decoder states ({key[:8]})", unit="text")
    for i in reversed(starts) if reverse else starts:
        if final.is_file():  # another process finished the whole list meanwhile
            bar.close()
            return np.load(final, mmap_mode="r")
        path = folder / f"chunk-{i // chunk:05d}.npy"
        try:
            part = np.load(path)
        except (FileNotFoundError, ValueError, OSError):
            seqs = layer_inputs(backbone.tokenizer, texts[i : i + chunk], max_length).ids
            part = layer_states(backbone, seqs, batch_size=32).astype(np.float16)
            _save_atomic(path, part)
        parts[i] = part
        bar.update(len(part))
    bar.close()
    arr = np.concatenate([parts[i] for i in starts])
    _save_atomic(final, arr)
    return arr


def _save_atomic(path: Path, arr: np.ndarray) -> None:
    tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npy")
    np.save(tmp, arr)
    os.replace(tmp, path)


def scifact_subset(cfg: TrainConfig, tokenizer: Any) -> dict[str, Any]:
    """The documented SciFact subset: every judged test doc + seeded random distractors.

    Decoding the full 5183-abstract corpus with SmolLM2 on 2 shared CPU cores takes hours, so
    retrieval is scored on ``scifact_docs`` documents cut to ``scifact_doc_tokens`` tokens.
    """
    from embedsvc.eval.data import read_corpus, read_qrels, read_queries

    root = Path(cfg.scifact_dir)
    corpus = read_corpus(root / "corpus.jsonl.gz")
    qrels = read_qrels(root / "qrels/test.tsv")
    queries = read_queries(root / "queries.jsonl")
    judged = sorted({d for q in qrels.values() for d in q})
    others = sorted(set(corpus) - set(judged))
    random.Random(0).shuffle(others)
    doc_ids = judged + others[: max(0, cfg.scifact_docs - len(judged))]
    qids = list(qrels)

    def cut(text: str) -> str:
        ids = tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
        if len(ids) <= cfg.scifact_doc_tokens:
            return text
        return tokenizer.decode(ids[: cfg.scifact_doc_tokens])

    return {
        "doc_ids": doc_ids,
        "docs": [cut(corpus[d].passage()) for d in doc_ids],
        "qids": qids,
        "queries": [queries[q] for q in qids],
        "qrels": qrels,
    }


def evaluate(head: Any, evalsets: dict[str, Any], kind: str) -> dict[str, float]:
    """STS-B dev Spearman x100 and SciFact-subset nDCG@10 x100 from cached states."""
    import torch
    from scipy.stats import spearmanr

    from embedsvc.eval.retrieval import score_matrix
    from embedsvc.eval.sts import cosine_pairs

    def embed(states: np.ndarray) -> np.ndarray:
        out = []
        with torch.inference_mode():
            for i in range(0, len(states), 256):
                x = torch.from_numpy(np.asarray(states[i : i + 256], dtype=np.float32))
                out.append(head(x).numpy())
        return np.concatenate(out)

    res: dict[str, float] = {}
    if "sts" in evalsets:
        sts = evalsets["sts"]
        vec = embed(sts["states"])
        sims = cosine_pairs(vec[sts["i1"]], vec[sts["i2"]])
        res["sts_spearman"] = float(spearmanr(sims, sts["scores"]).statistic) * 100.0
    if "scifact" in evalsets:
        sf = evalsets["scifact"]
        d = embed(sf["doc_states"])
        q = embed(sf["query_states"])
        scored = score_matrix(sf["qrels"], sf["qids"], sf["doc_ids"], q @ d.T)
        res.update({f"scifact_{k}": v for k, v in scored.items()})
    return res


def prepare_eval(cfg: TrainConfig, backbone: Any, cache: Path) -> dict[str, Any]:
    from embedsvc.eval.data import read_sts

    evalsets: dict[str, Any] = {}
    if cfg.sts_file:
        pairs = read_sts(cfg.sts_file)
        uniq = list(dict.fromkeys(pairs.sentences1 + pairs.sentences2))
        pos = {s: i for i, s in enumerate(uniq)}
        evalsets["sts"] = {
            "states": cached_states(backbone, uniq, cache, cfg.max_length),
            "i1": [pos[s] for s in pairs.sentences1],
            "i2": [pos[s] for s in pairs.sentences2],
            "scores": np.asarray(pairs.scores),
            "sha256": sha256_file(Path(cfg.sts_file)),
        }
    if cfg.scifact_dir:
        sf = scifact_subset(cfg, backbone.tokenizer)
        sf["query_states"] = cached_states(backbone, sf["queries"], cache, cfg.max_length)
        sf["doc_states"] = cached_states(backbone, sf["docs"], cache, cfg.scifact_doc_tokens + 1)
        evalsets["scifact"] = sf
    return evalsets


def _select(states: np.ndarray, idx: np.ndarray, kind: str) -> Any:
    import torch

    # (a) and M2 read only the last layer: slicing here keeps their steps cheap
    x = states[idx] if kind == "mltp" else states[idx][:, -1:, :]
    return torch.from_numpy(np.asarray(x, dtype=np.float32))


def train(cfg: TrainConfig, *, resume: bool = False, ship: str | None = None) -> dict[str, Any]:
    import torch
    from trainlib.losses import contrastive_loss

    from embedsvc.backbones import load_backbone
    from embedsvc.config import default_cache_dir
    from embedsvc.strategies.mltp.model import HeadConfig, build_head

    t0 = time.perf_counter()
    torch.set_num_threads(cfg.threads)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(cfg.model_dump_json(indent=1))
    cache = Path(cfg.cache_dir) if cfg.cache_dir else default_cache_dir()
    # the backbone always comes from the service's model cache; cache_dir is for states only
    backbone = load_backbone(cfg.backbone)

    triplets = load_triplets(Path(cfg.triplets), cfg.max_triplets, cfg.data_seed)
    texts = list(dict.fromkeys(t for trip in triplets for t in trip))
    pos = {t: i for i, t in enumerate(texts)}
    tri_idx = np.asarray([[pos[t] for t in trip] for trip in triplets])
    states = cached_states(backbone, texts, cache, cfg.max_length)
    t_states = time.perf_counter() - t0

    head_cfg = HeadConfig(
        kind=cfg.head,  # type: ignore[arg-type]
        dim=backbone.hidden_size,
        num_layers=backbone.num_layers,
        heads=cfg.heads,
        dim_head=cfg.dim_head,
        num_latents=cfg.num_latents,
        ff_mult=cfg.ff_mult,
    )
    torch.manual_seed(cfg.seed)
    head = build_head(head_cfg)
    opt = torch.optim.AdamW(head.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    warm = max(1, int(cfg.warmup_frac * cfg.steps))

    def lr_at(step: int) -> float:  # linear warmup then linear decay to 0, as the HF Trainer
        if step < warm:
            return (step + 1) / warm
        return max(0.0, (cfg.steps - step) / max(1, cfg.steps - warm))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    rng = np.random.default_rng(cfg.seed)
    step = 0
    ckpt = out / "checkpoint.pt"
    if resume and ckpt.is_file():
        blob = torch.load(ckpt, weights_only=False)
        head.load_state_dict(blob["head"])
        opt.load_state_dict(blob["opt"])
        sched.load_state_dict(blob["sched"])
        rng.bit_generator.state = blob["rng"]
        torch.set_rng_state(blob["torch_rng"])
        step = int(blob["step"])

    def save_ckpt() -> None:
        tmp = ckpt.with_suffix(".tmp")
        torch.save(
            {
                "head": head.state_dict(),
                "opt": opt.state_dict(),
                "sched": sched.state_dict(),
                "rng": rng.bit_generator.state,
                "torch_rng": torch.get_rng_state(),
                "step": step,
                "config": cfg.model_dump(),
            },
            tmp,
        )
        tmp.replace(ckpt)

    head.train()
    t_train = time.perf_counter()
    bar = tqdm(total=cfg.steps, initial=step, desc=f"train {cfg.head} seed {cfg.seed}")
    losses: list[float] = []
    while step < cfg.steps:
        batch = rng.choice(len(tri_idx), size=min(cfg.batch_size, len(tri_idx)), replace=False)
        rows = tri_idx[batch]
        a = head(_select(states, rows[:, 0], cfg.head))
        p = head(_select(states, rows[:, 1], cfg.head))
        n = head(_select(states, rows[:, 2], cfg.head))
        loss = contrastive_loss(a, p, n, cfg.scale)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        step += 1
        losses.append(float(loss.detach()))
        bar.update(1)
        bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}")
        if step % cfg.save_every == 0 or step == cfg.steps:
            save_ckpt()
    bar.close()
    t_train = time.perf_counter() - t_train

    head.eval()
    t_eval = time.perf_counter()
    evalsets = prepare_eval(cfg, backbone, cache)
    scores = evaluate(head, evalsets, cfg.head)
    n_params = sum(p.numel() for p in head.parameters())
    metrics = {
        "head": cfg.head,
        "seed": cfg.seed,
        "steps": cfg.steps,
        "n_params": n_params,
        "final_loss": float(np.mean(losses[-20:])) if losses else None,
        **scores,
        "seconds": {
            "states": t_states,
            "train": t_train,
            "eval": time.perf_counter() - t_eval,
            "total": time.perf_counter() - t0,
        },
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1))
    print(json.dumps(metrics))
    if ship:
        ship_artifact(ship, head, head_cfg, cfg, backbone, metrics, evalsets)
    return metrics


def ship_artifact(
    name: str,
    head: Any,
    head_cfg: Any,
    cfg: TrainConfig,
    backbone: Any,
    metrics: dict[str, Any],
    evalsets: dict[str, Any],
) -> Path:
    """Write ``embedsvc/artifacts/<name>/`` (or the folder ``name`` if it has a ``/``)."""
    from safetensors.torch import save_file

    from embedsvc.strategies.artifacts import ARTIFACTS, MANIFEST
    from embedsvc.strategies.mltp import HEAD_CONFIG, HEAD_FILE

    folder = Path(name) if "/" in name else ARTIFACTS / name
    folder.mkdir(parents=True, exist_ok=True)
    # float16 halves the size; the head is re-cast to float32 on load
    state = {k: v.detach().half().contiguous() for k, v in head.state_dict().items()}
    save_file(state, str(folder / HEAD_FILE))
    (folder / HEAD_CONFIG).write_text(head_cfg.model_dump_json(indent=1))
    data = {"triplets": {"path": cfg.triplets, "sha256": sha256_file(Path(cfg.triplets))}}
    if "sts" in evalsets:
        data["sts_eval"] = {"path": cfg.sts_file, "sha256": evalsets["sts"]["sha256"]}
    manifest = {
        "name": folder.name,
        "head": cfg.head,
        "base_model": backbone.name,
        "backbone_fingerprint": backbone.fingerprint,
        "data": data,
        "steps": cfg.steps,
        "seed": cfg.seed,
        "train_config": cfg.model_dump(exclude={"out", "cache_dir", "threads"}),
        "eval": {k: v for k, v in metrics.items() if k.startswith(("sts", "scifact"))},
        "eval_note": (
            f"STS-B dev Spearman x100; SciFact test-qrels nDCG@10 on a {cfg.scifact_docs}-doc "
            f"subset (all judged docs + seeded distractors, docs cut to "
            f"{cfg.scifact_doc_tokens} tokens)"
        ),
        "wall_clock_s": metrics["seconds"],
        "command": " ".join(
            shlex.quote(a)
            for a in ["python", "training/train_pooling_head.py", *sys.argv[1:]]
            if a != "--resume"
        ),
        "head_sha256": sha256_file(folder / HEAD_FILE),
    }
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=1))
    return folder


def parse_args(argv: list[str] | None = None) -> tuple[TrainConfig, bool, str | None]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", type=Path, help="JSON config file (flags override it)")
    ap.add_argument("--resume", action="store_true", help="continue from <out>/checkpoint.pt")
    ap.add_argument("--ship", default=None, help="write embedsvc/artifacts/NAME when done")
    fields = TrainConfig.model_fields
    for name, field in fields.items():
        ap.add_argument(
            f"--{name.replace('_', '-')}", dest=name, default=None, type=str, help=field.description
        )
    ns = ap.parse_args(argv)
    base: dict[str, Any] = json.loads(ns.config.read_text()) if ns.config else {}
    for name in fields:
        value = getattr(ns, name)
        if value is not None:
            base[name] = value  # pydantic coerces the strings to the field types
    return TrainConfig(**base), ns.resume, ns.ship


if __name__ == "__main__":
    config, resume_flag, ship_name = parse_args()
    train(config, resume=resume_flag, ship=ship_name)
