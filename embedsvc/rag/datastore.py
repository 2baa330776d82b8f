"""DReSD / REST datastore: final-norm decoder states as keys, the next tokens as values.

Reference
    DReSD, huawei-noah/HEBO@00ba1ac (``embed_data.py``, ``pca.py``, ``index.py``, ``gen_data.py``);
    see ``research/techniques.md`` section 7a. Re-derived, not copied.

What is stored (one folder ``<cache_dir>/datastores/<name>/``, never in the repo)
    * ``tokens.npy`` int32 [T]: every sequence (chat-formatted prompt + response + ``<|im_end|>``)
      concatenated without separators; ``offsets.npy`` int64 [S + 1] marks where each starts.
      REST's suffix array is built over exactly this stream, so both drafters see the same tokens.
    * keys: the final-norm hidden state ``h_i`` (``hidden_states[-1]`` of a Llama: after the last
      RMSNorm) at every position ``i`` of a sequence except its last, z-scored with the stored
      mean/std, projected by PCA (fitted on these states) to ``pca_dim`` = 64 dims and
      L2-normalised, in a FAISS inner-product index (``keys.faiss``; flat or HNSW).
    * ``values.npy`` int32 [N, 20]: ``ids[i + 1 : i + 21]`` right-padded with EOS. ``value[0]`` is
      the token ``h_i`` predicts, which is what the decoder filters on.
    * ``projection.npz`` (mean, std, components) and ``manifest.json`` (model fingerprint, corpus
      sha256s, sizes, build time, lookup latency).

Forms
    ``ood``: the corpus' own responses. ``id`` ("in-distribution", DReSD's better form): the target
    model's own greedy responses (``id_max_new_tokens`` = 128, as ``gen_data.py``) to the corpus'
    prompts. Deviation: sequences use the model's chat template (the reference's
    ``"Question: ...\\nAnswer:\\n"`` suits Llama-2-chat; our benchmark prompts go through SmolLM2's
    chat template, so the keys must come from the same format).

Hyper-parameters (:class:`DatastoreConfig`)
    ``pca_dim`` 64, ``value_len`` 20, ``max_seq_tokens`` 1024 (reference truncation), flat index
    below ``hnsw_above`` keys, HNSW(M=32, efSearch=128) above (ScaNN in the reference).
"""

from __future__ import annotations

import gzip
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, Field

from embedsvc.checksums import sha256_file
from embedsvc.errors import FailedPrecondition, InvalidArgument, NotFound, shorten

log = logging.getLogger(__name__)

FORMAT_VERSION = 1


class DatastoreConfig(BaseModel):
    """How a datastore is built (recorded in its manifest)."""

    backbone: str = "smollm2"
    form: Literal["id", "ood"] = "id"
    pca_dim: int = Field(64, ge=1)
    value_len: int = Field(20, ge=2)
    max_seq_tokens: int = Field(1024, ge=8, description="truncate each sequence (reference: 1024)")
    max_records: int | None = Field(None, ge=1, description="records read per corpus file")
    id_max_new_tokens: int = Field(128, ge=1, description="greedy response length for form=id")
    gen_batch_size: int = Field(16, ge=1)
    fwd_batch_tokens: int = Field(4096, ge=64, description="padded tokens per key forward pass")
    index_kind: Literal["auto", "flat", "hnsw"] = "auto"
    hnsw_above: int = Field(200_000, description="auto: HNSW from this many keys, flat below")
    hnsw_m: int = 32
    hnsw_ef_construction: int = 80
    hnsw_ef_search: int = 128
    system_prompt: str | None = Field(
        None, description="None = the chat template's default system prompt"
    )


# --------------------------------------------------------------------------------------- corpora


def _records(path: Path) -> list[dict[str, Any]]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as fh:
        if ".jsonl" in path.name:
            return [json.loads(line) for line in fh if line.strip()]
        data = json.load(fh)
    if not isinstance(data, list):
        raise InvalidArgument(f"{path}: expected a JSON array of records", field="corpus")
    return data


