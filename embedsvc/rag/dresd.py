"""DReSD drafter: dense retrieval of continuations by the decoder's own hidden state.

Reference
    Gritta et al., "DReSD: Dense Retrieval for Speculative Decoding" (2025);
    huawei-noah/HEBO@00ba1ac ``dresd.py`` (class ``DReSD``), ``spec_dec_dresd.py``. Re-derived.

Algorithm (one step)
    1. Query = the final-norm hidden state of the position that produced the newest token
       (NOT the state of the newest token itself: that one predicts the *next* token, one off).
    2. z-score -> PCA 64 -> L2 (the datastore's stored projection), top ``top_k`` = 50 by inner
       product.
    3. Keep neighbours whose ``value[0]`` equals the newest token (their key state predicted the
       same token ours did), in neighbour order; drafts = ``value[1 : 1 + len_drafts]``.
    4. Up to ``num_drafts`` = 10 drafts; none surviving = no draft this step (plain decode).

Inputs / outputs
    :meth:`DReSDDrafter.propose` takes the token list and the raw state [d] (float32) and returns
    a list of drafts (token lists). Verification lives in :mod:`embedsvc.rag.speculative`.

Deviation
    Exact duplicate drafts are removed before the ``num_drafts`` cut (the reference cuts first).
    Duplicates verify identically, so this never lowers the accepted length at a given batch size.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from pydantic import BaseModel, Field

from embedsvc.rag.datastore import Datastore
from embedsvc.rag.speculative import dedupe_drafts


class DReSDConfig(BaseModel):
    top_k: int = Field(50, ge=1, description="neighbours fetched before the filter (reference 50)")
    num_drafts: int = Field(10, ge=1)
    len_drafts: int = Field(10, ge=1, description="<= value_len - 1 of the datastore")


def filter_drafts(
    values: np.ndarray, last_token: int, num_drafts: int = 10, len_drafts: int = 10
) -> list[list[int]]:
    """Drafts from retrieved values: rows whose first token is ``last_token``, shifted by one.

    ``values`` [k, N] are the neighbours' next-token windows in neighbour order (best first).

    >>> import numpy as np
    >>> vals = np.array([[7, 1, 2, 3], [8, 4, 5, 6], [7, 1, 2, 3], [7, 9, 9, 9]])
    >>> filter_drafts(vals, last_token=7, num_drafts=10, len_drafts=2)
    [[1, 2], [9, 9]]
    >>> filter_drafts(vals, last_token=5)
    []
    """
    keep = values[np.asarray(values)[:, 0] == last_token]
    return dedupe_drafts(keep[:, 1 : 1 + len_drafts].tolist(), num_drafts)


class DReSDDrafter:
    """Drafts from a :class:`Datastore` queried with the decoder's final-norm state."""

    name = "dresd"

    def __init__(self, datastore: Datastore, config: DReSDConfig | None = None) -> None:
        self.datastore = datastore
        self.config = config or DReSDConfig()

    def propose(self, tokens: Sequence[int], state: np.ndarray | None) -> list[list[int]]:
        if state is None or not len(tokens):
            return []
        _, values = self.datastore.search(
            np.asarray(state, dtype=np.float32)[None], self.config.top_k
        )
        cfg = self.config
        return filter_drafts(values[0], int(tokens[-1]), cfg.num_drafts, cfg.len_drafts)
