"""``dupmae``: the DupMAE (RetroMAE v2) duplex representation of a pre-trained MiniLM.

Reference
    Xiao et al., "RetroMAE-2: Duplex Masked Auto-Encoder For Pre-Training Retrieval-Oriented
    Language Models" (ACL 2023, arXiv 2211.08769); pre-training code staoxiao/RetroMAE
    (``src/pretrain/modeling_duplex.py``), re-derived in ``model.py``. No inference or
    fine-tuning code was released (RetroMAE issues #17, #29); this follows the paper's text:
    "[CLS] and ordinary-token embeddings, after dimension reduction and aggregation, are
    concatenated as one unified representation".

Inputs-Outputs
    Texts (role ignored) -> float32 ``[n, d]``, unit norm, from one encoder pass:

    * CLS channel: ``normalize(W h_[CLS])``, ``W`` a learned ``384 -> cls_dim`` linear map.
    * OT channel: ``ot_v = max_i log(1 + relu(z_iv))`` over *ordinary* positions ``i`` (no
      padding, [CLS], [SEP]) of the tied LM head's vocabulary logits ``z`` (SPLADE-max, as the
      maintainer points to SPLADE for the sparse side); its top-``k`` (weight, vocab id) pairs.
    * ``channels="both"``: ``[sqrt(w) cls ; sqrt(1-w) ot_dense]``, so the inner product is
      ``w cos_cls + (1-w) cos_ot`` (``w = cls_weight``).

    **Departure from the paper**: the paper scores the OT part as a sparse vector over the
    30522-word vocabulary. To keep one dense FAISS inner-product index, the top-k sparse
    vector is *signed-feature-hashed* into ``ot_dim`` buckets (``model.hash_topk``;
    inner products are preserved in expectation, collisions add zero-mean noise). Training
    (``training/train_dupmae.py finetune``) scores the exact sparse vectors, so ``ot_dim`` is an
    inference-only choice: 2048 buckets keep the served channel within ~1.5 nDCG@10 of the exact
    sparse scores, 192 lost ~40% (measured in ``docs/results/issue4.md``).
    ``normalize=False`` returns the same unit vectors (the channels are normalised by design).

Hyper-parameters
    From the artifact's ``head_config.json``: ``cls_dim`` 192, ``top_k`` 64, ``hash_seed``;
    the fine-tuned artifact serves ``ot_dim`` 2048 and ``cls_weight`` 0.7 (chosen on SciFact
    *train* queries), the pre-trained one 192 and 0.5. Config: ``artifact``
    (``dupmae/finetuned`` or ``dupmae/pretrained`` under ``embedsvc/artifacts``, or a folder),
    ``channels`` (``both|cls|ot``), ``top_k`` / ``ot_dim`` / ``cls_weight`` overrides,
    ``batch_size``, ``max_length``.
    Registered names: ``dupmae`` / ``dupmae_cls`` / ``dupmae_ot`` (fine-tuned) and
    ``dupmae_pt`` / ``dupmae_pt_cls`` / ``dupmae_pt_ot`` (pre-trained only).
    The encoder is MiniLM + a LoRA adapter (merged into a private copy at load time; the
    shared backbone is never modified). Results: ``docs/results/issue4.md``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field, create_model

from embedsvc.backbones import Backbone
from embedsvc.errors import InvalidArgument
from embedsvc.strategies.artifacts import (
    check_base,
    files_digest,
    find_artifact,
    read_manifest,
)
from embedsvc.strategies.base import Role, StrategyConfig, register_strategy
from embedsvc.strategies.hf import HFStrategy
from embedsvc.strategies.runner import Runner

BUILD_HINT = (
    "build it with `.venv/bin/python training/train_dupmae.py pretrain --config "
    "training/configs/dupmae_pretrain.json` (then `finetune --config "
    "training/configs/dupmae_finetune.json` for dupmae/finetuned)"
)


def artifact_dir(name: str) -> Path:
    return find_artifact(name, "head_config.json", "DupMAE", BUILD_HINT)


class DupMAEConfig(StrategyConfig):
    #: artifact name under embedsvc/artifacts, or a folder (adapter/, heads.safetensors, ...)
    artifact: str = "dupmae/finetuned"
    channels: Literal["both", "cls", "ot"] = "both"
    #: override the artifact's top-k of the OT channel / CLS weight of the concatenation
    top_k: int | None = Field(None, ge=1)
    #: override the artifact's number of hash buckets for the OT channel: an inference-only
    #: choice (training scores the exact sparse vectors), more buckets = fewer collisions
    ot_dim: int | None = Field(None, ge=8, le=30522)
    cls_weight: float | None = Field(None, gt=0.0, lt=1.0)
    batch_size: int = Field(32, ge=1)
    #: token limit; None = the backbone's served limit (256 for MiniLM)
    max_length: int | None = Field(None, ge=4)


class _Loaded:
    """The strategy's private model: merged LoRA encoder copy + heads + hash tables."""

    def __init__(self, backbone: Backbone, folder: Path, ot_dim: int | None = None) -> None:
        from safetensors.torch import load_file

        from embedsvc.strategies.dupmae.model import DupMAEHeads, hash_buckets, lora_encoder

        self.head_config: dict[str, Any] = json.loads((folder / "head_config.json").read_text())
        base = read_manifest(folder).get("base_model", {}).get("fingerprint")
        check_base(folder, base, backbone.fingerprint, f"retrain it: {BUILD_HINT}")
        peft_model = lora_encoder(
            backbone.model, adapter_dir=str(folder / "adapter"), trainable=False
        )
        # merge once: inference then costs exactly a plain MiniLM forward
        self.encoder = peft_model.merge_and_unload().eval()
        self.heads = DupMAEHeads(
            self.encoder.embeddings.word_embeddings, int(self.head_config["cls_dim"])
        )
        self.heads.load_state_dict(load_file(folder / "heads.safetensors"))
        self.heads.eval()
        vocab = self.encoder.embeddings.word_embeddings.num_embeddings
        self.ot_dim = int(ot_dim or self.head_config["ot_dim"])
        self.bucket, self.sign = hash_buckets(
            vocab, self.ot_dim, int(self.head_config["hash_seed"])
        )
        adapter = sorted((folder / "adapter").glob("*"))
        self.digest = files_digest([folder / "heads.safetensors", *adapter])