def read_corpus(path: Path, limit: int | None = None) -> list[tuple[str, str | None]]:
    """(prompt, response or None) pairs from any of the shared corpus / prompt formats.

    Understood: ``{instruction, input, output|response}`` (datastore/*.json), ShareGPT
    ``{conversations: [{from, value}]}`` (first human turn + the reply after it), HumanEval
    ``{prompt}`` and MT-Bench ``{turns: [...]}`` (first turn; no response).
    """
    path = Path(path)
    if not path.is_file():
        raise NotFound(f"corpus file {path} does not exist", field="corpus")
    pairs: list[tuple[str, str | None]] = []
    for rec in _records(path):
        if "conversations" in rec:
            conv = rec["conversations"]
            for j, turn in enumerate(conv[:-1]):
                if turn.get("from") == "human" and conv[j + 1].get("from") == "gpt":
                    pairs.append((turn["value"], conv[j + 1]["value"]))
                    break
        elif "instruction" in rec:
            prompt = rec["instruction"] + (f"\n\n{rec['input']}" if rec.get("input") else "")
            pairs.append((prompt, rec.get("output", rec.get("response"))))
        elif "turns" in rec:
            pairs.append((rec["turns"][0], None))
        elif "prompt" in rec:
            pairs.append((rec["prompt"], rec.get("response")))
        else:
            raise InvalidArgument(f"{path}: unknown record format {sorted(rec)}", field="corpus")
        if limit and len(pairs) >= limit:
            break
    pairs = [(p, r) for p, r in pairs if p and p.strip()]
    if not pairs:
        raise InvalidArgument(f"{path}: no usable records", field="corpus")
    return pairs


def chat_prompt_ids(tokenizer: Any, prompt: str, system_prompt: str | None = None) -> list[int]:
    """Token ids of ``prompt`` in the model's chat template, ending with the assistant header."""
    messages = [{"role": "user", "content": prompt}]
    if system_prompt is not None:
        messages.insert(0, {"role": "system", "content": system_prompt})
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


# ----------------------------------------------------------------------------------- model passes


def greedy_responses(
    backbone: Any,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int,
    batch_size: int = 16,
    progress: Callable[[int, int], None] | None = None,
) -> list[list[int]]:
    """The target model's greedy responses (ending at and including EOS when it stops).

    Batched with left padding for speed; batched greedy can differ from batch-1 greedy in
    near-ties, which does not matter for a datastore.
    """
    import torch

    model, eos = backbone.model, int(backbone.tokenizer.eos_token_id)
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    out: list[list[int]] = [[] for _ in prompts]
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        width = max(len(prompts[i]) for i in idx)
        ids = torch.full((len(idx), width), eos, dtype=torch.long)
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        for row, i in enumerate(idx):
            p = list(prompts[i])
            ids[row, width - len(p) :] = torch.tensor(p)
            mask[row, width - len(p) :] = 1
        with torch.inference_mode():
            gen = model.generate(
                input_ids=ids,
                attention_mask=mask,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=eos,
                eos_token_id=eos,
            )
        for row, i in enumerate(idx):
            new = gen[row, width:].tolist()
            out[i] = new[: new.index(eos) + 1] if eos in new else new
        if progress:
            progress(min(start + batch_size, len(order)), len(order))
    return out


def final_states(
    backbone: Any,
    seqs: Sequence[Sequence[int]],
    batch_tokens: int = 4096,
    progress: Callable[[int, int], None] | None = None,
) -> list[np.ndarray]:
    """Final-norm hidden states [len(seq), d] float32 for every sequence (no LM head computed)."""
    import torch

    base = backbone.model.model  # LlamaModel: its last_hidden_state is after the final norm
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    out: list[np.ndarray] = [np.empty(0)] * len(seqs)
    done, start = 0, 0
    while start < len(order):
        width = len(seqs[order[start]])
        end = start + 1
        while end < len(order) and len(seqs[order[end]]) * (end - start + 1) <= batch_tokens:
            end += 1
        idx = order[start:end]
        width = max(len(seqs[i]) for i in idx)
        ids = torch.zeros((len(idx), width), dtype=torch.long)
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        for row, i in enumerate(idx):
            ids[row, : len(seqs[i])] = torch.tensor(list(seqs[i]))
            mask[row, : len(seqs[i])] = 1
        with torch.inference_mode():
            hidden = base(input_ids=ids, attention_mask=mask).last_hidden_state.float().numpy()
        for row, i in enumerate(idx):
            out[i] = hidden[row, : len(seqs[i])].copy()
        done += sum(len(seqs[i]) for i in idx)
        start = end
        if progress:
            progress(done, sum(len(s) for s in seqs))
    return out


# ------------------------------------------------------------------------------------- projection


