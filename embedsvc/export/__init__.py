"""ONNX export and serving of strategies.

``export_strategy`` writes a self-describing folder (``model.onnx``, tokenizer, ``manifest.json``)
and ``OnnxStrategy`` serves a strategy from ONNX Runtime behind the ordinary Strategy contract.
Strategies opt in through the ``Strategy.onnx_spec()`` hook; nothing here names a strategy.
Imports are lazy so that ``import embedsvc.export`` costs nothing without onnxruntime.
"""

from __future__ import annotations

from typing import Any

from embedsvc.export.spec import OnnxSpec

__all__ = ["OnnxSpec", "OnnxStrategy", "export_strategy", "onnx_strategy"]


def __getattr__(name: str) -> Any:
    if name == "export_strategy":
        from embedsvc.export.onnx import export_strategy

        return export_strategy
    if name in ("OnnxStrategy", "onnx_strategy"):
        from embedsvc.export import runtime

        return getattr(runtime, name)
    raise AttributeError(name)
