"""Generate through an in-process server: streaming, stats, identity to greedy, error codes."""

from __future__ import annotations

import json

import grpc
import pytest

from embedsvc.v1 import generation_service_pb2 as gpb
from embedsvc.v1 import generation_service_pb2_grpc as ggrpc

CORPUS = [
    {
        "instruction": "What are the distinct values in a list?",
        "input": "[3, 9, 3, 5]",
        "output": "The distinct values are 3, 5 and 9. Use set(values) in Python.",
    },
    {"instruction": "Sort a list in Python.", "input": "", "output": "Use sorted(values)."},
]


@pytest.fixture
def gen(client, monkeypatch, tmp_path):
    """(client, stub); datastores resolve under tmp_path (never the user's cache)."""
    import embedsvc.rag.datastore as dsmod

    root = tmp_path / "cache" / "datastores"
    monkeypatch.setattr(dsmod, "datastore_root", lambda cache_dir=None: root)
    return client, ggrpc.GenerationServiceStub(client.channel)


def _collect(stub, **fields) -> list[gpb.GenerateResponse]:
    return list(stub.Generate(gpb.GenerateRequest(**fields), timeout=120))


def _code(stub, **fields) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as err:
        _collect(stub, **fields)
    return err.value.code()


def test_errors_are_status_codes(gen):
    client, stub = gen
    assert client.health("embedsvc.v1.GenerationService") == "SERVING"
    assert _code(stub, prompt="hi", drafter="medusa") == grpc.StatusCode.INVALID_ARGUMENT
    assert _code(stub, prompt="hi", drafter="dresd", datastore="nope") == (
        grpc.StatusCode.FAILED_PRECONDITION
    )
    assert _code(stub, prompt="hi", drafter="rest", datastore="../x") == (
        grpc.StatusCode.INVALID_ARGUMENT
    )
    assert _code(stub, prompt="hi", max_new_tokens=100_000) == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.slow
def test_generate_streams_identical_tokens_with_context_and_stats(gen, tmp_path):
    from embedsvc.backbones import load_backbone
    from embedsvc.rag.datastore import DatastoreConfig, build_datastore

    client, stub = gen
    backbone = load_backbone("smollm2")
    corpus = tmp_path / "corpus.json"
    corpus.write_text(json.dumps(CORPUS))
    build_datastore(
        "tiny",
        [corpus],
        DatastoreConfig(form="ood", max_seq_tokens=96),
        backbone=backbone,
    )
    client.create_collection("kb", strategy="debug")
    client.upsert("kb", [{"id": f"d{i}", "text": f"note {i} about lists"} for i in range(12)])
    base = dict(
        messages=[gpb.ChatMessage(role="user", content="What are the distinct values in a list?")],
        max_new_tokens=12,
        num_drafts=4,
        context=gpb.ContextOptions(collection="kb", buffer=1),
    )
    plain = _collect(stub, drafter="none", **base)
    drafted = _collect(stub, drafter="dresd", datastore="tiny", **base)
    rest = _collect(stub, drafter="rest", datastore="tiny", **base)
    ids = [t for r in plain for t in r.token_ids]
    assert len(ids) == plain[-1].stats.new_tokens <= 12
    for stream in (drafted, rest):
        assert [t for r in stream for t in r.token_ids] == ids
        assert stream[-1].final and not any(r.final for r in stream[:-1])
    assert len(plain[0].context) >= 1  # Adaptive-k passages, reported in the first message
    text = "".join(r.text for r in drafted)
    assert text == backbone.tokenizer.decode(ids, skip_special_tokens=True)
    stats = drafted[-1].stats
    assert stats.drafter == "dresd" and stats.finish_reason in ("eos", "length")
    assert stats.target_calls == len(drafted) - 1  # one message per target call
    assert stats.prompt_tokens > 0 and stats.tokens_per_s > 0
