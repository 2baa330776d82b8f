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
#: ``finalize(outputs, feeds, role)``: the graph's outputs of one batch (by name) -> the
#: strategy's vectors for that batch (e.g. packed bits) and its per-text payloads (or None)
Finalizer = Callable[
    [dict[str, np.ndarray], dict[str, np.ndarray], Role], tuple[np.ndarray, list[bytes] | None]
]


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
    #: further graph outputs, per token (``[batch, sequence, ...]``): ``module`` then returns
    #: ``(embedding, *extras)`` (e.g. BTR's token codes, stored as payloads)
    extra_outputs: tuple[str, ...] = ()
    #: for strategies whose served vectors are not the float embedding (binary codes) or that
    #: return payloads: maps one batch's outputs to ``(vectors, payloads)``; None = the float
    #: ``embedding`` / ``embedding_normalized`` output as it is
    finalize: Finalizer | None = None
    #: node-name fragments of MatMuls that stay float32 in the int8 model. Decoders set their
    #: MLP down projections: their inputs carry the large activation outliers of LLMs, and one
    #: int8 scale per tensor for them wrecks the embedding (TP on SmolLM2: min cosine to fp32
    #: 0.75 with them quantised, 0.98 without; see docs/results/issue7.md)
    int8_keep_float: tuple[str, ...] = ()
    #: dual strategies: ``finalize``'s payloads are sparse rows (``embedsvc.indexes.sparse``
    #: bytes) over this many ids, handed back as ``Embedding.sparse``; 0 = no sparse part
    sparse_vocab: int = 0
