"""Where a speculative-decoding step's time goes on this CPU: the forward cost curve.

Measures, on SmolLM2-135M with a KV cache of ``--context`` tokens, the wall time of one target
forward over ``n`` query tokens (n = 1, 2, 4, ... as a chain, and as a tree with the tree mask),
the LM head included, and the cache commit (keep an accepted path, drop the rest). The ratio
``cost(n) / cost(1)`` is the break-even accepted length: a step that verifies n tokens pays off
only if it adds more than ``cost(n) / cost(1)`` tokens on average.

    PYTHONPATH=. /work/bin/quiet .venv/bin/python benchmarks/bench_spec_step.py \
        [--context 300] [--threads 2] [--repeat 20] [--small-batch-linear]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--context", type=int, default=300)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--sizes", default="1,2,4,8,12,16,24,32,48,64")
    ap.add_argument(
        "--small-batch-linear", action="store_true", help="W @ x.T kernels (embedsvc.rag.kernels)"
    )
    args = ap.parse_args()

    import torch

    from embedsvc.backbones import load_backbone
    from embedsvc.rag.tree import build_tree
    from embedsvc.rag.verify import TreeVerifier

    torch.set_num_threads(args.threads)
    bb = load_backbone("smollm2")
    if args.small_batch_linear:
        from embedsvc.rag.kernels import use_small_batch_linear

        use_small_batch_linear(bb.model)
    ver = TreeVerifier(bb.model)
    prompt = list(range(100, 100 + args.context))
    ver.prefill(prompt[:-1])
    rows = []
    for n in [int(s) for s in args.sizes.split(",")]:
        # a tree of n nodes: 4 branches of equal depth under the root (a realistic shape)
        drafts = [[1000 + b * 100 + j for j in range(max(1, (n - 1) // 4 + 1))] for b in range(4)]
        tree = build_tree(prompt[-1], drafts, budget=n - 1)
        times, commit = [], []
        for _ in range(args.repeat + 2):
            t = time.perf_counter()
            if len(tree) == 1:
                ver.step(tree.tokens[0])
            else:
                ver.forward_tree(tree)
            t1 = time.perf_counter()
            path = [i for i in range(1, len(tree)) if tree.parents[i] == 0][:1]
            ver.commit(path)
            t2 = time.perf_counter()
            ver.crop(len(prompt) - 1)
            times.append(t1 - t)
            commit.append(t2 - t1)
        times, commit = times[2:], commit[2:]
        rows.append(
            {
                "query_tokens": len(tree),
                "forward_ms_median": round(1e3 * statistics.median(times), 2),
                "forward_ms_min": round(1e3 * min(times), 2),
                "commit_ms_median": round(1e3 * statistics.median(commit), 3),
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    base = rows[0]["forward_ms_median"]
    print("\nquery tokens | forward ms (median) | x single-token forward")
    for r in rows:
        q, ms = r["query_tokens"], r["forward_ms_median"]
        print(f"{q:>12} | {ms:>19.2f} | {ms / base:.2f}")


if __name__ == "__main__":
    main()
