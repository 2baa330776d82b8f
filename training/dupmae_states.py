"""Cache the frozen MiniLM's token states of a BEIR dataset once, for the DupMAE exact-sparse head.

The dual DupMAE keeps the encoder frozen (its dense channel is the encoder's own mean pooling),
so training the small sparse head never needs the encoder again: one forward pass per text is
stored here and the trainer (``training/train_dupmae_ot.py``) reads it memory-mapped.

Per split (``corpus`` in corpus order, ``queries`` in ``queries.jsonl`` order) the folder holds:

* ``<split>_ids.npy``     int32 ``[T]``: vocab id of each *ordinary* token (no [CLS]/[SEP]/pad),
* ``<split>_states.npy``  float16 ``[T, 384]``: that token's last hidden state,
* ``<split>_offsets.npy`` int64 ``[n + 1]``: text ``i`` owns rows ``offsets[i]:offsets[i+1]``,
* ``<split>_dense.npy``   float32 ``[n, 384]``: unit-norm mean pooling (= the ``mean`` strategy),
* ``<split>_keys.json``   the text ids, and ``meta.json`` (backbone fingerprint, max length).

Usage (about 10 min for SciFact on one core)::

    OMP_NUM_THREADS=1 nice -n 19 .venv/bin/python training/dupmae_states.py \
        --data ../shared/data/scifact --out ~/.cache/embedsvc/dupmae_states/scifact
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def encode_split(backbone, texts: list[str], batch_size: int, limit: int, log_every: int = 20):
    """Ordinary-token ids/states, offsets and mean vectors of ``texts`` (original order)."""
    import torch

    from embedsvc.strategies.core import ENCODER_INPUTS
    from embedsvc.strategies.features import pad_batch, tokenize
    from embedsvc.strategies.runner import length_sorted_batches

    tok = backbone.tokenizer
    feats = tokenize(tok, texts, limit)  # the served pre stage: [CLS] ... [SEP], cut to limit
    names = tuple(n for n in ENCODER_INPUTS if n in tok.model_input_names)
    specials = torch.tensor([tok.cls_token_id, tok.sep_token_id])
    per_ids: list[np.ndarray | None] = [None] * len(texts)
    per_states: list[np.ndarray | None] = [None] * len(texts)
    dense = np.empty((len(texts), backbone.hidden_size), np.float32)
    start = time.time()
    with torch.inference_mode():
        batches = length_sorted_batches([len(x) for x in feats.ids], batch_size)
        for b, idx in enumerate(batches):
            feeds = pad_batch([feats.ids[i] for i in idx], tok.pad_token_id, names)
            enc = {k: torch.from_numpy(v) for k, v in feeds.items()}
            hidden = backbone.model.base_model(**enc).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
            dense[idx] = torch.nn.functional.normalize(pooled, dim=1).numpy()
            ordinary = enc["attention_mask"].bool() & ~torch.isin(enc["input_ids"], specials)
            for row, i in enumerate(idx):
                keep = ordinary[row]
                per_ids[i] = enc["input_ids"][row][keep].numpy().astype(np.int32)
                per_states[i] = hidden[row][keep].numpy().astype(np.float16)
            if b % log_every == 0:
                done = min(len(texts), (b + 1) * batch_size)
                print(f"  {done}/{len(texts)} texts, {time.time() - start:.0f}s", flush=True)
    lengths = np.array([len(x) for x in per_ids], np.int64)  # type: ignore[arg-type]
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    return (
        np.concatenate(per_ids).astype(np.int32),  # type: ignore[arg-type]
        np.concatenate(per_states).astype(np.float16),  # type: ignore[arg-type]
        offsets,
        dense,
    )


def read_triplets(path: Path, limit: int | None = None) -> tuple[list[str], list[str]]:
    """SimCSE-format ``sent0,sent1,hard_neg`` rows as one flat text list (3 per row, in row
    order) and keys ``"<row>-<0|1|2>"``."""
    import csv

    keys, texts = [], []
    with open(path, newline="") as fh:
        for r, row in enumerate(csv.DictReader(fh)):
            if limit is not None and r >= limit:
                break
            for j, col in enumerate(("sent0", "sent1", "hard_neg")):
                keys.append(f"{r}-{j}")
                texts.append(row[col])
    return keys, texts


def build(data: Path | None, out: Path, batch_size: int = 16, triplets: Path | None = None) -> None:
    import torch

    from embedsvc.backbones import load_backbone
    from embedsvc.eval.data import read_corpus, read_queries

    torch.set_num_threads(1)
    out.mkdir(parents=True, exist_ok=True)
    backbone = load_backbone("minilm")
    limit = backbone.max_length
    splits: dict[str, tuple[list[str], list[str]]] = {}
    if data is not None:
        docs = read_corpus(data / "corpus.jsonl.gz")
        queries = read_queries(data / "queries.jsonl")
        splits["queries"] = (list(queries), list(queries.values()))
        splits["corpus"] = (list(docs), [d.passage() for d in docs.values()])
    if triplets is not None:
        splits["triplets"] = read_triplets(triplets)
    for split, (keys, texts) in splits.items():
        if (out / f"{split}_dense.npy").exists():
            print(f"{split}: cached, skipping", flush=True)
            continue
        print(f"{split}: {len(texts)} texts", flush=True)
        ids, states, offsets, dense = encode_split(backbone, texts, batch_size, limit)
        for name, arr in (("ids", ids), ("states", states), ("offsets", offsets)):
            np.save(out / f"{split}_{name}.npy", arr)
        (out / f"{split}_keys.json").write_text(json.dumps(keys))
        np.save(out / f"{split}_dense.npy", dense)  # written last: marks the split complete
    meta = {
        "backbone": "minilm",
        "fingerprint": backbone.fingerprint,
        "max_length": limit,
        "vocab_size": len(backbone.tokenizer),
    }
    (out / "meta.json").write_text(json.dumps(meta, indent=2))
    print("done", flush=True)


class StateCache:
    """Read-only view of one split of the cache (memory-mapped)."""

    def __init__(self, folder: Path, split: str) -> None:
        self.ids = np.load(folder / f"{split}_ids.npy", mmap_mode="r")
        self.states = np.load(folder / f"{split}_states.npy", mmap_mode="r")
        self.offsets = np.load(folder / f"{split}_offsets.npy")
        self.dense = np.load(folder / f"{split}_dense.npy")
        self.keys: list[str] = json.loads((folder / f"{split}_keys.json").read_text())
        self.index = {k: i for i, k in enumerate(self.keys)}

    def __len__(self) -> int:
        return len(self.keys)

    def rows(self, which: list[int] | np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(ids [t], states [t, h] float32, owner [t])`` of texts ``which`` (owner = position
        in ``which``)."""
        ids, states, owner = [], [], []
        for pos, i in enumerate(which):
            a, b = int(self.offsets[i]), int(self.offsets[i + 1])
            ids.append(np.asarray(self.ids[a:b]))
            states.append(np.asarray(self.states[a:b], dtype=np.float32))
            owner.append(np.full(b - a, pos, np.int64))
        return np.concatenate(ids), np.concatenate(states), np.concatenate(owner)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, help="BEIR folder (corpus, queries)")
    ap.add_argument(
        "--triplets", type=Path, help="also cache NLI triplets (sent0,sent1,hard_neg CSV)"
    )
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--batch-size", type=int, default=16)
    args = ap.parse_args()
    build(args.data, args.out.expanduser(), args.batch_size, args.triplets)


if __name__ == "__main__":
    main()
