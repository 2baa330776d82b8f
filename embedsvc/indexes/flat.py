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


@register_index_kind("flat")
class FlatIndex(VectorIndex):
    input_kind = "dense"

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
