"""``dupmae_dual``: its dense channel is the ``mean`` strategy bit for bit, its sparse channel
is exactly sparse over the text's own tokens, and Embed / upsert / fused Search carry both."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from embedsvc.strategies.base import Role

pytestmark = pytest.mark.slow

TEXTS = [
    "Vitamin D deficiency is associated with higher mortality.",
    "The the the of of a",
    "Aspirin reduces the risk of colorectal cancer in long-term users.",
]


@pytest.fixture(scope="module")
def artifact(tmp_path_factory) -> Path:
    """A random (but non-trivial) head with the real backbone fingerprint."""
    from safetensors.torch import save_file

    from embedsvc.backbones import load_backbone
    from embedsvc.strategies.dupmae.exact import ExactTermHead

    folder = tmp_path_factory.mktemp("dual")
    torch.manual_seed(0)
    head = ExactTermHead(384, 8)
    torch.nn.init.normal_(head.net[-1].weight, std=0.5)
    save_file(head.state_dict(), str(folder / "head.safetensors"))
    backbone = load_backbone("minilm")
    (folder / "head_config.json").write_text(
        json.dumps(
            {"hidden": 384, "inner": 8, "vocab_size": len(backbone.tokenizer), "fusion_weight": 0.6}
        )
    )
    (folder / "manifest.json").write_text(
        json.dumps({"base_model": {"name": "minilm", "fingerprint": backbone.fingerprint}})
    )
    return folder


def test_dense_is_mean_and_sparse_is_exact(artifact: Path) -> None:
    from embedsvc.strategies import create_strategy, get_strategy

    dual = create_strategy("dupmae_dual", artifact=str(artifact))
    emb = dual.encode(TEXTS, Role.QUERY)
    mean = get_strategy("mean").encode(TEXTS, Role.QUERY)
    np.testing.assert_allclose(emb.vectors, mean.vectors, atol=1e-5)
    assert emb.sparse.shape == (3, dual.sparse_vocab)
    tok = dual.backbone.tokenizer
    for i, text in enumerate(TEXTS):
        own = set(tok(text, add_special_tokens=False)["input_ids"])
        row = emb.sparse[i]
        assert set(row.indices.tolist()) <= own  # exact: only the text's own tokens
        assert (row.data > 0).all()
    # role is ignored; batches and single texts agree
    one = dual.encode(TEXTS[2:], Role.PASSAGE)
    np.testing.assert_allclose(one.sparse.toarray(), emb.sparse[2].toarray(), atol=1e-5)
    assert dual.fusion_weight == 0.6
    assert (
        create_strategy("dupmae_dual", artifact=str(artifact), fusion_weight=0.2).fusion_weight
        == 0.2
    )


def test_engine_embed_upsert_and_fused_search(artifact: Path, tmp_path: Path, monkeypatch) -> None:
    from embedsvc.config import ServiceConfig
    from embedsvc.engine import Document, Engine
    from embedsvc.server.servicer import sparse_to_proto
    from embedsvc.strategies import base, create_strategy

    dual = create_strategy("dupmae_dual", artifact=str(artifact))
    monkeypatch.setitem(base._INSTANCES, "dupmae_dual", dual)
    monkeypatch.setenv("EMBEDSVC_CACHE_DIR", str(ServiceConfig().cache_dir))
    engine = Engine(ServiceConfig(data_dir=tmp_path / "data", preload_strategies=[]))
    try:
        emb = engine.embed(TEXTS, strategy="dupmae_dual")
        assert emb.sparse is not None and emb.sparse.shape[0] == 3
        msgs = sparse_to_proto(emb.sparse)
        assert [len(m.indices) for m in msgs] == emb.sparse.getnnz(axis=1).tolist()
        engine.create_collection("c", strategy="dupmae_dual")
        assert engine.collections.get("c").meta.sparse_vocab == dual.sparse_vocab
        engine.upsert("c", [Document(f"d{i}", t) for i, t in enumerate(TEXTS)])
        hits = engine.search("c", ["aspirin and colorectal cancer"], top_k=3)[0]
        assert hits[0].id == "d2"
        assert engine.collections.get("c").describe()["sparse_count"] == 3
    finally:
        engine.close()


def test_onnx_export_serves_both_channels(artifact: Path, tmp_path: Path) -> None:
    from embedsvc.export.onnx import export_strategy
    from embedsvc.runtimes.base import load_export
    from embedsvc.strategies import create_strategy

    dual = create_strategy("dupmae_dual", artifact=str(artifact))
    export_strategy(dual, tmp_path)  # traces dual.core, the module torch serves
    served = load_export(tmp_path, threads=1)
    assert served.model_fingerprint == dual.model_fingerprint
    ref, got = dual.encode(TEXTS), served.encode(TEXTS)
    np.testing.assert_allclose(got.vectors, ref.vectors, atol=1e-4)
    assert got.payloads is None and got.sparse.shape == ref.sparse.shape
    np.testing.assert_allclose(got.sparse.toarray(), ref.sparse.toarray(), atol=1e-4)
