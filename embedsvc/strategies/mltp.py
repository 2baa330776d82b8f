"""``mltp``: Multi-Layers Trainable Pooling over a frozen decoder LLM (+ ``m2``, ``eos_linear``).

Reference
    "Pooling And Attention: What Are Effective Designs For LLM-Based Embedding Models?"
    (Tang & Yang 2024, arXiv 2409.02727); official code yixuantt/PoolingAndAttn
    (``pooling_layers/MultiLayersTrainablePooling.py``, ``model_loaders/model3.py``). Re-derived.

    The text (plus an appended EOS, which SmolLM2's tokenizer never adds) runs through the frozen
    decoder; the last real token's state after every block is stacked into an ``L``-long
    sequence, a learned layer embedding is added, learned latent queries cross-attend to it
    (pre-norm cross-attention + GEGLU feed-forward block), the latents are averaged and the
    result L2-normalised (``_heads.CrossAttentionPooling``).

    Registered beside it, for the paper's comparison, trained by the same command:
    ``m2`` -- the same head over the last layer's last-token state only (the paper's M2), and
    ``eos_linear`` -- EOS-last + a linear projection, "(a)" in issue 3.

Inputs-Outputs
    Texts (role ignored: no instruction prefix, unlike the paper's retrieval queries) ->
    float32 ``[n, d]`` (d = 576 for SmolLM2), L2-normalised (the head always normalises;
    ``normalize=False`` returns the same unit vectors). Texts longer than ``max_length - 1``
    tokens lose their tail; EOS is always kept.

Hyper-parameters
    The head's sizes are in its artifact (``embedsvc/artifacts/<artifact>/head_config.json``):
    CPU default 4 heads x 32 dims, 8 latents, GEGLU x1 (~1.3M parameters, 2.6 MB in float16);
    the paper's: 32 heads x 2048 dims, 768 latents, GEGLU x4 (~150M at d=576). The decoder is
    frozen (the paper trains LoRA r=16 with the head: a documented deviation). Training:
    ``training/train_pooling_head.py``; results: ``docs/results/issue3.md``.
    Config: ``artifact`` (a name under ``embedsvc/artifacts`` or a folder), ``backbone``
    (must match the artifact's), ``batch_size``, ``padding_side``, ``max_length``.
"""

from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field

from embedsvc.backbones import Backbone, load_backbone
from embedsvc.errors import FailedPrecondition, InvalidArgument
from embedsvc.strategies._decoder import build_batch, last_token_states
from embedsvc.strategies._limits import apply_token_limit, check_texts
from embedsvc.strategies.base import (
    Embedding,
    Role,
    Strategy,
    StrategyConfig,
    register_strategy,
)

ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts"
HEAD_FILE = "head.safetensors"
HEAD_CONFIG = "head_config.json"
MANIFEST = "manifest.json"


def artifact_dir(name_or_path: str) -> Path:
    """A shipped artifact name (``embedsvc/artifacts/<name>``) or any folder path."""
    shipped = ARTIFACTS / name_or_path
    if shipped.is_dir():
        return shipped
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path.resolve()
    raise FailedPrecondition(
        f"pooling-head artifact {name_or_path!r} not found (neither {shipped} nor a folder); "
        "train one with training/train_pooling_head.py",
        field="artifact",
    )


def layer_inputs(tokenizer: Any, texts: list[str], limit: int) -> tuple[list[list[int]], list[int]]:
    """``(ids, untruncated counts)``: each text's tokens (cut to ``limit - 1``) + EOS."""
    eos = tokenizer.eos_token_id
    if eos is None:
        raise InvalidArgument("the backbone's tokenizer has no EOS token", field="backbone")
    raw = tokenizer(texts, add_special_tokens=True, verbose=False)["input_ids"]
    seqs, counts = [], []
    for ids in raw:
        ids = list(ids)
        if ids and ids[-1] == eos:  # tokenizers that already append EOS
            ids = ids[:-1]
        counts.append(len(ids) + 1)
        seqs.append([*ids[: limit - 1], eos])
    return seqs, counts


