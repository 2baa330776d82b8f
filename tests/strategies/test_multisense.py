"""Multi-sense dictionaries: replacement idempotence, padding untouched, k-means, storage.

Model-free except the ``slow`` test, which builds a tiny real dictionary with MiniLM.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from trainlib.senses import kmeans, sample_keep, senses_for, table_from_lists

from embedsvc.strategies.multisense.io import SenseDictionary, load_dictionary, save_dictionary
from embedsvc.strategies.multisense.model import (
    assign_senses,
    candidates,
    replace_with_senses,
    student_logits,
)
from embedsvc.strategies.pooling import masked_mean

D = 16
V = 10


def _table(seed: int = 0):
    rng = np.random.default_rng(seed)
    # token 0 (= pad id) and token 7 have no senses; others 1..5 senses with different norms
    per = {t: rng.standard_normal((1 + t % 5, D)) * (1 + t) for t in range(1, V) if t != 7}
    t = table_from_lists(V, per, D)
    return t, torch.from_numpy(t.offsets), torch.from_numpy(t.centroids)


def test_sense_vectors_map_to_themselves() -> None:
    table, off, cen = _table()
    ids = torch.cat([torch.full((int(c),), tok) for tok, c in enumerate(table.counts())])
    local = assign_senses(cen, ids, off, cen, table.max_senses)
    expected = torch.cat([torch.arange(int(c)) for c in table.counts()])
    assert torch.equal(local, expected)


def test_replacement_is_idempotent_and_padding_untouched() -> None:
    table, off, cen = _table()
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(3, 6, D, generator=g) * 4
    ids = torch.randint(1, V, (3, 6), generator=g)
    ids[0, 2] = 7  # a token without senses
    mask = torch.ones(3, 6, dtype=torch.long)
    mask[1, 4:] = 0
    mask[2, 3:] = 0
    ids[mask == 0] = 0
    once, sid = replace_with_senses(hidden, ids, mask, off, cen, table.max_senses)
    twice, sid2 = replace_with_senses(once, ids, mask, off, cen, table.max_senses)
    assert torch.equal(once, twice) and torch.equal(sid, sid2)
    pad = mask == 0
    assert torch.equal(once[pad], hidden[pad]) and (sid[pad] == -1).all()
    assert torch.equal(once[0, 2], hidden[0, 2]) and sid[0, 2] == -1  # no senses: unchanged
    real = (mask == 1) & (ids != 7)
    assert (sid[real] >= 0).all()
    for b, t in real.nonzero().tolist():  # replaced by the L2-nearest sense of its own token
        s = table.senses_of(int(ids[b, t]))
        j = int(np.argmin(((s - hidden[b, t].numpy()) ** 2).sum(1)))
        np.testing.assert_allclose(once[b, t].numpy(), s[j], rtol=1e-6)
    # mean pooling ignores padding: appending pad positions changes nothing
    pooled = masked_mean(once, mask)
    padded = torch.cat([once, torch.randn(3, 2, D)], 1)
    pm = torch.cat([mask, torch.zeros(3, 2, dtype=torch.long)], 1)
    torch.testing.assert_close(masked_mean(padded, pm), pooled)


def test_student_logits_rank_like_nearest_centroid() -> None:
    table, off, cen = _table(1)
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1, V, (50,), generator=g)
    ids = ids[ids != 7]
    z = torch.randn(ids.shape[0], D, generator=g) * 3
    c, v = candidates(ids, off, cen, table.max_senses)
    pick = student_logits(z, c, v).argmax(-1)
    assert torch.equal(pick, assign_senses(z, ids, off, cen, table.max_senses))


def test_kmeans_finds_separated_clusters_and_k_rule() -> None:
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((4, D)) * 10
    x = np.concatenate([c + 0.1 * rng.standard_normal((30, D)) for c in centres])
    cents, assign = kmeans(x, 4, seed=0, init="kmeans++")
    assert cents.shape == (4, D) and len(set(assign.tolist())) == 4
    for j in range(4):  # every true cluster is one k-means cluster
        assert len(set(assign[j * 30 : (j + 1) * 30].tolist())) == 1
    assert senses_for(3, 20) == 3 and senses_for(500, 20) == 20


def test_sampling_caps_frequent_tokens() -> None:
    rng = np.random.default_rng(0)
    counts = np.array([0, 100_000, 50])
    ids = np.concatenate([np.ones(100_000, int), np.full(50, 2)])
    keep = sample_keep(counts, ids, 1000, rng)
    assert 800 < keep[:100_000].sum() < 1200
    assert keep[100_000:].all()  # rare tokens keep every occurrence


def test_dictionary_round_trip(tmp_path: Path) -> None:
    table, _, _ = _table()
    sizes = np.arange(table.num_senses, dtype=np.int32)
    examples = [[f"ctx {i}"] for i in range(table.num_senses)]
    save_dictionary(tmp_path / "d", SenseDictionary(table, sizes, examples, {"kind": "t"}))
    back = load_dictionary(tmp_path / "d")
    assert np.array_equal(back.table.offsets, table.offsets)
    assert back.table.centroids.dtype == np.float16
    np.testing.assert_allclose(back.table.centroids, table.centroids, rtol=1e-2, atol=1e-2)
    assert back.examples == examples and back.manifest == {"kind": "t"}


@pytest.mark.slow
def test_multisense_strategy_on_a_tiny_real_dictionary(tmp_path: Path) -> None:
    import importlib.util
    import sys

    root = Path(__file__).resolve().parents[2]
    spec = importlib.util.spec_from_file_location(
        "build_sense_dictionary", root / "training" / "build_sense_dictionary.py"
    )
    mod = importlib.util.module_from_spec(spec)
    sys.modules["build_sense_dictionary"] = mod
    spec.loader.exec_module(mod)
    corpus = tmp_path / "c.txt"
    corpus.write_text(
        "\n".join(["The bank of the river was muddy.", "She went to the bank to get money."] * 4)
    )
    out = tmp_path / "dict"
    mod.build(
        mod.BuildConfig(corpus=[str(corpus)], max_passages=8, max_length=32, out_dir=str(out))
    )
    from embedsvc.strategies import create_strategy

    s = create_strategy("multisense", dictionary=str(out))
    plain = create_strategy("multisense", dictionary=str(out), replace=False)
    texts = ["The bank of the river was muddy.", "Money is in the bank."]
    a, b = s.encode(texts).vectors, plain.encode(texts).vectors
    assert a.shape == (2, 384) and np.allclose(np.linalg.norm(a, axis=1), 1, atol=1e-5)
    assert (np.sum(a * b, axis=1) > 0.8).all()
    # a text seen while building maps every token to a sense; its states are the dictionary's
    ids = s.sense_ids(texts[:1])[0]
    assert all(sense >= 0 for _, sense in ids)
    info = s.senses(texts[1:], neighbours=2)[0]
    bank = next(t for t in info if t["token"] == "bank")
    assert bank["num_senses"] >= 1 and bank["examples"] and len(bank["neighbours"]) <= 2
