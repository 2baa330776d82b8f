"""The start-up export: what the engine runs for each preloaded strategy before SERVING."""

from __future__ import annotations

from typing import Any

from embedsvc.export.onnx import export_strategy
from embedsvc.runtimes.base import (
    RUNTIMES,
    check_runtime,
    check_servable,
    onnx_folder,
    serving_strategy,
)
from embedsvc.runtimes.onnx import has_export
from embedsvc.strategies import Strategy, get_strategy


def prepare(name: str, config: Any) -> Strategy:
    """Export ``name`` for ``config.runtime`` if its export is missing, then return the served
    instance. Called at start-up (before health turns SERVING), never from a request."""
    check_runtime(config.runtime)
    check_servable(name, config.runtime)  # the int8 gate refuses here, before SERVING
    base = get_strategy(name)
    if config.runtime != "torch" and base.exportable:
        from filelock import FileLock

        int8 = bool(RUNTIMES[config.runtime])
        folder = onnx_folder(base, config)
        if not has_export(folder, int8):
            folder.parent.mkdir(parents=True, exist_ok=True)
            with FileLock(str(folder) + ".lock"):  # several processes, one export
                if not has_export(folder, int8):
                    export_strategy(base, folder, quantize_int8=int8)
    return serving_strategy(name, config)