class DupMAE(HFStrategy):
    """CLS + hashed OT (or one channel) of a DupMAE-pre-trained MiniLM."""

    output_kind = "dense"
    config_cls = DupMAEConfig
    description = "DupMAE: [CLS] reduced + top-k ordinary-token vocab channel (hashed)"
    int8_sts_delta = -0.75  # fine-tuned, both channels; variants: not measured (issue 7)
    config: DupMAEConfig
    _model: _Loaded | None = None

    # -- loading ------------------------------------------------------------------------------

    def _head_config(self) -> dict[str, Any]:
        """Read without loading the model (``dim`` must be cheap)."""
        if self._model is not None:
            return self._model.head_config
        folder = artifact_dir(self.config.artifact)
        return json.loads((folder / "head_config.json").read_text())

    def backbone_name(self) -> str:
        manifest = read_manifest(artifact_dir(self.config.artifact))
        return manifest.get("base_model", {}).get("name", "minilm")

    def check_backbone(self, backbone: Backbone) -> None:
        if self.max_length_of(backbone) > backbone.model.config.max_position_embeddings:
            raise InvalidArgument("max_length exceeds the backbone's positions", field="max_length")

    def max_length_of(self, backbone: Backbone) -> int:
        return self.config.max_length or backbone.max_length

    @property
    def model(self) -> _Loaded:
        return self.lazy(
            "_model",
            lambda: _Loaded(self.backbone, artifact_dir(self.config.artifact), self.config.ot_dim),
        )

    @property
    def source(self) -> Path | None:
        return artifact_dir(self.config.artifact)

    # -- contract -----------------------------------------------------------------------------

    @property
    def dim(self) -> int:
        hc = self._head_config()
        if self.config.channels == "cls":
            return int(hc["cls_dim"])
        if self.config.channels == "ot":
            return self.ot_dim
        return int(hc["cls_dim"]) + self.ot_dim

    @property
    def ot_dim(self) -> int:
        return int(self.config.ot_dim or self._head_config()["ot_dim"])

    @property
    def max_tokens(self) -> int:
        return self.max_length_of(self.backbone)

    @property
    def top_k(self) -> int:
        return int(self.config.top_k or self._head_config()["top_k"])

    @property
    def cls_weight(self) -> float:
        return float(self.config.cls_weight or self._head_config()["cls_weight"])

    @property
    def model_fingerprint(self) -> str:
        m = self.model
        key = (
            f"dupmae|{self.backbone.fingerprint}|{m.digest}|{self.config.channels}|"
            f"{self.top_k}|{self.cls_weight}|{self.ot_dim}|{self.max_tokens}"
        )
        return self.digest(key)

    def build_core(self) -> Any:
        """Merged encoder + both channels' heads, top-k and hashing: one module."""
        from embedsvc.strategies.dupmae.model import DupMAECore

        m = self.model
        tok = self.backbone.tokenizer
        notes = (
            "tokenisation and truncation run in Python (tokenizer files saved beside)",
            "LoRA adapter merged into the encoder weights; CLS reduction, tied vocab head, "
            "masked max over ordinary tokens, TopK and the signed-hash ScatterElements(add) "
            "are in the graph; the channels are combined in Python (post)",
            f"channels={self.config.channels}, top_k={self.top_k}, cls_weight={self.cls_weight}",
        )
        return DupMAECore(
            m.encoder,
            m.heads,
            m.bucket,
            m.sign,
            top_k=self.top_k,
            ot_dim=m.ot_dim,
            specials=(tok.cls_token_id, tok.sep_token_id),
            cls_only=self.config.channels == "cls",
            notes=notes,
        )

    def combine(self, outputs: dict[str, np.ndarray], channels: str | None = None) -> np.ndarray:
        """The served channel(s): ``[sqrt(w) cls ; sqrt(1-w) ot]`` so that the inner product is
        ``w cos_cls + (1-w) cos_ot`` (both channels are unit vectors already)."""
        channels = channels or self.config.channels
        if channels != "both":
            return outputs[channels]
        w = self.cls_weight
        cls = outputs["cls"] * np.float32(math.sqrt(w))
        ot = outputs["ot"] * np.float32(math.sqrt(1.0 - w))
        return np.concatenate([cls, ot], axis=1).astype(np.float32)

    def post(self, outputs, feeds, role, normalize):  # type: ignore[no-untyped-def]
        # the channels are normalised by design: normalize=False returns the same unit vectors
        return self.combine(outputs), None

    def channel_vectors(self, texts: list[str], *, sparse: bool = False) -> dict[str, Any]:
        """``{"cls": [n, cls_dim], "ot": [n, ot_dim], "both": [n, cls+ot]}`` from one pass.

        Used by the evaluation script to score the three ablations from one encoding. With
        ``sparse``, also ``"ot_sparse"``: the exact (un-hashed) top-k OT vectors as a unit-norm
        ``scipy.sparse`` CSR ``[n, vocab]``, the paper's form, to measure what hashing costs.
        """
        if self.config.channels == "cls":
            raise InvalidArgument("channel_vectors needs a strategy that computes both channels")
        out, _, _ = Runner(self).outputs(texts, Role.PASSAGE)
        result: dict[str, Any] = {"cls": out["cls"], "ot": out["ot"]}
        result["both"] = self.combine(out, "both")
        if sparse:
            from scipy.sparse import csr_matrix

            vals, ids = out["ot_values"], out["ot_ids"]
            rows = np.repeat(np.arange(len(texts)), vals.shape[1])
            vocab = self.model.bucket.shape[0]
            result["ot_sparse"] = csr_matrix(
                (vals.ravel(), (rows, ids.ravel())), shape=(len(texts), vocab)
            )
        return result


