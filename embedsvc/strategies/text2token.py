"""``text2token``: mean-pooled embeddings of a backbone trained by token-target prediction.

Reference
    "Text2Token: Unsupervised Text Representation Learning with Token Target Prediction";
    research code GDNL-ACT/anruize_target_learn (``genRep.py``, ``aa_gene_train.py``),
    re-derived in ``_t2t_model.py`` / ``_t2t_targets.py`` and ``training/train_text2token.py``.
    Training fits ``KL(target || softmax(lm_head(mean_pool(h))))``; the *embedding* served is
    the pooled hidden state itself (as the reference evaluates), not the vocabulary logits.

Inputs-Outputs
    Texts (role ignored, no prompt) -> float32 ``[n, d]`` (576 for SmolLM2, 384 for MiniLM):
    masked mean of the last hidden state (SmolLM2: after its final RMSNorm), L2-normalised
    when ``normalize``. Texts longer than ``max_length`` tokens lose their tail.

Hyper-parameters
    Config: ``artifact`` (``text2token/smollm2-stage2`` | ``text2token/smollm2-stage1`` under
    ``embedsvc/artifacts``, any folder, or ``none`` = the untrained backbone), ``backbone``
    (only used with ``none``; otherwise the artifact's manifest names it), ``batch_size``,
    ``max_length``. The artifact's LoRA adapters (``adapters/0``, ``adapters/1``...) are merged
    in order into a private copy of the backbone (stage 2 = the stage-1 checkpoint it started
    from, then its own adapter); the shared backbone is never modified.
    Registered: ``text2token`` (stage 2), ``text2token_s1`` (stage 1), ``text2token_base``
    (untrained SmolLM2, same pooling). Results: ``docs/results/issue4.md``.
"""

from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field, create_model

from embedsvc.backbones import Backbone, load_backbone
from embedsvc.errors import FailedPrecondition
from embedsvc.strategies._batches import length_sorted_batches
from embedsvc.strategies._limits import apply_token_limit, check_texts, count_with_specials
from embedsvc.strategies.base import Embedding, Role, Strategy, StrategyConfig, register_strategy

ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts"
BUILD_HINT = (
    "build it with `.venv/bin/python training/train_text2token.py --config "
    "training/configs/t2t_smollm2_stage1.json` (stage 2: t2t_smollm2_stage2.json)"
)


def artifact_dir(name_or_path: str) -> Path:
    for cand in (ARTIFACTS / name_or_path, Path(name_or_path).expanduser()):
        if (cand / "t2t_config.json").is_file():
            return cand.resolve()
    raise FailedPrecondition(
        f"Text2Token artifact {name_or_path!r} not found (no t2t_config.json under "
        f"{ARTIFACTS / name_or_path} or that folder); {BUILD_HINT}",
        field="artifact",
    )


class Text2TokenConfig(StrategyConfig):
    #: artifact name under embedsvc/artifacts, a folder, or "none" (untrained backbone)
    artifact: str = "text2token/smollm2-stage2"
    #: backbone for artifact="none" (an artifact names its own in manifest.json)
    backbone: str = "smollm2"
    batch_size: int = Field(16, ge=1)
    #: token limit; None = the backbone's served limit
    max_length: int | None = Field(None, ge=2)