def layer_states(
    backbone: Backbone,
    seqs: list[list[int]],
    *,
    batch_size: int = 32,
    padding_side: Literal["left", "right"] = "right",
    last_only: bool = False,
) -> np.ndarray:
    """Last-token states after every block, ``[n, L, d]`` float32 (``[n, 1, d]`` if last_only).

    Entry ``L-1`` is the final (normed) layer, as the reference's ``hidden_states[1:]``.
    """
    import torch

    num_layers = backbone.num_layers
    layers = [num_layers] if last_only else list(range(1, num_layers + 1))
    out = np.empty((len(seqs), len(layers), backbone.hidden_size), np.float32)
    order = np.argsort(-np.asarray([len(s) for s in seqs]), kind="stable")
    pad = backbone.tokenizer.pad_token_id
    with torch.inference_mode():
        for start in range(0, len(seqs), batch_size):
            idx = order[start : start + batch_size]
            batch = build_batch([seqs[i] for i in idx], pad, padding_side)
            states = last_token_states(backbone.model, batch, layers)
            out[idx] = torch.stack([states[x] for x in layers], dim=1).float().numpy()
    return out


def load_head(directory: Path) -> tuple[Any, dict[str, Any]]:
    """``(head module in eval mode, manifest dict)`` from an artifact folder."""
    from safetensors.torch import load_file

    from embedsvc.strategies._heads import HeadConfig, build_head

    cfg = HeadConfig.model_validate_json((directory / HEAD_CONFIG).read_text())
    head = build_head(cfg)
    state = {k: v.float() for k, v in load_file(str(directory / HEAD_FILE)).items()}
    head.load_state_dict(state)
    head.eval()
    manifest_path = directory / MANIFEST
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    return head, manifest


class PoolingHeadConfig(StrategyConfig):
    #: shipped artifact name under embedsvc/artifacts, or a folder with head.safetensors
    artifact: str = "mltp-smollm2"
    #: registered backbone name or local causal-LM folder (must be the one the head was trained on)
    backbone: str = "smollm2"
    batch_size: int = Field(32, ge=1)
    padding_side: Literal["left", "right"] = "right"
    #: token limit including the appended EOS
    max_length: int = Field(512, ge=2)


