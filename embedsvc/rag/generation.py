"""Generation for the ``Generate`` RPC: prompt building, optional Adaptive-k context, drafting.

Library form of the RPC (the servicer only translates protobuf): :meth:`Generator.stream`
yields :class:`GenerationChunk` s, the last one with ``final=True`` and the stats.

Context: with ``context_collection`` set, :func:`embedsvc.rag.context.select_context` picks the
passages (Adaptive-k) for the question (the prompt, or the last user message) and they are put
before it as a numbered ``Context:`` block. Datastores are opened by name under
``<cache_dir>/datastores/`` (never by client-given paths) and kept open per process.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from embedsvc.errors import FailedPrecondition, InvalidArgument, NotFound, shorten
from embedsvc.rag.speculative import GenerationStats, SpecConfig, SpeculativeDecoder

DEFAULT_DATASTORE = "smollm2-id-mix160"
DRAFTERS = ("none", "dresd", "dresd+self", "rest")
MAX_NEW_TOKENS = 2048


@dataclass
class GenerationChunk:
    token_ids: list[int]
    text: str
    accepted: int = 0
    context: list[Any] = field(default_factory=list)  # ContextPassage, first chunk only
    final: bool = False
    stats: GenerationStats | None = None
    finish_reason: str = ""
    prompt_tokens: int = 0


def with_context(question: str, passages: list[Any], label: str = "Question: ") -> str:
    """The user turn with numbered passages before the question."""
    if not passages:
        return question
    block = "\n".join(f"[{i + 1}] {p.text}" for i, p in enumerate(passages))
    return f"Context:\n{block}\n\n{label}{question}"


class Generator:
    """Shared per server: backbone, open datastores and drafters (one decode step at a time)."""

    def __init__(self, engine: Any = None, backbone: str = "smollm2") -> None:
        self.engine = engine
        self.backbone_name = backbone
        self._drafters: dict[tuple[str, str, int, int], Any] = {}
        self._lock = threading.Lock()  # loading
        self._step = threading.Lock()  # 2 cores: one forward at a time, RPCs interleave per step

    @property
    def backbone(self) -> Any:
        from embedsvc.backbones import load_backbone

        return load_backbone(self.backbone_name)

    def _cache_dir(self) -> Any:
        return getattr(getattr(self.engine, "config", None), "cache_dir", None)

    def drafter(self, kind: str, datastore: str, num_drafts: int, len_drafts: int) -> Any:
        from embedsvc.rag.bench import make_drafter
        from embedsvc.rag.datastore import Datastore

        kind = kind or "none"
        if kind not in DRAFTERS:
            raise InvalidArgument(
                f"unknown drafter {shorten(kind)}: {' | '.join(DRAFTERS)}", field="drafter"
            )
        if kind == "none":
            return None
        name = datastore or DEFAULT_DATASTORE
        if "/" in name or "\\" in name or name.startswith("."):
            raise InvalidArgument(
                f"datastore {shorten(name)}: give a name, not a path", field="datastore"
            )
        key = (kind, name, num_drafts, len_drafts)
        with self._lock:
            if key not in self._drafters:
                ds = next(
                    (
                        d.datastore
                        for k, d in self._drafters.items()
                        if k[1] == name and k[0].startswith("dresd")
                    ),
                    None,
                )
                if ds is None:
                    try:
                        ds = Datastore.open(name, self._cache_dir())
                    except NotFound as exc:
                        raise FailedPrecondition(
                            f"datastore {name!r} is not built; build it with `embedsvc datastore "
                            f"build {name} --form id --corpus FILE` (docs/results/issue19.md "
                            "gives the exact command for the default one)",
                            field="datastore",
                        ) from exc
                base, _, extra = kind.partition("+")
                self._drafters[key] = make_drafter(
                    base, ds, num_drafts, len_drafts, self_keys=extra == "self"
                )
            return self._drafters[key]

    def prompt_ids(
        self, prompt: str, messages: list[dict[str, str]], raw: bool, passages: list[Any]
    ) -> list[int]:
        tok = self.backbone.tokenizer
        if bool(prompt) == bool(messages):
            raise InvalidArgument("send exactly one of prompt or messages", field="prompt")
        if prompt:
            if raw:
                prompt = with_context(prompt, passages, label="")
                return list(tok(prompt, add_special_tokens=False)["input_ids"])
            messages = [{"role": "user", "content": prompt}]
        messages = [dict(m) for m in messages]
        for m in messages:
            if m.get("role") not in ("system", "user", "assistant"):
                raise InvalidArgument(
                    f"message role {shorten(m.get('role'))}: system | user | assistant",
                    field="messages",
                )
        users = [i for i, m in enumerate(messages) if m["role"] == "user"]
        if not users:
            raise InvalidArgument("messages need at least one user turn", field="messages")
        last = users[-1]
        messages[last]["content"] = with_context(messages[last]["content"], passages)
        text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return list(tok(text, add_special_tokens=False)["input_ids"])

    def question_of(self, prompt: str, messages: list[dict[str, str]]) -> str:
        if prompt:
            return prompt
        users = [m["content"] for m in messages if m.get("role") == "user"]
        return users[-1] if users else ""

    def stream(
        self,
        prompt: str = "",
        messages: list[dict[str, str]] | None = None,
        *,
        raw_prompt: bool = False,
        max_new_tokens: int = 128,
        drafter: str = "none",
        datastore: str = "",
        num_drafts: int = 10,
        len_drafts: int = 10,
        context_collection: str = "",
        context_strategy: str | None = None,
        context_options: dict[str, int | None] | None = None,
    ) -> Iterator[GenerationChunk]:
        messages = messages or []
        if bool(prompt) == bool(messages):
            raise InvalidArgument("send exactly one of prompt or messages", field="prompt")
        if not 1 <= max_new_tokens <= MAX_NEW_TOKENS:
            raise InvalidArgument(
                f"max_new_tokens must be in 1..{MAX_NEW_TOKENS}", field="max_new_tokens"
            )
        cfg = SpecConfig(
            max_new_tokens=max_new_tokens, num_drafts=num_drafts, len_drafts=len_drafts
        )
        draft = self.drafter(drafter, datastore, num_drafts, len_drafts)
        passages: list[Any] = []
        if context_collection:
            from embedsvc.rag.context import adaptive_k_config, select_context

            if self.engine is None:
                raise InvalidArgument("context needs a server engine", field="context")
            question = self.question_of(prompt, messages)
            sel = select_context(
                self.engine,
                question,
                context_collection,
                strategy=context_strategy or None,
                config=adaptive_k_config(**(context_options or {})),
            )
            passages = sel.passages
        ids = self.prompt_ids(prompt, messages, raw_prompt, passages)
        decoder = SpeculativeDecoder(self.backbone, draft, cfg)
        tok = self.backbone.tokenizer
        stats = GenerationStats()
        out: list[int] = []
        shown = ""
        it = decoder.stream(ids, max_new_tokens, stats)
        first = True
        while True:
            with self._step:
                chunk = next(it, None)
            if chunk is None:
                break
            out += chunk
            text = tok.decode(out, skip_special_tokens=True)
            delta = ""
            if not text.endswith("\ufffd"):
                delta, shown = text[len(shown) :], text
            accepted = stats.accepted_per_step[-1] if stats.accepted_per_step and not first else 0
            yield GenerationChunk(chunk, delta, accepted, passages if first else [])
            first = False
        eos = int(tok.eos_token_id)
        yield GenerationChunk(
            [],
            tok.decode(out, skip_special_tokens=True)[len(shown) :],
            final=True,
            stats=stats,
            finish_reason="eos" if out and out[-1] == eos else "length",
            prompt_tokens=len(ids),
        )
