"""ONNX export of the trained-artifact strategies: parity with torch and ONNX serving.

``dupmae*`` (top-k + hashed scatter-add in the graph), ``btr`` (sentence codes + token-code
payloads), ``multisense`` / ``multisense_student`` (a real sense dictionary, built here from
STS-B sentences, as a graph initializer), ``text2token*`` (LoRA-merged SmolLM2) and the shipped
``mltp`` / ``m2`` / ``eos_linear`` pooling heads. Every graph must reproduce the torch
strategy's vectors (cosine >= 0.999 fp32) on real sentences.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime")

from embedsvc.errors import FailedPrecondition  # noqa: E402
from embedsvc.eval.data import read_sts  # noqa: E402
from embedsvc.export.onnx import export_strategy, read_manifest  # noqa: E402
from embedsvc.runtimes.base import load_export  # noqa: E402
from embedsvc.strategies import Role, available_strategies, create_strategy  # noqa: E402

STSB = Path("/work/shared/data/stsb/sts-dev.csv")
ROOT = Path(__file__).resolve().parents[2]
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not STSB.is_file(), reason="STS-B dev not available"),
]

DUPMAE = ["dupmae", "dupmae_cls", "dupmae_ot", "dupmae_pt", "dupmae_pt_cls", "dupmae_pt_ot"]
TEXT2TOKEN = ["text2token", "text2token_s1", "text2token_base"]


def _unique_sentences() -> list[str]:
    pairs = read_sts(STSB)
    return list(dict.fromkeys(pairs.sentences1 + pairs.sentences2))


def _sentences(n: int, offset: int = 0) -> list[str]:
    """``n`` distinct STS-B dev sentences spread over the file, plus two very short texts."""
    unique = _unique_sentences()
    step = max(1, len(unique) // n)
    return unique[offset::step][:n] + ['He asked: "why not?"', "ok"]


def _min_cos(a: np.ndarray, b: np.ndarray) -> float:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return float((a * b).sum(1).min())


def _strategy(name: str, **config):
    if name not in available_strategies():
        pytest.skip(f"{name} has not landed")
    s = create_strategy(name, **config)
    try:
        _ = s.fingerprint  # loads the artifact: a missing one is a skip, not a failure
    except FailedPrecondition as exc:
        pytest.skip(f"{name}: {exc}")
    return s


def _check_dense(torch_s, served, texts: list[str]) -> float:
    ref, got = torch_s.encode(texts), served.encode(texts)
    cos = _min_cos(ref.vectors, got.vectors)
    assert cos >= 0.999, cos
    np.testing.assert_array_equal(ref.token_counts, got.token_counts)
    np.testing.assert_array_equal(ref.truncated_tokens, got.truncated_tokens)
    assert np.allclose(np.linalg.norm(got.vectors, axis=1), 1.0, atol=1e-5)
    # alone (no padding in its batch) it gets the vector it gets in a padded batch
    assert _min_cos(ref.vectors[:1], served.encode(texts[:1]).vectors) >= 0.999
    return cos


@pytest.mark.parametrize("name", DUPMAE)
def test_dupmae_parity_fp32(name, tmp_path):
    torch_s = _strategy(name)
    manifest = export_strategy(torch_s, tmp_path)
    assert manifest["parity"]["fp32"] >= 0.999
    served = load_export(tmp_path)
    # 14 sentences + two short texts ("ok": one ordinary token, fewer than top_k active ids)
    _check_dense(torch_s, served, _sentences(14) + ["x " * 300])
    raw = served.encode(["A plane is taking off."], normalize=False).vectors
    assert np.allclose(np.linalg.norm(raw, axis=1), 1.0, atol=1e-5)  # unit by design


def test_dupmae_graph_has_topk_and_scatter_add(tmp_path):
    import onnx

    export_strategy(_strategy("dupmae_ot"), tmp_path)
    graph = onnx.load(str(tmp_path / "model.onnx"), load_external_data=False).graph
    ops = {n.op_type: n for n in graph.node}
    assert "TopK" in ops and "ScatterElements" in ops
    reduction = {a.name: a.s for a in ops["ScatterElements"].attribute}["reduction"]
    assert reduction == b"add"


def test_btr_codes_and_payloads_match_torch(tmp_path):
    from embedsvc.strategies.btr import decode_payload, unpack_bits

    torch_s = _strategy("btr")
    export_strategy(torch_s, tmp_path)
    manifest = read_manifest(tmp_path)
    assert list(manifest["outputs"]) == ["projection", "token_bits", "token_scales", "pooled"]
    assert manifest["parity"]["measure"] == "equal_bits" and manifest["parity"]["fp32"] >= 0.999
    served = load_export(tmp_path)  # the serving path, rebuilt from the manifest
    texts = _sentences(16)
    ref, got = torch_s.encode(texts, Role.PASSAGE), served.encode(texts, Role.PASSAGE)
    assert got.kind == "binary" and got.vectors.dtype == np.uint8
    assert got.vectors.shape == ref.vectors.shape == (len(texts), torch_s.dim // 8)
    a, b = unpack_bits(ref.vectors, torch_s.dim), unpack_bits(got.vectors, torch_s.dim)
    assert (a == b).mean() >= 0.999  # a bit may flip only where the projection is ~0
    np.testing.assert_array_equal(ref.token_counts, got.token_counts)
    assert got.payloads is not None and len(got.payloads) == len(texts)
    same = total = 0
    for x, y in zip(ref.payloads, got.payloads, strict=True):
        (b1, s1), (b2, s2) = decode_payload(x), decode_payload(y)
        assert b1.shape == b2.shape and (b1 == b2).mean() >= 0.99  # "ok": 3 tokens x 384 bits
        same, total = same + int((b1 == b2).sum()), total + b1.size
        np.testing.assert_allclose(s1, s2, rtol=2e-3)
    assert same / total >= 0.9995  # measured: 1 bit in ~9 000 flips (a state at its centre)
    # queries: codes only, no payloads (as torch)
    q = served.encode(texts[:3], Role.QUERY)
    assert q.payloads is None
    qa, qb = unpack_bits(q.vectors, torch_s.dim), unpack_bits(got.vectors[:3], torch_s.dim)
    assert (qa == qb).mean() >= 0.99
    # re-ranking from the ONNX-made payloads scores like re-ranking from torch's
    s_onnx = served.rescore(texts[:2], [got.payloads[:4], got.payloads[:4]])
    s_torch = torch_s.rescore(texts[:2], [ref.payloads[:4], ref.payloads[:4]])
    for x, y in zip(s_onnx, s_torch, strict=True):
        np.testing.assert_allclose(x, y, atol=2e-3)


@pytest.fixture(scope="module")
def sense_dictionary(tmp_path_factory) -> Path:
    """A small real dictionary: MiniLM's last-layer states over 60 STS-B sentences, k-means."""
    spec = importlib.util.spec_from_file_location(
        "build_sense_dictionary", ROOT / "training" / "build_sense_dictionary.py"
    )
    mod = importlib.util.module_from_spec(spec)
    sys.modules["build_sense_dictionary"] = mod
    spec.loader.exec_module(mod)
    tmp = tmp_path_factory.mktemp("senses")
    corpus = tmp / "corpus.txt"
    corpus.write_text("\n".join(_unique_sentences()[:60]))
    out = tmp / "dict"
    mod.build(
        mod.BuildConfig(
            corpus=[str(corpus)],
            max_passages=60,
            max_length=64,
            max_k=4,
            threads=1,
            out_dir=str(out),
        )
    )
    return out


