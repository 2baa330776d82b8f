"""Mean +- std over seeds of the pooling-head runs (``training/train_pooling_head.py``).

Reads ``<runs>/<head>-s<seed>/metrics.json`` and prints a Markdown table: STS-B dev Spearman
on half B (odd pair indices, held out), half A (even, used to choose the checkpoint) and the
full dev set, for the chosen checkpoint and for step 0 (the untrained head, which with the
residual heads of issue 18 is ``prompt_last``), plus the chosen step and the training
wall-clock. With 3 seeds the seed spread is reported (no permutation test).

    .venv/bin/python benchmarks/pooling_heads_summary.py --runs runs/issue18
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

HEADS = {"linear": "(a) last token + linear", "m2": "M2 last-layer pooling", "mltp": "MLTP"}
KEYS = ("sts_half_b", "sts_half_a", "sts_spearman")


def _ms(values: list[float]) -> tuple[float, float]:
    arr = np.asarray(values, dtype=float)
    return float(arr.mean()), float(arr.std(ddof=1)) if len(arr) > 1 else 0.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=Path, default=Path("runs/issue18"))
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    rows = {}
    for head in HEADS:
        metrics = [
            json.loads(p.read_text()) for p in sorted(args.runs.glob(f"{head}-s*/metrics.json"))
        ]
        if not metrics:
            continue
        row: dict = {
            "seeds": [m["seed"] for m in metrics],
            "n_params": metrics[0]["n_params"],
            "best_steps": [m.get("best_step") for m in metrics],
            "train_seconds": [m["seconds"]["train"] for m in metrics],
        }
        for key in KEYS:
            row[key] = _ms([m.get(key, np.nan) for m in metrics])
            row[f"step0_{key}"] = _ms([(m.get("step0") or {}).get(key, np.nan) for m in metrics])
        rows[head] = row
    if args.json:
        print(json.dumps(rows, indent=1))
        return
    print(
        "| head | params | seeds | half B (held out) | half A (selection) | full dev "
        "| step 0: B / A / full | chosen steps | train s/run |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for head, r in rows.items():
        cells = [f"{r[k][0]:.2f} ± {r[k][1]:.2f}" for k in KEYS]
        step0 = " / ".join(f"{r['step0_' + k][0]:.2f}" for k in KEYS)
        print(
            f"| {HEADS[head]} | {r['n_params'] / 1e6:.2f}M | {len(r['seeds'])} | "
            + " | ".join(cells)
            + f" | {step0} | {r['best_steps']} | {np.mean(r['train_seconds']):.0f} |"
        )


if __name__ == "__main__":
    main()
