"""Draft token trees: merge drafts into a trie, its tree attention mask, greedy tree acceptance.

Reference
    REST (FasterDecoding/REST@50a5fc1, ``rest/model/utils.py``: ``generate_candidates_and_draft_
    buffer``, ``evaluate_posterior``) and Medusa/SpecInfer-style tree attention: all draft
    branches are verified in ONE forward; each draft token attends to the committed prefix (the KV
    cache) and to its own ancestors in the tree only, at position ``past + depth``.

Layout
    Node 0 is the root: the newest committed token (``tokens[-1]``, not yet in the KV cache). Nodes
    ``1..n-1`` are draft tokens in breadth-first order (by depth, then by draft rank), so a parent
    always precedes its children. ``parents[i]`` is the parent node (``-1`` for the root),
    ``depths[i]`` its distance from the root. The forward feeds ``tokens`` at positions
    ``past + depths``; the target's argmax at node ``i`` is its next token after the path
    root..i.

Ranking (:func:`build_tree`)
    Drafts come best first. Each trie node gets a weight: the number of drafts through it, ties
    broken by the best rank of a draft through it (REST's trie weights; DReSD's neighbour order as
    then shallower first (a deeper node is accepted only if its ancestors are), then by the best
    rank of a draft through it (DReSD's neighbour order). A node budget keeps the first nodes in
    that order; weight never grows and depth always grows from parent to child, so a kept node's
    ancestors are always kept.

Acceptance (:func:`accept_tree`)
    Walk from the root: while the target's argmax at the current node is the token of one of its
    children, step into that child. The accepted tokens are the tokens of that path (excluding the
    root); the bonus token is the argmax at the last node. This is exactly greedy decoding.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass
class DraftTree:
    tokens: list[int]  # token per node; tokens[0] = root
    parents: list[int]  # parent per node; parents[0] = -1
    depths: list[int]  # depth per node; depths[0] = 0

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def num_draft_tokens(self) -> int:
        return len(self.tokens) - 1

    def children(self) -> list[dict[int, int]]:
        """Per node: {token: child node}."""
        out: list[dict[int, int]] = [{} for _ in self.tokens]
        for i in range(1, len(self.tokens)):
            out[self.parents[i]][self.tokens[i]] = i
        return out


def build_tree(
    root: int,
    drafts: Sequence[Sequence[int]],
    budget: int | None = None,
    weights: Sequence[float] | None = None,
) -> DraftTree:
    """Trie of ``drafts`` (best first) under ``root``, keeping the ``budget`` heaviest nodes.

    ``weights[r]`` is how many retrieved continuations draft ``r`` stands for (default 1 each);
    a node's weight is the sum over the drafts through it.

    >>> t = build_tree(9, [[1, 2, 3], [1, 2, 4], [5]])
    >>> t.tokens, t.parents, t.depths
    ([9, 1, 5, 2, 3, 4], [-1, 0, 0, 1, 3, 3], [0, 1, 1, 2, 3, 3])
    >>> build_tree(9, [[1, 2, 3], [1, 2, 4], [5]], budget=3).tokens  # weights 2, 2, then depth 1
    [9, 1, 5, 2]
    """
    # trie over (parent key, token); key = tuple path
    weight: dict[tuple[int, ...], float] = {}
    best_rank: dict[tuple[int, ...], int] = {}
    for rank, draft in enumerate(drafts):
        w = 1.0 if weights is None else float(weights[rank])
        path: tuple[int, ...] = ()
        for tok in draft:
            path = (*path, int(tok))
            weight[path] = weight.get(path, 0.0) + w
            best_rank.setdefault(path, rank)
    paths = sorted(weight, key=lambda p: (-weight[p], len(p), best_rank[p]))
    if budget is not None:
        paths = paths[: max(0, budget)]
    # parents first: order by (depth, first appearance rank) keeps ancestors before children
    paths.sort(key=lambda p: (len(p), best_rank[p]))
    index: dict[tuple[int, ...], int] = {(): 0}
    tokens, parents, depths = [int(root)], [-1], [0]
    for p in paths:
        if p[:-1] not in index:  # cannot happen with monotone weights; be safe
            continue
        index[p] = len(tokens)
        tokens.append(p[-1])
        parents.append(index[p[:-1]])
        depths.append(len(p))
    return DraftTree(tokens, parents, depths)


def ancestor_mask(parents: Sequence[int]) -> np.ndarray:
    """Bool [n, n]: ``mask[i, j]`` is True iff node ``j`` is node ``i`` or one of its ancestors.

    >>> ancestor_mask([-1, 0, 1, 0]).astype(int).tolist()
    [[1, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 0], [1, 0, 0, 1]]
    """
    n = len(parents)
    mask = np.zeros((n, n), dtype=bool)
    for i in range(n):
        p = parents[i]
        if p >= 0:
            if p >= i:
                raise ValueError("a parent must come before its child")
            mask[i] = mask[p]
        mask[i, i] = True
    return mask


def accept_tree(tree: DraftTree, target: Sequence[int] | np.ndarray) -> tuple[list[int], int]:
    """Greedy acceptance on a tree: (accepted node indices, root excluded, in path order; bonus).

    ``target[i]`` = the target model's argmax at node ``i``.

    >>> t = build_tree(9, [[1, 2, 3], [1, 2, 4], [5]])
    >>> accept_tree(t, [1, 2, 0, 4, 0, 7])  # root -> 1 -> 2 -> 4 (nodes 1, 3, 5), bonus 7
    ([1, 3, 5], 7)
    >>> accept_tree(t, [8, 0, 0, 0, 0, 0])
    ([], 8)
    """
    kids = tree.children()
    node, path = 0, []
    while True:
        nxt = kids[node].get(int(target[node]))
        if nxt is None:
            return path, int(target[node])
        path.append(nxt)
        node = nxt