@pytest.mark.parametrize("name", ["multisense", "multisense_student"])
def test_multisense_parity_fp32(name, sense_dictionary, tmp_path):
    torch_s = _strategy(name, dictionary=str(sense_dictionary))
    manifest = export_strategy(torch_s, tmp_path)
    served = load_export(tmp_path)
    notes = " ".join(manifest["notes"])
    assert "sense dictionary in the graph" in notes
    # sentences the dictionary was built from (every token has senses) and unseen ones
    texts = _unique_sentences()[:6] + _sentences(12, offset=1)
    _check_dense(torch_s, served, texts)
    # the Senses RPC's inspection reads the same core's sense ids, whichever runtime runs it
    assert served.senses(texts[:1], neighbours=1) == torch_s.senses(texts[:1], neighbours=1)
    # replacement really happened: the vectors differ from plain pooling of the same model
    plain = _strategy(name, dictionary=str(sense_dictionary), replace=False)
    assert _min_cos(plain.encode(texts[:6]).vectors, served.encode(texts[:6]).vectors) < 0.9999


@pytest.mark.parametrize("name", ["multisense", "multisense_student"])
def test_multisense_int8_export_keeps_the_dictionary(name, sense_dictionary, tmp_path):
    """``--int8`` quantises the encoder but not the fp16 dictionary (ORT would write an invalid
    graph for it; a lookup table is not a weight to approximate)."""
    import onnx

    torch_s = _strategy(name, dictionary=str(sense_dictionary))
    manifest = export_strategy(torch_s, tmp_path, quantize_int8=True)
    assert manifest["int8"] and manifest["parity"]["int8"] > 0.5
    graph = onnx.load(str(tmp_path / "model_int8.onnx")).graph
    fp16 = [i for i in graph.initializer if i.data_type == onnx.TensorProto.FLOAT16]
    assert [i.name for i in fp16] == ["centroids"]
    served = load_export(tmp_path, int8=True)
    assert served.encode(["A plane is taking off."]).vectors.shape == (1, 384)


