"""``mltp``: Multi-Layers Trainable Pooling over a frozen decoder LLM (+ ``m2``, ``eos_linear``).

Reference
    "Pooling And Attention: What Are Effective Designs For LLM-Based Embedding Models?"
    (Tang & Yang 2024, arXiv 2409.02727); official code yixuantt/PoolingAndAttn
    (``pooling_layers/MultiLayersTrainablePooling.py``, ``model_loaders/model3.py``). Re-derived.

    The text (plus an appended EOS, which SmolLM2's tokenizer never adds) runs through the frozen
    decoder; the last real token's state after every block is stacked into an ``L``-long
    sequence, a learned layer embedding is added, learned latent queries cross-attend to it
    (pre-norm cross-attention + GEGLU feed-forward block), the latents are averaged and the
    result L2-normalised (``model.CrossAttentionPooling``).

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
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import create_model

from embedsvc.backbones import Backbone
from embedsvc.errors import FailedPrecondition, InvalidArgument
from embedsvc.strategies.artifacts import find_artifact, read_manifest
from embedsvc.strategies.base import Role, register_strategy
from embedsvc.strategies.decoder.model import DecoderStatesCore
from embedsvc.strategies.decoder.prompts import DecoderConfig, DecoderStrategy
from embedsvc.strategies.features import Features, pad_batch

HEAD_FILE = "head.safetensors"
HEAD_CONFIG = "head_config.json"


def artifact_dir(name_or_path: str) -> Path:
    """A shipped artifact name (``embedsvc/artifacts/<name>``) or any folder path."""
    return find_artifact(
        name_or_path, HEAD_FILE, "pooling-head", "train one with training/train_pooling_head.py"
    )


def layer_inputs(tokenizer: Any, texts: list[str], limit: int) -> Features:
    """Each text's tokens (cut to ``limit - 1``) + EOS; counts untruncated (EOS included)."""
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
    return Features(seqs, counts)


def layer_states(
    backbone: Backbone,
    seqs: list[list[int]],
    *,
    batch_size: int = 32,
    padding_side: Literal["left", "right"] = "right",
    last_only: bool = False,
) -> np.ndarray:
    """Last-token states after every block, ``[n, L, d]`` float32 (``[n, 1, d]`` if last_only):
    the head's input, as the trainer precomputes it. Entry ``L-1`` is the final (normed) layer,
    as the reference's ``hidden_states[1:]``."""
    from embedsvc.strategies.runner import CoreExecutor, map_batches

    num_layers = backbone.num_layers
    layers = [num_layers] if last_only else list(range(1, num_layers + 1))
    executor = CoreExecutor(DecoderStatesCore(backbone.model, layers).eval())
    pad = backbone.tokenizer.pad_token_id

    def run(idx: np.ndarray) -> dict[str, np.ndarray]:
        feeds = pad_batch([seqs[i] for i in idx], pad, side=padding_side)
        states = executor.run(feeds)["embedding"]
        return {"states": states.reshape(len(idx), len(layers), -1)}

    return map_batches([len(s) for s in seqs], run, batch_size)["states"]


def load_head(directory: Path) -> tuple[Any, dict[str, Any]]:
    """``(head module in eval mode, manifest dict)`` from an artifact folder."""
    from safetensors.torch import load_file

    from embedsvc.strategies.mltp.model import HeadConfig, build_head

    cfg = HeadConfig.model_validate_json((directory / HEAD_CONFIG).read_text())
    head = build_head(cfg)
    state = {k: v.float() for k, v in load_file(str(directory / HEAD_FILE)).items()}
    head.load_state_dict(state)
    head.eval()
    return head, read_manifest(directory)


class PoolingHeadConfig(DecoderConfig):
    """``backbone`` must be the one the head was trained on; ``max_length`` includes the EOS."""

    #: shipped artifact name under embedsvc/artifacts, or a folder with head.safetensors
    artifact: str = "mltp-smollm2"


