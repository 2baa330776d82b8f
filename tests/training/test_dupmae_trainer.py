"""The DupMAE trainer: a few pre-training and fine-tuning steps on a tiny slice, resume, ship."""

from __future__ import annotations

import csv
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
PASSAGES = Path("/work/shared/data/train/wiki_en/passages_part1.jsonl")
TRIPLETS = Path("/work/shared/data/train/nli/nli_triplets.csv")

pytestmark = pytest.mark.slow


def _trainer():
    spec = importlib.util.spec_from_file_location("train_dupmae", ROOT / "training/train_dupmae.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["train_dupmae"] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    if not (PASSAGES.is_file() and TRIPLETS.is_file()):
        pytest.skip("shared training data not available")
    root = tmp_path_factory.mktemp("dupmae")
    tiny = root / "passages.jsonl"
    with PASSAGES.open(encoding="utf-8") as src, tiny.open("w", encoding="utf-8") as dst:
        for _ in range(12):
            dst.write(src.readline())
    tr = _trainer()
    cfg = tr.PretrainConfig(
        passages=[str(tiny)],
        train_passages=8,
        heldout_passages=4,
        max_length=16,
        steps=2,
        batch_size=2,
        save_every=1,
        out=str(root / "run"),
        ship=str(root / "art"),
    )
    metrics = tr.run_pretrain(cfg, resume=False)
    return {"root": root, "tiny": tiny, "metrics": metrics, "cfg": cfg}


def test_pretrain_runs_measures_recovery_and_ships(pretrained: dict) -> None:
    m = pretrained["metrics"]
    assert 0.0 <= m["ot_recovery_before"] <= 100.0 and 0.0 <= m["ot_recovery_after"] <= 100.0
    art = pretrained["root"] / "art"
    for name in ("adapter/adapter_config.json", "heads.safetensors", "head_config.json"):
        assert (art / name).is_file()
    manifest = json.loads((art / "manifest.json").read_text())
    assert manifest["steps"] == 2 and manifest["seed"] == 0
    assert manifest["base_model"]["name"] == "minilm"
    assert "ot_recovery_after" in manifest["eval"]
    size = sum(p.stat().st_size for p in art.rglob("*") if p.is_file())
    assert size < 8 * 2**20  # adapters + heads only, never a full encoder
    history = json.loads((pretrained["root"] / "run/metrics.json").read_text())["history"]
    assert all(np.isfinite(h["loss"]) for h in history)


def test_pretrain_resume_continues_from_checkpoint(pretrained: dict) -> None:
    tr = _trainer()
    cfg = pretrained["cfg"].model_copy(update={"steps": 3, "ship": None})
    tr.run_pretrain(cfg, resume=True)
    history = json.loads((pretrained["root"] / "run/metrics.json").read_text())["history"]
    assert [h["step"] for h in history] == [1, 2, 3]


def test_finetune_runs_and_strategy_loads(pretrained: dict) -> None:
    root = pretrained["root"]
    trip = root / "triplets.csv"
    with TRIPLETS.open(newline="", encoding="utf-8") as src, trip.open("w", newline="") as dst:
        reader, writer = csv.reader(src), csv.writer(dst)
        for i, row in enumerate(reader):
            writer.writerow(row)
            if i >= 8:
                break
    tr = _trainer()
    cfg = tr.FinetuneConfig(
        init=str(root / "art"),
        triplets=str(trip),
        max_triplets=8,
        max_length=16,
        steps=2,
        batch_size=4,
        out=str(root / "ft"),
        ship=str(root / "ft-art"),
    )
    tr.run_finetune(cfg, resume=False)
    from embedsvc.strategies import create_strategy

    s = create_strategy("dupmae", artifact=str(root / "ft-art"))
    e = s.encode(["a short text", "another one"])
    assert e.vectors.shape == (2, s.dim)
    assert np.allclose(np.linalg.norm(e.vectors, axis=1), 1.0, atol=1e-5)
