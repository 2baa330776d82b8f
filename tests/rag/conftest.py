"""Shared SmolLM2 fixtures for the speculative-decoding tests (slow: real weights, kept small)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

SPEC_PROMPTS = [
    "Write a Python function that returns the distinct values of a list.",
    "Name three primary colours.",
]
SPEC_NEW_TOKENS = 24
CODE_ALPACA = Path(__file__).resolve().parents[3] / "shared/data/datastore/code_alpaca_2k.json"


@pytest.fixture(scope="session")
def spec_backbone():
    import torch

    from embedsvc.backbones import load_backbone

    torch.set_num_threads(2)
    return load_backbone("smollm2")


@pytest.fixture(scope="session")
def spec_references(spec_backbone):
    """Plain greedy (prompt ids, output ids) per prompt: the ground truth to match."""
    from embedsvc.rag.datastore import chat_prompt_ids
    from embedsvc.rag.speculative import SpeculativeDecoder

    dec = SpeculativeDecoder(spec_backbone)
    refs = []
    for prompt in SPEC_PROMPTS:
        ids = chat_prompt_ids(spec_backbone.tokenizer, prompt)
        refs.append((ids, dec.generate(ids, SPEC_NEW_TOKENS)[0]))
    return refs


@pytest.fixture(scope="session")
def spec_datastore(spec_backbone, spec_references, tmp_path_factory):
    """A few hundred tokens: the model's own answer to prompt 0 plus 4 Code Alpaca records."""
    from embedsvc.rag.datastore import DatastoreConfig, build_datastore

    tmp = tmp_path_factory.mktemp("spec")
    tok = spec_backbone.tokenizer
    records = [
        {"instruction": SPEC_PROMPTS[0], "input": "", "output": tok.decode(spec_references[0][1])}
    ]
    if CODE_ALPACA.is_file():
        records += json.loads(CODE_ALPACA.read_text())[:4]
    corpus = tmp / "corpus.json"
    corpus.write_text(json.dumps(records))
    config = DatastoreConfig(form="ood", max_seq_tokens=128)
    return build_datastore("tiny", [corpus], config, cache_dir=tmp, backbone=spec_backbone)
