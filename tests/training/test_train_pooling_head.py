"""The pooling-head trainer runs a few steps on a tiny slice, resumes, and ships a loadable head."""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[2]
TRIPLETS = Path("/work/shared/data/train/nli/nli_triplets.csv")
STSB_DEV = Path("/work/shared/data/stsb/sts-dev.csv")

pytestmark = pytest.mark.slow


def _trainer():
    spec = importlib.util.spec_from_file_location(
        "train_pooling_head", ROOT / "training" / "train_pooling_head.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules["train_pooling_head"] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    if not (TRIPLETS.is_file() and STSB_DEV.is_file()):
        pytest.skip("shared training/eval data not available")
    root = tmp_path_factory.mktemp("tiny")
    with TRIPLETS.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.reader(fh))[:13]  # header + 12 triplets
    trip = root / "triplets.csv"
    with trip.open("w", newline="", encoding="utf-8") as fh:
        csv.writer(fh).writerows(rows)
    sts = root / "sts.csv"
    sts.write_text("".join(STSB_DEV.read_text(encoding="utf-8").splitlines(True)[:6]))
    return {"root": root, "triplets": trip, "sts": sts}


def _config(mod, tiny: dict[str, Path], head: str, out: str, steps: int):
    return mod.TrainConfig(
        head=head,
        triplets=str(tiny["triplets"]),
        max_triplets=12,
        steps=steps,
        batch_size=4,
        num_latents=8,
        heads=2,
        dim_head=16,
        save_every=1,
        threads=1,
        out=str(tiny["root"] / out),
        cache_dir=str(tiny["root"] / "cache"),
        sts_file=str(tiny["sts"]),
        scifact_dir="",
    )


def test_trains_resumes_and_ships(tiny: dict[str, Path]) -> None:
    mod = _trainer()
    cfg = _config(mod, tiny, "mltp", "run", steps=2)
    metrics = mod.train(cfg)
    assert metrics["steps"] == 2 and np.isfinite(metrics["final_loss"])
    assert -100 <= metrics["sts_spearman"] <= 100
    # step 0 (the untrained residual head) is scored, as are both fixed dev halves
    assert metrics["step0"]["step"] == 0 and {"sts_half_a", "sts_half_b"} <= set(metrics)
    assert metrics["best_step"] in {h["step"] for h in metrics["history"]}
    out = Path(cfg.out)
    assert json.loads((out / "config.json").read_text())["head"] == "mltp"
    assert (out / "checkpoint.pt").is_file()

    # resume: a longer schedule continues from step 2 instead of starting over
    import torch

    cfg4 = cfg.model_copy(update={"steps": 4})
    art = tiny["root"] / "artifact"
    metrics = mod.train(cfg4, resume=True, ship=str(art))
    assert torch.load(out / "checkpoint.pt", weights_only=False)["step"] == 4
    manifest = json.loads((art / "manifest.json").read_text())
    assert manifest["steps"] == 4 and manifest["seed"] == 0
    assert manifest["input_format"] == "prompt-eol" and manifest["template"] == "eol"
    assert len(manifest["data"]["triplets"]["sha256"]) == 64
    assert (art / "head.safetensors").stat().st_size < 5 * 2**20

    # the shipped folder is what the mltp strategy serves; its vectors are unit-norm
    from embedsvc.strategies import create_strategy

    strat = create_strategy("mltp", artifact=str(art))
    emb = strat.encode(["A man is playing a guitar.", "Two dogs run."])
    assert emb.vectors.shape == (2, 576)
    np.testing.assert_allclose(np.linalg.norm(emb.vectors, axis=1), 1.0, atol=1e-5)


def test_cli_config_file_and_flags(tiny: dict[str, Path]) -> None:
    mod = _trainer()
    cfg = _config(mod, tiny, "linear", "cli", steps=1)
    path = tiny["root"] / "cfg.json"
    path.write_text(cfg.model_dump_json())
    parsed, resume, ship = mod.parse_args(["--config", str(path), "--seed", "3", "--resume"])
    assert parsed.seed == 3 and parsed.head == "linear" and resume and ship is None
    metrics = mod.train(parsed)  # states are cached from the first test: seconds
    assert metrics["head"] == "linear" and metrics["seed"] == 3
