"""``export_strategy``: a strategy as a self-describing ONNX folder.

The folder holds ``model.onnx`` (fp32; dynamic batch and sequence axes), optionally
``model_int8.onnx`` (dynamic int8 quantisation), ``tokenizer/`` and ``manifest.json``. The
manifest carries what a deployment needs to trust the file: the strategy's name and config, the
opset, input/output names, hashes of the source checkpoint and of the exported files, and the
parity measured against torch at export time.
"""

from __future__ import annotations

import json
import logging
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from embedsvc.checksums import sha256_file
from embedsvc.errors import InvalidArgument
from embedsvc.export.spec import OnnxSpec
from embedsvc.strategies.base import Role, Strategy

log = logging.getLogger(__name__)

#: opset 17: LayerNormalization is native; onnxruntime >= 1.14 runs it everywhere
DEFAULT_OPSET = 17
MANIFEST = "manifest.json"
MODEL_FP32 = "model.onnx"
MODEL_INT8 = "model_int8.onnx"
#: version of what an export folder holds (graph + int8 recipe): part of the on-first-use cache
#: key, so a change here re-exports instead of serving a stale model. 2: decoders keep their MLP
#: down projections in float in the int8 model.
EXPORT_FORMAT = 2
OUTPUTS = ("embedding", "embedding_normalized")
#: traced with a *padded* batch, so mask handling is the general path (never the all-ones one)
_TRACE_TEXTS = [
    "A man is playing a guitar.",
    "The quick brown fox jumps over the lazy dog while the farmer watches from the porch.",
]
_CHECK_TEXTS = [
    "A plane is taking off.",
    "Three men are playing chess.",
    "A woman is slicing an onion with a sharp knife on a wooden board in the kitchen.",
    "x",
]


def source_hashes(folder: Path) -> dict[str, str]:
    """sha256 of every weight/config file of the checkpoint folder (full hashes, not samples)."""
    from embedsvc.backbones.loading import WEIGHT_SUFFIXES

    folder = Path(folder)
    if not folder.is_dir():
        return {}
    keep = (*WEIGHT_SUFFIXES, ".json", ".txt", ".model")
    return {
        p.name: sha256_file(p)
        for p in sorted(folder.iterdir())
        if p.is_file() and p.suffix in keep and p.stat().st_size > 0
    }


def strategy_spec(strategy: Strategy) -> OnnxSpec:
    """The strategy's export hook, or InvalidArgument saying why there is nothing to export."""
    spec = strategy.onnx_spec()
    if spec is None:
        raise InvalidArgument(
            f"strategy {strategy.name!r} has no ONNX export (it runs no transformer, or its "
            "export is not implemented yet)",
            field="strategy",
        )
    return spec


def _torch_reference(spec: OnnxSpec, feeds: dict[str, np.ndarray]) -> np.ndarray:
    import torch

    with torch.inference_mode():
        args = [torch.from_numpy(feeds[n]) for n in spec.input_names]
        out = spec.module(*args)
        if isinstance(out, tuple):  # (embedding, *extra_outputs)
            out = out[0]
        return out.float().numpy()


def _export_graph(spec: OnnxSpec, path: Path, opset: int, output_kind: str) -> None:
    import torch
    from torch import nn

    class _Graph(nn.Module):
        def __init__(self, inner: nn.Module, normalize: bool) -> None:
            super().__init__()
            self.inner = inner
            self.normalize = normalize

        def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
            out = self.inner(*inputs)
            extras: tuple[torch.Tensor, ...] = ()
            if isinstance(out, tuple):  # (embedding, *extra_outputs)
                out, extras = out[0], tuple(out[1:])
            pooled = out.float()
            if not self.normalize:
                return (pooled, pooled, *extras)
            return (pooled, nn.functional.normalize(pooled, p=2.0, dim=1), *extras)

    graph = _Graph(spec.module, output_kind == "dense")
    # torch.onnx.export restores the *wrapper's* mode on the whole tree after tracing: a fresh
    # wrapper is in train mode, which would leave the shared backbone with dropout on.
    modes = {m: m.training for m in graph.modules()}
    graph.eval()
    feeds = spec.featurize(_TRACE_TEXTS, Role.PASSAGE)
    if "attention_mask" in feeds and feeds["attention_mask"].all():
        raise RuntimeError("trace batch must contain padding")
    args = tuple(torch.from_numpy(feeds[n]) for n in spec.input_names)
    axes = {n: {0: "batch", 1: "sequence"} for n in spec.input_names}
    axes.update({n: {0: "batch"} for n in OUTPUTS})
    axes.update({n: {0: "batch", 1: "sequence"} for n in spec.extra_outputs})
    try:
        with torch.no_grad():
            torch.onnx.export(
                graph,
                args,
                str(path),
                dynamo=False,  # the TorchScript tracer: dynamic axes, no onnxscript needed
                opset_version=opset,
                input_names=list(spec.input_names),
                output_names=[*OUTPUTS, *spec.extra_outputs],
                dynamic_axes=axes,
                do_constant_folding=True,
            )
    finally:
        for module, training in modes.items():
            module.train(training)
        spec.module.eval()


