"""Build a multi-sense dictionary (SenseDict) for the ``multisense`` strategy from real text.

Steps (techniques.md section 6, re-derived for MiniLM):

1. tokenise the corpus slice and count every token id;
2. run the encoder once, take the **last-layer** state of every non-pad token (specials
   included: mean pooling averages them too) and keep an occurrence of token ``v`` with
   probability ``cap / (count_v + 1)``, so each token keeps about ``min(count, cap)`` samples;
3. per token: k-means with ``k = min(max_k, n)`` (numpy Lloyd, fixed seed); a token seen at most
   ``max_k`` times keeps its raw occurrences as senses (the reference's rule);
4. store centroids in fp16 + a few context snippets per sense (the occurrences nearest to the
   centroid) + a manifest, under ``<cache>/sense_dicts/<name>/`` (never committed).

Sizing on this shared 2-core box (load ~15): 1500 wiki passages cut at 128 tokens (~180k token
occurrences) take about 10-15 minutes, most of it the encoder forward. The sampled states are
saved to ``<out>/samples.npz`` first, so a rerun (``--resume``) skips the forward.

    .venv/bin/python training/build_sense_dictionary.py --max-passages 1500 --out-name minilm-wiki
"""

from __future__ import annotations

import os

# thousands of tiny k-means matmuls: multi-threaded BLAS on a shared box is ~10x slower
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse
import json
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


class BuildConfig(BaseModel):
    """Everything that determines a dictionary (written into its manifest)."""

    model_config = {"extra": "forbid"}

    backbone: str = "minilm"
    corpus: list[str] = Field(default_factory=lambda: [str(DATA / "passages_part1.jsonl")])
    max_passages: int = 1500
    max_length: int = 128
    #: samples kept per token (about)
    cap: int = 1000
    #: most senses per token
    max_k: int = 20
    kmeans_iters: int = 20
    #: random (the shipped dictionary) | kmeans++
    kmeans_init: str = Field("random", pattern="^(random|kmeans\\+\\+)$")
    #: context snippets stored per sense (for the Senses RPC)
    examples_per_sense: int = 2
    batch_size: int = 32
    seed: int = 0
    threads: int = 2
    out_name: str = "minilm-wiki"
    cache_dir: str | None = None
    out_dir: str | None = None


def read_texts(paths: list[str], limit: int) -> list[str]:
    texts: list[str] = []
    for p in paths:
        with open(p, encoding="utf-8") as fh:
            for line in fh:
                line = line.strip()
                if not line:
                    continue
                texts.append(json.loads(line)["text"] if p.endswith(".jsonl") else line)
                if len(texts) >= limit:
                    return texts
    return texts


def snippet(tokenizer: Any, ids: list[int], pos: int, width: int = 6) -> str:
    """``left [TOKEN] right`` around position ``pos`` (wordpieces joined back)."""
    left = tokenizer.decode(ids[max(1, pos - width) : pos])
    right = tokenizer.decode(ids[pos + 1 : pos + 1 + width]).replace("[SEP]", "").strip()
    tok = tokenizer.convert_ids_to_tokens(ids[pos])
    return f"{left} [{tok}] {right}".strip()


def _sample(bb: Any, cfg: BuildConfig, ids_list: list[list[int]], counts: np.ndarray, rng: Any):
    """Encoder forward over the slice; stream-sample occurrences (fp16 to halve memory)."""
    import torch
    from trainlib.senses import sample_keep

    tok = bb.tokenizer
    vecs: list[np.ndarray] = []
    toks: list[np.ndarray] = []
    where: list[np.ndarray] = []  # (passage, position)
    order = np.argsort([-len(x) for x in ids_list], kind="stable")
    bs = cfg.batch_size
    with torch.inference_mode():
        for lo in tqdm(range(0, len(order), bs), desc="encode", unit="batch"):
            idx = order[lo : lo + bs]
            batch = tok.pad({"input_ids": [ids_list[i] for i in idx]}, return_tensors="pt")
            hidden = bb.model(**batch).last_hidden_state
            mask = batch["attention_mask"].bool()
            b_i, t_i = mask.nonzero(as_tuple=True)
            tid = batch["input_ids"][b_i, t_i].numpy()
            keep = sample_keep(counts, tid, cfg.cap, rng)
            vecs.append(hidden[b_i, t_i][torch.from_numpy(keep)].numpy().astype(np.float16))
            toks.append(tid[keep])
            where.append(np.stack([idx[b_i.numpy()[keep]], t_i.numpy()[keep]], 1))
    all_v = np.concatenate(vecs)
    all_t = np.concatenate(toks)
    all_w = np.concatenate(where)
    return all_v, all_t, all_w


