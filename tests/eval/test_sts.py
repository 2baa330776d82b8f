"""STS scoring: correlations, the binary (Hamming) path, and the CLI's JSON output."""

from __future__ import annotations

import json
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
from typer.testing import CliRunner

from embedsvc.eval.cli import eval_app
from embedsvc.eval.sts import evaluate_sts, hamming_pairs
from embedsvc.strategies import available_strategies
from embedsvc.strategies.base import Embedding, Role, Strategy

STSB = Path("/work/shared/data/stsb/sts-dev.csv")


class Lookup(Strategy):
    """Test double: fixed vectors per text ("dense") or their sign bits ("binary")."""

    name: ClassVar[str] = "lookup"
    output_kind: ClassVar[str] = "dense"
    table: ClassVar[dict[str, list[float]]] = {}

    dim = 8
    max_tokens = 512
    model_fingerprint = "lookup-v1"

    def count_tokens(self, texts, role=Role.PASSAGE):
        return [1] * len(texts)

    def encode(self, texts, role=Role.PASSAGE, *, normalize=True, truncate=True):
        v = np.array([self.table[t] for t in texts], dtype=np.float32)
        n = np.zeros(len(texts), dtype=np.int64)
        if self.output_kind == "binary":
            return Embedding("binary", np.packbits(v > 0, axis=1), 8, n, n)
        return Embedding("dense", v, 8, n, n)


class BinaryLookup(Lookup):
    output_kind: ClassVar[str] = "binary"


def _pairs_file(tmp_path: Path) -> Path:
    # "a" vs b_i: b_i flips i of a's 8 signs, so similarity falls as i grows (cosine and Hamming)
    a = [1.0] * 8
    Lookup.table = {"a": a}
    rows = []
    for i in range(5):
        b = [-1.0] * i + [1.0] * (8 - i)
        Lookup.table[f"b{i}"] = b
        rows.append(f"g\tf\t2012\t{i:04d}\t{5 - i}\ta\tb{i}")
    f = tmp_path / "pairs.csv"
    f.write_text("\n".join(rows) + "\n")
    return f


def test_dense_and_binary_rank_perfectly(tmp_path: Path) -> None:
    f = _pairs_file(tmp_path)
    dense = evaluate_sts(Lookup(), f, cache_dir=tmp_path / "c")
    assert dense["spearman"] == pytest.approx(100.0)
    assert dense["pearson"] == pytest.approx(100.0)  # cosine = 1 - 2i/8, linear in the score
    assert (dense["n_pairs"], dense["format"], dense["task"]) == (5, "stsb", "sts")
    binary = evaluate_sts(BinaryLookup(), f, cache_dir=tmp_path / "c")
    assert binary["spearman"] == pytest.approx(100.0)


def test_hamming_similarity() -> None:
    a = np.packbits(np.array([[1] * 16], dtype=bool), axis=1)
    b = np.packbits(np.array([[1] * 12 + [0] * 4], dtype=bool), axis=1)
    assert hamming_pairs(a, b, 16)[0] == pytest.approx(1 - 2 * 4 / 16)
    assert hamming_pairs(a, a, 16)[0] == 1.0


needs_debug = pytest.mark.skipif(
    "debug" not in available_strategies(), reason="debug strategy not available"
)


@needs_debug
def test_cli_json_is_one_object(tmp_path: Path) -> None:
    f = tmp_path / "sick.txt"
    f.write_text(
        "pair_ID\tsentence_A\tsentence_B\trelatedness_score\tentailment_judgment\n"
        "1\ta man plays a guitar\ta man plays a guitar\t5\tENTAILMENT\n"
        "2\ta man plays a guitar\ta man plays music\t4\tNEUTRAL\n"
        "3\ta man plays a guitar\ta cat sleeps\t1\tNEUTRAL\n"
    )
    args = ["sts", "--strategy", "debug", "--file", str(f), "--json", "--cache-dir", str(tmp_path)]
    result = CliRunner().invoke(eval_app, args)
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)  # the whole of stdout is one JSON object
    assert out["n_pairs"] == 3 and out["strategy"] == "debug" and out["format"] == "sick"
    assert isinstance(out["spearman"], float)


@needs_debug
def test_cli_errors_exit_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("g\tf\t2012\t0001\tnot-a-number\ta\tb\n")
    result = CliRunner().invoke(eval_app, ["sts", "-s", "debug", "-f", str(bad), "--json"])
    assert result.exit_code == 2
    assert f"{bad}:1:" in result.stderr and result.stdout == ""
    result = CliRunner().invoke(eval_app, ["sts", "-s", "no-such", "-f", str(bad)])
    assert result.exit_code == 2
    assert "unknown strategy" in result.stderr


@pytest.mark.slow
@pytest.mark.skipif(not STSB.is_file(), reason="shared data not present")
def test_mean_on_stsb_subset(tmp_path: Path) -> None:
    """MiniLM on the first 200 STS-B dev pairs must correlate clearly (full dev: 86.7)."""
    from embedsvc.strategies import get_strategy

    sub = tmp_path / "sub.csv"
    sub.write_text("".join(STSB.read_text(encoding="utf-8").splitlines(keepends=True)[:200]))
    res = evaluate_sts(get_strategy("mean"), sub, cache_dir=tmp_path)
    assert res["n_pairs"] == 200
    assert res["spearman"] > 70
