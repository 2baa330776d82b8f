"""``text2token``: mean-pooled embeddings of a backbone trained by token-target prediction.

Reference
    "Text2Token: Unsupervised Text Representation Learning with Token Target Prediction";
    research code GDNL-ACT/anruize_target_learn (``genRep.py``, ``aa_gene_train.py``),
    re-derived in ``model.py`` and ``training/train_text2token.py`` (token targets:
    ``training/trainlib/t2t_targets.py``).
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

import json
from functools import partial
from pathlib import Path
from typing import Any

from pydantic import Field, create_model

from embedsvc.backbones import Backbone
from embedsvc.strategies.artifacts import check_base, files_digest, find_artifact, read_manifest
from embedsvc.strategies.base import StrategyConfig, register_strategy
from embedsvc.strategies.hf import HFStrategy

BUILD_HINT = "build it with `.venv/bin/python training/train_text2token.py --config " + (
    "training/configs/t2t_smollm2_stage1.json` (stage 2: t2t_smollm2_stage2.json)"
)
artifact_dir = partial(find_artifact, marker="t2t_config.json", what="Text2Token", hint=BUILD_HINT)


class Text2TokenConfig(StrategyConfig):
    #: artifact name under embedsvc/artifacts, a folder, or "none" (untrained backbone)
    artifact: str = "text2token/smollm2-stage2"
    #: backbone for artifact="none" (an artifact names its own in manifest.json)
    backbone: str = "smollm2"
    batch_size: int = Field(16, ge=1)
    #: token limit; None = the backbone's served limit
    max_length: int | None = Field(None, ge=2)


class Text2Token(HFStrategy):
    """Mean pooling of a Text2Token-trained (LoRA-merged) backbone."""

    output_kind = "dense"
    config_cls = Text2TokenConfig
    description = "Text2Token: token-target-prediction-trained backbone, mean pooling"
    int8_sts_delta = -0.85  # stage 2; the other stages were not measured (issue 7)
    config: Text2TokenConfig
    _model: Any = None
    _digest = "none"

    def _folder(self) -> Path | None:
        return None if self.config.artifact == "none" else artifact_dir(self.config.artifact)

    def backbone_name(self) -> str:
        folder = self._folder()
        if folder is None:
            return self.config.backbone
        return read_manifest(folder)["base_model"]["name"]

    def check_backbone(self, backbone: Backbone) -> None:
        folder = self._folder()
        if folder is None:
            return
        base = read_manifest(folder)["base_model"].get("fingerprint")
        check_base(folder, base, backbone.fingerprint, BUILD_HINT)

    def _load_model(self) -> Any:
        backbone = self.backbone
        folder = self._folder()
        if folder is None:
            return backbone.model  # read-only use of the shared model
        from embedsvc.strategies.text2token.model import build_model

        n = int(json.loads((folder / "t2t_config.json").read_text())["adapters"])
        chain = [folder / "adapters" / str(i) for i in range(n)]
        self._digest = files_digest(sorted(folder.joinpath("adapters").rglob("*.safetensors")))
        return build_model(backbone, chain).eval()

    @property
    def model(self) -> Any:
        return self.lazy("_model", self._load_model)

    @property
    def source(self) -> Path | None:
        return self._folder() or self.backbone.source

    @property
    def model_fingerprint(self) -> str:
        _ = self.model
        key = f"text2token|{self.backbone.fingerprint}|{self._digest}|{self.max_tokens}"
        return self.digest(key)

    def build_core(self) -> Any:
        from embedsvc.strategies.text2token.model import pooled_core

        notes = ("LoRA adapters merged into the weights (in order); masked mean in the graph",)
        return pooled_core(self.model, notes)


register_strategy("text2token")(Text2Token)
for _name, _artifact in (
    ("text2token_s1", "text2token/smollm2-stage1"),
    ("text2token_base", "none"),
):
    _cfg = create_model(
        f"Text2TokenConfig_{_name}", __base__=Text2TokenConfig, artifact=(str, _artifact)
    )
    register_strategy(_name)(
        type(
            f"Text2Token_{_name}",
            (Text2Token,),
            {"config_cls": _cfg, "__doc__": f"``{_name}``", "int8_sts_delta": None},
        )
    )
