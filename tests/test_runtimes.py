"""Runtimes below the strategy: which executor serves what, and the int8 gate (no models)."""

from __future__ import annotations

import pytest

from embedsvc.config import ServiceConfig
from embedsvc.engine import Engine
from embedsvc.errors import FailedPrecondition, InvalidArgument
from embedsvc.runtimes import serving_strategy
from embedsvc.runtimes.base import INT8_GATE, check_servable, int8_refusal, runtime_of
from embedsvc.strategies import available_strategies, strategy_class


def test_int8_gate_follows_the_measured_sts_deltas() -> None:
    for name in ("mean", "token_prepending", "btr", "multisense"):
        assert int8_refusal(strategy_class(name)) is None, name
        check_servable(name, "onnx-int8")
    for name in ("mltp", "m2", "eos_linear", "prompt_last", "dupmae", "text2token"):
        reason = int8_refusal(strategy_class(name))
        assert reason is not None and "serve it with runtime 'onnx'" in reason, name
        with pytest.raises(FailedPrecondition, match="onnx-int8 refuses"):
            check_servable(name, "onnx-int8")
        check_servable(name, "onnx")  # fp32 serves every exportable strategy
    # never measured = refused, not assumed fine
    assert "never measured" in int8_refusal(strategy_class("dupmae_cls"))
    assert strategy_class("mltp").int8_sts_delta < -INT8_GATE


def test_list_strategies_says_which_runtime_serves_what(tmp_path) -> None:
    config = ServiceConfig(data_dir=tmp_path / "d", cache_dir=tmp_path, runtime="onnx-int8")
    engine = Engine(config)
    try:
        listed = {s.name: s.runtime for s in engine.list_strategies()}
    finally:
        engine.close()
    assert listed["mean"] == "onnx-int8"
    assert listed["mltp"].startswith("refused")
    assert listed["debug"] == "none (model-free)"
    assert set(listed) == set(available_strategies())
    assert runtime_of(strategy_class("mltp"), "torch") == "torch"


def test_start_up_refuses_a_gated_strategy_before_exporting(tmp_path) -> None:
    config = ServiceConfig(
        data_dir=tmp_path / "d",
        cache_dir=tmp_path,
        runtime="onnx-int8",
        preload_strategies=["m2"],
    )
    engine = Engine(config)
    try:
        with pytest.raises(FailedPrecondition, match="loses 11.42 STS-B"):
            engine.preload()
        assert not any(tmp_path.rglob("*.onnx"))
    finally:
        engine.close()


def test_unknown_runtime_is_named(tmp_path) -> None:
    with pytest.raises(InvalidArgument, match="valid: torch, onnx, onnx-int8"):
        serving_strategy(
            "mean",
            ServiceConfig(cache_dir=tmp_path, runtime="torch").model_copy(
                update={"runtime": "tvm"}
            ),
        )