@dataclass
class Projection:
    """z-score -> PCA -> L2 normalise, the key/query transform (fitted once, stored)."""

    mean: np.ndarray  # [d]
    std: np.ndarray  # [d]
    components: np.ndarray  # [d, pca_dim], columns by decreasing variance

    @classmethod
    def fit(
        cls, states: np.ndarray, dim: int, max_fit: int = 1_000_000, seed: int = 0
    ) -> Projection:
        if len(states) < 2:
            raise InvalidArgument("need at least two states to fit the projection")
        rng = np.random.default_rng(seed)
        sample = states if len(states) <= max_fit else states[rng.choice(len(states), max_fit)]
        x = sample.astype(np.float64)
        mean, std = x.mean(0), x.std(0) + 1e-6
        z = (x - mean) / std
        cov = z.T @ z / len(z)
        evals, evecs = np.linalg.eigh(cov)  # ascending
        comps = evecs[:, ::-1][:, : min(dim, x.shape[1])]
        return cls(mean.astype(np.float32), std.astype(np.float32), comps.astype(np.float32))

    def __call__(self, states: np.ndarray) -> np.ndarray:
        z = (np.atleast_2d(states).astype(np.float32) - self.mean) / self.std
        p = z @ self.components
        return (p / (np.linalg.norm(p, axis=1, keepdims=True) + 1e-12)).astype(np.float32)

    def save(self, path: Path) -> None:
        np.savez(path, mean=self.mean, std=self.std, components=self.components)

    @classmethod
    def load(cls, path: Path) -> Projection:
        with np.load(path) as z:
            return cls(z["mean"], z["std"], z["components"])


# -------------------------------------------------------------------------------------- datastore


def datastore_root(cache_dir: Path | None = None) -> Path:
    from embedsvc.config import default_cache_dir

    return Path(cache_dir or default_cache_dir()) / "datastores"


