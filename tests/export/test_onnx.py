"""ONNX export, parity with torch, int8 gated by STS-B, and serving with ``runtime="onnx"``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime")

from embedsvc.checksums import sha256_file  # noqa: E402
from embedsvc.errors import FailedPrecondition, InvalidArgument  # noqa: E402
from embedsvc.eval.data import read_sts  # noqa: E402
from embedsvc.export.onnx import MANIFEST, export_strategy  # noqa: E402
from embedsvc.runtimes.base import load_export  # noqa: E402
from embedsvc.strategies import (  # noqa: E402
    Role,
    Strategy,
    available_strategies,
    create_strategy,
    get_strategy,
    strategy_class,
)

STSB = Path("/work/shared/data/stsb/sts-dev.csv")
needs_stsb = pytest.mark.skipif(not STSB.is_file(), reason="STS-B dev not available")


def _sentences(n: int) -> list[str]:
    """``n`` distinct STS-B dev sentences, spread over the file (short and long ones)."""
    pairs = read_sts(STSB)
    unique = list(dict.fromkeys(pairs.sentences1 + pairs.sentences2))
    step = max(1, len(unique) // n)
    return unique[::step][:n]


def _min_cos(a: np.ndarray, b: np.ndarray) -> float:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return float((a * b).sum(1).min())


@pytest.fixture(scope="module")
def onnx_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("onnx-cache")


@pytest.fixture(scope="module")
def mean_export(onnx_cache) -> Path:
    """``mean`` exported once (fp32 + int8) where the engine's start-up export puts it."""
    from embedsvc.config import ServiceConfig
    from embedsvc.export.startup import prepare

    prepare("mean", ServiceConfig(cache_dir=onnx_cache, runtime="onnx-int8"))
    from embedsvc.runtimes.base import onnx_folder

    return onnx_folder(get_strategy("mean"), ServiceConfig(cache_dir=onnx_cache))


@pytest.fixture(scope="module")
def mean_onnx(mean_export) -> Strategy:
    return load_export(mean_export, int8=True)


def test_debug_strategies_are_not_exported(tmp_path):
    from embedsvc.config import ServiceConfig
    from embedsvc.runtimes import serving_strategy

    debug = get_strategy("debug")
    assert not debug.exportable
    config = ServiceConfig(cache_dir=tmp_path, runtime="onnx")
    assert serving_strategy("debug", config) is debug  # served as is: there is no transformer
    with pytest.raises(InvalidArgument, match="no ONNX export"):
        export_strategy("debug", tmp_path / "out")


@pytest.mark.slow
def test_a_request_never_exports(tmp_path):
    """Under an ONNX runtime a strategy without an export is refused, naming the command."""
    from embedsvc.config import ServiceConfig
    from embedsvc.engine import Engine

    engine = Engine(ServiceConfig(cache_dir=tmp_path, data_dir=tmp_path / "d", runtime="onnx"))
    try:
        with pytest.raises(FailedPrecondition, match="embedsvc export -s mean"):
            engine.embed(["hello"], "mean")
        assert not any(tmp_path.rglob("*.onnx"))
    finally:
        engine.close()


def test_every_transformer_strategy_has_an_export_hook():
    # every registered strategy but the model-free debug engines: a new transformer strategy
    # must add its hook (the trained-artifact ones are parity-tested in test_onnx_trained.py)
    from embedsvc.strategies.debug import DebugBinary, DebugDense

    # (tests register more debug engines, e.g. tests/server/conftest.py's debug_slow)
    names = {
        n for n, c in available_strategies().items() if not issubclass(c, (DebugDense, DebugBinary))
    }
    assert {"mean", "dupmae", "btr", "multisense", "text2token"} <= names
    for name in sorted(names):
        assert strategy_class(name)(None).exportable, name


