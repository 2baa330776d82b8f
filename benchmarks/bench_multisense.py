"""Multi-sense benchmark: STS-B dev, WiC dev, SciFact subset, dictionary size, student speed.

Variants (same sentences, same run):

* ``plain``: MiniLM mean pooling (the ``mean`` baseline);
* ``multisense``: last-layer states replaced by their nearest sense, then mean pooling;
* ``student_plain``: the first ``layers`` blocks, mean pooled (the truncated student alone);
* ``student_senses``: ``multisense_student`` (first blocks + head -> predicted sense vectors).

WiC (dev accuracy; the target word's first wordpiece): (a) same sense id (pairs whose target
is the same wordpiece; other pairs fall back to (b)), (b) cosine of the sense vectors with a
threshold chosen on ``--wic-train`` training pairs, (c) cosine of the plain contextual states
with a threshold chosen the same way.

    .venv/bin/python benchmarks/bench_multisense.py --json docs/results/multisense.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

DATA = Path("/work/shared/data")


def read_wic(split: str, limit: int | None = None):
    base = DATA / "train" / "wic" / split
    lines = (base / f"{split}.data.txt").read_text(encoding="utf-8").splitlines()
    rows = [line.split("\t") for line in lines]
    gold = [g.strip() == "T" for g in (base / f"{split}.gold.txt").read_text().splitlines()]
    out = []
    for r, g in zip(rows, gold, strict=True):
        i1, i2 = (int(x) for x in r[2].split("-"))
        out.append((r[3].split(" "), i1, r[4].split(" "), i2, g))
    return out[:limit] if limit else out


def target_states(strategy, sentences: list[tuple[list[str], int]]):
    """Per sentence: (token id, plain state, sense vector, sense id) of the target's first
    wordpiece, using one teacher forward (plain states + replacement from the same pass)."""
    import torch

    from embedsvc.strategies.multisense.model import replace_with_senses

    p = strategy._load()
    tok = p["backbone"].tokenizer
    model = p["backbone"].model
    out = []
    with torch.inference_mode():
        for lo in range(0, len(sentences), 32):
            chunk = sentences[lo : lo + 32]
            texts, starts = [], []
            for words, idx in chunk:
                texts.append(" ".join(words))
                starts.append(len(" ".join(words[:idx])) + (1 if idx else 0))
            enc = tok(
                texts,
                padding=True,
                truncation=True,
                max_length=128,
                return_tensors="pt",
                return_offsets_mapping=True,
            )
            offs = enc.pop("offset_mapping")
            hidden = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])
            hidden = hidden.last_hidden_state
            rep, sid = replace_with_senses(
                hidden,
                enc["input_ids"],
                enc["attention_mask"],
                p["offsets"],
                p["centroids"],
                p["max_senses"],
            )
            for j, s in enumerate(starts):
                pos = int(((offs[j, :, 0] == s) & (offs[j, :, 1] > s)).nonzero()[0, 0])
                out.append(
                    (
                        int(enc["input_ids"][j, pos]),
                        hidden[j, pos].numpy(),
                        rep[j, pos].numpy(),
                        int(sid[j, pos]),
                    )
                )
    return out


def _cos(a, b):
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-9))


def best_threshold(sims: np.ndarray, gold: np.ndarray) -> float:
    cands = np.unique(sims)
    accs = [((sims >= t) == gold).mean() for t in cands]
    return float(cands[int(np.argmax(accs))])


def wic(strategy, n_train: int) -> dict:
    res = {}
    data = {"train": read_wic("train", n_train), "dev": read_wic("dev")}
    feats = {}
    for split, rows in data.items():
        a = target_states(strategy, [(r[0], r[1]) for r in rows])
        b = target_states(strategy, [(r[2], r[3]) for r in rows])
        feats[split] = (a, b, np.array([r[4] for r in rows]))
    for name, k in (("plain_state_cosine", 1), ("sense_vector_cosine", 2)):
        sims = {
            s: np.array([_cos(x[k], y[k]) for x, y in zip(*feats[s][:2], strict=True)])
            for s in feats
        }
        t = best_threshold(sims["train"], feats["train"][2])
        res[name] = {
            "threshold": round(t, 4),
            "train_acc": round(float(((sims["train"] >= t) == feats["train"][2]).mean()) * 100, 2),
            "dev_acc": round(float(((sims["dev"] >= t) == feats["dev"][2]).mean()) * 100, 2),
        }
        if k == 2:
            thr, dev_sims = t, sims["dev"]
    a, b, g = feats["dev"]
    same_tok = np.array([x[0] == y[0] and x[3] >= 0 for x, y in zip(a, b, strict=True)])
    pred = np.where(
        same_tok, np.array([x[3] == y[3] for x, y in zip(a, b, strict=True)]), dev_sims >= thr
    )
    res["same_sense_id"] = {
        "dev_acc": round(float((pred == g).mean()) * 100, 2),
        "dev_acc_same_token_pairs_only": round(
            float((pred[same_tok] == g[same_tok]).mean()) * 100, 2
        ),
        "same_token_pairs": int(same_tok.sum()),
        "dev_pairs": int(len(g)),
    }
    res["train_pairs_for_threshold"] = len(data["train"])
    return res


def main(argv: list[str] | None = None) -> dict:
    import torch

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--wic-train", type=int, default=1000)
    ap.add_argument("--speed-texts", type=int, default=256)
    ap.add_argument("--skip-sts", action="store_true")
    ap.add_argument("--skip-wic", action="store_true")
    ap.add_argument("--skip-speed", action="store_true")
    ap.add_argument("--coverage-texts", type=int, default=500)
    ap.add_argument("--speed-repeats", type=int, default=3, help="best of N (the box is shared)")
    ap.add_argument("--scifact-docs", type=int, default=0, help="0 = skip SciFact")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    from embedsvc.eval.data import read_sts
    from embedsvc.eval.sts import evaluate_sts
    from embedsvc.strategies import create_strategy

    variants = {
        "plain": create_strategy("mean"),
        "multisense": create_strategy("multisense"),
        "student_plain": create_strategy("multisense_student", replace=False),
        "student_senses": create_strategy("multisense_student"),
    }
    ms = variants["multisense"]
    p = ms._load()
    man = p["dict"].manifest
    res: dict = {
        "command": " ".join([sys.executable, *sys.argv]),
        "dictionary": {
            k: man.get(k)
            for k in ("passages", "samples", "tokens_with_senses", "senses", "seconds")
        },
    }
    res["dictionary"]["mean_senses_per_token"] = round(man["mean_senses_per_token"], 2)
    res["dictionary"]["size_mb_fp16"] = round(man["bytes_fp16"] / 2**20, 1)
    sts_path = DATA / "stsb" / "sts-dev.csv"
    pairs = read_sts(sts_path)
    sents = list(dict.fromkeys(pairs.sentences1 + pairs.sentences2))
    if args.coverage_texts:
        ids = ms.sense_ids(sents[: args.coverage_texts])
        flat = [s for row in ids for s in row]
        res["dictionary"]["stsb_token_coverage"] = {
            "sentences": min(args.coverage_texts, len(sents)),
            "fraction_of_tokens_with_senses": round(float(np.mean([s >= 0 for _, s in flat])), 4),
        }
    if not args.skip_sts:
        res["stsb_dev_spearman"] = {
            name: round(float(evaluate_sts(s, sts_path)["spearman"]), 2)
            for name, s in variants.items()
        }
    if not args.skip_wic:
        res["wic"] = wic(ms, args.wic_train)
    if args.scifact_docs:
        sys.path.insert(0, str(Path(__file__).parent))
        from bench_btr import ndcg, scifact_subset

        doc_ids, texts, qrels, queries = scifact_subset(args.scifact_docs)
        qids = list(queries)
        res["scifact_subset"] = {"docs": len(doc_ids), "queries": len(qids)}
        for name in ("plain", "multisense"):
            s = create_strategy("mean" if name == "plain" else "multisense", max_length=128)
            dv = s.encode(texts).vectors
            qv = s.encode([queries[q] for q in qids], "query").vectors
            sc = qv @ dv.T
            top = np.argsort(-sc, axis=1)[:, :100]
            res["scifact_subset"][name] = ndcg(
                qids, doc_ids, np.take_along_axis(sc, top, 1), top, qrels
            )
    if args.skip_speed:
        return _finish(res, args.json)
    # speed: same texts, same batch size, one run
    texts = sents[: args.speed_texts]
    timings = {}
    for name, s in variants.items():
        s.encode(texts[:2])
        best = float("inf")
        for _ in range(args.speed_repeats):
            t0 = time.perf_counter()
            s.encode(texts)
            best = min(best, time.perf_counter() - t0)
        timings[name] = round(best, 3)
    timings["speedup_student_senses_vs_multisense"] = round(
        timings["multisense"] / timings["student_senses"], 2
    )
    timings["speedup_student_senses_vs_plain"] = round(
        timings["plain"] / timings["student_senses"], 2
    )
    timings["texts"] = len(texts)
    res["speed_seconds"] = timings
    return _finish(res, args.json)


def _finish(res: dict, path: Path | None) -> dict:
    text = json.dumps(res, indent=2)
    print(text)
    if path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return res


if __name__ == "__main__":
    main()
