"""Sentences/s of torch vs ONNX fp32 vs ONNX int8, from one run, side by side.

Why one run: this 2-core machine is noisy (+-25 % between runs), so the three runtimes are
timed back to back, interleaved per input set, on the same texts and threads. Each runtime is
the served ``Strategy`` (tokenisation, length-sorted batching and truncation included), so the
numbers are what ``runtime: torch | onnx | onnx-int8`` gives a server, not a bare forward pass.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_onnx.py \
        [--strategies mean prompt_last token_prepending] [--short 512] [--long 64] [--threads 2]
        [--sts]

short = STS-B dev sentences; long = Wikipedia passages (train/wiki_en). ONNX exports are built
on first use in ``<cache_dir>/onnx`` (the cost is printed, not timed). "cos" is the min cosine
to torch over the set (for binary strategies: the worst text's fraction of equal code bits).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parents[2] / "shared/data"


def machine() -> dict[str, str]:
    import onnxruntime
    import torch

    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": str(os.cpu_count()),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
        "providers": ",".join(onnxruntime.get_available_providers()),
    }


def texts(short: int, long: int) -> dict[str, list[str]]:
    from embedsvc.eval.data import read_sts

    pairs = read_sts(DATA / "stsb/sts-dev.csv")
    sents = list(dict.fromkeys(pairs.sentences1 + pairs.sentences2))[:short]
    passages = []
    with (DATA / "train/wiki_en/passages_part1.jsonl").open() as f:
        for line in f:
            row = json.loads(line)
            passages.append(f"{row.get('title', '')} {row['text']}".strip())
            if len(passages) >= long:
                break
    return {"short": sents, "long": passages}


def rate(strategy, items: list[str], repeat: int) -> tuple[float, np.ndarray]:
    strategy.encode(items[:8])  # warm-up (lazy loads, allocator)
    best = float("inf")
    vecs = None
    for _ in range(repeat):
        start = time.perf_counter()
        vecs = strategy.encode(items).vectors
        best = min(best, time.perf_counter() - start)
    return len(items) / best, vecs


def agreement(kind: str, ref: np.ndarray, vecs: np.ndarray) -> float:
    """Min cosine to torch (dense), or the worst text's fraction of equal code bits (binary)."""
    if kind == "binary":
        return float(1.0 - np.unpackbits(ref ^ vecs, axis=1).mean(axis=1).max())
    return float((ref * vecs).sum(1).min())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--strategies", nargs="+", default=["mean"])
    ap.add_argument("--short", type=int, default=512)
    ap.add_argument("--long", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--sts", action="store_true", help="also STS-B dev Spearman per runtime")
    ap.add_argument(
        "--sts-pairs", type=int, default=0, help="STS on the first N dev pairs only (0 = all)"
    )
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from embedsvc.config import ServiceConfig
    from embedsvc.export.startup import prepare
    from embedsvc.runtimes.base import load_export, onnx_folder
    from embedsvc.strategies import get_strategy

    info = machine()
    print(" | ".join(f"{k} {v}" for k, v in info.items()), f"| threads {args.threads}")
    sets = texts(args.short, args.long)
    rows = []
    for name in args.strategies:
        base = get_strategy(name)
        start = time.perf_counter()
        # the start-up export (int8 writes the fp32 model too), then both executors
        config = ServiceConfig(runtime="onnx-int8", torch_threads=args.threads)
        prepare(name, config)
        folder = onnx_folder(base, config)
        runtimes = {
            "onnx-int8": load_export(folder, int8=True, threads=args.threads),
            "onnx": load_export(folder, int8=False, threads=args.threads),
        }
        export_s = time.perf_counter() - start
        for kind, items in sets.items():
            tokens = np.mean(base.count_tokens(items))
            row = {"strategy": name, "input": kind, "n": len(items), "tokens": float(tokens)}
            ref_rate, ref = rate(base, items, args.repeat)
            row["torch"] = ref_rate
            for label, strat in runtimes.items():
                r, vecs = rate(strat, items, args.repeat)
                row[label] = r
                row[f"{label} cos"] = agreement(base.output_kind, ref, vecs)
            row["export_s"] = export_s
            rows.append(row)
            if args.sts and kind == "long":
                from embedsvc.eval.sts import evaluate_sts

                sts_file = DATA / "stsb/sts-dev.csv"
                sts = {"strategy": name, "input": "sts-b dev spearman"}
                if args.sts_pairs:
                    lines = sts_file.read_text(encoding="utf-8").splitlines()[: args.sts_pairs]
                    sts_file = Path(tempfile.mkdtemp()) / f"sts-dev-first{args.sts_pairs}.csv"
                    sts_file.write_text("\n".join(lines) + "\n", encoding="utf-8")
                    sts["input"] = f"sts-b dev spearman, first {args.sts_pairs} pairs"
                for label, strat in {"torch": base, **runtimes}.items():
                    res = evaluate_sts(strat, sts_file, use_cache=False)
                    sts[label] = res["spearman"]
                rows.append(sts)
                print(
                    f"{name:17s} STS-B dev Spearman  torch {sts['torch']:.2f}  "
                    f"onnx {sts['onnx']:.2f}  int8 {sts['onnx-int8']:.2f}",
                    flush=True,
                )
            print(
                f"{name:17s} {kind:5s} n={len(items):4d} tok={tokens:6.1f}  "
                f"torch {row['torch']:7.1f}/s  onnx {row['onnx']:7.1f}/s "
                f"({row['onnx'] / row['torch']:.2f}x, cos {row['onnx cos']:.5f})  "
                f"int8 {row['onnx-int8']:7.1f}/s ({row['onnx-int8'] / row['torch']:.2f}x, "
                f"cos {row['onnx-int8 cos']:.4f})",
                flush=True,
            )
    if args.json:
        args.json.write_text(json.dumps({"machine": info, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
