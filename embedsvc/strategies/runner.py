"""The runner: the single encode loop of every strategy (and of the eval harness and trainers).

``pre`` tokenises each text once -> the limit is applied -> rows are sorted longest first and
cut into batches of at most ``batch_size`` rows and ``token_budget`` padded tokens -> each batch
is padded (``Strategy.collate``), run by an executor (the core under torch, or its ONNX graph)
and finished by ``post`` -> results are written back in the callers' order.

An executor is anything with ``run(feeds) -> outputs`` (numpy dicts named by the core's
``input_names`` / ``output_names``): :class:`CoreExecutor` runs the core in-process;
``embedsvc.runtimes`` supplies the others (ONNX Runtime fp32/int8) without touching a strategy.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol

import numpy as np

from embedsvc.strategies.embedding import Embedding, Role, vstack_sparse
from embedsvc.strategies.features import apply_token_limit, check_texts


class Executor(Protocol):
    """Runs a strategy's core on one padded batch."""

    #: "torch", "onnx", "onnx-int8": part of the served fingerprint (caches never mix them)
    name: str

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...


class CoreExecutor:
    """The in-process executor: the core ``nn.Module`` under ``torch.inference_mode``."""

    name = "torch"

    def __init__(self, core: Any, device: str = "cpu") -> None:
        self.core = core
        self.device = device

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        args = [torch.from_numpy(feeds[n]).to(self.device) for n in self.core.input_names]
        with torch.inference_mode():
            out = self.core.outputs(*args)
        return {k: v.detach().cpu().numpy() for k, v in out.items()}


def length_sorted_batches(
    lengths: Sequence[int], batch_size: int, token_budget: int | None = None
) -> Iterator[np.ndarray]:
    """Row indices per batch, longest first (as sentence-transformers sorts), each batch at most
    ``batch_size`` rows and ``token_budget`` padded tokens (rows x its longest row)."""
    lengths = np.asarray(lengths, dtype=np.int64).reshape(-1)
    order = np.argsort(-lengths, kind="stable")
    start = 0
    while start < len(order):
        width = max(1, int(lengths[order[start]]))  # the longest row pads the batch
        rows = (
            batch_size if token_budget is None else max(1, min(batch_size, token_budget // width))
        )
        yield order[start : start + rows]
        start += rows


def map_batches(
    lengths: Sequence[int],
    run: Callable[[np.ndarray], dict[str, Any]],
    batch_size: int,
    token_budget: int | None = None,
) -> dict[str, Any]:
    """``run(indices)`` per length-sorted batch; each returned value (an array or a list, one
    row per index) is written back at those indices. Returns the full arrays/lists."""
    n = len(lengths)
    out: dict[str, Any] = {}
    for idx in length_sorted_batches(lengths, batch_size, token_budget):
        for key, value in run(idx).items():
            if value is None:
                out.setdefault(key, None)
                continue
            if isinstance(value, list):
                full = out.setdefault(key, [None] * n)
                for j, i in enumerate(idx):
                    full[i] = value[j]
                continue
            full = out.get(key)
            if full is None:
                full = out[key] = np.empty((n, *value.shape[1:]), dtype=value.dtype)
            full[idx] = value
    return out


class Runner:
    """Encode texts with ``strategy`` through ``executor`` (default: the strategy's own)."""

    def __init__(self, strategy: Any, executor: Executor | None = None) -> None:
        """``strategy``: a :class:`~embedsvc.strategies.base.Strategy` (its three stages)."""
        self.strategy = strategy
        self.executor = executor if executor is not None else strategy.executor

    def _run(
        self, texts: Sequence[str], role: Role, truncate: bool, finish: Any
    ) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
        """pre -> limit -> length-sorted batches -> collate -> executor -> ``finish(outputs,
        feeds)`` per batch, written back in order; with the token and truncated counts."""
        s = self.strategy
        feats = s.pre(check_texts(texts), role)
        seen, truncated = apply_token_limit(feats.counts, s.max_tokens, truncate)

        def run(idx: np.ndarray) -> dict[str, Any]:
            feeds = s.collate([feats.ids[i] for i in idx])
            return finish(self.executor.run(feeds), feeds)

        lengths = [len(x) for x in feats.ids]
        return map_batches(lengths, run, s.batch_size, s.token_budget), seen, truncated

    def outputs(
        self,
        texts: Sequence[str],
        role: Role,
        *,
        truncate: bool = True,
        per_token: Sequence[str] = (),
    ) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
        """The core's raw outputs per text (written back in order), with the token counts and
        truncated counts: what callers read when they want more than ``post`` (DupMAE's three
        channels, the sense ids of each token). ``per_token`` outputs come back as one array
        per text over its real tokens, beside each text's ``input_ids``."""

        def finish(out: dict[str, Any], feeds: dict[str, np.ndarray]) -> dict[str, Any]:
            mask = feeds["attention_mask"].astype(bool)
            rows = range(len(mask))
            for name in per_token:  # [B, T, ...] -> per row, its real tokens only
                out[name] = [out[name][j][mask[j]] for j in rows]
            out["input_ids"] = [feeds["input_ids"][j][mask[j]] for j in rows]
            return out

        return self._run(texts, role, truncate, finish)

    def encode(
        self,
        texts: Sequence[str],
        role: Role,
        *,
        normalize: bool = True,
        truncate: bool = True,
    ) -> Embedding:
        """``post`` of every batch: the served :class:`Embedding`, in the callers' order."""
        s = self.strategy
        if not check_texts(texts):
            return Embedding.empty(s.output_kind, s.dim)

        def finish(out: dict[str, Any], feeds: dict[str, np.ndarray]) -> dict[str, Any]:
            vectors, payloads = s.post(out, feeds, role, normalize)
            done = {"vectors": vectors, "payloads": payloads}
            block = s.post_sparse(out, feeds, role)  # a dual strategy's CSR rows, else None
            if block is not None:
                done["sparse"] = [block[j] for j in range(block.shape[0])]
            return done

        out, seen, truncated = self._run(texts, role, truncate, finish)
        rows = out.get("sparse")
        return Embedding(
            s.output_kind,
            out["vectors"],
            s.dim,
            seen,
            truncated,
            payloads=out.get("payloads"),
            sparse=None if rows is None else vstack_sparse(rows),
        )