@pytest.mark.slow
def test_manifest(mean_export):
    d = mean_export
    manifest = json.loads((d / MANIFEST).read_text())
    assert manifest["strategy"]["name"] == "mean"
    assert manifest["strategy"]["fingerprint"] == get_strategy("mean").fingerprint
    assert manifest["opset"] == 17 and manifest["int8"] is True
    assert list(manifest["inputs"]) == ["input_ids", "attention_mask", "token_type_ids"]
    assert list(manifest["outputs"]) == ["embedding"]
    assert "model.safetensors" in manifest["source"]["sha256"]
    for name, digest in manifest["files"].items():
        assert sha256_file(d / name) == digest
    assert (d / "tokenizer" / "tokenizer.json").is_file()
    assert manifest["parity"]["fp32"] >= 0.999
    # dynamic axes: batch and sequence are symbolic in the graph
    import onnx

    graph = onnx.load(str(d / "model.onnx"), load_external_data=False).graph
    dims = [[x.dim_param or x.dim_value for x in i.type.tensor_type.shape.dim] for i in graph.input]
    assert all(shape == ["batch", "sequence"] for shape in dims)


@pytest.mark.slow
@needs_stsb
def test_mean_parity_fp32(mean_export, mean_onnx):
    torch_s = get_strategy("mean")
    fp32 = load_export(mean_export)
    texts = _sentences(300) + ["a " * 400]  # one text over the 256-token limit
    ref = torch_s.encode(texts, Role.PASSAGE)
    got = fp32.encode(texts, Role.PASSAGE)
    assert _min_cos(ref.vectors, got.vectors) >= 0.999
    np.testing.assert_array_equal(ref.token_counts, got.token_counts)
    np.testing.assert_array_equal(ref.truncated_tokens, got.truncated_tokens)
    assert np.allclose(np.linalg.norm(got.vectors, axis=1), 1.0, atol=1e-5)
    raw = fp32.encode(texts[:8], normalize=False).vectors
    np.testing.assert_allclose(raw, torch_s.encode(texts[:8], normalize=False).vectors, atol=1e-4)
    with pytest.raises(InvalidArgument, match=r"texts\[300\]"):
        fp32.encode(texts, truncate=False)
    assert fp32.fingerprint != torch_s.fingerprint != mean_onnx.fingerprint


@pytest.mark.slow
@needs_stsb
def test_int8_within_half_a_point_of_fp32_on_stsb(mean_export, mean_onnx):
    from embedsvc.eval.sts import evaluate_sts

    fp32 = load_export(mean_export)
    s32 = evaluate_sts(fp32, STSB, use_cache=False)["spearman"]
    s8 = evaluate_sts(mean_onnx, STSB, use_cache=False)["spearman"]
    assert s32 > 80  # all-MiniLM-L6-v2: 86.7 on this STS-B dev file (torch and ONNX fp32)
    assert abs(s32 - s8) <= 0.5, (s32, s8)


@pytest.mark.slow
@needs_stsb
@pytest.mark.parametrize("name", ["prompt_last", "token_prepending"])
def test_decoder_parity_fp32(name, tmp_path):
    if name not in available_strategies():
        pytest.skip(f"{name} has not landed")
    torch_s = get_strategy(name)
    export_strategy(torch_s, tmp_path)
    served = load_export(tmp_path)
    assert served.model_fingerprint == torch_s.fingerprint
    assert served.fingerprint != torch_s.fingerprint  # caches never mix the two runtimes
    texts = _sentences(40) + ['He asked: "why not?"', "ok"]
    ref = torch_s.encode(texts)
    got = served.encode(texts)
    assert _min_cos(ref.vectors, got.vectors) >= 0.999
    np.testing.assert_array_equal(ref.token_counts, got.token_counts)
    # a text alone (no padding) gets the vector it gets in a padded batch
    assert _min_cos(ref.vectors[:1], served.encode(texts[:1]).vectors) >= 0.999