class _PoolingHeadStrategy(Strategy):
    output_kind = "dense"
    config_cls = PoolingHeadConfig
    config: PoolingHeadConfig
    head_kind: str = "mltp"

    def __init__(self, config: PoolingHeadConfig | None = None, *, cache_dir: Path | None = None):
        super().__init__(config)
        self._cache_dir = cache_dir
        self._backbone: Backbone | None = None
        self._head: Any | None = None
        self._manifest: dict[str, Any] = {}
        self._head_digest = ""
        self._lock = threading.Lock()

    def _load(self) -> None:
        with self._lock:
            if self._head is not None:
                return
            directory = artifact_dir(self.config.artifact)
            head, manifest = load_head(directory)
            if head.cfg.kind != self.head_kind:
                raise InvalidArgument(
                    f"artifact {self.config.artifact!r} holds a {head.cfg.kind!r} head, "
                    f"strategy {self.name!r} needs {self.head_kind!r}",
                    field="artifact",
                )
            backbone = load_backbone(self.config.backbone, self._cache_dir)
            want = manifest.get("backbone_fingerprint")
            if want and want != backbone.fingerprint:
                raise FailedPrecondition(
                    f"artifact {self.config.artifact!r} was trained on backbone fingerprint "
                    f"{want}, but {self.config.backbone!r} is {backbone.fingerprint}",
                    field="backbone",
                )
            if head.cfg.dim != backbone.hidden_size or (
                self.head_kind == "mltp" and head.cfg.num_layers != backbone.num_layers
            ):
                raise FailedPrecondition(
                    "artifact head sizes do not match the backbone", field="artifact"
                )
            self._head_digest = hashlib.sha256((directory / HEAD_FILE).read_bytes()).hexdigest()
            self._manifest = manifest
            self._backbone = backbone
            self._head = head

    @property
    def backbone(self) -> Backbone:
        if self._backbone is None:
            self._load()
        return self._backbone  # type: ignore[return-value]

    @property
    def head(self) -> Any:
        if self._head is None:
            self._load()
        return self._head

    @property
    def manifest(self) -> dict[str, Any]:
        self._load()
        return self._manifest

    @property
    def dim(self) -> int:
        return self.backbone.hidden_size

    @property
    def max_tokens(self) -> int:
        return min(self.config.max_length, self.backbone.max_length)

    @property
    def fingerprint(self) -> str:
        self._load()
        key = "|".join(
            [
                self.name,
                self.backbone.fingerprint,
                self._head_digest,
                str(self.max_tokens),
                self.config.padding_side,
            ]
        )
        return hashlib.sha256(key.encode()).hexdigest()[:16]

    def count_tokens(self, texts: list[str], role: Role = Role.PASSAGE) -> list[int]:
        texts = check_texts(texts)
        if not texts:
            return []
        return layer_inputs(self.backbone.tokenizer, texts, 1 << 30)[1]

    def pool(self, states: np.ndarray) -> np.ndarray:
        """Head output for precomputed ``[n, L, d]`` (or ``[n, 1, d]``) states."""
        import torch

        with torch.inference_mode():
            return self.head(torch.from_numpy(np.ascontiguousarray(states))).float().numpy()

    def onnx_spec(self) -> Any:
        """Export hook: decoder + per-layer last-token gather + the trained head, one graph."""
        from embedsvc.export.modules import pooling_head_spec

        return pooling_head_spec(self, last_only=self.head_kind != "mltp")

    def encode(
        self,
        texts: list[str],
        role: Role = Role.PASSAGE,
        *,
        normalize: bool = True,
        truncate: bool = True,
    ) -> Embedding:
        texts = check_texts(texts)
        dim = self.dim
        if not texts:
            return Embedding.empty("dense", dim)
        limit = self.max_tokens
        seqs, counts = layer_inputs(self.backbone.tokenizer, texts, limit)
        seen, truncated = apply_token_limit(counts, limit, truncate)
        states = layer_states(
            self.backbone,
            seqs,
            batch_size=self.config.batch_size,
            padding_side=self.config.padding_side,
            last_only=self.head_kind != "mltp",
        )
        # the head's output is unit-norm by construction (the paper's design)
        return Embedding("dense", self.pool(states).astype(np.float32), dim, seen, truncated)


@register_strategy("mltp")
class MultiLayerTrainablePooling(_PoolingHeadStrategy):
    """MLTP (paper's M3): latent cross-attention over every block's last-token state."""

    description = "multi-layer trainable pooling head over a frozen decoder LLM (MLTP)"
    head_kind = "mltp"


class M2Config(PoolingHeadConfig):
    artifact: str = "m2-smollm2"


@register_strategy("m2")
class LastLayerTrainablePooling(_PoolingHeadStrategy):
    """The paper's M2: the same head over the last layer's last-token state only."""

    config_cls = M2Config
    description = "last-layer trainable pooling head over a frozen decoder LLM (paper's M2)"
    head_kind = "m2"


class EosLinearConfig(PoolingHeadConfig):
    artifact: str = "eos_linear-smollm2"


@register_strategy("eos_linear")
class EosLinear(_PoolingHeadStrategy):
    """EOS-last + a trained linear projection ("(a)" in issue 3)."""

    config_cls = EosLinearConfig
    description = "EOS-last token of a frozen decoder LLM + trained linear projection"
    head_kind = "linear"
