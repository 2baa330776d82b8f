"""The backbone contract: a tokenizer plus a transformer, loaded offline.

A backbone is configuration, not code: a registered name (``minilm``, ``smollm2``) resolves to a
local model folder, and any other local folder path works in its place. Loaded backbones are
shared per process (``load_backbone`` caches them).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

BackboneKind = Literal["encoder", "decoder"]


@dataclass
class Backbone:
    """A loaded model ready for inference (eval mode, no grad needed by callers)."""

    name: str
    kind: BackboneKind
    model: Any  # transformers.PreTrainedModel
    tokenizer: Any  # transformers.PreTrainedTokenizerBase
    #: the longest input in tokens (e.g. 256 for MiniLM as sentence-transformers serves it)
    max_length: int
    #: the folder the weights were read from
    source: Path
    #: short hash identifying the weights (for caches and export manifests)
    fingerprint: str

    @property
    def hidden_size(self) -> int:
        return int(self.model.config.hidden_size)

    @property
    def num_layers(self) -> int:
        return int(self.model.config.num_hidden_layers)


#: name -> function returning the local folder of that backbone (converting it on first use)
BackboneResolver = Callable[[Path], Path]
