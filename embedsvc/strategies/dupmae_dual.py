"""``dupmae_dual``: DupMAE's dual view on top of the encoder's own representation.

Reference
    Xiao et al., "RetroMAE-2: Duplex Masked Auto-Encoder For Pre-Training Retrieval-Oriented
    Language Models" (ACL 2023, arXiv 2211.08769): a dense aggregate view plus an
    ordinary-token (OT) view in vocabulary space, used together for retrieval. The OT channel
    is kept *exactly sparse* and starts as exact term matching (uniCOIL-style,
    ``_dupmae_exact.py``); the two views are searched apart and their scores fused
    (``embedsvc.indexes.fusion.convex_fuse``).

Inputs-Outputs
    Texts (role ignored: queries and passages share the encoder and head) -> ``Embedding``
    whose ``vectors`` are the dense channel, float32 ``[n, 384]`` unit norm, and whose
    ``sparse`` is the OT channel, a ``scipy.sparse`` CSR ``[n, 30522]`` (non-negative weight
    per vocabulary id: the max over the text's ordinary tokens with that id of
    ``ExactTermHead(state)``). One encoder pass gives both.

    **Departure from the paper**: the dense channel is the frozen encoder's *mean pooling*,
    not a [CLS] projection. all-MiniLM-L6-v2 was trained for mean pooling; its [CLS] state is
    a poor sentence vector (44.6 nDCG@10 on SciFact vs 66.5 for mean, issue 4), so the paper's
    [CLS] channel would throw away the best dense view this backbone has. For a CLS-trained
    encoder the same code would pool [CLS]. The encoder stays frozen: the dense channel *is*
    the ``mean`` strategy, bit for bit, and only the OT head is trained.

Hyper-parameters
    From the artifact's ``head_config.json``: ``inner`` (MLP width of the head),
    ``fusion_weight`` (dense share of the fused score, chosen on SciFact *train* selection
    queries), ``vocab_size``. Config: ``artifact`` (``dupmae/dual`` under
    ``embedsvc/artifacts`` or a folder), ``fusion_weight`` override, ``batch_size``,
    ``max_length``. Trained by ``training/train_dupmae_ot.py``; results in
    ``docs/results/issue16.md``.
"""

from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field

from embedsvc.backbones import Backbone, load_backbone
from embedsvc.errors import FailedPrecondition
from embedsvc.strategies._batches import length_sorted_batches
from embedsvc.strategies._limits import apply_token_limit, check_texts, count_with_specials
from embedsvc.strategies.base import Embedding, Role, Strategy, StrategyConfig, register_strategy

ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts"
BUILD_HINT = "build it with training/dupmae_states.py then training/train_dupmae_ot.py --export"


def dual_artifact_dir(name_or_path: str) -> Path:
    for cand in (ARTIFACTS / name_or_path, Path(name_or_path).expanduser()):
        if (cand / "head_config.json").is_file() and (cand / "head.safetensors").is_file():
            return cand.resolve()
    raise FailedPrecondition(
        f"DupMAE dual artifact {name_or_path!r} not found; {BUILD_HINT}", field="artifact"
    )


class DupMAEDualConfig(StrategyConfig):
    artifact: str = "dupmae/dual"
    #: dense share of the fused score; None = the artifact's (chosen on SciFact train queries)
    fusion_weight: float | None = Field(None, ge=0.0, le=1.0)
    batch_size: int = Field(32, ge=1)
    max_length: int | None = Field(None, ge=4)