@pytest.mark.slow
def test_server_with_onnx_runtime_answers_like_torch(
    tmp_path, onnx_cache, mean_export, monkeypatch
):
    from embedsvc.client import EmbedsvcClient
    from embedsvc.config import ServiceConfig
    from embedsvc.server import create_server

    monkeypatch.setenv("EMBEDSVC_CACHE_DIR", str(onnx_cache))  # the Engine sets it; restore after
    texts = ["A plane is taking off.", "A man is playing a large flute.", "hello " * 300]
    out = {}
    for runtime in ("torch", "onnx"):
        config = ServiceConfig(
            host="127.0.0.1",
            port=0,
            data_dir=tmp_path / runtime,
            cache_dir=onnx_cache,
            preload_strategies=["mean"],
            runtime=runtime,
        )
        service, port = create_server(config)
        service.start()
        try:
            with EmbedsvcClient(f"127.0.0.1:{port}", timeout=60) as client:
                client.wait_ready(timeout=120)
                out[runtime] = client.embed_response(texts, "mean", "passage")
                listed = {s.name: s for s in client.list_strategies()}
                assert listed["mean"].dim == 384
                assert listed["mean"].runtime == runtime  # ListStrategies says what serves it
        finally:
            service.stop(grace=1)
    from embedsvc.server.convert import tensor_to_numpy

    a, b = (tensor_to_numpy(out[r].vectors) for r in ("torch", "onnx"))
    assert _min_cos(a, b) >= 0.999
    assert list(out["torch"].token_counts) == list(out["onnx"].token_counts)
    assert list(out["torch"].truncated_tokens) == list(out["onnx"].truncated_tokens)


@pytest.mark.slow
@needs_stsb
def test_mltp_head_parity_fp32(tmp_path):
    """MLTP (every layer's last-token state + cross-attention head) in one graph.

    A freshly initialised head stands in for a trained artifact: parity is about the graph.
    """
    if "mltp" not in available_strategies():
        pytest.skip("mltp has not landed")
    import torch
    from safetensors.torch import save_file

    from embedsvc.strategies.mltp.model import HeadConfig, build_head

    artifact = tmp_path / "head"
    artifact.mkdir()
    cfg = HeadConfig(kind="mltp", dim=576, num_layers=30)
    torch.manual_seed(0)
    head = build_head(cfg)
    save_file(
        {k: v.contiguous() for k, v in head.state_dict().items()}, artifact / "head.safetensors"
    )
    (artifact / "head_config.json").write_text(cfg.model_dump_json())
    torch_s = create_strategy("mltp", artifact=str(artifact))
    export_strategy(torch_s, tmp_path / "onnx")
    served = load_export(tmp_path / "onnx")
    texts = _sentences(24) + ["ok"]
    ref, got = torch_s.encode(texts), served.encode(texts)
    assert _min_cos(ref.vectors, got.vectors) >= 0.999
    np.testing.assert_array_equal(ref.token_counts, got.token_counts)


def test_cli_export_refuses_a_strategy_without_a_transformer(tmp_path):
    from typer.testing import CliRunner

    from embedsvc.cli import app

    result = CliRunner().invoke(app, ["export", "--strategy", "debug", "--out", str(tmp_path)])
    assert result.exit_code == 2
    assert "no ONNX export" in result.output


@pytest.mark.slow
def test_cli_export_mean_int8(tmp_path):
    from typer.testing import CliRunner

    from embedsvc.cli import app

    out = tmp_path / "mean"
    result = CliRunner().invoke(app, ["export", "-s", "mean", "--out", str(out), "--int8"])
    assert result.exit_code == 0, result.output
    summary = _last_json(result.stdout)
    assert summary["files"] == ["model.onnx", "model_int8.onnx"]
    assert summary["parity"]["fp32"] >= 0.999
    served = load_export(out, int8=True)
    assert served.encode(["hello world"]).vectors.shape == (1, 384)


def _last_json(output: str) -> dict:
    """The command's JSON line (the last line of stdout starting with a brace)."""
    lines = [x.strip() for x in output.splitlines() if x.strip().startswith("{")]
    assert lines, output[-2000:]
    return json.loads(lines[-1])
