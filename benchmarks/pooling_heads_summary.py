"""Mean +- std over seeds of the pooling-head runs (``training/train_pooling_head.py``).

Reads ``<runs>/<head>-s<seed>/metrics.json`` and prints a Markdown table: STS-B dev Spearman
and SciFact-subset nDCG@10 for (a) EOS-last + linear, M2 and MLTP, plus the training
wall-clock. A paired sign-flip permutation test over STS pairs is not run here: with 3 seeds
the seed spread is reported instead.

    .venv/bin/python benchmarks/pooling_heads_summary.py --runs ~/.cache/embedsvc/runs
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

HEADS = {"linear": "(a) EOS-last + linear", "m2": "M2 last-layer pooling", "mltp": "MLTP"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=Path, default=Path.home() / ".cache/embedsvc/runs")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    rows = {}
    for head in HEADS:
        metrics = [
            json.loads(p.read_text()) for p in sorted(args.runs.glob(f"{head}-s*/metrics.json"))
        ]
        if not metrics:
            continue
        sts = np.array([m.get("sts_spearman", np.nan) for m in metrics])
        ndcg = np.array([m.get("scifact_ndcg@10", np.nan) for m in metrics])
        train_s = np.array([m["seconds"]["train"] for m in metrics])
        rows[head] = {
            "seeds": [m["seed"] for m in metrics],
            "sts_mean": float(sts.mean()),
            "sts_std": float(sts.std(ddof=1)) if len(sts) > 1 else 0.0,
            "ndcg_mean": float(ndcg.mean()),
            "ndcg_std": float(ndcg.std(ddof=1)) if len(ndcg) > 1 else 0.0,
            "train_seconds_mean": float(train_s.mean()),
            "n_params": metrics[0]["n_params"],
            "per_seed": [
                {"seed": m["seed"], "sts": m.get("sts_spearman"), "ndcg": m.get("scifact_ndcg@10")}
                for m in metrics
            ],
        }
    if args.json:
        print(json.dumps(rows, indent=1))
        return
    print("| head | params | seeds | STS-B dev Spearman | SciFact-subset nDCG@10 | train s/run |")
    print("|---|---|---|---|---|---|")
    for head, r in rows.items():
        print(
            f"| {HEADS[head]} | {r['n_params'] / 1e6:.2f}M | {len(r['seeds'])} | "
            f"{r['sts_mean']:.2f} +- {r['sts_std']:.2f} | "
            f"{r['ndcg_mean']:.2f} +- {r['ndcg_std']:.2f} | {r['train_seconds_mean']:.0f} |"
        )


if __name__ == "__main__":
    main()
