"""oneMKL ``F.linear`` vs ``W @ x.T`` at few rows: the matmuls of one SmolLM2-135M forward.

Random fp32 weights shaped like SmolLM2-135M's 30 decoder layers (q, k, v, o, gate, up, down)
plus the 49,152 x 576 LM head (~566 MB, streamed from memory like a real decode step); for each
row count the time of all those products, median of 7, with ``F.linear``, ``W @ x.T`` and (1
row) ``W @ [x; x].T``. This is why ``embedsvc.rag.kernels`` exists.

    /work/bin/quiet .venv/bin/python benchmarks/bench_small_linear.py
"""

from __future__ import annotations

import time

import torch


def main() -> None:
    torch.set_num_threads(2)
    shapes = [(576, 576), (192, 576), (192, 576), (576, 576), (1536, 576), (1536, 576), (576, 1536)]
    weights = [torch.randn(*s) for _ in range(30) for s in shapes] + [torch.randn(49152, 576)]

    def run(m: int, mode: str) -> float:
        xs = {576: torch.randn(m, 576), 1536: torch.randn(m, 1536)}
        t = time.perf_counter()
        for w in weights:
            x = xs[w.shape[1]]
            if mode == "linear":
                torch.nn.functional.linear(x, w)
            elif mode == "WxT":
                torch.mm(w, x.t())
            else:  # one row duplicated to two: GEMM instead of GEMV
                torch.mm(w, torch.cat([x, x]).t())[:, :1]
        return (time.perf_counter() - t) * 1e3

    for m in [1, 2, 3, 4, 6, 8]:
        modes = ["linear", "WxT"] + (["dup2"] if m == 1 else [])
        res = {mode: sorted(run(m, mode) for _ in range(7))[3] for mode in modes}
        print(m, {k: round(v, 1) for k, v in res.items()}, flush=True)


if __name__ == "__main__":
    main()
