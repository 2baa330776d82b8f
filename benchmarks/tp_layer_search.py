"""Choose Token Prepending's start/exit/output layer on half A of STS-B dev; report on half B.

Protocol (issue 3): the dev pairs are split by index parity -- half A = even rows (search),
half B = odd rows (held out). For each ``(start, exit)`` in the grid one forward pass collects
the last token's state at *every* layer, so all output layers cost nothing extra. The chosen
setting is the best TP (exit > start) Spearman on half A. Then the 2x2 table
{no TP (``prompt_last``), TP} x {final layer, chosen layer} is scored on half B and on the whole
dev set. Similarities and Spearman use the eval harness's own functions.

States are cached per config under ``<cache>/tp_layer_search/`` (keyed by the strategy
fingerprint and the sentence list), so an interrupted run resumes.

    .venv/bin/python benchmarks/tp_layer_search.py --file /work/shared/data/stsb/sts-dev.csv \
        --out docs/results/tp_layer_search.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import spearmanr

from embedsvc.config import default_cache_dir
from embedsvc.eval.data import read_sts
from embedsvc.eval.sts import cosine_pairs
from embedsvc.strategies import create_strategy

#: (start, exit) pairs searched; (0, 0) is a placeholder-free stand-in key for prompt_last
DEFAULT_GRID = [(1, 4), (1, 2), (1, 7), (0, 4)]
#: sentences per saved chunk
CHUNK = 128


def _cache_file(name: str, config: dict[str, Any], sentences: list[str], cache: Path) -> Path:
    # every layer is collected, so the key must not depend on the (default) output layer
    strat = create_strategy(name, **{**config, "output_layer": -1})
    key = hashlib.sha256(("\x00".join([strat.fingerprint, *sentences])).encode()).hexdigest()[:16]
    return cache / f"{name}-{config.get('start', 'x')}-{config.get('exit', 'x')}-{key}.npy"


def _states(
    name: str,
    config: dict[str, Any],
    sentences: list[str],
    cache: Path,
    superset: list[str] | None = None,
) -> dict[str, np.ndarray]:
    """``{sentence: [L+1, d] float32}`` last-token states at every layer (cached on disk).

    ``superset``: a longer sentence list whose cached states (if present) contain these.
    """
    strat = create_strategy(name, **config)
    layers = list(range(strat.num_layers + 1))
    if superset is not None:
        big = _cache_file(name, config, superset, cache)
        if big.is_file():
            arr = np.load(big, mmap_mode="r")
            row = {s: i for i, s in enumerate(superset)}
            return {s: np.asarray(arr[row[s]]) for s in sentences}
    path = _cache_file(name, config, sentences, cache)
    if path.is_file():
        arr = np.load(path)
    else:
        t0 = time.perf_counter()
        seqs = [strat._fit(s, strat.max_tokens)[0] for s in sentences]
        # chunks are saved as they finish: an interrupted pass resumes where it stopped
        parts_dir = path.with_suffix(".parts")
        parts_dir.mkdir(parents=True, exist_ok=True)
        parts = []
        for i in range(0, len(seqs), CHUNK):
            part_path = parts_dir / f"{i // CHUNK:04d}.npy"
            if part_path.is_file():
                parts.append(np.load(part_path))
                continue
            got = strat.encode_ids(seqs[i : i + CHUNK], layers)
            part = np.stack([got[layer] for layer in layers], axis=1)  # [n, L+1, d]
            np.save(part_path, part)
            parts.append(part)
            done = min(i + CHUNK, len(seqs))
            print(f"  {name} {config}: {done}/{len(seqs)} ({time.perf_counter() - t0:.0f}s)")
        arr = np.concatenate(parts)
        np.save(path, arr)
        for part_path in parts_dir.glob("*.npy"):
            part_path.unlink()
        parts_dir.rmdir()
        print(f"  {name} {config}: {len(sentences)} sentences in {time.perf_counter() - t0:.0f}s")
    return {s: arr[i] for i, s in enumerate(sentences)}


def _spearman(states: dict[str, np.ndarray], pairs: list[tuple[str, str, float]], layer: int):
    a = np.stack([states[p[0]][layer] for p in pairs])
    b = np.stack([states[p[1]][layer] for p in pairs])
    gold = np.asarray([p[2] for p in pairs])
    return float(spearmanr(cosine_pairs(a, b), gold).statistic) * 100.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--file", type=Path, default=Path("/work/shared/data/stsb/sts-dev.csv"))
    ap.add_argument("--template", default="eol")
    ap.add_argument("--backbone", default="smollm2")
    ap.add_argument("--grid", default=None, help="e.g. '1:2,1:4,0:3' (start:exit)")
    ap.add_argument("--min-layer", type=int, default=10, help="lowest output layer searched")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument(
        "--pairs-per-half",
        type=int,
        default=0,
        help="use only the first N pairs of each half (0 = all; a CPU-time cut, documented)",
    )
    ap.add_argument("--only", default=None, help="compute one pass and exit: tp-A|tp-B|notp-B")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    grid = (
        [tuple(int(x) for x in g.split(":")) for g in args.grid.split(",")]
        if args.grid
        else DEFAULT_GRID
    )
    sts = read_sts(args.file)
    pairs = list(zip(sts.sentences1, sts.sentences2, sts.scores, strict=True))
    full_a = list(dict.fromkeys(s for p in pairs[0::2] for s in p[:2]))
    n = args.pairs_per_half or None
    half_a = pairs[0::2][:n]
    half_b = pairs[1::2][:n]
    pairs = half_a + half_b  # "whole" = both halves (all of dev unless --pairs-per-half)
    sent_a = list(dict.fromkeys(s for p in half_a for s in p[:2]))
    sent_all = list(dict.fromkeys(s for p in pairs for s in p[:2]))
    sent_b_only = [s for s in sent_all if s not in set(sent_a)]
    cache = default_cache_dir() / "tp_layer_search"
    base = {"backbone": args.backbone, "template": args.template, "batch_size": 32}
    t_start = time.perf_counter()

    def states_all(name: str, cfg: dict[str, Any]) -> dict[str, np.ndarray]:
        st = _states(name, cfg, sent_a, cache, superset=full_a)
        st.update(_states(name, cfg, sent_b_only, cache))
        return st

    if args.only:
        # one pass, for running passes in parallel processes: tp-A, tp-B, notp-A, notp-B
        which, split = args.only.split("-")
        sents = sent_a if split == "A" else sent_b_only
        start, exit_ = grid[0]
        if which == "tp":
            _states("token_prepending", {**base, "start": start, "exit": exit_}, sents, cache)
        else:
            _states("prompt_last", base, sents, cache, superset=full_a if split == "A" else None)
        return
    no_tp = _states("prompt_last", base, sent_a, cache, superset=full_a)
    num_layers = next(iter(no_tp.values())).shape[0] - 1
    layers = list(range(args.min_layer, num_layers + 1))
    search: list[dict[str, Any]] = []
    for layer in layers:
        search.append({"start": 0, "exit": 0, "layer": layer, "A": _spearman(no_tp, half_a, layer)})
    for start, exit_ in grid:
        st = _states("token_prepending", {**base, "start": start, "exit": exit_}, sent_a, cache)
        for layer in layers:
            search.append(
                {"start": start, "exit": exit_, "layer": layer, "A": _spearman(st, half_a, layer)}
            )
    tp_rows = [r for r in search if r["exit"] > r["start"]]
    best = max(tp_rows, key=lambda r: r["A"])
    best_no_tp = max((r for r in search if r["exit"] == r["start"]), key=lambda r: r["A"])
    print(f"chosen on half A: {best}; best no-TP layer on A: {best_no_tp}")

    chosen_cfg = {**base, "start": best["start"], "exit": best["exit"]}
    tp_all = states_all("token_prepending", chosen_cfg)
    no_tp_all = states_all("prompt_last", base)
    final = num_layers
    table: dict[str, dict[str, float]] = {}
    for split, split_pairs in (("A", half_a), ("B", half_b), ("all", pairs)):
        table[split] = {
            "no_tp_final": _spearman(no_tp_all, split_pairs, final),
            "no_tp_chosen": _spearman(no_tp_all, split_pairs, best["layer"]),
            "tp_final": _spearman(tp_all, split_pairs, final),
            "tp_chosen": _spearman(tp_all, split_pairs, best["layer"]),
            "no_tp_best_A_layer": _spearman(no_tp_all, split_pairs, best_no_tp["layer"]),
        }
    result = {
        "file": str(args.file),
        "template": args.template,
        "backbone": args.backbone,
        "n_pairs": {"A": len(half_a), "B": len(half_b), "all": len(pairs)},
        "pairs_per_half": args.pairs_per_half,
        "grid": grid,
        "chosen": best,
        "best_no_tp_on_A": best_no_tp,
        "table": table,
        "search": search,
        "seconds": time.perf_counter() - t_start,
    }
    print(json.dumps({k: v for k, v in result.items() if k != "search"}, indent=1))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
