"""Serving a strategy from ONNX Runtime behind the ordinary Strategy contract.

``OnnxStrategy`` wraps the torch strategy for everything that is Python (config, token counts,
prompt templates, truncation: the spec's ``featurize``) and runs the exported graph for the
forward pass, so ids, token counts, truncation errors and vectors match the torch path. The
export happens on first use into ``<cache_dir>/onnx/<name>-<fingerprint>[-int8]/`` (or an
exported folder is opened with :meth:`OnnxStrategy.from_dir`). The CUDA provider is used when
``onnxruntime-gpu`` is installed and sees a GPU; the CPU provider otherwise.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from pathlib import Path
from typing import Any

import numpy as np

from embedsvc.errors import InvalidArgument
from embedsvc.export.onnx import (
    EXPORT_FORMAT,
    MODEL_FP32,
    MODEL_INT8,
    export_strategy,
    read_manifest,
)
from embedsvc.export.spec import OnnxSpec
from embedsvc.strategies._limits import apply_token_limit, check_texts
from embedsvc.strategies.base import Embedding, Role, Strategy

log = logging.getLogger(__name__)

#: ServiceConfig.runtime values served from ONNX, and whether they use the int8 model
ONNX_RUNTIMES = {"onnx": False, "onnx-int8": True}

_INSTANCES: dict[tuple[str, str, bool], Strategy] = {}
_KEY_LOCKS: dict[tuple[str, str, bool], threading.Lock] = {}
_LOCK = threading.Lock()


def is_exportable(strategy: Strategy) -> bool:
    """True when the strategy's class overrides the ``onnx_spec`` hook (no model is loaded)."""
    return type(strategy).onnx_spec is not Strategy.onnx_spec


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


class OnnxStrategy(Strategy):
    """``inner``'s API and semantics, with the transformer run by ONNX Runtime."""

    def __init__(
        self, inner: Strategy, directory: Path, *, int8: bool = False, threads: int | None = None
    ) -> None:
        super().__init__(inner.config)
        self.inner = inner
        self.name = inner.name  # collections and batching key on the strategy name
        self.output_kind = inner.output_kind
        self.description = f"{inner.description} [onnx{'-int8' if int8 else ''}]"
        self.directory = Path(directory)
        self.int8 = int8
        self.manifest = read_manifest(self.directory)
        model = self.directory / (MODEL_INT8 if int8 else MODEL_FP32)
        if not model.is_file():
            raise InvalidArgument(f"{model}: missing (export with --int8 for the int8 model)")
        self.session = make_session(model, threads)
        self._spec: OnnxSpec | None = None
        self._lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:
        """Anything beyond the Strategy contract (``MultiSense.senses`` for the Senses RPC,
        ``BTR.token_codes``, ...) is the wrapped strategy's, run by torch."""
        if name.startswith("__") or name == "inner" or "inner" not in self.__dict__:
            raise AttributeError(name)
        return getattr(self.__dict__["inner"], name)

    @classmethod
    def from_dir(
        cls, directory: str | Path, *, int8: bool = False, threads: int | None = None
    ) -> OnnxStrategy:
        """Serve an ``embedsvc export`` folder (the strategy is rebuilt from its manifest)."""
        from embedsvc.strategies import create_strategy

        manifest = read_manifest(directory)
        info = manifest["strategy"]
        inner = create_strategy(info["name"], **info["config"])
        if inner.fingerprint != info["fingerprint"]:
            log.warning(
                "%s was exported from weights/config %s; the local strategy is %s",
                directory,
                info["fingerprint"],
                inner.fingerprint,
            )
        return cls(inner, Path(directory), int8=int8, threads=threads)

    @property
    def spec(self) -> OnnxSpec:
        if self._spec is None:
            with self._lock:
                if self._spec is None:
                    self._spec = self.inner.onnx_spec()
        return self._spec

    @property
    def dim(self) -> int:
        return self.inner.dim

    @property
    def max_tokens(self) -> int:
        return self.inner.max_tokens

    @property
    def fingerprint(self) -> str:
        # differs from the torch one: caches never mix vectors of the two runtimes
        key = f"{self.inner.fingerprint}|onnx|{'int8' if self.int8 else 'fp32'}"
        return hashlib.sha256(key.encode()).hexdigest()[:16]

    def count_tokens(self, texts: list[str], role: Role = Role.PASSAGE) -> list[int]:
        return self.inner.count_tokens(texts, role)

    def onnx_spec(self) -> OnnxSpec:
        return self.spec

    @property
    def rescore_depth(self) -> int:  # type: ignore[override]
        return int(getattr(self.inner, "rescore_depth", 0) or 0)

    def rescore(self, queries: list[str], candidates: list[list[bytes]]) -> list[np.ndarray]:
        """Second stage stays the wrapped strategy's torch path (BTR: the float query and the
        re-embedding of stored token codes; the payloads themselves came from the graph)."""
        return self.inner.rescore(queries, candidates)

    def encode(
        self,
        texts: list[str],
        role: Role = Role.PASSAGE,
        *,
        normalize: bool = True,
        truncate: bool = True,
    ) -> Embedding:
        texts = check_texts(texts)
        dim = self.dim
        if not texts:
            return Embedding.empty(self.output_kind, dim)
        counts = self.count_tokens(texts, role)
        seen, truncated = apply_token_limit(counts, self.max_tokens, truncate)
        spec = self.spec
        output = "embedding_normalized" if normalize else "embedding"
        order = np.argsort(-np.asarray(counts), kind="stable")  # batches of similar lengths
        out: np.ndarray | None = None
        payloads: list[bytes] | None = None
        bs = spec.batch_size
        # a finalizer (binary codes, payloads) reads the raw embedding and the extra outputs
        names = [output] if spec.finalize is None else ["embedding", *spec.extra_outputs]
        for start in range(0, len(texts), bs):
            idx = order[start : start + bs]
            feeds = spec.featurize([texts[i] for i in idx], role)
            results = dict(zip(names, self.session.run(names, feeds)))
            if spec.finalize is None:
                vecs, pays = results[output], None
            else:
                vecs, pays = spec.finalize(results, feeds, role)
            if out is None:
                out = np.empty((len(texts), *vecs.shape[1:]), dtype=vecs.dtype)
            out[idx] = vecs
            if pays is not None:
                if payloads is None:
                    payloads = [b""] * len(texts)
                for j, i in enumerate(idx):
                    payloads[i] = pays[j]
        assert out is not None
        emb = Embedding(self.output_kind, out, dim, seen, truncated)
        if spec.sparse_vocab and payloads is not None:  # a dual strategy's sparse rows
            from embedsvc.indexes.sparse import decode_sparse_rows

            emb.sparse = decode_sparse_rows(payloads, spec.sparse_vocab)
        else:
            emb.payloads = payloads
        return emb


