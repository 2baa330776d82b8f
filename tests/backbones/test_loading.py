"""Backbone registry, folder loading, and the SmolLM2 GGUF -> HF conversion cache."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from embedsvc.backbones import (
    available_backbones,
    backbone_path,
    load_backbone,
    register_backbone,
)
from embedsvc.backbones import smollm2 as smollm2_mod
from embedsvc.backbones.loading import (
    file_fingerprint,
    folder_fingerprint,
    is_decoder_config,
    load_folder,
)
from embedsvc.errors import NotFound


def test_named_backbones_are_registered() -> None:
    assert {"minilm", "smollm2"} <= set(available_backbones())


def test_unknown_name_is_not_found_and_lists_valid_names() -> None:
    with pytest.raises(NotFound) as info:
        load_backbone("no-such-backbone")
    assert info.value.field == "backbone"
    assert "minilm" in info.value.message and "smollm2" in info.value.message
    with pytest.raises(NotFound):
        backbone_path("/definitely/not/a/folder")


def test_register_twice_with_another_resolver_fails() -> None:
    with pytest.raises(ValueError):
        register_backbone("minilm", lambda cache_dir: cache_dir)


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        (SimpleNamespace(architectures=["BertModel"], model_type="bert"), False),
        (SimpleNamespace(architectures=["LlamaForCausalLM"], model_type="llama"), True),
        (SimpleNamespace(architectures=None, model_type="qwen2"), True),
        (SimpleNamespace(architectures=None, model_type="roberta", is_decoder=True), True),
        (SimpleNamespace(architectures=["XLMRobertaModel"], model_type="xlm-roberta"), False),
    ],
)
def test_is_decoder_config(config: SimpleNamespace, expected: bool) -> None:
    assert is_decoder_config(config) is expected


def test_fingerprint_tracks_weights_not_other_files(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"\0" * (3 << 20))
    first = folder_fingerprint(tmp_path)
    (tmp_path / "README.md").write_text("docs do not count")
    assert folder_fingerprint(tmp_path) == first
    weights.write_bytes(b"\0" * (3 << 20 - 1) + b"\1")  # last MiB changes
    assert folder_fingerprint(tmp_path) != first
    assert len(first) == 16


def test_fingerprint_ignores_the_writing_transformers_version(tmp_path: Path) -> None:
    """A checkpoint converted under another transformers release (which stamps its version into
    config.json) keeps its fingerprint, so the artifacts trained on it still load; a real
    config change still changes it."""
    (tmp_path / "model.safetensors").write_bytes(b"\0" * 1024)
    config = {"hidden_size": 576, "transformers_version": "5.23.0"}
    (tmp_path / "config.json").write_text(json.dumps(config, indent=2))
    first = folder_fingerprint(tmp_path)
    config["transformers_version"] = "5.24.0"
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert folder_fingerprint(tmp_path) == first
    config["hidden_size"] = 960
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert folder_fingerprint(tmp_path) != first


# --- conversion cache logic, with a fake converter (milliseconds) ----------------------------


def _fake_convert(calls: list[Path], fail: bool = False):
    def convert(gguf: Path, out_dir: Path) -> None:
        calls.append(out_dir)
        (out_dir / "config.json").write_text("{}")
        if fail:
            raise RuntimeError("boom")
        (out_dir / smollm2_mod.MARKER).write_text(
            json.dumps({"source_fingerprint": file_fingerprint(gguf)})
        )

    return convert


def test_conversion_runs_once_and_is_atomic(tmp_path: Path, monkeypatch) -> None:
    calls: list[Path] = []
    parent = tmp_path / "backbones"
    parent.mkdir()
    stale = parent / f".{smollm2_mod.CACHE_NAME}.tmp-crashed"
    stale.mkdir()  # left by a killed conversion
    monkeypatch.setattr(smollm2_mod, "convert_gguf", _fake_convert(calls))
    target = smollm2_mod.smollm2_folder(tmp_path)
    assert target == parent / smollm2_mod.CACHE_NAME
    assert (target / smollm2_mod.MARKER).is_file()
    assert len(calls) == 1 and calls[0].parent == parent  # built beside the target, then renamed
    assert not stale.exists()
    assert smollm2_mod.smollm2_folder(tmp_path) == target
    assert len(calls) == 1  # cached


def test_outdated_conversion_is_replaced(tmp_path: Path, monkeypatch) -> None:
    target = tmp_path / "backbones" / smollm2_mod.CACHE_NAME
    target.mkdir(parents=True)
    (target / smollm2_mod.MARKER).write_text(json.dumps({"source_fingerprint": "old"}))
    calls: list[Path] = []
    monkeypatch.setattr(smollm2_mod, "convert_gguf", _fake_convert(calls))
    assert smollm2_mod.smollm2_folder(tmp_path) == target
    assert len(calls) == 1
    assert json.loads((target / smollm2_mod.MARKER).read_text())["source_fingerprint"] != "old"


def test_failed_conversion_leaves_nothing_behind(tmp_path: Path, monkeypatch) -> None:
    calls: list[Path] = []
    monkeypatch.setattr(smollm2_mod, "convert_gguf", _fake_convert(calls, fail=True))
    with pytest.raises(RuntimeError):
        smollm2_mod.smollm2_folder(tmp_path)
    leftovers = [p.name for p in (tmp_path / "backbones").iterdir() if not p.name.endswith(".lock")]
    assert leftovers == []


# --- real weights -------------------------------------------------------------------------


@pytest.mark.slow
def test_minilm_loads_as_served_by_sentence_transformers(model_cache_dir: Path) -> None:
    bb = load_backbone("minilm", model_cache_dir)
    assert bb.kind == "encoder"
    assert bb.max_length == 256  # sentence_bert_config.json, not BERT's 512 positions
    assert (bb.hidden_size, bb.num_layers) == (384, 6)
    assert not bb.model.training
    assert bb.tokenizer.pad_token_id == 0
    assert len(bb.fingerprint) == 16
    assert load_backbone("minilm", model_cache_dir) is bb  # one copy per process


@pytest.mark.slow
def test_concurrent_loads_share_one_instance(model_cache_dir: Path) -> None:
    path = str(backbone_path("minilm"))
    results: list[object] = []
    threads = [
        threading.Thread(target=lambda: results.append(load_backbone(path))) for _ in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 4 and all(r is results[0] for r in results)
    assert results[0].kind == "encoder" and results[0].name == path


@pytest.mark.slow
def test_smollm2_converted_folder_loads_fast_and_predicts(model_cache_dir: Path) -> None:
    import torch

    folder = backbone_path("smollm2", model_cache_dir)  # converts on the very first run only
    assert (folder / "model.safetensors").is_file() and (folder / smollm2_mod.MARKER).is_file()
    start = time.perf_counter()
    bb = load_folder(folder, name="smollm2")  # bypass the process cache: time a real load
    elapsed = time.perf_counter() - start
    assert elapsed < 20, f"cached SmolLM2 load took {elapsed:.1f} s"
    assert bb.kind == "decoder"
    assert type(bb.model).__name__ == "LlamaForCausalLM"
    assert bb.model.dtype == torch.float32 and not bb.model.training
    assert (bb.hidden_size, bb.num_layers, bb.max_length) == (576, 30, 8192)

    tok = bb.tokenizer
    assert tok.padding_side == "right"
    assert (tok.pad_token_id, tok.eos_token_id, tok.bos_token_id) == (2, 2, 1)
    assert tok.eos_token == "<|im_end|>"
    ids = tok("The capital of France is")["input_ids"]
    assert ids[0] != tok.bos_token_id and ids[-1] != tok.eos_token_id  # no BOS/EOS added

    with torch.inference_mode():
        logits = bb.model(torch.tensor([ids])).logits[0, -1]
    assert torch.isfinite(logits).all()
    assert "Paris" in tok.decode([int(logits.argmax())])


@pytest.mark.slow
def test_smollm2_by_name_and_by_path_are_decoders(model_cache_dir: Path) -> None:
    bb = load_backbone("smollm2", model_cache_dir)
    assert bb.kind == "decoder"
    assert load_backbone(str(bb.source)).kind == "decoder"
