"""The BTR trainer runs a few steps on a tiny slice, resumes, and ships a loadable artifact."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
WIKI = Path("/work/shared/data/train/wiki_en/passages_part2.jsonl")

pytestmark = pytest.mark.slow


def _trainer():
    spec = importlib.util.spec_from_file_location("train_btr", ROOT / "training" / "train_btr.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["train_btr"] = module
    spec.loader.exec_module(module)
    return module


def test_train_resume_ship_and_load(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if not WIKI.is_file():
        pytest.skip("shared training data not available")
    tb = _trainer()
    art = tmp_path / "artifact"
    monkeypatch.setattr(tb, "ARTIFACT", art)
    cfg, resume, ship = tb.parse_args(
        [
            "--train-file",
            str(WIKI),
            "--eval-file",
            str(WIKI),
            "--train-passages",
            "6",
            "--eval-passages",
            "3",
            "--max-length",
            "24",
            "--steps",
            "2",
            "--batch-size",
            "2",
            "--rank",
            "4",
            "--bits",
            "16",
            "--save-every",
            "1",
            "--out",
            str(tmp_path / "run"),
            "--ship",
        ]
    )
    assert ship and not resume
    metrics = tb.train(cfg, ship=True, command="test")
    # calibrated reconstruction is already better than naive sign
    assert metrics["calibrated"]["current_mean_cos"] > metrics["calibrated"]["naive_mean_cos"]
    assert (tmp_path / "run" / "checkpoint.pt").is_file()
    cfg3 = cfg.model_copy(update={"steps": 3})
    tb.train(cfg3, resume=True)  # continues from step 2: one more step
    import torch

    assert torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)["step"] == 3
    manifest = json.loads((art / "manifest.json").read_text())
    assert manifest["steps"] == 2 and manifest["data"][0]["sha256"]
    from embedsvc.strategies import create_strategy

    s = create_strategy("btr", artifact=str(art))
    emb = s.encode(["a tiny test passage"])
    assert emb.vectors.shape == (1, 2) and s.dim == 16
    assert np.isfinite(s.reembed(emb.payloads)).all()
