"""The pre stage of the prompted decoder strategies, and their common base.

A text is cleaned as the Token Prepending reference does, put inside a PromptEOL-style template
(``This sentence : "{s}" means in one word:"``) and tokenised once; a text too long for the limit
loses its sentence's tail, never the template. With Token Prepending a placeholder slot
(``PLACEHOLDER_ID``) sits right before the sentence. The core (``model.DecoderStatesCore``)
reads the last token's state at ``output_layer``.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from embedsvc.backbones import Backbone
from embedsvc.errors import InvalidArgument
from embedsvc.strategies.base import Role, StrategyConfig
from embedsvc.strategies.decoder.model import (
    PLACEHOLDER_ID,
    DecoderStatesCore,
    decoder_parts,
    resolve_layer,
)
from embedsvc.strategies.features import Features, pad_batch
from embedsvc.strategies.hf import HFStrategy

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


class DecoderConfig(StrategyConfig):
    #: registered backbone name or a local causal-LM folder
    backbone: str = "smollm2"
    #: texts per forward pass (texts are sorted by length first)
    batch_size: int = Field(32, ge=1)
    #: pad side of batches; results do not depend on it (positions come from the mask)
    padding_side: Literal["left", "right"] = "right"
    #: token limit of the whole input
    max_length: int = Field(512, ge=2)


class DecoderStrategy(HFStrategy):
    """Base of the strategies that read a decoder LLM's last-token states (prompted or not):
    a decoder backbone, batches padded on ``padding_side``, the tighter of the two limits."""

    output_kind = "dense"
    config: DecoderConfig

    def check_backbone(self, backbone: Backbone) -> None:
        if backbone.kind != "decoder":
            raise InvalidArgument(
                f"{self.name} needs a decoder LLM backbone, got encoder {self.config.backbone!r}",
                field="backbone",
            )
        decoder_parts(backbone.model)

    @property
    def max_tokens(self) -> int:
        return min(self.config.max_length, self.backbone.max_length)

    def collate(self, ids: list[list[int]]) -> dict[str, Any]:
        return pad_batch(ids, self.pad_id, side=self.config.padding_side)


class PromptLastConfig(DecoderConfig):
    #: prompt: ``eol`` (PromptEOL), ``cot`` (pretended CoT) or ``ke`` (knowledge enhancement)
    template: TemplateName = "eol"
    #: hidden-state index of the embedding (0..L, or negative: -1 = after the final norm)
    output_layer: int = -1
    batch_size: int = Field(16, ge=1)
    #: the sentence is cut to fit, the template never is
    max_length: int = Field(512, ge=8)


class PromptLastStrategy(DecoderStrategy):
    """Base of the prompted last-token strategies; ``use_placeholder`` selects TP prompts."""

    use_placeholder = False
    _prefix_ids: list[int] | None = None
    config: PromptLastConfig

    def check_backbone(self, backbone: Backbone) -> None:
        super().check_backbone(backbone)
        resolve_layer(self.config.output_layer, backbone.num_layers)

    @property
    def num_layers(self) -> int:
        return self.backbone.num_layers

    @property
    def output_index(self) -> int:
        return resolve_layer(self.config.output_layer, self.num_layers)

    @property
    def max_tokens(self) -> int:
        return min(self.config.max_length, self.backbone.max_length)

    def _placeholder(self) -> Any | None:
        return None

    def _tp_range(self) -> tuple[int, int] | None:
        return None

    @property
    def model_fingerprint(self) -> str:
        key = "|".join([self.name, self.backbone.fingerprint, self.config.model_dump_json()])
        return self.digest(key)

    # -- pre --------------------------------------------------------------------------------------
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

    def pre(self, texts: list[str], role: Role) -> Features:
        """The prompt of each text (template included) within the limit; counts untruncated."""
        fitted = [self._fit(t, self.max_tokens) for t in texts]
        return Features([ids for ids, _ in fitted], [n for _, n in fitted])

    # -- core -------------------------------------------------------------------------------------
    def states_core(self, layers: list[int]) -> DecoderStatesCore:
        """A core reading ``layers`` (benchmarks probe every layer with it)."""
        notes = [
            "prompt template, sentence pre-processing and truncation run in Python (pre)",
            f"placeholder id {PLACEHOLDER_ID} in input_ids marks the Token Prepending slot",
        ]
        tp = self._tp_range()
        if tp is not None and tp[1] > tp[0]:
            notes.append(f"Token Prepending overwrite traced into blocks {tp[0]}..{tp[1]}")
        return DecoderStatesCore(
            self.backbone.model,
            layers,
            placeholder=self._placeholder(),
            tp_range=tp,
            notes=tuple(notes),
        )

    def build_core(self) -> DecoderStatesCore:
        return self.states_core([self.output_index])

    def encode_ids(self, seqs: list[list[int]], layers: list[int]) -> dict[int, Any]:
        """Last-token states ``{layer: [n, d]}`` of prompt id lists (benchmarks use all layers)."""
        from embedsvc.strategies.runner import CoreExecutor, map_batches

        resolved = [resolve_layer(int(x), self.num_layers) for x in layers]
        executor = CoreExecutor(self.states_core(resolved).eval())

        def run(idx: Any) -> dict[str, Any]:
            out = executor.run(self.collate([seqs[i] for i in idx]))["embedding"]
            if len(resolved) == 1:
                return {str(resolved[0]): out}
            return {str(layer): out[:, j] for j, layer in enumerate(resolved)}

        got = map_batches([len(s) for s in seqs], run, self.batch_size)
        return {int(k): v for k, v in got.items()}
