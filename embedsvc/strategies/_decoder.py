"""Shared machinery for strategies that read a decoder LLM's last-token states.

Used by ``token_prepending``, ``prompt_last`` and the trained pooling heads (``mltp``, ``m2``,
``eos_linear``). Everything here works on any Hugging Face causal LM whose decoder exposes
``layers`` (a list of blocks) and ``norm`` (the final norm) -- Llama, Mistral, Qwen2/3, Gemma,
SmolLM -- and never mutates the shared backbone: the placeholder token of Token Prepending is
injected through ``inputs_embeds`` instead of resizing the embedding matrix, and the per-block
interventions are forward (pre-)hooks that are removed after every call.

Conventions (the Hugging Face ``hidden_states`` ones): layer ``0`` is the embedding output, layer
``i`` the output of block ``i`` (1-based), and layer ``L`` (the last) has the final norm applied.
Negative layers count from the end (``-1`` = ``L``, ``-2`` = output of the penultimate block,
before the final norm), as the Token Prepending reference writes them.

Padding: rows may be left- or right-padded; position ids are derived from the attention mask
(``cumsum - 1``) and the "last token" of a row is its last real (unmasked) position, so a text
gets the same vector whatever else shares its batch.
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field

from embedsvc.backbones import Backbone, load_backbone
from embedsvc.errors import InvalidArgument
from embedsvc.strategies._limits import apply_token_limit, check_texts
from embedsvc.strategies.base import Embedding, Role, Strategy, StrategyConfig

#: id used inside this module for the placeholder slot (never looked up in the vocabulary)
PLACEHOLDER_ID = -1

TemplateName = Literal["eol", "cot", "ke"]

#: (text before the placeholder slot, text after it with ``{s}`` for the sentence). The no-TP
#: prompt is the two halves joined, i.e. exactly the reference's vanilla strings; with TP the
#: placeholder sits between them, right before the opening quote (it takes the place of the
#: space that the reference's ``: <PST> "`` string would tokenize separately).
TEMPLATES: dict[str, tuple[str, str]] = {
    # PromptEOL (Jiang et al. 2023), as token_prepending/evaluate.py writes it
    "eol": ("This sentence :", ' "{s}" means in one word:"'),
    # the "pretended chain of thought" variant
    "cot": ("After thinking step by step , this sentence :", ' "{s}" means in one word:"'),
    # knowledge enhancement: a prefix saying what carries a sentence's meaning
    "ke": (
        "The essence of a sentence is often captured by its main subjects and actions, while "
        "descriptive terms provide additional but less central details. With this in mind , "
        "this sentence :",
        ' "{s}" means in one word:"',
    ),
}


def preprocess_sentence(text: str) -> str:
    """The reference's sentence clean-up before it goes between the prompt's quotes.

    SentEval hands over whitespace tokens joined by single spaces, so whitespace is collapsed;
    then a final ``.`` is added unless the text ends in ``.?"'``; double quotes become single
    quotes (they would close the prompt's quote); a trailing ``?`` becomes ``.``.
    """
    s = " ".join(text.split())
    if s and s[-1] not in ".?\"'":
        s += "."
    s = s.replace('"', "'")
    if s and s[-1] == "?":
        s = s[:-1] + "."
    return s


def placeholder_vector(dim: int, seed: int, scale: float) -> Any:
    """The placeholder's input embedding: ``scale * randn(dim)`` from a seeded CPU generator.

    The reference draws ``torch.randn(d)`` (std 1, not the model's init scale) unseeded on CPU;
    a private generator makes it identical in every process and independent of global RNG state.
    """
    import torch

    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    return torch.randn(dim, generator=gen, dtype=torch.float32) * float(scale)


def resolve_layer(layer: int, num_layers: int) -> int:
    """A layer index in ``0..L`` from a possibly negative one (``-1`` -> ``L``)."""
    resolved = layer + num_layers + 1 if layer < 0 else layer
    if not 0 <= resolved <= num_layers:
        raise InvalidArgument(
            f"layer {layer} out of range for a decoder with {num_layers} blocks "
            f"(valid: 0..{num_layers} or -{num_layers + 1}..-1)",
            field="output_layer",
        )
    return resolved


@dataclass
class DecoderBatch:
    """One padded batch: ``ids`` may hold ``PLACEHOLDER_ID``; indices are per row."""

    ids: Any  # LongTensor [B, T]
    attention_mask: Any  # LongTensor [B, T]
    position_ids: Any  # LongTensor [B, T]
    last_idx: Any  # LongTensor [B]: last real token
    pst_idx: Any | None  # LongTensor [B]: placeholder slot, or None if no row has one


def build_batch(
    seqs: Sequence[Sequence[int]], pad_id: int, padding_side: Literal["left", "right"] = "right"
) -> DecoderBatch:
    """Pad ``seqs`` to one tensor; position ids and last-token indices come from the mask."""
    import torch

    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), int(pad_id), dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for r, seq in enumerate(seqs):
        n = len(seq)
        if n == 0:
            raise InvalidArgument("empty token sequence")
        sl = slice(width - n, width) if padding_side == "left" else slice(0, n)
        ids[r, sl] = torch.tensor(list(seq), dtype=torch.long)
        mask[r, sl] = 1
    # Positions count real tokens only, so a left-padded row gets 0,1,2,... from its first token
    # (HF's default arange would shift RoPE phases by the pad count; the reference has that bug).
    position_ids = (mask.cumsum(dim=1) - 1).clamp(min=0)
    cols = torch.arange(width).expand_as(mask)
    last_idx = torch.where(mask.bool(), cols, torch.full_like(cols, -1)).max(dim=1).values
    is_pst = ids == PLACEHOLDER_ID
    pst_idx = None
    if bool(is_pst.any()):
        if not bool(is_pst.any(dim=1).all()):
            raise InvalidArgument("either every row or no row of a batch has a placeholder")
        pst_idx = is_pst.long().argmax(dim=1)  # the first placeholder of each row
    return DecoderBatch(ids, mask, position_ids, last_idx, pst_idx)


def decoder_parts(model: Any) -> tuple[Any, Any, Any]:
    """``(decoder, blocks, final_norm)`` of a causal LM (``model.model`` for Llama-likes)."""
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else model.base_model
    blocks = getattr(decoder, "layers", None)
    norm = getattr(decoder, "norm", None)
    if blocks is None or norm is None:
        raise InvalidArgument(
            f"{type(decoder).__name__} has no `layers`/`norm`; only Llama-style decoders "
            "(Llama, Mistral, Qwen, Gemma, SmolLM, ...) are supported",
            field="backbone",
        )
    return decoder, blocks, norm


def input_embeddings(model: Any, ids: Any, placeholder: Any | None) -> Any:
    """Token embeddings of ``ids`` with placeholder slots filled by ``placeholder``.

    Building ``inputs_embeds`` ourselves is what lets Token Prepending add a token without
    resizing (i.e. mutating) the embedding matrix that other strategies share.
    """
    import torch

    table = model.get_input_embeddings()
    is_pst = ids == PLACEHOLDER_ID
    embeds = table(ids.clamp(min=0))
    if bool(is_pst.any()):
        if placeholder is None:
            raise InvalidArgument("the batch has a placeholder slot but no placeholder vector")
        vec = placeholder.to(device=embeds.device, dtype=embeds.dtype)
        embeds = torch.where(is_pst.unsqueeze(-1), vec.expand_as(embeds), embeds)
    # Gemma-style decoders scale embeddings inside forward; nothing to do here (they multiply
    # inputs_embeds too), so this is correct for them as well.
    return embeds


class _EarlyExit(Exception):
    """Raised by a forward hook once every requested layer is collected (early exit)."""


def _hidden_arg(args: tuple, kwargs: dict) -> tuple[Any, bool]:
    if args:
        return args[0], True
    return kwargs["hidden_states"], False


def last_token_states(
    model: Any,
    batch: DecoderBatch,
    layers: Sequence[int],
    *,
    placeholder: Any | None = None,
    tp_range: tuple[int, int] | None = None,
) -> dict[int, Any]:
    """The last real token's state at each of ``layers`` (``0..L`` indices), ``{layer: [B, d]}``.

    ``tp_range=(start, exit)``: Token Prepending -- before each block ``i`` with
    ``start <= i < exit`` (0-based block index, i.e. the block whose *input* is layer ``i``), the
    placeholder slot's state is overwritten by the last real token's state (that block's input).
    Blocks past the deepest requested layer are not run (early exit).
    """
    import torch

    decoder, blocks, norm = decoder_parts(model)
    num_layers = len(blocks)
    wanted = sorted({resolve_layer(int(x), num_layers) for x in layers})
    deepest = wanted[-1]
    rows = torch.arange(batch.ids.shape[0])
    out: dict[int, Any] = {}
    embeds = input_embeddings(model, batch.ids, placeholder)
    if 0 in wanted:
        out[0] = embeds[rows, batch.last_idx]
    handles = []

    def prepend(block: int):
        def hook(module: Any, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
            hidden, positional = _hidden_arg(args, kwargs)
            # clone: the incoming tensor is the previous block's output, which we may have
            # collected; overwrite only the placeholder slot of each row.
            hidden = hidden.clone()
            hidden[rows, batch.pst_idx] = hidden[rows, batch.last_idx]
            if positional:
                return (hidden, *args[1:]), kwargs
            kwargs = dict(kwargs)
            kwargs["hidden_states"] = hidden
            return args, kwargs

        return hook

    def collect(block: int):
        layer = block + 1

        def hook(module: Any, args: tuple, kwargs: dict, output: Any) -> None:
            hidden = output[0] if isinstance(output, tuple) else output
            state = hidden[rows, batch.last_idx]
            # RMSNorm/LayerNorm act per token, so norm(gather(h)) == gather(norm(h)).
            out[layer] = norm(state) if layer == num_layers else state
            if layer == deepest:
                raise _EarlyExit

        return hook

    try:
        if tp_range is not None and tp_range[1] > tp_range[0]:
            if batch.pst_idx is None:
                raise InvalidArgument("Token Prepending needs a placeholder slot in every row")
            start, stop = tp_range
            for i in range(max(0, start), min(stop, num_layers)):
                handles.append(blocks[i].register_forward_pre_hook(prepend(i), with_kwargs=True))
        for i in range(num_layers):
            if i + 1 in wanted:
                handles.append(blocks[i].register_forward_hook(collect(i), with_kwargs=True))
        if deepest > 0:
            with contextlib.suppress(_EarlyExit):
                decoder(
                    inputs_embeds=embeds,
                    attention_mask=batch.attention_mask,
                    position_ids=batch.position_ids,
                    use_cache=False,
                )
    finally:
        for h in handles:
            h.remove()
    return out


# --------------------------------------------------------------------------------------------
# Prompted last-token strategies (token_prepending, prompt_last)
# --------------------------------------------------------------------------------------------


class PromptLastConfig(StrategyConfig):
    #: registered backbone name or a local causal-LM folder
    backbone: str = "smollm2"
    #: prompt: ``eol`` (PromptEOL), ``cot`` (pretended CoT) or ``ke`` (knowledge enhancement)
    template: TemplateName = "eol"
    #: hidden-state index of the embedding (0..L, or negative: -1 = after the final norm)
    output_layer: int = -1
    #: texts per forward pass (texts are sorted by length first)
    batch_size: int = Field(16, ge=1)
    #: pad side of batches; results do not depend on it (positions come from the mask)
    padding_side: Literal["left", "right"] = "right"
    #: token limit of the whole prompt; the sentence is cut to fit, the template never is
    max_length: int = Field(512, ge=8)


class PromptLastStrategy(Strategy):
    """Base of the prompted last-token strategies; ``use_placeholder`` selects TP prompts."""

    output_kind = "dense"
    use_placeholder = False

    def __init__(self, config: StrategyConfig | None = None, *, cache_dir: Path | None = None):
        super().__init__(config)
        self._cache_dir = cache_dir
        self._backbone: Backbone | None = None
        self._lock = threading.Lock()
        self._prefix_ids: list[int] | None = None

    # --- backbone and template -----------------------------------------------------------
    @property
    def backbone(self) -> Backbone:
        if self._backbone is None:
            with self._lock:
                if self._backbone is None:
                    backbone = load_backbone(self.config.backbone, self._cache_dir)
                    if backbone.kind != "decoder":
                        raise InvalidArgument(
                            f"{self.name} needs a decoder LLM backbone, got encoder "
                            f"{self.config.backbone!r}",
                            field="backbone",
                        )
                    decoder_parts(backbone.model)
                    resolve_layer(self.config.output_layer, backbone.num_layers)
                    self._backbone = backbone
        return self._backbone

    @property
    def num_layers(self) -> int:
        return self.backbone.num_layers

    @property
    def output_index(self) -> int:
        return resolve_layer(self.config.output_layer, self.num_layers)

    @property
    def dim(self) -> int:
        return self.backbone.hidden_size

    @property
    def max_tokens(self) -> int:
        return min(self.config.max_length, self.backbone.max_length)

    def _placeholder(self) -> Any | None:
        return None

    def _fingerprint_parts(self) -> list[str]:
        return [self.name, self.backbone.fingerprint, self.config.model_dump_json()]

    @property
    def fingerprint(self) -> str:
        key = "|".join(self._fingerprint_parts())
        return hashlib.sha256(key.encode()).hexdigest()[:16]

    def _tokenize(self, text: str, special: bool) -> list[int]:
        return list(
            self.backbone.tokenizer(text, add_special_tokens=special, verbose=False)["input_ids"]
        )

    def prompt_ids(self, sentence: str) -> list[int]:
        """Token ids of the prompt around an already pre-processed ``sentence``."""
        prefix, suffix = TEMPLATES[self.config.template]
        if not self.use_placeholder:
            # one string, exactly the reference's vanilla prompt
            return self._tokenize(prefix + suffix.format(s=sentence), special=True)
        if self._prefix_ids is None:
            self._prefix_ids = self._tokenize(prefix, special=True)
        return [
            *self._prefix_ids,
            PLACEHOLDER_ID,
            *self._tokenize(suffix.format(s=sentence), False),
        ]

    def _fit(self, text: str, limit: int) -> tuple[list[int], int]:
        """``(prompt ids within limit, untruncated prompt length)``; cuts the sentence's tail."""
        sentence = preprocess_sentence(text)
        ids = self.prompt_ids(sentence)
        full = len(ids)
        if full <= limit:
            return ids, full
        tok = self.backbone.tokenizer
        sent_ids = self._tokenize(sentence, special=False)
        keep = max(0, len(sent_ids) - (full - limit))
        while True:
            cut = tok.decode(sent_ids[:keep], skip_special_tokens=True)
            ids = self.prompt_ids(preprocess_sentence(cut) if cut.strip() else "")
            if len(ids) <= limit or keep == 0:
                break
            keep = max(0, keep - max(1, len(ids) - limit))
        if len(ids) > limit:
            raise InvalidArgument(
                f"max_length {limit} is shorter than the {self.config.template!r} template",
                field="max_length",
            )
        return ids, full

    def count_tokens(self, texts: list[str], role: Role = Role.PASSAGE) -> list[int]:
        """Tokens of the full prompt of each text (template included), untruncated."""
        texts = check_texts(texts)
        return [len(self.prompt_ids(preprocess_sentence(t))) for t in texts]

    def onnx_spec(self) -> Any:
        """Export hook: prompt last-token (with any Token Prepending) as one graph."""
        from embedsvc.export.modules import prompt_last_spec

        return prompt_last_spec(self)

    # --- encoding ---------------------------------------------------------------------------
    def _tp_range(self) -> tuple[int, int] | None:
        return None

    def encode_ids(self, seqs: list[list[int]], layers: Sequence[int]) -> dict[int, np.ndarray]:
        """Last-token states ``{layer: [n, d]}`` of prompt id lists (benchmarks use all layers)."""
        import torch

        backbone = self.backbone
        pad = backbone.tokenizer.pad_token_id
        order = np.argsort(-np.asarray([len(s) for s in seqs]), kind="stable")
        bs = self.config.batch_size
        res: dict[int, np.ndarray] = {}
        placeholder = self._placeholder()
        with torch.inference_mode():
            for start in range(0, len(seqs), bs):
                idx = order[start : start + bs]
                batch = build_batch([seqs[i] for i in idx], pad, self.config.padding_side)
                states = last_token_states(
                    backbone.model,
                    batch,
                    layers,
                    placeholder=placeholder,
                    tp_range=self._tp_range(),
                )
                for layer, vec in states.items():
                    arr = res.get(layer)
                    if arr is None:
                        arr = res[layer] = np.empty((len(seqs), vec.shape[-1]), np.float32)
                    arr[idx] = vec.float().cpu().numpy()
        return res

    def encode(
        self,
        texts: list[str],
        role: Role = Role.PASSAGE,
        *,
        normalize: bool = True,
        truncate: bool = True,
    ) -> Embedding:
        texts = check_texts(texts)
        dim = self.dim
        if not texts:
            return Embedding.empty("dense", dim)
        limit = self.max_tokens
        fitted = [self._fit(t, limit) for t in texts]
        seen, truncated = apply_token_limit([f for _, f in fitted], limit, truncate)
        layer = self.output_index
        vecs = self.encode_ids([ids for ids, _ in fitted], [layer])[layer]
        if normalize:
            vecs = vecs / np.maximum(np.linalg.norm(vecs, axis=1, keepdims=True), 1e-12)
        return Embedding("dense", vecs.astype(np.float32), dim, seen, truncated)
