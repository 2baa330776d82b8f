"""``ivf``: IVF-Flat with inner product (k-means coarse lists, exact vectors inside each list).

Trained on the vectors at hand: the first ``add`` into an empty index trains on that batch, with
``nlist`` from the data size (``choose_nlist``), so a one-vector collection is a one-list index
(exact). Once the index holds ``retrain_growth`` times its training size and the data would now
call for more lists, it retrains on everything it holds (vectors come back through a hashtable
direct map, which also makes ``remove`` O(removed) instead of a scan of every list).
Filtered searches pass an ``IDSelectorBatch`` in ``SearchParametersIVF``; unfiltered ones may run on
a GPU copy (``gpu.GpuMirror``).
"""

from __future__ import annotations

import math
from typing import Any

import faiss
import numpy as np

from embedsvc.indexes.base import IndexConfig, VectorIndex, register_index_kind, serialize
from embedsvc.indexes.gpu import GpuMirror


def choose_nlist(n: int, config: IndexConfig) -> int:
    """~4*sqrt(n) lists, but >= 39 points per list (faiss' k-means minimum) and <= 65536."""
    if config.nlist is not None:
        return max(1, min(config.nlist, n))
    return max(1, min(int(4 * math.sqrt(n)), n // 39, 65536))


def new_ivf_params(nprobe: int, allowed: np.ndarray | None) -> tuple[Any, Any]:
    """Search parameters (and the selector, which must outlive the search)."""
    sel = faiss.IDSelectorBatch(allowed) if allowed is not None else None
    if sel is None:
        return faiss.SearchParametersIVF(nprobe=nprobe), None
    return faiss.SearchParametersIVF(nprobe=nprobe, sel=sel), sel


def set_gpu_nprobe(nprobe: int) -> Any:
    def prepare(index: Any) -> None:
        faiss.GpuParameterSpace().set_index_parameter(index, "nprobe", nprobe)

    return prepare


@register_index_kind("ivf")
class IVFIndex(VectorIndex):
    input_kind = "dense"

    def _init_empty(self) -> None:
        self._index: Any = None
        self._nlist = 0
        self._trained_on = 0
        self._gpu = GpuMirror(self.config.use_gpu)

    @property
    def nprobe(self) -> int:
        return max(1, min(self.config.nprobe, self._nlist))

    def _train(self, x: np.ndarray) -> None:
        nlist = choose_nlist(x.shape[0], self.config)
        index = faiss.IndexIVFFlat(
            faiss.IndexFlatIP(self.dim), self.dim, nlist, faiss.METRIC_INNER_PRODUCT
        )
        index.cp.min_points_per_centroid = 1  # small collections are expected, not a warning
        index.train(x)
        index.set_direct_map_type(faiss.DirectMap.Hashtable)
        self._index, self._nlist, self._trained_on = index, nlist, int(x.shape[0])
        self._gpu = GpuMirror(self.config.use_gpu, prepare=set_gpu_nprobe(self.nprobe))

    def needs_rebuild(self) -> bool:
        return (
            self._index is not None
            and self.count >= self.config.retrain_growth * self._trained_on
            and choose_nlist(self.count, self.config) > self._nlist
        )

    def _add(self, ids: np.ndarray, x: np.ndarray) -> None:
        if self._index is None:
            self._train(x)
        self._index.add_with_ids(x, ids)
        self._gpu.mirror_add(ids, x)

    def _remove(self, ids: np.ndarray) -> None:
        self._index.remove_ids(faiss.IDSelectorArray(ids))  # the hashtable map needs Array
        self._gpu.invalidate()

    def _search(
        self, q: np.ndarray, k: int, allowed: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray]:
        if allowed is None:
            res = self._gpu.search(self._index, q, k)
            if res is not None:
                return res
        params, _sel = new_ivf_params(self.nprobe, allowed)
        return self._index.search(q, k, params=params)

    def _vectors(self, ids: np.ndarray) -> np.ndarray:
        return self._index.reconstruct_batch(ids)

    def _extra(self) -> dict[str, Any]:
        return {"nlist": self._nlist, "trained_on": self._trained_on}

    def _state(self) -> dict[str, np.ndarray]:
        return {} if self._index is None else {"index": serialize(self._index)}

    def _restore(self, state: dict[str, np.ndarray], extra: dict[str, Any]) -> None:
        if "index" in state:
            self._index = faiss.deserialize_index(state["index"])
            self._nlist, self._trained_on = int(extra["nlist"]), int(extra["trained_on"])
            self._gpu = GpuMirror(self.config.use_gpu, prepare=set_gpu_nprobe(self.nprobe))
