"""Small-batch linear layers that avoid a slow oneMKL path on this CPU.

Why
    Measured on the 2-core AVX2 machine (torch 2.13 + oneMKL 2024.2, ``benchmarks/
    bench_spec_step.py``): ``F.linear(x, W)`` with few rows (1..8, the decode and tree-verify
    case) runs at 5-30 GFLOP/s; the same product computed as ``W @ x.T`` runs 2-4x faster for
    2..6 rows, and a single row is fastest when duplicated to two rows (GEMM instead of GEMV). On
    a decode step of SmolLM2-135M (weights streamed from memory) that is the difference between
    ~48 ms and ~20 ms of matmul time.

What
    :func:`use_small_batch_linear` swaps the ``forward`` of every ``nn.Linear`` in a model for
    :func:`small_batch_linear`, which uses ``W @ x.T`` for at most ``max_rows`` rows and
    ``F.linear`` above. It computes the same product in another summation order (float results
    can differ in the last bits), so a decoder that compares outputs must use ONE model for its
    reference and its drafted runs; the speculative benchmark does.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

MAX_ROWS = 6
_enabled = [True]


@contextmanager
def plain_linear() -> Iterator[None]:
    """Within this block patched layers use ``F.linear`` (e.g. to time plain ``generate``)."""
    _enabled.append(False)
    try:
        yield
    finally:
        _enabled.pop()


def small_batch_linear(x: Any, weight: Any, bias: Any = None, max_rows: int = MAX_ROWS) -> Any:
    """``F.linear(x, weight, bias)``, via ``weight @ x.T`` when x has at most ``max_rows`` rows."""
    import torch
    import torch.nn.functional as F

    rows = x.numel() // x.shape[-1]
    if rows > max_rows or not _enabled[-1]:
        return F.linear(x, weight, bias)
    flat = x.reshape(rows, x.shape[-1])
    if rows == 1:
        out = torch.mm(weight, torch.cat([flat, flat]).t())[:, :1].t()
    else:
        out = torch.mm(weight, flat.t()).t()
    if bias is not None:
        out = out + bias
    return out.reshape(*x.shape[:-1], weight.shape[0])


def use_small_batch_linear(model: Any, max_rows: int = MAX_ROWS) -> int:
    """Patch every ``nn.Linear`` of ``model`` in place (idempotent); returns how many."""
    import torch

    count = 0
    for module in model.modules():
        if isinstance(module, torch.nn.Linear) and not getattr(module, "_small_batch", False):

            def forward(x: Any, m: Any = module) -> Any:
                return small_batch_linear(x, m.weight, m.bias, max_rows)

            module.forward = forward
            module._small_batch = True
            count += 1
    return count