def build(cfg: BuildConfig, command: str = "", resume: bool = False) -> Path:
    import torch
    from trainlib.senses import kmeans, senses_for, table_from_lists

    from embedsvc.backbones import load_backbone
    from embedsvc.strategies.multisense.io import (
        SenseDictionary,
        default_dictionary_dir,
        save_dictionary,
    )

    torch.set_num_threads(cfg.threads)
    start = time.time()
    rng = np.random.default_rng(cfg.seed)
    cache = Path(cfg.cache_dir) if cfg.cache_dir else None
    out = Path(cfg.out_dir) if cfg.out_dir else default_dictionary_dir(cfg.out_name, cache)
    bb = load_backbone(cfg.backbone, cache)
    tok = bb.tokenizer
    texts = read_texts(cfg.corpus, cfg.max_passages)
    ids_list: list[list[int]] = tok(
        texts, truncation=True, max_length=cfg.max_length, add_special_tokens=True
    )["input_ids"]
    vocab = int(bb.model.config.vocab_size)
    counts = np.bincount(np.concatenate([np.asarray(x) for x in ids_list]), minlength=vocab)

    samples = out / "samples.npz"
    if resume and samples.is_file():
        with np.load(samples) as z:
            all_v, all_t, all_w = z["v"], z["t"], z["w"]
    else:
        all_v, all_t, all_w = _sample(bb, cfg, ids_list, counts, rng)
        out.mkdir(parents=True, exist_ok=True)
        np.savez(samples, v=all_v, t=all_t, w=all_w)
    srt = np.argsort(all_t, kind="stable")
    all_v, all_t, all_w = all_v[srt], all_t[srt], all_w[srt]
    uniq, first, n_per = np.unique(all_t, return_index=True, return_counts=True)

    per_token: dict[int, np.ndarray] = {}
    per_sizes: dict[int, np.ndarray] = {}
    per_examples: dict[int, list[list[str]]] = {}
    dim = bb.hidden_size
    for t, f, n in tqdm(
        zip(uniq.tolist(), first.tolist(), n_per.tolist(), strict=True),
        total=len(uniq),
        desc="k-means",
        unit="token",
    ):
        x = all_v[f : f + n].astype(np.float32)
        k = senses_for(n, cfg.max_k)
        if k >= n:
            cents, assign = x, np.arange(n)
        else:
            cents, assign = kmeans(x, k, cfg.kmeans_iters, cfg.seed + t, cfg.kmeans_init)
        per_token[t] = cents
        per_sizes[t] = np.bincount(assign, minlength=cents.shape[0])
        exs: list[list[str]] = []
        for j in range(cents.shape[0]):
            members = np.flatnonzero(assign == j)
            d = ((x[members] - cents[j]) ** 2).sum(1)
            near = members[np.argsort(d)[: cfg.examples_per_sense]]
            exs.append(
                [snippet(tok, ids_list[all_w[f + m, 0]], int(all_w[f + m, 1])) for m in near]
            )
        per_examples[t] = exs

    table = table_from_lists(vocab, per_token, dim)
    sizes = np.zeros(table.num_senses, dtype=np.int32)
    examples: list[list[str]] = [[] for _ in range(table.num_senses)]
    for t in per_token:
        o = int(table.offsets[t])
        sizes[o : o + len(per_sizes[t])] = per_sizes[t]
        examples[o : o + len(per_examples[t])] = per_examples[t]
    seconds = time.time() - start
    manifest = {
        "kind": "multisense-dictionary",
        "base_model": cfg.backbone,
        "base_fingerprint": bb.fingerprint,
        "layer": "last",
        "data": [{"path": p, "sha256": sha256_file(Path(p))} for p in cfg.corpus],
        "passages": len(texts),
        "token_occurrences": int(counts.sum()),
        "samples": int(len(all_t)),
        "tokens_with_senses": len(per_token),
        "senses": table.num_senses,
        "mean_senses_per_token": float(table.num_senses / max(1, len(per_token))),
        "bytes_fp16": int(table.centroids.shape[0] * dim * 2),
        "similarity": "l2",
        "config": cfg.model_dump(),
        "seconds": round(seconds, 1),
        "command": command,
    }
    save_dictionary(out, SenseDictionary(table, sizes, examples, manifest))
    print(json.dumps({k: v for k, v in manifest.items() if k != "config"}, indent=2))
    return out


def parse_args(argv: list[str] | None = None) -> tuple[BuildConfig, bool]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", type=Path, help="JSON config file (flags override it)")
    ap.add_argument("--resume", action="store_true", help="reuse <out>/samples.npz")
    for name, f in BuildConfig.model_fields.items():
        if name == "corpus":
            ap.add_argument("--corpus", nargs="+", default=None)
            continue
        typ = {int: int, float: float}.get(f.annotation, str)  # type: ignore[arg-type]
        ap.add_argument("--" + name.replace("_", "-"), type=typ, default=None)
    args = ap.parse_args(argv)
    base: dict[str, Any] = json.loads(args.config.read_text()) if args.config else {}
    for name in BuildConfig.model_fields:
        v = getattr(args, name)
        if v is not None:
            base[name] = v
    return BuildConfig(**base), args.resume


def main(argv: list[str] | None = None) -> None:
    cfg, resume = parse_args(argv)
    build(cfg, resume=resume, command=" ".join(shlex.quote(a) for a in [sys.executable, *sys.argv]))


if __name__ == "__main__":
    main()
