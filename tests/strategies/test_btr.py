"""BTR: bit packing, payloads, calibration round trips, and the generic payload/rescore hooks.

Everything but the last test runs on synthetic tensors (no model); the model test is ``slow``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from trainlib.btr import fit_calibration, fit_projection

from embedsvc.collections import CollectionManager
from embedsvc.engine import Engine
from embedsvc.strategies.base import Embedding, Strategy
from embedsvc.strategies.btr import decode_payload, encode_payload, pack_bits, unpack_bits
from embedsvc.strategies.btr.model import (
    Calibration,
    binarize_hashnet,
    binarize_ste,
    naive_roundtrip,
    sentence_bits,
)

ROOT = Path(__file__).resolve().parents[2]


def _states(n: int = 512, d: int = 64, seed: int = 0) -> np.ndarray:
    """BERT-like states: per-dimension offsets and scales far from (0, 1), a few outlier dims."""
    rng = np.random.default_rng(seed)
    mu = rng.normal(0, 2, d)
    sd = rng.uniform(0.2, 3.0, d)
    sd[:2] = 15.0
    return (mu + sd * rng.standard_normal((n, d)) * rng.uniform(0.5, 1.5, (n, 1))).astype(
        np.float32
    )


def test_pack_unpack_round_trip() -> None:
    bits = np.random.default_rng(0).random((7, 384)) > 0.5
    codes = pack_bits(bits)
    assert codes.shape == (7, 48) and codes.dtype == np.uint8
    assert np.array_equal(unpack_bits(codes, 384), bits)


def test_payload_round_trip_and_size() -> None:
    rng = np.random.default_rng(1)
    bits = rng.random((13, 384)) > 0.5
    scales = rng.uniform(0.1, 3, 13).astype(np.float32)
    payload = encode_payload(bits, scales)
    # 48 bytes of bits + 2 bytes of fp16 scale per token, plus a 9-byte header
    assert len(payload) == 9 + 13 * 50
    b2, s2 = decode_payload(payload)
    assert np.array_equal(b2, bits)
    np.testing.assert_allclose(s2, scales, rtol=1e-3)


def test_calibration_statistics() -> None:
    x = _states()
    centre, mag = fit_calibration(x)
    bits = x >= centre
    # median centre: every bit is (nearly) balanced
    assert np.abs(bits.mean(0) - 0.5).max() < 0.01
    np.testing.assert_allclose(mag, np.abs(x - centre).mean(0), rtol=1e-5)


def test_calibrated_round_trip_beats_naive_sign() -> None:
    x = torch.from_numpy(_states())
    calib = Calibration(*fit_calibration(x.numpy()), rank=0)
    rec = calib.roundtrip(x)
    naive = naive_roundtrip(x)
    cos = torch.nn.functional.cosine_similarity
    assert cos(rec, x, dim=-1).mean() > cos(naive, x, dim=-1).mean() + 0.1
    assert ((rec - x) ** 2).mean() < ((naive - x) ** 2).mean()


def test_codes_are_stable_under_reencoding() -> None:
    """Binarising a reconstruction gives back the same bits and scale (a fixed point)."""
    x = torch.from_numpy(_states())
    calib = Calibration(*fit_calibration(x.numpy()), rank=0)
    bits, scale = calib.encode(x)
    rec = calib.reconstruct(bits.float() * 2 - 1, scale)
    bits2, scale2 = calib.encode(rec)
    assert torch.equal(bits, bits2)
    torch.testing.assert_close(scale, scale2, rtol=1e-4, atol=1e-5)


def test_adapter_starts_as_identity_and_ste_has_gradient() -> None:
    x = torch.from_numpy(_states(64))
    c0 = Calibration(*fit_calibration(x.numpy()), rank=0)
    c8 = Calibration(*fit_calibration(x.numpy()), rank=8)
    torch.testing.assert_close(c0.roundtrip(x), c8.roundtrip(x))
    y = c8.roundtrip(x, mode="ste")
    y.pow(2).mean().backward()
    assert c8.centre.grad is not None and c8.centre.grad.abs().sum() > 0
    assert c8.up.grad is not None and c8.up.grad.abs().sum() > 0


def test_binarizers() -> None:
    x = torch.linspace(-2, 2, 9, requires_grad=True)
    y = binarize_ste(x)
    assert set(y.detach().tolist()) == {-1.0, 1.0}
    y.sum().backward()
    torch.testing.assert_close(x.grad, 1 - torch.tanh(x.detach()) ** 2)
    assert torch.allclose(binarize_hashnet(x.detach(), 1e4), torch.sign(x.detach()))


def test_sentence_projection_preserves_neighbours() -> None:
    rng = np.random.default_rng(3)
    x = rng.standard_normal((400, 64)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    mu, proj = fit_projection(x, 32)
    assert proj.shape == (32, 64)
    b = sentence_bits(torch.from_numpy(x), torch.from_numpy(mu), torch.from_numpy(proj)).numpy()
    assert abs(b.mean() - 0.5) < 0.05
    # a near-duplicate is closer in Hamming distance than a random other vector
    near = x[0] + 0.05 * rng.standard_normal(64).astype(np.float32)
    bn = sentence_bits(
        torch.from_numpy(near[None]), torch.from_numpy(mu), torch.from_numpy(proj)
    ).numpy()[0]
    assert (bn != b[0]).sum() < np.median((b[1:] != b[0]).sum(1))


class _FakeRescorer(Strategy):
    """A model-free strategy exercising the generic hooks: binary codes + byte payloads; the
    rescore is 'payload byte value', so the expected order is known."""

    name = "fake_rescorer"
    output_kind = "binary"
    rescore_depth = 5

    dim = 8  # type: ignore[assignment]
    max_tokens = 16  # type: ignore[assignment]
    model_fingerprint = "fake"  # type: ignore[assignment]

    def count_tokens(self, texts, role=None):
        return [1] * len(texts)

    def encode(self, texts, role=None, *, normalize=True, truncate=True):
        codes = np.zeros((len(texts), 1), np.uint8)  # all candidates tie in Hamming distance
        emb = Embedding("binary", codes, 8, np.ones(len(texts), np.int64), np.zeros(len(texts)))
        emb.payloads = [bytes([int(t.split()[-1])]) for t in texts]
        return emb

    def rescore(self, queries, candidates):
        return [np.array([c[0] for c in row], dtype=np.float32) for row in candidates]


def test_payloads_stored_with_documents_and_deleted(tmp_path: Path) -> None:
    m = CollectionManager(tmp_path / "data")
    col = m.create("c", strategy="fake_rescorer", output_kind="binary", dim=8, index_kind="binary")
    strat = _FakeRescorer()
    texts = [f"doc {i}" for i in range(6)]
    col.upsert([f"d{i}" for i in range(6)], texts, None, strat.encode(texts))
    assert col.payloads(["d3", "zz"]) == {"d3": bytes([3])}
    col.upsert(["d3"], ["doc 9"], None, strat.encode(["doc 9"]))  # update rewrites it
    assert col.payloads(["d3"]) == {"d3": bytes([9])}
    col.delete(["d3"])
    assert col.payloads(["d3"]) == {}
    m.close()
    m2 = CollectionManager(tmp_path / "data")  # persisted
    assert m2.get("c").payloads(["d4"]) == {"d4": bytes([4])}
    m2.close()


def test_engine_rescores_a_deeper_candidate_list(tmp_path: Path, monkeypatch) -> None:
    from embedsvc.config import ServiceConfig

    monkeypatch.setenv("EMBEDSVC_CACHE_DIR", os.environ.get("EMBEDSVC_CACHE_DIR", str(tmp_path)))
    engine = Engine(ServiceConfig(data_dir=tmp_path / "data", cache_dir=tmp_path / "cache"))
    strat = _FakeRescorer()
    monkeypatch.setattr(engine, "strategy", lambda name=None: strat)
    engine.collections.create(
        "c", strategy="fake_rescorer", output_kind="binary", dim=8, index_kind="binary"
    )
    from embedsvc.engine import Document

    engine.upsert("c", [Document(f"d{i}", f"doc {i}") for i in range(8)])
    hits = engine.search("c", ["q 0"], top_k=2)[0]
    # the index returns 5 tied candidates; rescoring picks the two largest payloads among them
    assert len(hits) == 2 and hits[0].score >= hits[1].score
    assert hits[0].score == max(int(h) for h in [h.id[1:] for h in hits])
    engine.close()


@pytest.mark.slow
def test_btr_strategy_end_to_end() -> None:
    """The shipped artifact: codes, payload sizes, re-embedding close to the float model."""
    from embedsvc.strategies import create_strategy

    art = ROOT / "embedsvc" / "artifacts" / "btr" / "btr.npz"
    if not art.is_file():
        pytest.skip("BTR artifact not built")
    torch.set_num_threads(2)
    s = create_strategy("btr")
    texts = ["The cat sat on the mat.", "Binary codes make retrieval storage small."]
    emb = s.encode(texts)
    assert emb.kind == "binary" and emb.vectors.shape == (2, s.dim // 8)
    assert emb.payloads is not None and len(emb.payloads) == 2
    bits, _ = decode_payload(emb.payloads[0])
    assert bits.shape[1] == 384
    q = s.query_vectors(texts)
    r = s.reembed(emb.payloads)
    assert (np.sum(q * r, axis=1) > 0.8).all()
    assert s.encode(texts, role="query").payloads is None
    scores = s.rescore(["a cat on a mat"], [emb.payloads])
    assert scores[0][0] > scores[0][1]


@pytest.mark.slow
def test_btr_collection_two_stage_search(tmp_path: Path) -> None:
    """A ``btr`` collection works out of the box: binary index + stored codes + re-ranking."""
    from embedsvc.config import ServiceConfig
    from embedsvc.engine import Document

    if not (ROOT / "embedsvc" / "artifacts" / "btr" / "btr.npz").is_file():
        pytest.skip("BTR artifact not built")
    torch.set_num_threads(2)
    engine = Engine(ServiceConfig(data_dir=tmp_path / "data"))
    try:
        info = engine.create_collection("b", strategy="btr")
        assert info.index_kind == "binary"
        docs = [
            "Cats are small domesticated felines kept as pets.",
            "The stock market fell sharply on Monday.",
            "Photosynthesis converts light into chemical energy in plants.",
        ]
        engine.upsert("b", [Document(f"d{i}", t) for i, t in enumerate(docs)])
        stored = engine.collections.get("b").payloads(["d0"])
        assert len(stored["d0"]) > 48  # token codes are stored beside the document
        hits = engine.search("b", ["how do plants make energy from sunlight"], top_k=2)[0]
        assert hits[0].id == "d2" and -1.0 <= hits[0].score <= 1.0
    finally:
        engine.close()
