"""``dupmae_dual``: DupMAE's dual view on top of the encoder's own representation.

Reference
    Xiao et al., "RetroMAE-2: Duplex Masked Auto-Encoder For Pre-Training Retrieval-Oriented
    Language Models" (ACL 2023, arXiv 2211.08769): a dense aggregate view plus an
    ordinary-token (OT) view in vocabulary space, used together for retrieval. The OT channel
    is kept *exactly sparse* and starts as exact term matching (uniCOIL-style,
    ``exact.py``); the two views are searched apart and their scores fused
    (``embedsvc.indexes.fusion.convex_fuse``).

Inputs-Outputs
    Texts (role ignored: queries and passages share the encoder and head) -> ``Embedding``
    whose ``vectors`` are the dense channel, float32 ``[n, 384]`` unit norm, and whose
    ``sparse`` is the OT channel, a ``scipy.sparse`` CSR ``[n, 30522]`` (non-negative weight
    per vocabulary id: the max over the text's ordinary tokens with that id of
    ``ExactTermHead(state)``). One encoder pass gives both: the core (``exact.DualCore``,
    what ONNX export traces) returns the mean-pooled states and every token's weight;
    ``post`` normalises the dense channel and ``post_sparse`` max-pools the weights per id.

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

from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field

from embedsvc.strategies.artifacts import check_base, files_digest, find_artifact, read_manifest
from embedsvc.strategies.base import Embedding, Role, StrategyConfig, register_strategy
from embedsvc.strategies.core import ENCODER_INPUTS
from embedsvc.strategies.hf import HFStrategy

BUILD_HINT = "build it with training/dupmae_states.py then training/train_dupmae_ot.py --export"


def dual_artifact_dir(name_or_path: str) -> Path:
    return find_artifact(name_or_path, "head.safetensors", "DupMAE dual", BUILD_HINT)


class DupMAEDualConfig(StrategyConfig):
    artifact: str = "dupmae/dual"
    #: dense share of the fused score; None = the artifact's (chosen on SciFact train queries)
    fusion_weight: float | None = Field(None, ge=0.0, le=1.0)
    batch_size: int = Field(32, ge=1)
    max_length: int | None = Field(None, ge=4)


@register_strategy("dupmae_dual")
class DupMAEDual(HFStrategy):
    """Frozen mean-pooled dense channel + exact sparse OT channel, fused at search time."""

    output_kind = "dense"
    config_cls = DupMAEDualConfig
    description = "DupMAE dual view: mean-pooled dense + exact sparse OT channel (fused search)"
    config: DupMAEDualConfig
    _head_config: dict[str, Any] | None = None

    def backbone_name(self) -> str:
        return "minilm"

    def _folder(self) -> Path:
        return dual_artifact_dir(self.config.artifact)

    @property
    def source(self) -> Path | None:
        return self._folder()

    @property
    def head_config(self) -> dict[str, Any]:
        import json

        return self.lazy(
            "_head_config", lambda: json.loads((self._folder() / "head_config.json").read_text())
        )

    def load_head(self) -> Any:
        """The trained ``ExactTermHead`` (refused if trained on another backbone)."""
        from safetensors.torch import load_file

        from embedsvc.strategies.dupmae.exact import ExactTermHead

        folder = self._folder()
        base = read_manifest(folder).get("base_model", {}).get("fingerprint")
        check_base(folder, base, self.backbone.fingerprint, BUILD_HINT)
        hc = self.head_config
        head = ExactTermHead(int(hc["hidden"]), int(hc["inner"]))
        head.load_state_dict(load_file(folder / "head.safetensors"))
        return head.eval()

    def build_core(self) -> Any:
        from embedsvc.strategies.dupmae.exact import DualCore

        tok = self.backbone.tokenizer
        names = tuple(n for n in ENCODER_INPUTS if n in tok.model_input_names)
        return DualCore(
            self.backbone.model.base_model,
            self.load_head(),
            names,
            (tok.cls_token_id, tok.sep_token_id),
        )

    # -- contract -----------------------------------------------------------------------------
    @property
    def sparse_vocab(self) -> int:  # type: ignore[override]
        """Width of the sparse channel (collections keep a sparse index of this width)."""
        return int(self.head_config["vocab_size"])

    @property
    def fusion_weight(self) -> float:
        if self.config.fusion_weight is not None:
            return float(self.config.fusion_weight)
        return float(self.head_config["fusion_weight"])

    @property
    def model_fingerprint(self) -> str:
        digest = files_digest([self._folder() / "head.safetensors"])
        return self.digest("dupmae_dual", self.backbone.fingerprint, digest, self.max_tokens)

    def post_sparse(
        self, outputs: dict[str, np.ndarray], feeds: dict[str, np.ndarray], role: Role
    ) -> Any:
        from embedsvc.strategies.dupmae.exact import pool_csr

        w = np.asarray(outputs["token_weights"], np.float32)
        ids = feeds["input_ids"]
        rows, cols = np.nonzero(w > 0)
        return pool_csr(ids[rows, cols], w[rows, cols], rows, len(ids), self.sparse_vocab)

    def encode(
        self,
        texts: list[str],
        role: Role = Role.PASSAGE,
        *,
        normalize: bool = True,
        truncate: bool = True,
    ) -> Embedding:
        emb = super().encode(texts, role, normalize=normalize, truncate=truncate)
        if emb.sparse is None:  # no texts: an empty [0, vocab] sparse view
            from scipy import sparse

            emb.sparse = sparse.csr_matrix((0, self.sparse_vocab), dtype=np.float32)
        return emb
