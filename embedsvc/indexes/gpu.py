"""The one place that touches GPUs: an optional GPU mirror of a CPU master index.

What runs where: every kind keeps a CPU master that takes all mutations (add, remove, retrain) and
answers filtered searches (faiss GPU indexes do not take ``IDSelector``s and cannot remove ids).
When ``faiss.get_num_gpus() > 0`` and the config allows it, the flat, IVF and IVF-PQ kinds keep a
clone on GPU 0 (``index_cpu_to_gpu``) and send unfiltered searches there. Adds are mirrored onto
the clone; removes and retrains mark it stale, and the next unfiltered search re-clones it. Any
GPU failure (an unsupported PQ size, k > 2048, out of memory) falls back to the CPU master and
logs once. HNSW and binary stay on CPU. Tested on CPU with an injected clone function.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

import faiss
import numpy as np

log = logging.getLogger(__name__)

_GPU_MAX_K = 2048
_RESOURCES: Any = None
_RES_LOCK = threading.Lock()


def gpu_available() -> bool:
    get = getattr(faiss, "get_num_gpus", None)
    return bool(get and get() > 0)


def clone_to_gpu(index: Any) -> Any:
    """A copy of a CPU index on GPU 0, sharing one ``StandardGpuResources`` per process."""
    global _RESOURCES
    with _RES_LOCK:
        if _RESOURCES is None:
            _RESOURCES = faiss.StandardGpuResources()
    options = faiss.GpuClonerOptions()
    options.useFloat16 = False  # exact parity with the CPU build
    return faiss.index_cpu_to_gpu(_RESOURCES, 0, index, options)


class GpuMirror:
    """A lazily (re)built GPU copy of a CPU master, used for unfiltered searches only.

    GPU indexes are not safe for concurrent use, even for searches, so the mirror serialises its
    own calls (collections allow concurrent readers).
    """

    def __init__(
        self,
        enabled: bool,
        clone: Callable[[Any], Any] | None = None,
        prepare: Callable[[Any], None] | None = None,
    ) -> None:
        self.enabled = bool(enabled and (clone is not None or gpu_available()))
        self._clone = clone or clone_to_gpu
        self._prepare = prepare
        self._copy: Any = None
        self._lock = threading.Lock()
        self.clones = 0  # how many times the master was copied (tests, metrics)

    def invalidate(self) -> None:
        with self._lock:
            self._copy = None

    def mirror_add(self, ids: np.ndarray, x: np.ndarray) -> None:
        """Apply an add to the copy too, or drop the copy if it cannot take it."""
        with self._lock:
            if self._copy is None:
                return
            try:
                self._copy.add_with_ids(x, ids)
            except Exception:  # noqa: BLE001 - any GPU failure: re-clone later
                self._copy = None

    def search(self, master: Any, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray] | None:
        """Search the GPU copy (cloning ``master`` if stale); None means "use the CPU"."""
        if not self.enabled or k > _GPU_MAX_K:
            return None
        with self._lock:
            try:
                if self._copy is None:
                    self._copy = self._clone(master)
                    self.clones += 1
                    if self._prepare is not None:
                        self._prepare(self._copy)
                return self._copy.search(q, k)
            except Exception as exc:  # noqa: BLE001 - fall back to CPU for good
                log.warning("GPU search failed (%s); using the CPU index from now on", exc)
                self.enabled = False
                self._copy = None
                return None