class _PoolingHeadStrategy(DecoderStrategy):
    config_cls = PoolingHeadConfig
    config: PoolingHeadConfig
    head_kind: str = "mltp"
    _head: Any = None
    _manifest: dict[str, Any] | None = None
    _head_digest = ""

    def check_backbone(self, backbone: Backbone) -> None:
        super().check_backbone(backbone)
        want = self.manifest.get("backbone_fingerprint")
        if want and want != backbone.fingerprint:
            raise FailedPrecondition(
                f"artifact {self.config.artifact!r} was trained on backbone fingerprint "
                f"{want}, but {self.config.backbone!r} is {backbone.fingerprint}",
                field="backbone",
            )
        head = self.head
        if head.cfg.dim != backbone.hidden_size or (
            self.head_kind == "mltp" and head.cfg.num_layers != backbone.num_layers
        ):
            raise FailedPrecondition(
                "artifact head sizes do not match the backbone", field="artifact"
            )

    def _load_head(self) -> Any:
        directory = artifact_dir(self.config.artifact)
        head, manifest = load_head(directory)
        if head.cfg.kind != self.head_kind:
            raise InvalidArgument(
                f"artifact {self.config.artifact!r} holds a {head.cfg.kind!r} head, "
                f"strategy {self.name!r} needs {self.head_kind!r}",
                field="artifact",
            )
        self._head_digest = hashlib.sha256((directory / HEAD_FILE).read_bytes()).hexdigest()
        self._manifest = manifest
        return head

    @property
    def head(self) -> Any:
        return self.lazy("_head", self._load_head)

    @property
    def manifest(self) -> dict[str, Any]:
        _ = self.head
        return self._manifest or {}

    @property
    def model_fingerprint(self) -> str:
        _ = self.head
        key = "|".join(
            [
                self.name,
                self.backbone.fingerprint,
                self._head_digest,
                str(self.max_tokens),
                self.config.padding_side,
            ]
        )
        return self.digest(key)

    def pre(self, texts: list[str], role: Role) -> Features:
        return layer_inputs(self.backbone.tokenizer, texts, self.max_tokens)

    def build_core(self) -> DecoderStatesCore:
        """Decoder + per-layer last-token gather + the trained head: one module."""
        num_layers = self.backbone.num_layers
        last_only = self.head_kind != "mltp"
        layers = [num_layers] if last_only else list(range(1, num_layers + 1))
        notes = (
            "tokenisation, truncation and the appended EOS run in Python (pre)",
            f"pooling head (artifact {self.config.artifact!r}) is in the graph",
        )
        return DecoderStatesCore(self.backbone.model, layers, head=self.head, notes=notes)

    def pool(self, states: np.ndarray) -> np.ndarray:
        """Head output for precomputed ``[n, L, d]`` (or ``[n, 1, d]``) states."""
        import torch

        with torch.inference_mode():
            return self.head(torch.from_numpy(np.ascontiguousarray(states))).float().numpy()

    def post(self, outputs, feeds, role, normalize):  # type: ignore[no-untyped-def]
        # the head's output is unit-norm by construction (the paper's design)
        return np.asarray(outputs["embedding"], dtype=np.float32), None


def _head_strategy(
    name: str, kind: str, artifact: str, doc: str, description: str, int8_delta: float
) -> type:
    """A registered pooling-head strategy whose defaults select its artifact and head kind
    (``int8_delta``: its measured int8 - fp32 STS-B dev Spearman, docs/results/issue7.md)."""
    cfg = create_model(f"{name}_config", __base__=PoolingHeadConfig, artifact=(str, artifact))
    attrs = {
        "config_cls": cfg,
        "description": description,
        "head_kind": kind,
        "__doc__": doc,
        "int8_sts_delta": int8_delta,
    }
    return register_strategy(name)(type(name, (_PoolingHeadStrategy,), attrs))


MultiLayerTrainablePooling = _head_strategy(
    "mltp",
    "mltp",
    "mltp-smollm2",
    "MLTP (paper's M3): latent cross-attention over every block's last-token state.",
    "multi-layer trainable pooling head over a frozen decoder LLM (MLTP)",
    -3.82,
)
LastLayerTrainablePooling = _head_strategy(
    "m2",
    "m2",
    "m2-smollm2",
    "The paper's M2: the same head over the last layer's last-token state only.",
    "last-layer trainable pooling head over a frozen decoder LLM (paper's M2)",
    -11.42,
)
EosLinear = _head_strategy(
    "eos_linear",
    "linear",
    "eos_linear-smollm2",
    'EOS-last + a trained linear projection ("(a)" in issue 3).',
    "EOS-last token of a frozen decoder LLM + trained linear projection",
    -12.64,
)
