"""Mean and spread over seeds of ``train_dupmae_ot.py`` runs, as JSON and markdown rows.

    .venv/bin/python training/summarize_dupmae_ot.py runs/dupmae_ot/seed0 runs/dupmae_ot/seed1 \
        runs/dupmae_ot/seed2 --json docs/results/issue16_seeds.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

SETS = ("selection", "test", "dev_a", "dev_b")
CHANNELS = ("sparse", "dense", "fused")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    results = [json.loads((r / "result.json").read_text()) for r in args.runs]
    out: dict = {"runs": [str(r) for r in args.runs], "seeds": [r["seed"] for r in results]}
    for stage in ("untrained", "best"):
        for s in SETS:
            for c in CHANNELS:
                for m in ("ndcg@10", "recall@100"):
                    vals = [r[stage][f"{s}/{c}"][m] for r in results]
                    out[f"{stage}/{s}/{c}/{m}"] = {
                        "mean": float(np.mean(vals)),
                        "std": float(np.std(vals)),
                        "values": vals,
                    }
    out["best/step"] = [r["best"]["step"] for r in results]
    out["best/fusion_weight"] = [r["best"]["fusion_weight"] for r in results]
    out["wall_clock_s"] = [r["wall_clock_s"] for r in results]
    out["doc_nonzeros_mean"] = [r["best"]["doc_nonzeros_mean"] for r in results]
    out["query_nonzeros_mean"] = [r["best"]["query_nonzeros_mean"] for r in results]
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))
    print("| stage | set | sparse nDCG@10 | dense nDCG@10 | fused nDCG@10 | fused R@100 |")
    print("|---|---|---:|---:|---:|---:|")
    for stage in ("untrained", "best"):
        for s in SETS:
            cells = []
            for c in CHANNELS:
                v = out[f"{stage}/{s}/{c}/ndcg@10"]
                vals = "/".join(f"{x:.2f}" for x in v["values"])
                cells.append(f"{v['mean']:.2f} ({vals})")
            r = out[f"{stage}/{s}/fused/recall@100"]
            print(f"| {stage} | {s} | {' | '.join(cells)} | {r['mean']:.2f} |")
    print(
        "steps", out["best/step"], "weights", out["best/fusion_weight"], "wall", out["wall_clock_s"]
    )


if __name__ == "__main__":
    main()
