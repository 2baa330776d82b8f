"""``mean``: mean pooling of an encoder's last hidden state, the sentence-transformers baseline.

With the default ``minilm`` backbone this *is* all-MiniLM-L6-v2 as ``SentenceTransformer.encode``
serves it (Transformer -> mean Pooling -> Normalize, 256-token limit), so every other strategy is
measured against exactly what users of sentence-transformers get today.
"""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field

from embedsvc.backbones import Backbone, load_backbone
from embedsvc.errors import InvalidArgument
from embedsvc.strategies._batches import length_sorted_batches
from embedsvc.strategies._limits import apply_token_limit, check_texts
from embedsvc.strategies.base import Embedding, Role, Strategy, StrategyConfig, register_strategy


class MeanConfig(StrategyConfig):
    #: registered backbone name or a local model folder
    backbone: str = "minilm"
    #: texts per forward pass (texts are sorted by length first, as sentence-transformers does)
    batch_size: int = Field(32, ge=1)
    #: token limit; None = the backbone's served limit (256 for MiniLM)
    max_length: int | None = Field(None, ge=2)


@register_strategy("mean")
class MeanPooling(Strategy):
    """Masked mean of the last hidden state, optionally L2-normalised. Role is ignored."""

    output_kind = "dense"
    config_cls = MeanConfig
    description = "mean pooling of the encoder (sentence-transformers baseline)"
    config: MeanConfig

    def __init__(self, config: MeanConfig | None = None, *, cache_dir: Path | None = None) -> None:
        super().__init__(config)
        self._cache_dir = cache_dir
        self._backbone: Backbone | None = None
        self._lock = threading.Lock()

    @property
    def backbone(self) -> Backbone:
        """The backbone, loaded on first use (shared with other strategies in this process)."""
        if self._backbone is None:
            with self._lock:
                if self._backbone is None:
                    backbone = load_backbone(self.config.backbone, self._cache_dir)
                    limit = self.config.max_length
                    positions = getattr(backbone.model.config, "max_position_embeddings", None)
                    if limit is not None and positions and limit > positions:
                        raise InvalidArgument(
                            f"max_length {limit} exceeds the {positions} positions of backbone "
                            f"{self.config.backbone!r}",
                            field="max_length",
                        )
                    self._backbone = backbone
        return self._backbone

    @property
    def dim(self) -> int:
        return self.backbone.hidden_size

    @property
    def max_tokens(self) -> int:
        return self.config.max_length or self.backbone.max_length

    @property
    def fingerprint(self) -> str:
        key = f"mean|{self.backbone.fingerprint}|{self.max_tokens}"
        return hashlib.sha256(key.encode()).hexdigest()[:16]

    def count_tokens(self, texts: list[str], role: Role = Role.PASSAGE) -> list[int]:
        """Untruncated token counts, special tokens included; runs the tokenizer only."""
        texts = check_texts(texts)
        if not texts:
            return []
        ids = self.backbone.tokenizer(
            texts,
            add_special_tokens=True,
            return_attention_mask=False,
            return_token_type_ids=False,
            verbose=False,  # no "longer than the maximum" warning: we report truncation ourselves
        )["input_ids"]
        return [len(x) for x in ids]

    def onnx_spec(self) -> Any:
        """Export hook: encoder + masked mean pooling as one graph (``embedsvc.export``)."""
        from embedsvc.export.modules import mean_pooling_spec

        return mean_pooling_spec(self)

    def encode(
        self,
        texts: list[str],
        role: Role = Role.PASSAGE,
        *,
        normalize: bool = True,
        truncate: bool = True,
    ) -> Embedding:
        import torch

        texts = check_texts(texts)
        dim = self.dim
        if not texts:
            return Embedding.empty("dense", dim)
        limit = self.max_tokens
        counts = self.count_tokens(texts)
        seen, truncated = apply_token_limit(counts, limit, truncate)

        backbone = self.backbone
        out = np.empty((len(texts), dim), dtype=np.float32)
        batches = length_sorted_batches(
            backbone.tokenizer, texts, counts, self.config.batch_size, limit
        )
        with torch.inference_mode():
            for idx, enc in batches:
                inputs = {
                    k: v
                    for k, v in enc.items()
                    if k in ("input_ids", "attention_mask", "token_type_ids")
                }
                # base_model skips an LM head if the backbone is a decoder: only states are needed
                hidden = backbone.model.base_model(**inputs).last_hidden_state
                mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
                if normalize:
                    pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
                out[idx] = pooled.float().cpu().numpy()
        return Embedding("dense", out, dim, seen, truncated)
