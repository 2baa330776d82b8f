"""The torch runtime: the strategy's core ``nn.Module`` in-process, on CUDA when available."""

from __future__ import annotations

from embedsvc.strategies.base import Strategy
from embedsvc.strategies.runner import CoreExecutor


def device() -> str:
    """``cuda`` when torch sees a GPU, else ``cpu``."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def torch_executor(strategy: Strategy) -> CoreExecutor:
    """The core under ``inference_mode`` on :func:`device` (the default of every strategy)."""
    dev = device()
    core = strategy.core
    if dev != "cpu":
        core.to(dev)
    return CoreExecutor(core, dev)