def export_dir(cache_dir: Path, strategy: Strategy, int8: bool) -> Path:
    """Where the on-first-use export of ``strategy`` lives (keyed by its fingerprint and the
    export format)."""
    return Path(cache_dir) / "onnx" / f"{strategy.name}-{strategy.fingerprint}-f{EXPORT_FORMAT}"


def onnx_strategy(
    strategy: Strategy, cache_dir: Path, *, int8: bool = False, threads: int | None = None
) -> Strategy:
    """The ONNX-served twin of ``strategy`` (exported on first use, then cached per process).

    Strategies without an export hook (e.g. the model-free debug engines) are returned as they
    are: there is no transformer to move to ONNX Runtime.
    """
    if isinstance(strategy, OnnxStrategy) or not is_exportable(strategy):
        return strategy
    key = (strategy.name, strategy.fingerprint, int8)
    inst = _INSTANCES.get(key)
    if inst is not None:
        return inst
    with _LOCK:  # one lock per strategy: a long export never blocks the others' requests
        key_lock = _KEY_LOCKS.setdefault(key, threading.Lock())
    with key_lock:
        inst = _INSTANCES.get(key)
        if inst is not None:
            return inst
        directory = export_dir(cache_dir, strategy, int8)
        model = directory / (MODEL_INT8 if int8 else MODEL_FP32)
        if not model.is_file() or not (directory / "manifest.json").is_file():
            from filelock import FileLock

            directory.mkdir(parents=True, exist_ok=True)
            with FileLock(str(directory) + ".lock"):  # several processes, one export
                if not model.is_file() or not (directory / "manifest.json").is_file():
                    log.info("exporting %s to ONNX in %s", strategy.name, directory)
                    export_strategy(strategy, directory, quantize_int8=int8)
        inst = OnnxStrategy(strategy, directory, int8=int8, threads=threads)
        _INSTANCES[key] = inst
        return inst


def serving_strategy(strategy: Strategy, config: Any) -> Strategy:
    """What the Engine serves for ``config.runtime`` (a ``ServiceConfig``): torch or ONNX."""
    runtime = config.runtime
    if runtime == "torch":
        return strategy
    if runtime not in ONNX_RUNTIMES:
        valid = ", ".join(["torch", *ONNX_RUNTIMES])
        raise InvalidArgument(f"unknown runtime {runtime!r}; valid: {valid}", field="runtime")
    return onnx_strategy(
        strategy, config.cache_dir, int8=ONNX_RUNTIMES[runtime], threads=config.torch_threads
    )
