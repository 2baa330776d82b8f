"""The ONNX Runtime executors (fp32 and int8): the strategy's traced core, read from an export.

An export folder (``embedsvc export``, or the engine's start-up export) holds ``model.onnx``,
optionally ``model_int8.onnx``, the tokenizer and ``manifest.json``. :class:`OnnxExecutor` runs
one padded batch through the graph; the strategy's pre and post stages are unchanged. The CUDA
provider is used when ``onnxruntime-gpu`` is installed and sees a GPU; the CPU provider otherwise.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from embedsvc.errors import FailedPrecondition, InvalidArgument

#: version of what an export folder holds (graph + int8 recipe): part of the export cache key,
#: so a change here re-exports instead of serving a stale model. 2: decoders keep their MLP
#: down projections in float in the int8 model. 3: the graph is the strategy's core (its named
#: outputs; normalisation and bit packing run in the shared post stage).
EXPORT_FORMAT = 3
MANIFEST = "manifest.json"
MODEL_FP32 = "model.onnx"
MODEL_INT8 = "model_int8.onnx"


def providers() -> list[str]:
    import onnxruntime as ort

    available = ort.get_available_providers()
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]


def make_session(path: Path, threads: int | None = None) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.inter_op_num_threads = 1
    if threads:
        opts.intra_op_num_threads = int(threads)
    return ort.InferenceSession(str(path), sess_options=opts, providers=providers())


def read_manifest(directory: str | Path) -> dict[str, Any]:
    path = Path(directory) / MANIFEST
    if not path.is_file():
        raise InvalidArgument(f"{directory}: no {MANIFEST}; not an embedsvc export folder")
    return json.loads(path.read_text())


class OnnxExecutor:
    """Runs an exported core with ONNX Runtime: ``run(feeds) -> outputs`` by name."""

    def __init__(self, model: str | Path, *, threads: int | None = None, name: str = "onnx"):
        model = Path(model)
        if not model.is_file():
            raise FailedPrecondition(
                f"{model}: missing (export it first: `embedsvc export`, with --int8 for int8)"
            )
        self.name = name
        self.path = model
        self.session = make_session(model, threads)
        self._inputs = [i.name for i in self.session.get_inputs()]
        self._outputs = [o.name for o in self.session.get_outputs()]

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        # the tracer drops inputs a graph never reads (e.g. token_type_ids): feed what it has
        values = self.session.run(self._outputs, {n: feeds[n] for n in self._inputs})
        return dict(zip(self._outputs, values, strict=True))


def onnx_executor(directory: str | Path, *, int8: bool, threads: int | None = None) -> OnnxExecutor:
    """The executor of an export folder's fp32 or int8 model."""
    model = Path(directory) / (MODEL_INT8 if int8 else MODEL_FP32)
    return OnnxExecutor(model, threads=threads, name="onnx-int8" if int8 else "onnx")


def export_dir(cache_dir: Path, name: str, model_fingerprint: str) -> Path:
    """Where the start-up export of a strategy lives (keyed by its weights + config and the
    export format)."""
    return Path(cache_dir) / "onnx" / f"{name}-{model_fingerprint}-f{EXPORT_FORMAT}"


def has_export(directory: Path, int8: bool) -> bool:
    model = directory / (MODEL_INT8 if int8 else MODEL_FP32)
    return model.is_file() and (directory / MANIFEST).is_file()
