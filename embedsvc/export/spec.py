"""What a strategy hands to the exporter: a traceable module and how to feed it.

Kept free of torch/onnx imports: strategies build an :class:`OnnxSpec` only when asked.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from embedsvc.strategies.base import Role

#: ``featurize(texts, role)``: one padded int64 batch, named by ``OnnxSpec.input_names``, with
#: texts truncated exactly as the strategy's torch path truncates them
Featurizer = Callable[[list[str], Role], dict[str, np.ndarray]]


@dataclass
class OnnxSpec:
    """An exportable strategy: everything between token ids and the pooled vector is ``module``.

    ``module.forward(*inputs)`` takes ``input_names`` (int64 ``[batch, seq]``) and returns the
    un-normalised float32 ``[batch, dim]`` embedding; the exporter adds the L2-normalised output
    in the graph. What happens before the ids (tokenisation, prompt templates, truncation) stays
    in Python, in ``featurize``, so the served and the torch path share that code.
    """

    module: Any  # torch.nn.Module
    input_names: tuple[str, ...]
    featurize: Featurizer
    tokenizer: Any  # saved beside the model (transformers tokenizer)
    source: Path  # the checkpoint folder the weights came from (hashed into the manifest)
    source_fingerprint: str
    batch_size: int = 32
    #: what the graph does not contain, for the manifest (e.g. "prompt template: Python side")
    notes: list[str] = field(default_factory=list)
