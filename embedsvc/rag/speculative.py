"""Greedy speculative decoding with tree (default) or batched draft verification.

Reference
    DReSD ``spec_dec_dresd.py`` (huawei-noah/HEBO@00ba1ac) verifies every draft in ONE batched
    forward over the KV cache repeated once per draft (``verify="batch"``, kept as the
    reference). REST (FasterDecoding/REST@50a5fc1) merges its drafts into a token tree verified
    with tree attention; ``verify="tree"`` (default) does that for both drafters
    (:mod:`embedsvc.rag.tree`, :mod:`embedsvc.rag.verify`): one forward over the tree's nodes, no
    cache repeat, the accepted path committed in place. A :class:`NodeBudget` caps the tree.

Loop invariant
    The KV cache holds every token except the newest one (``tokens[-1]``). A step feeds the
    newest token plus the draft nodes; greedy acceptance keeps the longest path the target agrees
    with, then appends the target's own next token (the bonus), so the output equals plain greedy
    decoding token for token (up to float ties between a multi-token and a 1-token forward).

Inputs / outputs
    :meth:`SpeculativeDecoder.stream` yields the new tokens of each step and fills a
    :class:`GenerationStats`. A drafter is anything with ``propose(tokens, state) -> drafts``,
    where ``state`` is the final-norm hidden state [d] of the position that produced
    ``tokens[-1]`` (DReSD's query) and each draft is the list of tokens to follow ``tokens[-1]``.
    Optional: ``propose_weighted`` (drafts + weights for the trie), ``new_request()`` (a
    per-request drafter) and ``observe(tokens, states)`` (the final-norm states of newly
    committed positions, e.g. DReSD's request-local keys).

Metric conventions (as DReSD's ``evaluate.py``, see techniques.md 7a)
    * mean accepted length = accepted draft tokens / decode calls, bonus token EXCLUDED
      (REST and vLLM count ``1 +`` this).
    * acceptance rate = accepted draft tokens / drafted tokens (batch: tokens of the chosen row;
      tree: all draft nodes verified).
    * target calls counts every forward of the model, the prefill included.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import numpy as np
from pydantic import BaseModel, Field

from embedsvc.errors import InvalidArgument


class Drafter(Protocol):
    name: str

    def propose(self, tokens: Sequence[int], state: np.ndarray | None) -> list[list[int]]: ...


class SpecConfig(BaseModel):
    max_new_tokens: int = Field(128, ge=1)
    num_drafts: int = Field(10, ge=1, description="rows verified per step (reference 10)")
    len_drafts: int = Field(10, ge=1, description="tokens per draft (reference 10)")
    stop_at_eos: bool = True
    verify: Literal["tree", "batch"] = Field(
        "tree",
        description="tree: all drafts as one token tree, one forward with a tree attention mask; "
        "batch: DReSD's reference (the KV cache repeated per draft row)",
    )
    max_nodes: int = Field(32, ge=1, description="tree: most draft tokens verified per step")
    min_nodes: int = Field(2, ge=1, description="tree: fewest draft tokens when adaptive")
    adaptive_nodes: bool = Field(
        True, description="tree: node budget follows recent accepted length (NodeBudget)"
    )
    small_batch_linear: bool = Field(
        True, description="W @ x.T for few-row linears (kernels.py); greedy and drafted alike"
    )


@dataclass
class GenerationStats:
    new_tokens: int = 0
    target_calls: int = 0  # all forwards, prefill included
    decode_calls: int = 0  # forwards after the prefill (one per step)
    draft_steps: int = 0  # steps that had at least one draft
    drafted_tokens: int = 0  # tokens of the chosen draft rows
    accepted_tokens: int = 0  # draft tokens accepted (bonus excluded)
    accepted_on_drafted: int = 0  # accepted tokens on steps that had a draft
    verified_tokens: int = 0  # tokens fed to decode forwards (root + draft nodes)
    accepted_per_step: list[int] = field(default_factory=list)
    draft_time_s: float = 0.0
    prefill_time_s: float = 0.0
    forward_time_s: float = 0.0  # decode forwards incl. LM head and acceptance (commit excluded)
    commit_time_s: float = 0.0
    wall_time_s: float = 0.0

    @property
    def mean_accepted_length(self) -> float:
        return self.accepted_tokens / self.decode_calls if self.decode_calls else 0.0

    @property
    def acceptance_rate(self) -> float:
        return self.accepted_tokens / self.drafted_tokens if self.drafted_tokens else 0.0

    @property
    def calls_per_token(self) -> float:
        return self.target_calls / self.new_tokens if self.new_tokens else 0.0

    @property
    def tokens_per_s(self) -> float:
        return self.new_tokens / self.wall_time_s if self.wall_time_s else 0.0

    def __iadd__(self, other: GenerationStats) -> GenerationStats:
        for name in (
            "new_tokens",
            "target_calls",
            "decode_calls",
            "draft_steps",
            "drafted_tokens",
            "accepted_tokens",
            "accepted_on_drafted",
            "verified_tokens",
            "draft_time_s",
            "prefill_time_s",
            "forward_time_s",
            "commit_time_s",
            "wall_time_s",
        ):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.accepted_per_step += other.accepted_per_step
        return self

    @property
    def drafted_fraction(self) -> float:
        return self.draft_steps / self.decode_calls if self.decode_calls else 0.0

    @property
    def accepted_length_on_drafted(self) -> float:
        return self.accepted_on_drafted / self.draft_steps if self.draft_steps else 0.0

    def summary(self) -> dict[str, float]:
        steps = max(1, self.decode_calls)
        other = (
            self.wall_time_s
            - self.prefill_time_s
            - self.draft_time_s
            - self.forward_time_s
            - self.commit_time_s
        )
        return {
            "new_tokens": self.new_tokens,
            "target_calls": self.target_calls,
            "mean_accepted_length": round(self.mean_accepted_length, 4),
            "acceptance_rate": round(self.acceptance_rate, 4),
            "drafted_fraction": round(self.drafted_fraction, 4),
            "accepted_length_on_drafted_steps": round(self.accepted_length_on_drafted, 4),
            "verified_tokens_per_step": round(self.verified_tokens / steps, 3),
            "calls_per_token": round(self.calls_per_token, 4),
            "tokens_per_s": round(self.tokens_per_s, 3),
            "prefill_ms_per_prompt": round(1e3 * self.prefill_time_s, 3),
            "draft_ms_per_step": round(1e3 * self.draft_time_s / steps, 3),
            "forward_ms_per_step": round(1e3 * self.forward_time_s / steps, 3),
            "commit_ms_per_step": round(1e3 * self.commit_time_s / steps, 3),
            "other_ms_per_step": round(1e3 * other / steps, 3),
            "wall_time_s": round(self.wall_time_s, 3),
        }


def accept_longest(drafts: Sequence[Sequence[int]], target: np.ndarray) -> tuple[int, int]:
    """Pick the draft row with the longest prefix the target agrees with.

    Inputs: ``drafts`` (n rows of possibly different lengths, the tokens proposed after the last
    token) and ``target`` [n, >= max_len + 1], the target's argmax at every fed position (row r
    position j = the target's next token after ``last + drafts[r][:j]``).
    Output: ``(row, accepted)``; the bonus token is ``target[row, accepted]``. Ties go to the
    lowest row (the best-ranked draft).

    >>> import numpy as np
    >>> accept_longest([[5, 6, 7], [5, 9, 9]], np.array([[5, 6, 8, 0], [5, 6, 1, 0]]))
    (0, 2)
    >>> accept_longest([[1, 2], [3, 4]], np.array([[9, 9, 9], [3, 4, 7]]))
    (1, 2)
    >>> accept_longest([[1], [2]], np.array([[5, 0], [5, 0]]))
    (0, 0)
    """
    best_row, best = 0, -1
    for r, draft in enumerate(drafts):
        n = len(draft)
        agree = np.asarray(draft, dtype=np.int64) == target[r, :n]
        accepted = int(n if agree.all() else np.argmin(agree))
        if accepted > best:
            best_row, best = r, accepted
    return best_row, max(best, 0)


def dedupe_drafts(drafts: Sequence[Sequence[int]], limit: int) -> list[list[int]]:
    """Drop empty and repeated drafts (first occurrence kept, order kept), then keep ``limit``.

    Identical rows verify identically, so removing them never changes the accepted length; it
    only saves batch rows.

    >>> dedupe_drafts([[1, 2], [1, 2], [], [3]], 5)
    [[1, 2], [3]]
    """
    seen: set[tuple[int, ...]] = set()
    out: list[list[int]] = []
    for d in drafts:
        key = tuple(int(t) for t in d)
        if key and key not in seen:
            seen.add(key)
            out.append(list(key))
            if len(out) == limit:
                break
    return out


def _crop_to(cache: Any, length: int) -> None:
    """Keep the first ``length`` positions (negative = "remove n": transformers 4 and 5)."""
    remove = cache.get_seq_length() - length
    if remove > 0:
        cache.crop(-remove)


class NodeBudget:
    """How many draft tokens to verify next step, from recent acceptance (adaptive) or fixed.

    On 2 CPU cores a forward over n tokens costs ``cost(n)`` (see ``bench_spec_step.py``); a tree
    of n nodes pays off only if it adds more tokens than ``cost(n) / cost(1)``. The budget follows
    the mean accepted length of the last ``window`` drafted steps: ``base + per_accepted * mean``,
    clamped to ``[min_nodes, max_nodes]``, so low acceptance verifies few nodes (cheap) and high
    acceptance lets the tree grow. ``adaptive=False`` always gives ``max_nodes``.

    >>> b = NodeBudget(max_nodes=32, min_nodes=2, base=3, per_accepted=6, window=4)
    >>> b.nodes()
    3
    >>> for a in (4, 4, 4, 4): b.update(a)
    >>> b.nodes()
    27
    """

    def __init__(
        self,
        max_nodes: int,
        min_nodes: int = 2,
        base: int = 3,
        per_accepted: float = 6.0,
        window: int = 8,
        adaptive: bool = True,
    ) -> None:
        self.max_nodes, self.min_nodes, self.base = max_nodes, min_nodes, base
        self.per_accepted, self.window, self.adaptive = per_accepted, window, adaptive
        self.recent: list[int] = []

    def update(self, accepted: int) -> None:
        self.recent = [*self.recent[-(self.window - 1) :], accepted] if self.window > 1 else []

    def nodes(self) -> int:
        if not self.adaptive:
            return self.max_nodes
        mean = sum(self.recent) / len(self.recent) if self.recent else 0.0
        want = round(self.base + self.per_accepted * mean)
        return max(self.min_nodes, min(self.max_nodes, want))


class SpeculativeDecoder:
    """Greedy decoding of one prompt with optional drafts (``drafter=None`` = plain greedy)."""

    def __init__(
        self, backbone: Any, drafter: Drafter | None = None, config: SpecConfig | None = None
    ):
        self.backbone = backbone
        self.model = backbone.model
        self.drafter = drafter
        self.config = config or SpecConfig()
        self.eos = int(backbone.tokenizer.eos_token_id)
        if self.config.small_batch_linear:
            from embedsvc.rag.kernels import use_small_batch_linear

            use_small_batch_linear(self.model)

    def generate(
        self, prompt_ids: Sequence[int], max_new_tokens: int | None = None
    ) -> tuple[list[int], GenerationStats]:
        stats = GenerationStats()
        out: list[int] = []
        for chunk in self.stream(prompt_ids, max_new_tokens, stats):
            out += chunk
        return out, stats

    def _check(self, prompt: list[int], limit: int) -> None:
        if not prompt:
            raise InvalidArgument("the prompt is empty", field="prompt")
        max_pos = int(getattr(self.model.config, "max_position_embeddings", 1 << 30))
        if len(prompt) + limit > max_pos:
            raise InvalidArgument(
                f"prompt ({len(prompt)} tokens) + max_new_tokens ({limit}) exceeds the model's "
                f"context of {max_pos}",
                field="max_new_tokens",
            )

    def _drafts(
        self, drafter: Any, tokens: list[int], state: Any, budget: int, stats: GenerationStats
    ) -> tuple[list[list[int]], list[float] | None]:
        """(drafts best first, trimmed to the budget; their weights or None)."""
        td = time.perf_counter()
        length = min(self.config.len_drafts, budget)
        weights: list[float] | None = None
        if hasattr(drafter, "propose_weighted") and self.config.verify == "tree":
            raw, weights = drafter.propose_weighted(tokens, state.float().numpy())
            raw = raw[: self.config.num_drafts]
            weights = weights[: len(raw)]
            drafts = [list(d[:length]) for d in raw]
        else:
            raw = drafter.propose(tokens, state.float().numpy())
            drafts = dedupe_drafts([d[:length] for d in raw], self.config.num_drafts)
        stats.draft_time_s += time.perf_counter() - td
        return drafts, weights

    def stream(
        self,
        prompt_ids: Sequence[int],
        max_new_tokens: int | None = None,
        stats: GenerationStats | None = None,
    ) -> Iterator[list[int]]:
        """Yield the tokens each step adds (>= 1 per step) until EOS or ``max_new_tokens``."""
        import torch

        from embedsvc.rag.tree import accept_tree, build_tree
        from embedsvc.rag.verify import TreeVerifier

        cfg = self.config
        limit = int(max_new_tokens or cfg.max_new_tokens)
        stats = stats if stats is not None else GenerationStats()
        prompt = [int(t) for t in prompt_ids]
        self._check(prompt, limit)
        drafter = self.drafter
        if drafter is not None and hasattr(drafter, "new_request"):
            drafter = drafter.new_request()  # request-local state (e.g. DReSD self keys)
        observe = getattr(drafter, "observe", None)
        budget_ctl = NodeBudget(cfg.max_nodes, cfg.min_nodes, adaptive=cfg.adaptive_nodes)
        t0 = time.perf_counter()
        with torch.inference_mode():
            ver = TreeVerifier(self.model)
            hidden, first_tok = ver.prefill(prompt)
            stats.prefill_time_s += time.perf_counter() - t0
            stats.target_calls += 1
            state = hidden[-1]
            tokens = prompt + [first_tok]
            if observe is not None:
                observe(tokens, hidden.float().numpy())
            produced = 1
            stats.new_tokens += 1
            done = (cfg.stop_at_eos and first_tok == self.eos) or produced >= limit
            stats.wall_time_s += time.perf_counter() - t0
            yield [first_tok]
            while not done:
                t0 = time.perf_counter()
                budget = limit - produced - 1  # the bonus token always comes on top
                drafts: list[list[int]] = []
                weights: list[float] | None = None
                if drafter is not None and budget > 0:
                    drafts, weights = self._drafts(drafter, tokens, state, budget, stats)
                tf = time.perf_counter()
                if drafts and cfg.verify == "batch":
                    new, accepted, new_states, drafted = self._verify_batch(ver, tokens, drafts)
                    state = new_states[-1]
                    stats.drafted_tokens += drafted
                    stats.verified_tokens += len(drafts) * (1 + max(len(d) for d in drafts))
                elif drafts:
                    tree = build_tree(tokens[-1], drafts, budget_ctl.nodes(), weights)
                    hidden, pred = ver.forward_tree(tree)
                    path, bonus = accept_tree(tree, pred)
                    tc = time.perf_counter()
                    ver.commit(path)
                    commit_s = time.perf_counter() - tc
                    stats.commit_time_s += commit_s
                    stats.forward_time_s -= commit_s  # reported on its own
                    accepted = len(path)
                    new = [tree.tokens[i] for i in path] + [bonus]
                    keep = [0, *path]
                    new_states = hidden[keep]
                    state = hidden[keep[-1]]
                    stats.drafted_tokens += tree.num_draft_tokens
                    stats.verified_tokens += len(tree)
                else:
                    state, nxt = ver.step(tokens[-1])
                    accepted, new, new_states = 0, [nxt], state[None]
                    stats.verified_tokens += 1
                stats.forward_time_s += time.perf_counter() - tf
                if drafts:
                    stats.draft_steps += 1
                    stats.accepted_on_drafted += accepted
                    budget_ctl.update(accepted)
                if cfg.stop_at_eos and self.eos in new:
                    new = new[: new.index(self.eos) + 1]
                    done = True
                new = new[: limit - produced]
                accepted = min(accepted, len(new))  # drafts past an EOS are not output
                stats.target_calls += 1
                stats.decode_calls += 1
                stats.accepted_tokens += accepted
                stats.accepted_per_step.append(accepted)
                produced += len(new)
                done = done or produced >= limit
                tokens += new
                if observe is not None and new_states is not None and not done:
                    observe(tokens, new_states.float().numpy())
                stats.new_tokens += len(new)
                stats.wall_time_s += time.perf_counter() - t0
                yield new

    def _verify_batch(
        self, ver: Any, tokens: list[int], drafts: list[list[int]]
    ) -> tuple[list[int], int, Any, int]:
        """DReSD's reference verifier: the cache repeated per draft row, one batched forward.

        Returns (new tokens, accepted, states of the kept positions [accepted + 1, d], tokens in
        the chosen row).
        """
        import torch

        cache = ver.cache
        past = len(tokens) - 1
        width = max(len(d) for d in drafts)
        rows = [[tokens[-1], *d] + [self.eos] * (width - len(d)) for d in drafts]
        if len(rows) > 1:
            cache.batch_repeat_interleave(len(rows))
        hidden = self.model.model(
            input_ids=torch.tensor(rows), cache=cache, use_cache=True
        ).last_hidden_state
        pred = self.model.lm_head(hidden).argmax(-1)
        row, accepted = accept_longest(drafts, pred.numpy())
        if len(rows) > 1:
            cache.batch_select_indices(torch.tensor([row]))
        _crop_to(cache, past + 1 + accepted)
        new = drafts[row][:accepted] + [int(pred[row, accepted])]
        return new, accepted, hidden[row, : accepted + 1], len(drafts[row])
