"""DupMAE pieces: BoW target, padding kept out of the max, tied projection, masks, hashing."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from trainlib.dupmae import (
    EnhancedDecoder,
    bow_target,
    decoder_visibility,
    max_over_tokens,
    max_over_tokens_argmax,
    mlm_corrupt,
    splade_max,
    whole_word_mask,
)

from embedsvc.strategies.dupmae.model import (
    DupMAEHeads,
    TiedLMHead,
    combine,
    hash_buckets,
    hash_topk,
    ordinary_mask,
    ot_topk,
)

CLS, SEP, PAD = 101, 102, 0


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.tensor([[CLS, 7, 8, 7, SEP, PAD], [CLS, 9, SEP, PAD, PAD, PAD]])
    attn = (ids != PAD).long()
    return ids, attn


def test_ordinary_mask_excludes_specials_and_padding() -> None:
    ids, attn = _batch()
    m = ordinary_mask(ids, attn, (CLS, SEP))
    assert m.tolist() == [
        [False, True, True, True, False, False],
        [False, True, False, False, False, False],
    ]


def test_bow_target_uniform_over_unique_ordinary_tokens() -> None:
    ids, attn = _batch()
    t = bow_target(ids, ordinary_mask(ids, attn, (CLS, SEP)), 200)
    assert torch.allclose(t.sum(1), torch.ones(2))
    assert t[0, 7] == pytest.approx(0.5) and t[0, 8] == pytest.approx(0.5)  # repeat counted once
    assert t[1, 9] == pytest.approx(1.0)
    for special in (CLS, SEP, PAD):
        assert float(t[:, special].sum()) == 0.0


def test_max_ignores_padding_cls_and_sep() -> None:
    ids, attn = _batch()
    ordinary = ordinary_mask(ids, attn, (CLS, SEP))
    logits = torch.zeros(2, 6, 5)
    logits[:, 0, 0] = 100.0  # [CLS]
    logits[:, 4, 1] = 100.0  # [SEP] / padding
    logits[:, 5, 2] = 100.0  # padding
    logits[0, 2, 3] = 5.0
    ot = max_over_tokens(logits, ordinary)
    assert ot[0].tolist() == [0.0, 0.0, 0.0, 5.0, 0.0]
    assert ot[1].tolist() == [0.0] * 5
    assert max_over_tokens_argmax(logits, ordinary)[0, 3] == 2
    sp = splade_max(logits, ordinary)
    assert sp[0, 0] == 0 and sp[0, 1] == 0 and sp[0, 2] == 0
    assert sp[0, 3] == pytest.approx(float(np.log1p(5.0)))


def test_lm_head_is_tied_to_word_embeddings() -> None:
    emb = nn.Embedding(50, 8)
    head = TiedLMHead(emb)
    assert head.decoder_weight is emb.weight
    names = {n for n, _ in head.named_parameters()}
    assert names == {"dense.weight", "dense.bias", "norm.weight", "norm.bias", "bias"}
    out = head(torch.randn(3, 8))
    assert out.shape == (3, 50)
    out.sum().backward()
    assert emb.weight.grad is not None  # gradients reach the shared embedding matrix
    with torch.no_grad():
        emb.weight[4] += 1.0
    assert torch.equal(head.decoder_weight[4], emb.weight[4])


def test_ot_topk_matches_full_computation_and_gradient() -> None:
    torch.manual_seed(0)
    emb = nn.Embedding(40, 8)
    head = TiedLMHead(emb)
    ids, attn = _batch()
    ordinary = ordinary_mask(ids, attn, (CLS, SEP))
    h = torch.randn(2, 6, 8, requires_grad=True)
    values, idx = ot_topk(h, ordinary, head, 5)
    full = splade_max(head(h), ordinary)
    ref_vals, ref_idx = full.topk(5, dim=1)
    assert torch.equal(idx, ref_idx)
    assert torch.allclose(values, torch.nn.functional.normalize(ref_vals, dim=1), atol=1e-6)
    (values * torch.arange(5.0)).sum().backward()
    g1 = h.grad.clone()
    h.grad = None
    (torch.nn.functional.normalize(ref_vals, dim=1) * torch.arange(5.0)).sum().backward()
    assert torch.allclose(g1, h.grad, atol=1e-5)


def test_whole_word_mask_covers_whole_words() -> None:
    is_cont = np.zeros(100, dtype=bool)
    is_cont[[50, 51]] = True  # "##" pieces
    ids = [10, 50, 51, 11, 12, 13, 14, 15, 16, 17]
    rng = np.random.default_rng(0)
    for _ in range(20):
        m = whole_word_mask(ids, is_cont, 0.3, rng)
        assert 1 <= m.sum() <= 3
        assert m[0] == m[1] == m[2]  # the three-piece word is masked as one
    corrupted, labels = mlm_corrupt(np.array(ids), m, 103, 100, rng)
    assert (labels[~m] == -100).all() and (labels[m] == np.array(ids)[m]).all()


def test_decoder_visibility_never_sees_itself_always_sees_cls() -> None:
    is_cont = np.zeros(100, dtype=bool)
    vis = decoder_visibility(list(range(10, 30)), is_cont, 0.5, np.random.default_rng(0))
    n = 22
    assert vis.shape == (n, n)
    assert vis[:, 0].all()
    assert not np.diag(vis)[1:].any()
    frac = vis[1:-1, 1:-1].sum() / (20 * 19)
    assert 0.3 < frac < 0.7


def test_enhanced_decoder_shapes() -> None:
    dec = EnhancedDecoder(16, 4, 32)
    vis = torch.ones(2, 5, 5, dtype=torch.bool)
    out = dec(torch.randn(2, 5, 16), torch.randn(2, 5, 16), vis)
    assert out.shape == (2, 5, 16)


def test_hashing_and_combination() -> None:
    bucket, sign = hash_buckets(1000, 64, 0)
    vals = torch.tensor([[0.6, 0.8]])
    idx = torch.tensor([[3, 7]])
    dense = hash_topk(vals, idx, bucket, sign, 64)
    assert dense.shape == (1, 64)
    assert float(dense.abs().sum()) == pytest.approx(1.4, abs=1e-6) or bucket[3] == bucket[7]
    a = torch.nn.functional.normalize(torch.randn(3, 4), dim=1)
    b = torch.nn.functional.normalize(torch.randn(3, 6), dim=1)
    both = combine(a, b, 0.5)
    assert torch.allclose(both.norm(dim=1), torch.ones(3), atol=1e-6)


def test_heads_state_excludes_embeddings() -> None:
    heads = DupMAEHeads(nn.Embedding(30, 8), cls_dim=4)
    keys = set(heads.state_dict())
    assert "lm_head.bias" in keys and "cls_reduce.weight" in keys
    assert not any("word_embeddings" in k for k in keys)


@pytest.mark.slow
def test_strategy_missing_artifact_says_how_to_build(tmp_path) -> None:
    from embedsvc.errors import FailedPrecondition
    from embedsvc.strategies import create_strategy

    s = create_strategy("dupmae", artifact=str(tmp_path / "nope"))
    with pytest.raises(FailedPrecondition, match="train_dupmae.py pretrain"):
        _ = s.dim


@pytest.mark.slow
def test_shipped_strategy_encodes_unit_vectors() -> None:
    from embedsvc.strategies import create_strategy
    from embedsvc.strategies.artifacts import ARTIFACTS

    if not (ARTIFACTS / "dupmae/pretrained/head_config.json").is_file():
        pytest.skip("dupmae/pretrained artifact not built")
    for name in ("dupmae_pt", "dupmae_pt_cls", "dupmae_pt_ot"):
        s = create_strategy(name)
        e = s.encode(["a cat sat on the mat", "proteins fold"])
        assert e.vectors.shape == (2, s.dim)
        assert np.allclose(np.linalg.norm(e.vectors, axis=1), 1.0, atol=1e-5)


@pytest.mark.slow
def test_more_hash_buckets_bring_the_ot_channel_closer_to_exact_sparse_scores() -> None:
    from embedsvc.strategies import create_strategy
    from embedsvc.strategies.artifacts import ARTIFACTS

    if not (ARTIFACTS / "dupmae/pretrained/head_config.json").is_file():
        pytest.skip("dupmae/pretrained artifact not built")
    texts = [
        "a cat sat on the mat",
        "the cat is sitting on a mat",
        "proteins fold into three-dimensional structures",
        "protein folding determines structure",
        "stock markets fell sharply on monday",
        "a man is playing a guitar on stage",
    ]
    errors = {}
    for buckets in (64, 4096):
        s = create_strategy("dupmae_pt_ot", ot_dim=buckets)
        assert s.dim == buckets
        v = s.channel_vectors(texts, sparse=True)
        exact = (v["ot_sparse"] @ v["ot_sparse"].T).toarray()
        # the exact sparse top-k vectors are unit norm, like the hashed ones
        assert np.allclose(np.diag(exact), 1.0, atol=1e-5)
        errors[buckets] = np.abs(v["ot"] @ v["ot"].T - exact).mean()
    assert errors[4096] < errors[64] and errors[4096] < 0.02, errors
