"""Runtimes: executors below the strategy (torch, ONNX Runtime fp32, ONNX Runtime int8).

A runtime never wraps a strategy: it hands the strategy an executor (``Strategy.use_executor``)
that runs the same core -- in-process torch, or the ONNX graph traced from it -- while pre and
post stay the strategy's own code. See :func:`embedsvc.runtimes.base.serving_strategy`.
"""

from __future__ import annotations

from embedsvc.runtimes.base import RUNTIMES, serving_strategy

__all__ = ["RUNTIMES", "serving_strategy"]
