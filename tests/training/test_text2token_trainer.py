"""The Text2Token trainer: a few stage-1 and stage-2 steps on a tiny slice (MiniLM), ship."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
SENTENCES = Path("/work/shared/data/train/wiki_en/sentences_part1.txt")
STSB = Path("/work/shared/data/stsb/sts-dev.csv")

pytestmark = pytest.mark.slow


def _trainer():
    spec = importlib.util.spec_from_file_location(
        "train_text2token", ROOT / "training/train_text2token.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules["train_text2token"] = module
    spec.loader.exec_module(module)
    return module


def test_stage1_then_stage2_run_and_ship(tmp_path: Path) -> None:
    if not (SENTENCES.is_file() and STSB.is_file()):
        pytest.skip("shared data not available")
    tr = _trainer()
    common = dict(
        backbone="minilm",
        train_texts=8,
        heldout_texts=4,
        max_length=16,
        batch_size=4,
        sts_pairs=10,
        keep_steps=[1],
    )
    s1 = tr.T2TConfig(
        stage=1, steps=2, out=str(tmp_path / "s1"), ship=str(tmp_path / "a1"), **common
    )
    m1 = tr.run(s1, resume=False)
    assert {"before", "after"} <= set(m1)
    s2 = tr.T2TConfig(
        stage=2,
        steps=2,
        init_run=str(tmp_path / "s1"),
        init_step=1,
        prior_texts=8,
        text_offset=100,
        out=str(tmp_path / "s2"),
        ship=str(tmp_path / "a2"),
        **common,
    )
    tr.run(s2, resume=False)
    history = json.loads((tmp_path / "s2/metrics.json").read_text())["history"]
    assert len(history) == 2 and all(np.isfinite(h["loss"]) for h in history)
    manifest = json.loads((tmp_path / "a2/manifest.json").read_text())
    assert manifest["stage"] == 2 and len(list((tmp_path / "a2/adapters").iterdir())) == 2

    from embedsvc.strategies import create_strategy

    s = create_strategy("text2token", artifact=str(tmp_path / "a2"))
    e = s.encode(["a short text", "another one"])
    assert e.vectors.shape == (2, 384)
    assert np.allclose(np.linalg.norm(e.vectors, axis=1), 1.0, atol=1e-5)

    # adapters ship as float16 (half the committed size) and load back to the same embeddings
    # as the run's float32 adapters
    import shutil

    import torch
    from safetensors.torch import load_file

    shipped = load_file(tmp_path / "a2/adapters/1/adapter_model.safetensors")
    assert shipped and all(t.dtype == torch.float16 for t in shipped.values())
    fp32 = tmp_path / "a2-fp32"
    shutil.copytree(tmp_path / "a2", fp32)
    for i, run in enumerate(("s1/adapter-step-1", "s2/adapter-final")):
        shutil.copy(
            tmp_path / run / "adapter_model.safetensors",
            fp32 / f"adapters/{i}/adapter_model.safetensors",
        )
    ref = create_strategy("text2token", artifact=str(fp32)).encode(["a short text", "another one"])
    assert (ref.vectors * e.vectors).sum(1).min() > 0.9999
