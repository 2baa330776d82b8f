"""The DupMAE exact-OT trainer on a synthetic state cache: learns, resumes, exports."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
VOCAB, H = 60, 384


def fake_dataset(root: Path) -> tuple[Path, Path]:
    """40 docs / 40 queries; query i shares rare words with doc i and common words with all.

    Token states = a fixed random vector per vocab id, so "rare" is learnable from the state.
    """
    rng = np.random.default_rng(0)
    emb = rng.standard_normal((VOCAB, H)).astype(np.float32)
    states, data = root / "states", root / "data"
    (data / "qrels").mkdir(parents=True)
    states.mkdir()
    common = list(range(50, 60))

    def texts(n, kind):
        out = []
        for i in range(n):
            rare = [i % 50, (i * 7 + 3) % 50]
            noise = list(rng.choice(common, 6))
            out.append(rare + noise if kind == "q" else rare + noise + list(rng.choice(50, 2)))
        return out

    for split, toks in (("corpus", texts(40, "d")), ("queries", texts(40, "q"))):
        ids = np.concatenate([np.array(t, np.int32) for t in toks])
        offsets = np.concatenate([[0], np.cumsum([len(t) for t in toks])]).astype(np.int64)
        st = emb[ids] + 0.1 * rng.standard_normal((len(ids), H)).astype(np.float32)
        dense = rng.standard_normal((len(toks), H)).astype(np.float32)
        dense /= np.linalg.norm(dense, axis=1, keepdims=True)
        np.save(states / f"{split}_ids.npy", ids)
        np.save(states / f"{split}_states.npy", st.astype(np.float16))
        np.save(states / f"{split}_offsets.npy", offsets)
        np.save(states / f"{split}_dense.npy", dense)
        prefix = "d" if split == "corpus" else "q"
        (states / f"{split}_keys.json").write_text(json.dumps([f"{prefix}{i}" for i in range(40)]))
    (states / "meta.json").write_text(
        json.dumps({"fingerprint": "fake", "vocab_size": VOCAB, "max_length": 256})
    )
    import gzip

    with gzip.open(data / "corpus.jsonl.gz", "wt") as fh:
        for i in range(40):
            fh.write(json.dumps({"_id": f"d{i}", "title": "", "text": f"w{i} w{i + 100} x"}) + "\n")
    with open(data / "queries.jsonl", "w") as fh:
        for i in range(40):
            fh.write(json.dumps({"_id": f"q{i}", "text": f"w{i} y"}) + "\n")
    for name, qs in (("train.tsv", range(0, 30)), ("test.tsv", range(30, 40))):
        lines = ["query-id\tcorpus-id\tscore"] + [f"q{i}\td{i}\t1" for i in qs]
        (data / "qrels" / name).write_text("\r\n".join(lines) + "\r\n")
    return states, data


def run(*args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(ROOT / "training" / "train_dupmae_ot.py"), *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_train_resume_export(tmp_path: Path) -> None:
    states, data = fake_dataset(tmp_path)
    out = tmp_path / "run"
    common = ["--states", str(states), "--data", str(data), "--n-train", "20", "--batch", "4"]
    common += ["--negatives", "3", "--eval-every", "10", "--inner", "8", "--lr", "0.01"]
    run(*common, "--out", str(out), "--steps", "10")
    ckpt = out / "ckpt.pt"
    assert ckpt.is_file()
    proc = run(*common, "--out", str(out), "--steps", "40", "--resume")
    assert "resumed at step 10" in proc.stdout
    result = json.loads((out / "result.json").read_text())
    untrained, best = result["untrained"], result["best"]
    # learning the rare-word weights beats binary term matching on the selection queries
    assert best["selection/sparse"]["ndcg@10"] > untrained["selection/sparse"]["ndcg@10"]
    ship = tmp_path / "ship"
    run("--states", str(states), "--data", str(data), "--out", str(out), "--export", str(ship))
    manifest = json.loads((ship / "manifest.json").read_text())
    assert set(manifest["files"]) == {"head.safetensors", "head_config.json"}
    config = json.loads((ship / "head_config.json").read_text())
    assert config["vocab_size"] == VOCAB and 0.0 <= config["fusion_weight"] <= 1.0


def test_nli_only_variant_runs_without_scifact_labels(tmp_path: Path) -> None:
    states, data = fake_dataset(tmp_path)
    nli = tmp_path / "nli"
    nli.mkdir()
    rng = np.random.default_rng(1)
    ids = rng.integers(0, VOCAB, size=60 * 5).astype(np.int32)  # 20 triplets x 3 texts x 5
    np.save(nli / "triplets_ids.npy", ids)
    np.save(nli / "triplets_states.npy", rng.standard_normal((len(ids), H)).astype(np.float16))
    np.save(nli / "triplets_offsets.npy", np.arange(0, len(ids) + 1, 5, dtype=np.int64))
    np.save(nli / "triplets_dense.npy", np.zeros((60, H), np.float32))
    (nli / "triplets_keys.json").write_text(
        json.dumps([f"{r}-{j}" for r in range(20) for j in range(3)])
    )
    out = tmp_path / "nli-run"
    run(
        "--states",
        str(states),
        "--data",
        str(data),
        "--triplets",
        str(nli),
        "--out",
        str(out),
        "--n-train",
        "20",
        "--batch",
        "4",
        "--steps",
        "10",
        "--eval-every",
        "10",
        "--inner",
        "8",
    )
    result = json.loads((out / "result.json").read_text())
    assert result["train_triplets"] == 20 and result["best"]["fusion_weight"] == 0.5
    assert result["best"]["step"] == 10  # the last step, not a SciFact-selected one