@pytest.mark.parametrize("name", ["mltp", "m2", "eos_linear"])
def test_pooling_heads_shipped_artifacts_parity_fp32(name, tmp_path):
    """The trained SmolLM2 pooling heads (``embedsvc/artifacts/*-smollm2``) in one graph."""
    torch_s = _strategy(name, batch_size=8)
    manifest = export_strategy(torch_s, tmp_path)
    assert manifest["parity"]["fp32"] >= 0.999
    _check_dense(torch_s, load_export(tmp_path), _sentences(10))


@pytest.mark.parametrize("name", TEXT2TOKEN)
def test_text2token_parity_fp32(name, tmp_path):
    torch_s = _strategy(name, batch_size=8)
    manifest = export_strategy(torch_s, tmp_path)
    assert manifest["parity"]["fp32"] >= 0.999
    _check_dense(torch_s, load_export(tmp_path), _sentences(10))


def test_btr_collection_served_by_onnx_runtime(tmp_path, monkeypatch):
    """``runtime="onnx"``: a ``btr`` collection indexes through the graph (codes + stored token
    codes) and its two-stage search ranks like the torch runtime's."""
    from embedsvc.config import ServiceConfig
    from embedsvc.engine import Document, Engine

    _strategy("btr")
    docs = [
        "Cats are small domesticated felines kept as pets.",
        "The stock market fell sharply on Monday.",
        "Photosynthesis converts light into chemical energy in plants.",
        "A man is playing a guitar on the street.",
    ]
    queries = ["how do plants make energy from sunlight", "someone plays music outdoors"]
    results = {}
    for runtime in ("torch", "onnx"):
        monkeypatch.setenv("EMBEDSVC_CACHE_DIR", str(tmp_path / "cache"))  # restored after
        engine = Engine(
            ServiceConfig(
                data_dir=tmp_path / runtime,
                cache_dir=tmp_path / "cache",
                runtime=runtime,
                preload_strategies=["btr"],
            )
        )
        try:
            engine.preload()  # start-up: the ONNX export happens here, never in a request
            if runtime == "onnx":
                assert engine.strategy("btr").executor.name == "onnx"
            engine.create_collection("b", strategy="btr")
            engine.upsert("b", [Document(f"d{i}", t) for i, t in enumerate(docs)])
            payloads = engine.collections.get("b").payloads([f"d{i}" for i in range(4)])
            hits = engine.search("b", queries, top_k=2)
            results[runtime] = (payloads, [[(h.id, h.score) for h in row] for row in hits])
        finally:
            engine.close()
    (p_torch, h_torch), (p_onnx, h_onnx) = results["torch"], results["onnx"]
    assert set(p_onnx) == set(p_torch) and all(len(p_onnx[k]) == len(p_torch[k]) for k in p_torch)
    assert h_onnx[0][0][0] == "d2" and h_onnx[1][0][0] == "d3"
    for row_t, row_o in zip(h_torch, h_onnx, strict=True):
        assert [i for i, _ in row_t] == [i for i, _ in row_o]
        np.testing.assert_allclose([s for _, s in row_t], [s for _, s in row_o], atol=2e-3)
