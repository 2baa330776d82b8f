"""Pooling heads (MLTP, M2, EOS-linear) and the ``mltp`` strategy on SmolLM2."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from trainlib.losses import contrastive_loss  # noqa: E402

from embedsvc.errors import FailedPrecondition  # noqa: E402
from embedsvc.strategies import create_strategy, strategy_class  # noqa: E402
from embedsvc.strategies.artifacts import ARTIFACTS  # noqa: E402
from embedsvc.strategies.mltp.model import HeadConfig, build_head  # noqa: E402

SMALL = {"dim": 32, "num_layers": 6, "heads": 2, "dim_head": 8, "num_latents": 4}


def _states(b: int = 3) -> torch.Tensor:
    return torch.randn(
        b, SMALL["num_layers"], SMALL["dim"], generator=torch.Generator().manual_seed(0)
    )


@pytest.mark.parametrize("kind", ["mltp", "m2", "linear"])
def test_head_shape_and_norm(kind: str) -> None:
    torch.manual_seed(0)
    head = build_head(HeadConfig(kind=kind, **SMALL))
    out = head(_states())
    assert out.shape == (3, SMALL["dim"])
    torch.testing.assert_close(out.norm(dim=-1), torch.ones(3))


def test_which_layers_each_head_reads() -> None:
    torch.manual_seed(0)
    x = _states()
    y = x.clone()
    y[:, 0] = torch.randn_like(y[:, 0])  # change only the first block's state
    mltp = build_head(HeadConfig(kind="mltp", **SMALL))
    m2 = build_head(HeadConfig(kind="m2", **SMALL))
    lin = build_head(HeadConfig(kind="linear", **SMALL))
    assert not torch.allclose(mltp(x), mltp(y))  # MLTP attends over every layer
    torch.testing.assert_close(m2(x), m2(y))  # M2 reads the last layer only
    torch.testing.assert_close(lin(x), torch.nn.functional.normalize(x[:, -1], dim=-1))
    assert mltp.layer_embedding.weight.shape == (SMALL["num_layers"], SMALL["dim"])
    assert m2.layer_embedding is None
    with pytest.raises(ValueError):
        mltp(x[:, :3])


def test_contrastive_loss_prefers_the_right_pairs() -> None:
    a = torch.nn.functional.normalize(torch.eye(4), dim=-1)
    good = contrastive_loss(a, a.clone(), -a, scale=20.0)
    bad = contrastive_loss(a, a.roll(1, dims=0), a, scale=20.0)
    assert good < 1e-3 < bad


def test_registered_and_missing_artifact_is_actionable(tmp_path: Path) -> None:
    for name in ("mltp", "m2", "eos_linear"):
        assert strategy_class(name).output_kind == "dense"
    strat = create_strategy("mltp", artifact=str(tmp_path / "nope"))
    with pytest.raises(FailedPrecondition, match="train_pooling_head"):
        strat.encode(["a"])


def _write_artifact(folder: Path, kind: str, fingerprint: str) -> None:
    from safetensors.torch import save_file

    torch.manual_seed(1)
    cfg = HeadConfig(kind=kind, dim=576, num_layers=30, heads=2, dim_head=16, num_latents=4)
    head = build_head(cfg)
    folder.mkdir(parents=True)
    save_file(
        {k: v.contiguous() for k, v in head.state_dict().items()}, str(folder / "head.safetensors")
    )
    (folder / "head_config.json").write_text(cfg.model_dump_json())
    (folder / "manifest.json").write_text(json.dumps({"backbone_fingerprint": fingerprint}))


@pytest.mark.slow
def test_mltp_strategy_padding_invariance_shape_norm(tmp_path: Path) -> None:
    from embedsvc.backbones import load_backbone

    fp = load_backbone("smollm2").fingerprint
    _write_artifact(tmp_path / "mltp", "mltp", fp)
    texts = ["A man is playing a guitar.", "Dogs run.", "Two women are talking in a cafe today."]
    right = create_strategy("mltp", artifact=str(tmp_path / "mltp"))
    left = create_strategy("mltp", artifact=str(tmp_path / "mltp"), padding_side="left")
    a, b = right.encode(texts).vectors, left.encode(texts).vectors
    single = np.stack([right.encode([t]).vectors[0] for t in texts])
    assert a.shape == (3, 576)
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)
    assert (a * b).sum(1).min() >= 0.9999 and (a * single).sum(1).min() >= 0.9999
    # EOS is appended by the strategy (SmolLM2's tokenizer never adds it)
    assert (
        right.count_tokens(["Dogs run."])[0]
        == len(right.backbone.tokenizer("Dogs run.")["input_ids"]) + 1
    )
    # a head trained on another backbone is refused
    _write_artifact(tmp_path / "other", "mltp", "0" * 16)
    with pytest.raises(FailedPrecondition):
        create_strategy("mltp", artifact=str(tmp_path / "other")).encode(["a"])


@pytest.mark.slow
@pytest.mark.parametrize("name", ["mltp", "m2", "eos_linear"])
def test_shipped_artifacts_load(name: str) -> None:
    strat = create_strategy(name)
    folder = ARTIFACTS / strat.config.artifact
    if not folder.is_dir():
        pytest.skip(f"{folder} not shipped")
    manifest = json.loads((folder / "manifest.json").read_text())
    assert {
        "base_model",
        "backbone_fingerprint",
        "data",
        "steps",
        "seed",
        "eval",
        "command",
    } <= set(manifest)
    assert (folder / "head.safetensors").stat().st_size < 5 * 2**20
    emb = strat.encode(["A man is playing a guitar."])
    assert emb.vectors.shape == (1, 576)
