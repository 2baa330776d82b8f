"""``mean``: mean pooling of an encoder's last hidden state, the sentence-transformers baseline.

With the default ``minilm`` backbone this *is* all-MiniLM-L6-v2 as ``SentenceTransformer.encode``
serves it (Transformer -> mean Pooling -> Normalize, 256-token limit), so every other strategy is
measured against exactly what users of sentence-transformers get today.
"""

from __future__ import annotations

from pydantic import Field

from embedsvc.backbones import Backbone
from embedsvc.errors import InvalidArgument
from embedsvc.strategies.base import StrategyConfig, register_strategy
from embedsvc.strategies.core import ENCODER_INPUTS, MeanPoolCore
from embedsvc.strategies.hf import HFStrategy


class MeanConfig(StrategyConfig):
    #: registered backbone name or a local model folder
    backbone: str = "minilm"
    #: texts per forward pass (texts are sorted by length first, as sentence-transformers does)
    batch_size: int = Field(32, ge=1)
    #: token limit; None = the backbone's served limit (256 for MiniLM)
    max_length: int | None = Field(None, ge=2)


@register_strategy("mean")
class MeanPooling(HFStrategy):
    """Masked mean of the last hidden state, optionally L2-normalised. Role is ignored."""

    output_kind = "dense"
    config_cls = MeanConfig
    description = "mean pooling of the encoder (sentence-transformers baseline)"
    int8_sts_delta = -0.24  # int8 - fp32 STS-B dev, measured in issue 7
    config: MeanConfig

    def check_backbone(self, backbone: Backbone) -> None:
        limit = self.config.max_length
        positions = getattr(backbone.model.config, "max_position_embeddings", None)
        if limit is not None and positions and limit > positions:
            raise InvalidArgument(
                f"max_length {limit} exceeds the {positions} positions of backbone "
                f"{self.config.backbone!r}",
                field="max_length",
            )

    @property
    def model_fingerprint(self) -> str:
        key = f"mean|{self.backbone.fingerprint}|{self.max_tokens}"
        return self.digest(key)

    def build_core(self) -> MeanPoolCore:
        tok = self.backbone.tokenizer
        names = tuple(n for n in ENCODER_INPUTS if n in tok.model_input_names)
        # base_model skips an LM head if the backbone is a decoder: only states are needed
        return MeanPoolCore(
            self.backbone.model.base_model, names, decoder=self.backbone.kind == "decoder"
        )