@register_strategy("dupmae_dual")
class DupMAEDual(Strategy):
    """Frozen mean-pooled dense channel + exact sparse OT channel, fused at search time."""

    output_kind = "dense"
    config_cls = DupMAEDualConfig
    description = "DupMAE dual view: mean-pooled dense + exact sparse OT channel (fused search)"
    config: DupMAEDualConfig

    def __init__(self, config: DupMAEDualConfig | None = None, *, cache_dir: Path | None = None):
        super().__init__(config)
        self._cache_dir = cache_dir
        self._backbone: Backbone | None = None
        self._head: Any = None
        self._lock = threading.Lock()

    def _folder(self) -> Path:
        return dual_artifact_dir(self.config.artifact)

    @property
    def head_config(self) -> dict[str, Any]:
        return json.loads((self._folder() / "head_config.json").read_text())

    @property
    def backbone(self) -> Backbone:
        if self._backbone is None:
            with self._lock:
                if self._backbone is None:
                    self._backbone = load_backbone("minilm", self._cache_dir)
        return self._backbone

    @property
    def head(self) -> Any:
        if self._head is None:
            backbone = self.backbone
            with self._lock:
                if self._head is None:
                    from safetensors.torch import load_file

                    from embedsvc.strategies._dupmae_exact import ExactTermHead

                    folder = self._folder()
                    manifest = json.loads((folder / "manifest.json").read_text())
                    base = manifest.get("base_model", {}).get("fingerprint")
                    if base and base != backbone.fingerprint:
                        raise FailedPrecondition(
                            f"{folder} was trained on backbone {base}, not "
                            f"{backbone.fingerprint}; {BUILD_HINT}",
                            field="artifact",
                        )
                    hc = self.head_config
                    head = ExactTermHead(int(hc["hidden"]), int(hc["inner"]))
                    head.load_state_dict(load_file(folder / "head.safetensors"))
                    self._head = head.eval()
        return self._head

    # -- contract -----------------------------------------------------------------------------
    @property
    def dim(self) -> int:
        return self.backbone.hidden_size

    @property
    def sparse_vocab(self) -> int:
        """Width of the sparse channel (collections keep a sparse index of this width)."""
        return int(self.head_config["vocab_size"])

    @property
    def fusion_weight(self) -> float:
        if self.config.fusion_weight is not None:
            return float(self.config.fusion_weight)
        return float(self.head_config["fusion_weight"])

    @property
    def max_tokens(self) -> int:
        return self.config.max_length or self.backbone.max_length

    @property
    def fingerprint(self) -> str:
        digest = hashlib.sha256((self._folder() / "head.safetensors").read_bytes()).hexdigest()
        key = f"dupmae_dual|{self.backbone.fingerprint}|{digest[:16]}|{self.max_tokens}"
        return hashlib.sha256(key.encode()).hexdigest()[:16]

    def count_tokens(self, texts: list[str], role: Role = Role.PASSAGE) -> list[int]:
        return count_with_specials(self.backbone.tokenizer, texts)

    def onnx_spec(self) -> Any:
        """Export hook: encoder + mean pooling + token-weight head in one graph."""
        from embedsvc.export.dual_modules import dual_spec

        return dual_spec(self)

    def encode(
        self,
        texts: list[str],
        role: Role = Role.PASSAGE,
        *,
        normalize: bool = True,
        truncate: bool = True,
    ) -> Embedding:
        import torch
        from scipy import sparse

        from embedsvc.strategies._dupmae_exact import pool_csr

        texts = check_texts(texts)
        dim, vocab = self.dim, self.sparse_vocab
        if not texts:
            emb = Embedding.empty("dense", dim)
            emb.sparse = sparse.csr_matrix((0, vocab), dtype=np.float32)
            return emb
        counts = self.count_tokens(texts)
        seen, truncated = apply_token_limit(counts, self.max_tokens, truncate)
        backbone, head = self.backbone, self.head
        tok = backbone.tokenizer
        specials = torch.tensor([tok.cls_token_id, tok.sep_token_id])
        dense = np.empty((len(texts), dim), np.float32)
        rows: list[Any] = [None] * len(texts)
        batches = length_sorted_batches(tok, texts, counts, self.config.batch_size, self.max_tokens)
        with torch.inference_mode():
            for idx, enc in batches:
                inputs = {
                    k: v
                    for k, v in enc.items()
                    if k in ("input_ids", "attention_mask", "token_type_ids")
                }
                hidden = backbone.model.base_model(**inputs).last_hidden_state
                mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
                if normalize:
                    pooled = torch.nn.functional.normalize(pooled, dim=1)
                dense[idx] = pooled.numpy()
                ordinary = enc["attention_mask"].bool() & ~torch.isin(enc["input_ids"], specials)
                weights = head(hidden[ordinary])
                owner = ordinary.nonzero()[:, 0]
                block = pool_csr(
                    enc["input_ids"][ordinary].numpy(),
                    weights.numpy(),
                    owner.numpy(),
                    len(idx),
                    vocab,
                )
                for r, i in enumerate(idx):
                    rows[i] = block[r]
        emb = Embedding("dense", dense, dim, seen, truncated)
        emb.sparse = sparse.vstack(rows, format="csr")
        return emb
