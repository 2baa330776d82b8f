"""``export_strategy``: a strategy as a self-describing ONNX folder.

The graph is the strategy's core -- the very ``nn.Module`` its torch executor runs -- traced
once; pre (tokenisation, templates, limits) and post (normalise, pack bits) stay the strategy's
Python code for both runtimes. The folder holds ``model.onnx`` (fp32; dynamic batch and sequence
axes), optionally ``model_int8.onnx`` (dynamic int8 quantisation), ``tokenizer/`` and
``manifest.json``. The manifest carries what a deployment needs to trust the file: the strategy's
name and config, the opset, input/output names, hashes of the source checkpoint and of the
exported files, and the parity measured against torch at export time.

This module imports only the strategy contract (``embedsvc.strategies.base``).
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
from embedsvc.runtimes.onnx import (
    EXPORT_FORMAT,
    MANIFEST,
    MODEL_FP32,
    MODEL_INT8,
    read_manifest,
)
from embedsvc.strategies.base import Role, Strategy

log = logging.getLogger(__name__)

#: opset 17: LayerNormalization is native; onnxruntime >= 1.14 runs it everywhere
DEFAULT_OPSET = 17
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


def check_exportable(strategy: Strategy) -> None:
    """InvalidArgument saying why ``strategy`` has nothing to export (no core module)."""
    if not strategy.exportable:
        raise InvalidArgument(
            f"strategy {strategy.name!r} has no ONNX export (it runs no transformer)",
            field="strategy",
        )


def trace_feeds(strategy: Strategy, texts: list[str]) -> dict[str, np.ndarray]:
    """A padded batch of ``texts`` through the strategy's own pre stage."""
    return strategy.collate(strategy.pre(texts, Role.PASSAGE).ids)


def _export_graph(strategy: Strategy, path: Path, opset: int) -> None:
    import torch

    core = strategy.core
    feeds = trace_feeds(strategy, _TRACE_TEXTS)
    if feeds["attention_mask"].all():
        raise RuntimeError("trace batch must contain padding")
    args = tuple(torch.from_numpy(feeds[n]) for n in core.input_names)
    axes = {n: {0: "batch", 1: "sequence"} for n in core.input_names}
    axes.update({n: {0: "batch"} for n in core.output_names})
    axes.update({n: {0: "batch", 1: "sequence"} for n in core.token_outputs})
    # torch.onnx.export restores the module's mode on the whole tree after tracing: make sure
    # that is eval (the core is the served module: dropout must stay off)
    core.eval()
    try:
        with torch.no_grad():
            torch.onnx.export(
                core,
                args,
                str(path),
                dynamo=False,  # the TorchScript tracer: dynamic axes, no onnxscript needed
                opset_version=opset,
                input_names=list(core.input_names),
                output_names=list(core.output_names),
                dynamic_axes=axes,
                do_constant_folding=True,
            )
    finally:
        core.eval()


def quantize_model_int8(src: Path, dst: Path, keep_float: tuple[str, ...] = ()) -> None:
    """Dynamic int8 weights (activations quantised at run time): 1.5-1.8x on AVX2 CPUs.

    It drifts (min cosine ~0.91 vs fp32 on MiniLM passages), so it is gated by STS Spearman in
    the tests, not by cosine. MatMuls whose node name contains one of ``keep_float``
    (``CoreModule.int8_keep_float``) stay float.
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


def check_parity(strategy: Strategy, model_path: Path, texts: list[str] | None = None) -> float:
    """Agreement of the served vectors, ONNX Runtime vs torch, on ``texts``: min cosine of the
    un-normalised dense vectors, or the fraction of equal bits of binary codes."""
    from embedsvc.runtimes.onnx import OnnxExecutor
    from embedsvc.strategies.runner import Runner

    texts = texts or _CHECK_TEXTS
    ref = Runner(strategy).encode(texts, Role.PASSAGE, normalize=False).vectors
    got = Runner(strategy, OnnxExecutor(model_path)).encode(texts, Role.PASSAGE, normalize=False)
    return vector_agreement(strategy.output_kind, got.vectors, ref)


def vector_agreement(kind: str, got: np.ndarray, ref: np.ndarray) -> float:
    """Min row cosine (dense) or the fraction of equal bits (binary, packed uint8)."""
    if kind == "binary":
        return float((np.unpackbits(got, axis=1) == np.unpackbits(ref, axis=1)).mean())
    cos = (got * ref).sum(1) / (
        np.maximum(np.linalg.norm(got, axis=1) * np.linalg.norm(ref, axis=1), 1e-12)
    )
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
    check_exportable(strategy)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    model_path = out / MODEL_FP32
    tmp = out / (MODEL_FP32 + ".tmp")
    _export_graph(strategy, tmp, opset)
    parity = check_parity(strategy, tmp)
    if parity < 0.999:
        raise RuntimeError(f"ONNX export of {strategy.name!r}: parity {parity:.5f} < 0.999")
    tmp.replace(model_path)
    files = [MODEL_FP32]
    parity_int8 = None
    if quantize_int8:
        tmp8 = out / (MODEL_INT8 + ".tmp")
        quantize_model_int8(model_path, tmp8, strategy.core.int8_keep_float)
        tmp8.replace(out / MODEL_INT8)  # readers never see a half-written model
        files.append(MODEL_INT8)
        parity_int8 = check_parity(strategy, out / MODEL_INT8)
    if strategy.tokenizer is not None:
        strategy.tokenizer.save_pretrained(str(out / "tokenizer"))
    manifest = build_manifest(strategy, opset, files, out)
    manifest.update(
        int8=quantize_int8,
        parity={
            "measure": "equal_bits" if strategy.output_kind == "binary" else "min_cosine",
            "fp32": parity,
            "int8": parity_int8,
        },
        export_seconds=round(time.perf_counter() - start, 1),
    )
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2))
    log.info("exported %s to %s (parity %.5f)", strategy.name, out, parity)
    return manifest


def build_manifest(strategy: Strategy, opset: int, files: list[str], out: Path) -> dict[str, Any]:
    import onnx
    import onnxruntime
    import torch
    import transformers

    core = strategy.core
    source = strategy.source
    return {
        "format": EXPORT_FORMAT,
        "strategy": {
            "name": strategy.name,
            "config": strategy.config.model_dump(mode="json"),
            "fingerprint": strategy.model_fingerprint,
            "output_kind": strategy.output_kind,
            "dim": strategy.dim,
            "max_tokens": strategy.max_tokens,
        },
        "opset": opset,
        "inputs": {n: {"dtype": "int64", "shape": ["batch", "sequence"]} for n in core.input_names},
        "outputs": {
            n: {
                "shape": ["batch", "sequence", "..."]
                if n in core.token_outputs
                else ["batch", "..."]
            }
            for n in core.output_names
        },
        "source": {
            "path": str(source) if source else None,
            "fingerprint": strategy.model_fingerprint,
            "sha256": source_hashes(source) if source else {},
        },
        "files": {name: sha256_file(out / name) for name in files},
        "batch_size": strategy.batch_size,
        "notes": list(core.notes),
        "versions": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__,
        },
        "created_at": datetime.now(timezone.utc).isoformat(),
    }


__all__ = [
    "EXPORT_FORMAT",
    "MANIFEST",
    "MODEL_FP32",
    "MODEL_INT8",
    "export_strategy",
    "read_manifest",
]
