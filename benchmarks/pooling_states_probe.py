"""Why the pooling heads score near chance on the SciFact subset: probe the decoder's own states.

Issue 3 reported SciFact-subset nDCG@10 of 3.3 / 3.2 / 8.1 for (a) EOS-last + linear, M2 and
MLTP (random ranking: ~1.5-4). This script separates "the heads or the serving path are broken"
from "the frozen backbone's last-token states carry no retrieval signal":

1. **Raw states, no head**: cosine retrieval with SmolLM2's last-token state (text + EOS, the
   same cached ``[n, L, d]`` states the trainer scores) taken at several blocks, their mean over
   blocks, and a seeded random baseline.
2. **Serving parity**: the served strategies (``eos_linear``, ``mltp``: full decoder forward
   through ``Strategy.encode``) against the trainer's evaluation path (cached states + the same
   head) on a few SciFact documents. Cosine 1.0 means the harness number is the served number.

Uses the trainer's config and state cache (``training/train_pooling_head.py``), so after the
trainer has run it costs seconds plus one short decoder pass.

    .venv/bin/python benchmarks/pooling_states_probe.py \
        --json docs/results/issue3_pooling_states_probe.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "training"))
import train_pooling_head as trainer  # noqa: E402

from embedsvc.backbones import load_backbone  # noqa: E402
from embedsvc.config import default_cache_dir  # noqa: E402
from embedsvc.eval.retrieval import score_matrix  # noqa: E402
from embedsvc.strategies import Role, create_strategy  # noqa: E402


def retrieval(sf: dict, q: np.ndarray, d: np.ndarray) -> dict[str, float]:
    """nDCG@10 / Recall@100 (x100) of cosine ranking over the subset."""
    q = q / np.linalg.norm(q, axis=1, keepdims=True)
    d = d / np.linalg.norm(d, axis=1, keepdims=True)
    return score_matrix(sf["qrels"], sf["qids"], sf["doc_ids"], q @ d.T)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", type=Path, default=Path("training/configs/pooling_head_cpu.json"))
    ap.add_argument("--parity-docs", type=int, default=6)
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()
    cfg = trainer.TrainConfig(**json.loads(args.config.read_text()))
    backbone = load_backbone("smollm2")
    sf = trainer.prepare_eval(
        cfg.model_copy(update={"sts_file": ""}), backbone, default_cache_dir()
    )
    sf = sf["scifact"]
    queries = np.asarray(sf["query_states"], np.float32)
    docs = np.asarray(sf["doc_states"], np.float32)
    n_layers = queries.shape[1]
    print(f"SciFact subset: {len(sf['qids'])} queries, {len(sf['doc_ids'])} docs; "
          f"states [n, {n_layers} blocks, {queries.shape[2]}]")  # fmt: skip

    rows: dict[str, dict[str, float]] = {}
    for layer in sorted({1, 3, 5, 8, 10, 15, 20, 25, n_layers - 1}):
        rows[f"raw last-token state, block {layer + 1} of {n_layers}"] = retrieval(
            sf, queries[:, layer], docs[:, layer]
        )
    rows["raw, mean over all blocks"] = retrieval(sf, queries.mean(1), docs.mean(1))
    rng = np.random.default_rng(0)
    rows["random vectors (seed 0)"] = retrieval(
        sf, rng.normal(size=(len(queries), 64)), rng.normal(size=(len(docs), 64))
    )
    print("\n| representation | nDCG@10 | Recall@100 |\n|---|---:|---:|")
    for name, r in rows.items():
        print(f"| {name} | {r['ndcg@10']:.2f} | {r['recall@100']:.2f} |")

    parity: dict[str, float] = {}
    n = args.parity_docs
    for name in ("eos_linear", "mltp"):
        strategy = create_strategy(name)
        served = strategy.encode(sf["docs"][:n], Role.PASSAGE).vectors
        states = docs[:n] if name == "mltp" else docs[:n, -1:]
        offline = strategy.pool(states)
        offline /= np.linalg.norm(offline, axis=1, keepdims=True)
        parity[name] = float((served * offline).sum(1).min())
        print(f"{name}: min cosine(served encode, trainer eval path) over {n} docs = "
              f"{parity[name]:.6f}")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps({"retrieval": rows, "parity": parity}, indent=2))


if __name__ == "__main__":
    main()