class Text2Token(Strategy):
    """Mean pooling of a Text2Token-trained (LoRA-merged) backbone."""

    output_kind = "dense"
    config_cls = Text2TokenConfig
    description = "Text2Token: token-target-prediction-trained backbone, mean pooling"
    config: Text2TokenConfig

    def __init__(self, config: Text2TokenConfig | None = None, *, cache_dir: Path | None = None):
        super().__init__(config)
        self._cache_dir = cache_dir
        self._backbone: Backbone | None = None
        self._model: Any = None
        self._digest = "none"
        self._lock = threading.Lock()

    def _folder(self) -> Path | None:
        return None if self.config.artifact == "none" else artifact_dir(self.config.artifact)

    @property
    def backbone(self) -> Backbone:
        if self._backbone is None:
            with self._lock:
                if self._backbone is None:
                    folder = self._folder()
                    name = self.config.backbone
                    if folder is not None:
                        manifest = json.loads((folder / "manifest.json").read_text())
                        name = manifest["base_model"]["name"]
                        base = manifest["base_model"].get("fingerprint")
                        bb = load_backbone(name, self._cache_dir)
                        if base and base != bb.fingerprint:
                            raise FailedPrecondition(
                                f"Text2Token artifact {folder} was trained on backbone "
                                f"fingerprint {base}, not {bb.fingerprint}; {BUILD_HINT}",
                                field="artifact",
                            )
                    self._backbone = load_backbone(name, self._cache_dir)
        return self._backbone

    @property
    def model(self) -> Any:
        if self._model is None:
            backbone = self.backbone
            with self._lock:
                if self._model is None:
                    folder = self._folder()
                    if folder is None:
                        self._model = backbone.model  # read-only use of the shared model
                    else:
                        from embedsvc.strategies._t2t_model import build_model

                        n = int(json.loads((folder / "t2t_config.json").read_text())["adapters"])
                        chain = [folder / "adapters" / str(i) for i in range(n)]
                        h = hashlib.sha256()
                        for p in sorted(folder.joinpath("adapters").rglob("*.safetensors")):
                            h.update(p.read_bytes())
                        self._digest = h.hexdigest()[:16]
                        self._model = build_model(backbone, chain).eval()
        return self._model

    @property
    def dim(self) -> int:
        return self.backbone.hidden_size

    @property
    def max_tokens(self) -> int:
        return self.config.max_length or self.backbone.max_length

    @property
    def fingerprint(self) -> str:
        _ = self.model
        key = f"text2token|{self.backbone.fingerprint}|{self._digest}|{self.max_tokens}"
        return hashlib.sha256(key.encode()).hexdigest()[:16]

    def count_tokens(self, texts: list[str], role: Role = Role.PASSAGE) -> list[int]:
        return count_with_specials(self.backbone.tokenizer, texts)

    def onnx_spec(self) -> Any:
        """Export hook: the LoRA-merged decoder + masked mean pooling as one graph."""
        from embedsvc.export.trained_modules import text2token_spec

        return text2token_spec(self)

    def encode(
        self,
        texts: list[str],
        role: Role = Role.PASSAGE,
        *,
        normalize: bool = True,
        truncate: bool = True,
    ) -> Embedding:
        import torch

        from embedsvc.strategies._t2t_model import pooled

        texts = check_texts(texts)
        dim = self.dim
        if not texts:
            return Embedding.empty("dense", dim)
        counts = self.count_tokens(texts)
        seen, truncated = apply_token_limit(counts, self.max_tokens, truncate)
        model, tok = self.model, self.backbone.tokenizer
        out = np.empty((len(texts), dim), dtype=np.float32)
        batches = length_sorted_batches(tok, texts, counts, self.config.batch_size, self.max_tokens)
        with torch.inference_mode():
            for idx, enc in batches:
                vec = pooled(model, enc["input_ids"], enc["attention_mask"])
                if normalize:
                    vec = torch.nn.functional.normalize(vec, dim=-1)
                out[idx] = vec.float().numpy()
        return Embedding("dense", out, dim, seen, truncated)


register_strategy("text2token")(Text2Token)
for _name, _artifact in (
    ("text2token_s1", "text2token/smollm2-stage1"),
    ("text2token_base", "none"),
):
    _cfg = create_model(
        f"Text2TokenConfig_{_name}", __base__=Text2TokenConfig, artifact=(str, _artifact)
    )
    register_strategy(_name)(
        type(f"Text2Token_{_name}", (Text2Token,), {"config_cls": _cfg, "__doc__": f"``{_name}``"})
    )
