"""QA context selection: gold-passage recall against context tokens, Adaptive-k vs fixed k.

Reference
    The Adaptive-k paper's retrieval evaluation (megagonlabs/adaptive-k-retrieval ``eval.py``:
    context recall of gold passages, with the tokens handed to the reader); the rule itself is
    :mod:`embedsvc.rag.adaptive_k`.

Inputs / outputs
    One QA file, its format detected from its content (never its name):

    * ``nq_open_gold`` (JSON Lines, ``{"question", "ctxs": [{"title", "text", ...}], ...}``):
      the candidate pool is the union of every passage in the file, deduplicated by text; a
      question's gold is its ``ctxs[0]`` (and so any passage with identical text).
    * ``hotpotqa`` (a JSON array of ``{"question", "context": [[title, [sentences]]],
      "supporting_facts": [[title, i]]}``): each question has its own pool (its ``context``
      paragraphs); gold = the paragraphs whose title appears in ``supporting_facts``.

    Passages are embedded as ``title + " " + text`` (stripped), as BEIR does, through the eval
    embedding cache; tokens are the strategy's own token counts of that string. Per method the
    result gives mean k, mean context tokens and gold recall (x100, averaged over questions
    that have gold): Adaptive-k, fixed k in {1, 3, 5, 10, 20}, full context (the whole pool),
    and fixed k at round(Adaptive-k's mean k) for the acceptance comparison.

Hyper-parameters
    :class:`embedsvc.rag.AdaptiveKConfig` (defaults = the reference's QA settings). By default
    the whole pool is scored (as the reference does); ``pool_size`` cuts from the top-N instead.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from embedsvc.errors import InvalidArgument
from embedsvc.eval.cache import cached_encode
from embedsvc.eval.data import _open_text
from embedsvc.rag.adaptive_k import AdaptiveKConfig, select_adaptive_k
from embedsvc.rag.context import similarity
from embedsvc.strategies.base import Role, Strategy

QaFormat = Literal["nq_open_gold", "hotpotqa"]
FIXED_KS = (1, 3, 5, 10, 20)


@dataclass(frozen=True)
class QaSet:
    """Questions with candidate pools over one deduplicated passage list.

    ``pools[i]`` holds passage indices (``None`` = every passage); ``gold[i]`` the gold ones.
    """

    path: Path
    format: QaFormat
    passages: list[str]
    questions: list[str]
    pools: list[np.ndarray | None]
    gold: list[set[int]]

    def __len__(self) -> int:
        return len(self.questions)


class _Passages:
    """Deduplicate passages by text; the first title seen for a text is the one embedded."""

    def __init__(self) -> None:
        self.by_text: dict[str, int] = {}
        self.strings: list[str] = []

    def add(self, title: str, text: str) -> int:
        idx = self.by_text.get(text)
        if idx is None:
            idx = self.by_text[text] = len(self.strings)
            self.strings.append((title + " " + text).strip())
        return idx


def _bad(path: Path, where: str, what: str) -> InvalidArgument:
    return InvalidArgument(f"{path}: {where}: {what}")


def read_qa(path: str | Path) -> QaSet:
    """Read an nq_open_gold (JSONL) or hotpotqa (JSON array) file; the format is detected."""
    path = Path(path)
    try:
        with _open_text(path) as fh:
            raw = fh.read()
    except UnicodeDecodeError as exc:
        raise InvalidArgument(f"{path}: not UTF-8 text ({exc})") from None
    body = raw.lstrip("\ufeff \t\r\n")
    if not body:
        raise InvalidArgument(f"{path}: empty file")
    if body[0] == "[":
        try:
            rows = json.loads(body)
        except json.JSONDecodeError as exc:
            raise InvalidArgument(f"{path}: invalid JSON ({exc})") from None
        qa = _read_hotpot(path, rows)
    elif body[0] == "{":
        qa = _read_nq(path, raw)
    else:
        raise InvalidArgument(
            f"{path}: neither a JSON array (hotpotqa) nor JSON Lines objects (nq_open_gold)"
        )
    if not qa.questions:
        raise InvalidArgument(f"{path}: no questions")
    return qa


def _read_nq(path: Path, raw: str) -> QaSet:
    passages = _Passages()
    questions: list[str] = []
    gold: list[set[int]] = []
    for line_no, line in enumerate(raw.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise _bad(path, f"line {line_no}", f"invalid JSON ({exc})") from None
        if not isinstance(row, dict):
            raise _bad(path, f"line {line_no}", "expected a JSON object")
        question, ctxs = row.get("question"), row.get("ctxs")
        if not isinstance(question, str) or not question.strip():
            raise _bad(path, f"line {line_no}", "no 'question' string")
        if not isinstance(ctxs, list) or not ctxs:
            raise _bad(path, f"line {line_no}", "'ctxs' must be a non-empty list")
        ids = []
        for j, ctx in enumerate(ctxs):
            if not isinstance(ctx, dict) or not isinstance(ctx.get("text"), str):
                raise _bad(path, f"line {line_no}", f"ctxs[{j}] has no 'text' string")
            ids.append(passages.add(str(ctx.get("title") or ""), ctx["text"]))
        questions.append(question)
        gold.append({ids[0]})
    return QaSet(path, "nq_open_gold", passages.strings, questions, [None] * len(questions), gold)


def _read_hotpot(path: Path, rows: Any) -> QaSet:
    if not isinstance(rows, list):
        raise InvalidArgument(f"{path}: expected a JSON array of questions")
    passages = _Passages()
    questions: list[str] = []
    pools: list[np.ndarray | None] = []
    gold: list[set[int]] = []
    for i, row in enumerate(rows):
        where = f"item {i}"
        if not isinstance(row, dict):
            raise _bad(path, where, "expected a JSON object")
        question, context, facts = (
            row.get("question"),
            row.get("context"),
            row.get("supporting_facts"),
        )
        if not isinstance(question, str) or not question.strip():
            raise _bad(path, where, "no 'question' string")
        if not isinstance(context, list) or not context:
            raise _bad(path, where, "'context' must be a non-empty list of [title, sentences]")
        if not isinstance(facts, list):
            raise _bad(path, where, "'supporting_facts' must be a list of [title, index]")
        gold_titles = {f[0] for f in facts if isinstance(f, list) and f}
        pool, g = [], set()
        for j, para in enumerate(context):
            ok = isinstance(para, list) and len(para) == 2 and isinstance(para[0], str)
            if not ok or not isinstance(para[1], list):
                raise _bad(path, where, f"context[{j}] must be [title, [sentences]]")
            idx = passages.add(para[0], "".join(str(s) for s in para[1]).strip())
            pool.append(idx)
            if para[0] in gold_titles:
                g.add(idx)
        questions.append(question)
        pools.append(np.asarray(list(dict.fromkeys(pool)), dtype=np.int64))
        gold.append(g)
    return QaSet(path, "hotpotqa", passages.strings, questions, pools, gold)


def evaluate_context(
    strategy: Strategy,
    file: str | Path,
    config: AdaptiveKConfig | None = None,
    pool_size: int | None = None,
    fixed_ks: tuple[int, ...] = FIXED_KS,
    **cache: Any,
) -> dict[str, Any]:
    """Mean k, mean context tokens and gold recall (x100) per selection method on a QA file.

    ``pool_size`` = None scores each question's whole pool; an int cuts Adaptive-k from the
    top-``pool_size`` (>= 100; the tail fraction then applies to N). ``cache`` goes to
    :func:`embedsvc.eval.cache.cached_encode`.
    """
    start = time.perf_counter()
    config = config or AdaptiveKConfig()
    if pool_size is not None and pool_size < 100:
        raise InvalidArgument(f"pool_size must be >= 100 (got {pool_size})", field="pool_size")
    qa = read_qa(file)
    doc_vecs = cached_encode(strategy, qa.passages, Role.PASSAGE, desc="passages", **cache)
    query_vecs = cached_encode(strategy, qa.questions, Role.QUERY, desc="questions", **cache)
    tokens = np.asarray(strategy.count_tokens(qa.passages, Role.PASSAGE), dtype=np.int64)

    methods = ["adaptive", *[f"fixed{k}" for k in fixed_ks], "full"]
    ks: dict[str, list[int]] = {m: [] for m in methods}
    toks: dict[str, list[int]] = {m: [] for m in methods}
    recalls: dict[str, list[float]] = {m: [] for m in methods}
    rankings: list[tuple[np.ndarray, set[int]]] = []  # for the fixed-k-at-mean-k pass
    all_ids = np.arange(len(qa.passages), dtype=np.int64)
    no_gold = 0
    for qi in range(len(qa)):
        pool = qa.pools[qi] if qa.pools[qi] is not None else all_ids
        gold = qa.gold[qi]
        if not gold:
            no_gold += 1
            continue
        scores = similarity(strategy.output_kind, query_vecs[qi], doc_vecs[pool])
        order = np.argsort(-scores, kind="stable")
        ranked = pool[order]
        rankings.append((ranked, gold))
        cand = order[:pool_size] if pool_size is not None else order
        sel = select_adaptive_k(scores[cand], config, tokens[pool[cand]])
        chosen = pool[cand[sel.indices]]

        picks = {"adaptive": chosen, "full": ranked}
        picks.update({f"fixed{k}": ranked[:k] for k in fixed_ks})
        for method, ids in picks.items():
            ks[method].append(int(ids.shape[0]))
            toks[method].append(int(tokens[ids].sum()))
            recalls[method].append(len(gold.intersection(ids.tolist())) / len(gold))
    if not rankings:
        raise InvalidArgument(f"{file}: no question has a gold passage")

    result: dict[str, Any] = {
        "task": "context",
        "strategy": strategy.name,
        "file": str(file),
        "format": qa.format,
        "n_questions": len(rankings),
        "n_without_gold": no_gold,
        "n_passages": len(qa.passages),
        "pool": "whole" if pool_size is None else f"top-{pool_size}",
        "head_fraction": config.head_fraction,
        "tail_fraction": config.tail_fraction,
        "buffer": config.buffer,
        "token_budget": config.token_budget,
    }
    for m in methods:
        result[f"{m}_mean_k"] = float(np.mean(ks[m]))
        result[f"{m}_mean_tokens"] = float(np.mean(toks[m]))
        result[f"{m}_recall"] = 100.0 * float(np.mean(recalls[m]))

    # Acceptance: fixed k at round(Adaptive-k's mean k), and Adaptive-k against fixed k = 20.
    k_mean = max(1, int(round(result["adaptive_mean_k"])))
    at_k = [
        (len(gold.intersection(r[:k_mean].tolist())) / len(gold), int(tokens[r[:k_mean]].sum()))
        for r, gold in rankings
    ]
    result["fixed_at_mean_k"] = k_mean
    result["fixed_at_mean_k_recall"] = 100.0 * float(np.mean([a for a, _ in at_k]))
    result["fixed_at_mean_k_mean_tokens"] = float(np.mean([t for _, t in at_k]))
    result["accept_recall_ge_fixed_at_mean_k"] = bool(
        result["adaptive_recall"] >= result["fixed_at_mean_k_recall"] - 1e-9
    )
    if "fixed20_recall" in result:
        ratio = result["adaptive_recall"] / max(result["fixed20_recall"], 1e-12)
        result["recall_ratio_vs_fixed20"] = ratio
        result["token_ratio_vs_fixed20"] = result["adaptive_mean_tokens"] / max(
            result["fixed20_mean_tokens"], 1e-12
        )
        result["accept_vs_fixed20"] = bool(
            ratio >= 0.95 and result["adaptive_mean_tokens"] < result["fixed20_mean_tokens"]
        )
    result["seconds"] = time.perf_counter() - start
    return result
