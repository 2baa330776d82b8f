"""``hnsw``: HNSW graph over flat float vectors, inner product; CPU only.

faiss HNSW cannot delete nodes, so the index keeps its own position -> id array and an ``alive``
mask: ``remove`` only clears the mask (a tombstone), and searches pass an ``IDSelectorBitmap`` of
the live (and allowed) positions. Re-adding an id adds a new node and tombstones the old one.
When tombstones exceed ``max_tombstone_fraction`` of the nodes the graph is rebuilt from the live
vectors (read back from the HNSW storage).
"""

from __future__ import annotations

from typing import Any

import faiss
import numpy as np

from embedsvc.indexes.base import VectorIndex, register_index_kind, serialize


@register_index_kind("hnsw")
class HNSWIndex(VectorIndex):
    input_kind = "dense"

    def _init_empty(self) -> None:
        self._hnsw = self._new_graph()
        self._labels = np.zeros(0, dtype=np.int64)  # node position -> id
        self._alive = np.zeros(0, dtype=bool)

    def _new_graph(self) -> Any:
        graph = faiss.IndexHNSWFlat(self.dim, self.config.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        graph.hnsw.efConstruction = self.config.ef_construction
        return graph

    @property
    def tombstones(self) -> int:
        return int(self._alive.size - self.count)

    def needs_rebuild(self) -> bool:
        return self.tombstones > self.config.max_tombstone_fraction * max(self._alive.size, 1)

    def _add(self, ids: np.ndarray, x: np.ndarray) -> None:
        self._hnsw.add(x)
        self._labels = np.concatenate([self._labels, ids])
        self._alive = np.concatenate([self._alive, np.ones(ids.size, dtype=bool)])

    def _remove(self, ids: np.ndarray) -> None:
        self._alive[self._alive & np.isin(self._labels, ids)] = False

    def _search(
        self, q: np.ndarray, k: int, allowed: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray]:
        mask = self._alive if allowed is None else self._alive & np.isin(self._labels, allowed)
        params = faiss.SearchParametersHNSW(efSearch=max(self.config.ef_search, k))
        bitmap = sel = None
        if not mask.all():
            bitmap = np.packbits(mask, bitorder="little")
            sel = faiss.IDSelectorBitmap(mask.size, faiss.swig_ptr(bitmap))
            params = faiss.SearchParametersHNSW(efSearch=max(self.config.ef_search, k), sel=sel)
        dist, pos = self._hnsw.search(q, k, params=params)
        del bitmap, sel  # kept alive until here on purpose: faiss holds raw pointers
        return dist, np.where(pos >= 0, self._labels[np.clip(pos, 0, None)], -1)

    def _positions(self, ids: np.ndarray) -> np.ndarray:
        live = np.flatnonzero(self._alive)
        order = np.argsort(self._labels[live])
        return live[order[np.searchsorted(self._labels[live][order], ids)]]

    def _vectors(self, ids: np.ndarray) -> np.ndarray:
        return self._hnsw.reconstruct_batch(self._positions(ids))

    def _state(self) -> dict[str, np.ndarray]:
        return {"hnsw": serialize(self._hnsw), "labels": self._labels, "alive": self._alive}

    def _restore(self, state: dict[str, np.ndarray], extra: dict[str, Any]) -> None:
        self._hnsw = faiss.deserialize_index(state["hnsw"])
        self._labels = state["labels"].astype(np.int64)
        self._alive = state["alive"].astype(bool)
