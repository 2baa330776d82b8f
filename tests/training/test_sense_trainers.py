"""The sense-dictionary builder and the student trainer run on a tiny slice and ship artifacts."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
WIKI = Path("/work/shared/data/train/wiki_en/passages_part4.jsonl")

pytestmark = pytest.mark.slow


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "training" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def test_build_dictionary_then_train_student(tmp_path: Path, monkeypatch) -> None:
    if not WIKI.is_file():
        pytest.skip("shared training data not available")
    build = _load("build_sense_dictionary")
    cfg, _ = build.parse_args(
        [
            "--corpus",
            str(WIKI),
            "--max-passages",
            "6",
            "--max-length",
            "24",
            "--out-dir",
            str(tmp_path / "dict"),
        ]
    )
    out = build.build(cfg, command="test")
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["senses"] > 0 and manifest["data"][0]["sha256"]
    assert (out / "samples.npz").is_file()
    again = build.build(cfg, command="test", resume=True)  # reuses the sampled states
    assert json.loads((again / "manifest.json").read_text())["senses"] == manifest["senses"]

    st = _load("train_sense_student")
    art = tmp_path / "student"
    monkeypatch.setattr(st, "ARTIFACT", art)
    scfg, _, _ = st.parse_args(
        [
            "--dictionary",
            str(out),
            "--train-file",
            str(WIKI),
            "--train-passages",
            "6",
            "--eval-passages",
            "3",
            "--max-length",
            "24",
            "--steps",
            "3",
            "--batch-tokens",
            "64",
            "--out",
            str(tmp_path / "run"),
        ]
    )
    metrics = st.train(scfg, ship=True, command="test")
    assert 0.0 <= metrics["acc_trained_head"] <= 1.0
    assert (art / "head.npz").is_file() and (tmp_path / "run" / "checkpoint.pt").is_file()
    from embedsvc.strategies import create_strategy

    s = create_strategy("multisense_student", dictionary=str(out), student_artifact=str(art))
    v = s.encode(["A river bank and a money bank."]).vectors
    assert v.shape == (1, 384)