def _variant(name: str, artifact: str, channels: str) -> type[DupMAE]:
    """A registered name whose defaults select an artifact stage and channel."""

    cfg = create_model(
        f"DupMAEConfig_{name}",
        __base__=DupMAEConfig,
        artifact=(str, artifact),
        channels=(Literal["both", "cls", "ot"], channels),
    )
    cls = type(
        f"DupMAE_{name}",
        (DupMAE,),
        {
            "config_cls": cfg,
            "description": f"DupMAE {channels} channel(s), {artifact}",
            "int8_sts_delta": None,  # not measured
            "__doc__": f"``{name}``: DupMAE with channels={channels}, artifact={artifact}.",
        },
    )
    return register_strategy(name)(cls)


register_strategy("dupmae")(DupMAE)
for _name, _artifact, _channels in (
    ("dupmae_cls", "dupmae/finetuned", "cls"),
    ("dupmae_ot", "dupmae/finetuned", "ot"),
    ("dupmae_pt", "dupmae/pretrained", "both"),
    ("dupmae_pt_cls", "dupmae/pretrained", "cls"),
    ("dupmae_pt_ot", "dupmae/pretrained", "ot"),
):
    _variant(_name, _artifact, _channels)

# the dual view (dense + exact sparse OT channel) registers ``dupmae_dual``
from embedsvc.strategies.dupmae import dual as _dual  # noqa: E402,F401
