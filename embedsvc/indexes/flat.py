"""``flat``: exact inner-product search (the reference every ANN kind is measured against).

CPU master ``IndexIDMap2(IndexFlatIP)`` takes every mutation and every filtered search; with a GPU,
unfiltered searches go to a GPU copy (``gpu.GpuMirror``). Exact, so no training, no rebuilds.
"""

from __future__ import annotations

from typing import Any

import faiss
import numpy as np

from embedsvc.indexes.base import VectorIndex, register_index_kind, serialize
from embedsvc.indexes.gpu import GpuMirror

#: faiss computes a multi-query flat search as one GEMM only when ``nq * d`` reaches this
#: threshold (default 20 * 6400 = 128000, i.e. 334 queries at d=384); below it every query scans
#: the index on its own. Measured on 2 cores at 100k x 384 (docs/results/issue8.md): the GEMM is
#: already 1.5-3.4x faster at 8 queries, and 0.5-0.7x at 1. So batches of >= 8 queries of 384 dims
#: take the GEMM. Process-wide; it changes only float rounding (ties). ``min`` keeps a lower value
#: that the user set.
BLAS_THRESHOLD = 8 * 384
faiss.cvar.distance_compute_blas_threshold = min(
    faiss.cvar.distance_compute_blas_threshold, BLAS_THRESHOLD
)


@register_index_kind("flat")
class FlatIndex(VectorIndex):
    input_kind = "dense"
    gains_from_batching = True

    def _init_empty(self) -> None:
        self._index = faiss.IndexIDMap2(faiss.IndexFlatIP(self.dim))
        self._gpu = GpuMirror(self.config.use_gpu)

    def _add(self, ids: np.ndarray, x: np.ndarray) -> None:
        self._index.add_with_ids(x, ids)
        self._gpu.mirror_add(ids, x)

    def _remove(self, ids: np.ndarray) -> None:
        self._index.remove_ids(faiss.IDSelectorBatch(ids))
        self._gpu.invalidate()

    def _search(
        self, q: np.ndarray, k: int, allowed: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray]:
        if allowed is None:
            res = self._gpu.search(self._index, q, k)
            return res if res is not None else self._index.search(q, k)
        sel = faiss.IDSelectorBatch(allowed)
        return self._index.search(q, k, params=faiss.SearchParameters(sel=sel))

    def _vectors(self, ids: np.ndarray) -> np.ndarray:
        return self._index.reconstruct_batch(ids)

    def _state(self) -> dict[str, np.ndarray]:
        return {"index": serialize(self._index)}

    def _restore(self, state: dict[str, np.ndarray], extra: dict[str, Any]) -> None:
        self._index = faiss.deserialize_index(state["index"])