def _make_index(keys: np.ndarray, config: DatastoreConfig) -> Any:
    import faiss

    kind = config.index_kind
    if kind == "auto":
        kind = "hnsw" if len(keys) >= config.hnsw_above else "flat"
    if kind == "hnsw":
        index = faiss.IndexHNSWFlat(keys.shape[1], config.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = config.hnsw_ef_construction
        index.hnsw.efSearch = config.hnsw_ef_search
    else:
        index = faiss.IndexFlatIP(keys.shape[1])
    index.add(keys)
    return index


class Datastore:
    """A built datastore, loaded: ``search`` for DReSD, ``tokens`` for REST."""

    def __init__(self, folder: Path) -> None:
        import faiss

        folder = Path(folder)
        if not (folder / "manifest.json").is_file():
            raise NotFound(f"no datastore at {folder}; build it with `embedsvc datastore build`")
        self.folder = folder
        self.manifest: dict[str, Any] = json.loads((folder / "manifest.json").read_text())
        self.name: str = self.manifest["name"]
        self.projection = Projection.load(folder / "projection.npz")
        self.index = faiss.read_index(str(folder / "keys.faiss"))
        if hasattr(self.index, "hnsw"):
            self.index.hnsw.efSearch = int(self.manifest["config"]["hnsw_ef_search"])
        self.values: np.ndarray = np.load(folder / "values.npy")
        self.tokens: np.ndarray = np.load(folder / "tokens.npy")
        self.offsets: np.ndarray = np.load(folder / "offsets.npy")

    @classmethod
    def open(cls, name_or_path: str | Path, cache_dir: Path | None = None) -> Datastore:
        """By name under ``<cache>/datastores/`` or by folder path."""
        path = Path(name_or_path)
        if not (path / "manifest.json").is_file():
            path = datastore_root(cache_dir) / str(name_or_path)
        return cls(path)

    def __len__(self) -> int:
        return int(self.index.ntotal)

    def search(self, states: np.ndarray, k: int = 50) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` neighbours of raw final-norm states [q, d]: (scores [q, k], values [q, k, N]).

        Missing neighbours (an HNSW search may return fewer) come back as rows of -1, which
        never equal a real token, so the decoder's filter drops them.
        """
        q = self.projection(states)
        scores, ids = self.index.search(q, min(k, len(self)))
        values = self.values[np.maximum(ids, 0)]
        values[ids < 0] = -1
        return scores, values


def build_datastore(
    name: str,
    corpora: Sequence[Path],
    config: DatastoreConfig | None = None,
    cache_dir: Path | None = None,
    backbone: Any = None,
    overwrite: bool = False,
    progress: Callable[[str, int, int], None] | None = None,
) -> Datastore:
    """Build datastore ``name`` from corpus files; written atomically (temp folder + rename)."""
    from embedsvc.backbones import load_backbone

    config = config or DatastoreConfig()
    if not name or "/" in name or name.startswith("."):
        raise InvalidArgument(f"bad datastore name {shorten(name)}", field="name")
    root = datastore_root(cache_dir)
    target = root / name
    if target.exists() and not overwrite:
        raise FailedPrecondition(f"datastore {name!r} exists at {target}; pass overwrite")
    t0 = time.perf_counter()
    pairs: list[tuple[str, str | None]] = []
    sources = []
    for path in corpora:
        got = read_corpus(Path(path), config.max_records)
        pairs += got
        sources.append({"path": str(path), "sha256": sha256_file(Path(path)), "records": len(got)})
    if config.form == "ood" and any(r is None for _, r in pairs):
        raise InvalidArgument("form 'ood' needs responses; use form 'id' for prompt-only files")
    backbone = backbone or load_backbone(config.backbone)
    tok = backbone.tokenizer
    eos = int(tok.eos_token_id)
    prompts = [chat_prompt_ids(tok, p, config.system_prompt) for p, _ in pairs]
    half = config.max_seq_tokens // 2
    prompts = [p[-half:] if len(p) > half else p for p in prompts]  # keep room for the answer
    if config.form == "id":
        step = (lambda d, n: progress("generate", d, n)) if progress else None
        responses = greedy_responses(
            backbone, prompts, config.id_max_new_tokens, config.gen_batch_size, step
        )
    else:
        responses = [
            list(tok(r, add_special_tokens=False)["input_ids"]) + [eos] for _, r in pairs if r
        ]
    t_gen = time.perf_counter() - t0
    seqs = [(p + r)[: config.max_seq_tokens] for p, r in zip(prompts, responses, strict=True)]
    seqs = [s for s in seqs if len(s) >= 2]

    step = (lambda d, n: progress("encode", d, n)) if progress else None
    states = final_states(backbone, seqs, config.fwd_batch_tokens, step)
    t_enc = time.perf_counter() - t0 - t_gen

    keys_raw = np.concatenate([s[:-1] for s in states])
    proj = Projection.fit(keys_raw, config.pca_dim)
    keys = proj(keys_raw)
    del keys_raw
    values = []
    for s in seqs:
        arr = np.asarray(s + [eos] * config.value_len, dtype=np.int32)
        idx = np.arange(1, len(s))[:, None] + np.arange(config.value_len)[None, :]
        values.append(arr[idx])
    values_arr = np.concatenate(values)
    tokens = np.concatenate([np.asarray(s, dtype=np.int32) for s in seqs])
    offsets = np.concatenate([[0], np.cumsum([len(s) for s in seqs])]).astype(np.int64)
    index = _make_index(keys, config)

    # lookup latency (one query at a time, as the decoder does)
    rng = np.random.default_rng(0)
    probe = keys[rng.choice(len(keys), min(200, len(keys)), replace=False)]
    t = time.perf_counter()
    for row in probe:
        index.search(row[None], 50)
    lookup_ms = (time.perf_counter() - t) / len(probe) * 1e3

    import faiss

    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=root))
    try:
        faiss.write_index(index, str(tmp / "keys.faiss"))
        np.save(tmp / "values.npy", values_arr)
        np.save(tmp / "tokens.npy", tokens)
        np.save(tmp / "offsets.npy", offsets)
        proj.save(tmp / "projection.npz")
        manifest = {
            "format_version": FORMAT_VERSION,
            "name": name,
            "backbone": config.backbone,
            "model_fingerprint": backbone.fingerprint,
            "config": config.model_dump(),
            "corpora": sources,
            "sequences": len(seqs),
            "tokens": int(len(tokens)),
            "keys": int(len(keys)),
            "index": type(index).__name__,
            "lookup_ms_top50": round(lookup_ms, 3),
            "build_s": {"generate": round(t_gen, 1), "encode": round(t_enc, 1)},
            "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2))
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("datastore %s: %d keys, %d tokens", name, len(keys), len(tokens))
    return Datastore(target)
