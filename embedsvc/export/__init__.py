"""ONNX export of strategies: the core module each strategy serves, traced once.

``export_strategy`` writes a self-describing folder (``model.onnx``, tokenizer, ``manifest.json``);
``embedsvc.runtimes.onnx`` serves it. Nothing here names a strategy: every strategy with a core
exports the same way. Imports are lazy so that ``import embedsvc.export`` costs nothing.
"""

from __future__ import annotations

from typing import Any

__all__ = ["export_strategy"]


def __getattr__(name: str) -> Any:
    if name == "export_strategy":
        from embedsvc.export.onnx import export_strategy

        return export_strategy
    raise AttributeError(name)
