"""Strategies on a Hugging Face backbone: the backbone loaded lazily, once, behind one lock.

:class:`HFStrategy` gives the common pre stage (tokenise once with the backbone's tokenizer,
specials included, cut to the limit) and the padding of batches; a subclass names its backbone
(``backbone_name``), checks it (``check_backbone``) and builds its core.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from embedsvc.backbones import Backbone, load_backbone
from embedsvc.strategies.base import Role, Strategy
from embedsvc.strategies.features import Features, tokenize


class HFStrategy(Strategy):
    """A strategy whose pre stage is its backbone's tokenizer."""

    _backbone: Backbone | None = None

    def backbone_name(self) -> str:
        """The registered backbone name or local folder to load (default: ``config.backbone``)."""
        return str(self.config.backbone)  # type: ignore[attr-defined]

    def check_backbone(self, backbone: Backbone) -> None:
        """Raise if ``backbone`` cannot serve this strategy (called once, at load)."""

    @property
    def backbone(self) -> Backbone:
        """The shared backbone (``load_backbone`` caches it per process), loaded on first use."""
        if self._backbone is None:
            with self._load_lock:
                if self._backbone is None:
                    backbone = load_backbone(self.backbone_name(), self._cache_dir)
                    self.check_backbone(backbone)
                    self._backbone = backbone
        return self._backbone

    @property
    def tokenizer(self) -> Any:
        return self.backbone.tokenizer

    @property
    def pad_id(self) -> int:
        return int(self.backbone.tokenizer.pad_token_id)

    @property
    def source(self) -> Path | None:
        return self.backbone.source

    @property
    def dim(self) -> int:
        return self.backbone.hidden_size

    @property
    def max_tokens(self) -> int:
        """The config's ``max_length``, else the backbone's served limit."""
        return getattr(self.config, "max_length", None) or self.backbone.max_length

    def pre(self, texts: list[str], role: Role) -> Features:
        return tokenize(self.backbone.tokenizer, texts, self.max_tokens)