def quantize_model_int8(src: Path, dst: Path, keep_float: tuple[str, ...] = ()) -> None:
    """Dynamic int8 weights (activations quantised at run time): 1.5-1.8x on AVX2 CPUs.

    It drifts (min cosine ~0.91 vs fp32 on MiniLM passages), so it is gated by STS Spearman in
    the tests, not by cosine. MatMuls whose node name contains one of ``keep_float``
    (``OnnxSpec.int8_keep_float``) stay float.
    """
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    graph = onnx.load(str(src), load_external_data=False).graph
    exclude = _fp16_consumers(graph) + [
        n.name for n in graph.node if n.op_type == "MatMul" and any(f in n.name for f in keep_float)
    ]
    quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, nodes_to_exclude=exclude)


def _fp16_consumers(graph: Any) -> list[str]:
    """Nodes reading a float16 initializer (e.g. the multi-sense dictionary's ``centroids``):
    ORT cannot quantise them (it writes an invalid graph), and a lookup table is data, not a
    weight to approximate, so they stay as they are."""
    import onnx

    fp16 = {i.name for i in graph.initializer if i.data_type == onnx.TensorProto.FLOAT16}
    return [n.name for n in graph.node if fp16.intersection(n.input)] if fp16 else []


def check_parity(spec: OnnxSpec, model_path: Path, texts: list[str] | None = None) -> float:
    """Min cosine between ONNX Runtime and torch on ``texts`` (un-normalised outputs)."""
    import onnxruntime as ort

    feeds = spec.featurize(texts or _CHECK_TEXTS, Role.PASSAGE)
    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    got = session.run(["embedding"], feeds)[0]
    ref = _torch_reference(spec, feeds)
    cos = (got * ref).sum(1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(ref, axis=1))
    return float(cos.min())


def export_strategy(
    strategy: str | Strategy,
    out_dir: str | Path,
    quantize_int8: bool = False,
    *,
    opset: int = DEFAULT_OPSET,
    config: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Export ``strategy`` (a name, or an instance) to ``out_dir``; returns the manifest.

    ``config`` overrides the strategy's defaults when a name is given. The export runs a parity
    check against torch on a few sentences and records it; it raises if fp32 parity is below
    0.999, since a silently wrong graph is worse than none.
    """
    from embedsvc.strategies import create_strategy

    if isinstance(strategy, str):
        strategy = create_strategy(strategy, **(config or {}))
    spec = strategy_spec(strategy)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    model_path = out / MODEL_FP32
    tmp = out / (MODEL_FP32 + ".tmp")
    _export_graph(spec, tmp, opset, strategy.output_kind)
    parity = check_parity(spec, tmp)
    if parity < 0.999:
        raise RuntimeError(f"ONNX export of {strategy.name!r}: parity {parity:.5f} < 0.999")
    tmp.replace(model_path)
    files = [MODEL_FP32]
    parity_int8 = None
    if quantize_int8:
        tmp8 = out / (MODEL_INT8 + ".tmp")
        quantize_model_int8(model_path, tmp8, spec.int8_keep_float)
        tmp8.replace(out / MODEL_INT8)  # readers never see a half-written model
        files.append(MODEL_INT8)
        parity_int8 = check_parity(spec, out / MODEL_INT8)
    spec.tokenizer.save_pretrained(str(out / "tokenizer"))
    manifest = build_manifest(strategy, spec, opset, files, out)
    manifest.update(
        int8=quantize_int8,
        parity={"fp32_min_cosine": parity, "int8_min_cosine": parity_int8},
        export_seconds=round(time.perf_counter() - start, 1),
    )
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2))
    log.info("exported %s to %s (parity %.5f)", strategy.name, out, parity)
    return manifest


def build_manifest(
    strategy: Strategy, spec: OnnxSpec, opset: int, files: list[str], out: Path
) -> dict[str, Any]:
    import onnx
    import onnxruntime
    import torch
    import transformers

    return {
        "format": EXPORT_FORMAT,
        "strategy": {
            "name": strategy.name,
            "config": strategy.config.model_dump(mode="json"),
            "fingerprint": strategy.fingerprint,
            "output_kind": strategy.output_kind,
            "dim": strategy.dim,
            "max_tokens": strategy.max_tokens,
        },
        "opset": opset,
        "inputs": {n: {"dtype": "int64", "shape": ["batch", "sequence"]} for n in spec.input_names},
        "outputs": {
            **{n: {"dtype": "float32", "shape": ["batch", strategy.dim]} for n in OUTPUTS},
            **{n: {"shape": ["batch", "sequence", "..."]} for n in spec.extra_outputs},
        },
        "source": {
            "path": str(spec.source),
            "fingerprint": spec.source_fingerprint,
            "sha256": source_hashes(spec.source),
        },
        "files": {name: sha256_file(out / name) for name in files},
        "batch_size": spec.batch_size,
        "notes": spec.notes,
        "versions": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__,
        },
        "created_at": datetime.now(timezone.utc).isoformat(),
    }


def read_manifest(directory: str | Path) -> dict[str, Any]:
    path = Path(directory) / MANIFEST
    if not path.is_file():
        raise InvalidArgument(f"{directory}: no {MANIFEST}; not an embedsvc export folder")
    return json.loads(path.read_text())
