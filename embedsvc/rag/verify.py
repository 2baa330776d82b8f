"""The target model with one KV cache: prefill, one-token steps, tree verification, commit.

One forward per decode step, over ``[root] + draft nodes`` of a :class:`~embedsvc.rag.tree.
DraftTree`, with a 4D attention mask (every fed token sees the whole committed prefix and its own
ancestors in the tree, nothing else) and position ids ``past + depth``. The KV cache is never
repeated per draft; after acceptance :meth:`TreeVerifier.commit` moves the accepted path's
entries next to the prefix (an in-place gather of at most ``len(path)`` positions per layer) and
crops the rest, so the cache again holds exactly the committed tokens.

Cost notes (see ``benchmarks/bench_spec_step.py``): the LM head is applied only to the positions
whose next token is needed (the last prompt position at prefill; every node of a tree), so the
prefill does not pay a [prompt_len, vocab] projection.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from embedsvc.rag.tree import DraftTree, ancestor_mask


class TreeVerifier:
    """Greedy forwards of one sequence on a DynamicCache (batch 1)."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.base = model.model  # LlamaModel: last_hidden_state is after the final norm
        self.head = model.lm_head
        self.cache: Any = None
        self._last_fed = 0  # tokens appended by the last forward

    @property
    def past(self) -> int:
        return int(self.cache.get_seq_length()) if self.cache is not None else 0

    def _run(self, ids: Any, **kw: Any) -> Any:
        out = self.base(input_ids=ids, cache=self.cache, use_cache=True, **kw)
        return out.last_hidden_state[0]

    def prefill(self, prompt: Sequence[int]) -> tuple[Any, int]:
        """Fill a fresh cache with ``prompt``: (final-norm states [t, d], argmax after the last)."""
        import torch
        from transformers import DynamicCache

        self.cache = DynamicCache(config=self.model.config)
        hidden = self._run(torch.tensor([list(prompt)], dtype=torch.long))
        self._last_fed = len(prompt)
        return hidden, int(self.head(hidden[-1]).argmax())

    def step(self, token: int) -> tuple[Any, int]:
        """Append one token: (its final-norm state [d], the argmax after it)."""
        import torch

        hidden = self._run(torch.tensor([[int(token)]], dtype=torch.long))
        self._last_fed = 1
        return hidden[0], int(self.head(hidden[0]).argmax())

    def forward_tree(self, tree: DraftTree) -> tuple[Any, np.ndarray]:
        """Feed all nodes of ``tree`` at once: (states [n, d], argmax per node [n])."""
        import torch

        past, n = self.past, len(tree)
        allowed = np.ones((n, past + n), dtype=bool)
        allowed[:, past:] = ancestor_mask(tree.parents)
        mask = torch.zeros((1, 1, n, past + n), dtype=torch.float32)
        mask.masked_fill_(torch.from_numpy(~allowed)[None, None], torch.finfo(torch.float32).min)
        pos = torch.tensor([[past + d for d in tree.depths]], dtype=torch.long)
        hidden = self._run(
            torch.tensor([tree.tokens], dtype=torch.long), attention_mask=mask, position_ids=pos
        )
        self._last_fed = n
        return hidden, self.head(hidden).argmax(-1).numpy()

    def commit(self, path: Sequence[int]) -> None:
        """After :meth:`forward_tree`: keep the root and the nodes of ``path``, drop the others."""
        root = self.past - self._last_fed
        keep = len(path) + 1
        if list(path) != list(range(1, keep)):  # not already contiguous after the root
            import torch

            src = torch.tensor([root + i for i in path], dtype=torch.long)
            for layer in self.cache.layers:
                layer.keys[:, :, root + 1 : root + keep] = layer.keys.index_select(2, src)
                layer.values[:, :, root + 1 : root + keep] = layer.values.index_select(2, src)
        self.crop(root + keep)

    def crop(self, length: int) -> None:
        """Keep the first ``length`` cached positions."""
        remove = self.past - length
        if remove > 0:
            self.cache.crop(-remove)
        self._last_fed = 0
