"""Load any local Hugging Face model folder as a :class:`Backbone`, offline.

Whether a folder is an encoder or a decoder is read from its config, so a user can point the
service at their own checkpoint without code: causal LMs load with ``AutoModelForCausalLM`` (the
LM head is needed by Text2Token and speculative decoding), everything else with ``AutoModel``.
Models load in float32, eval mode, from local files only (the service never reaches the hub).
"""

from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path
from typing import Any

from embedsvc.backbones.base import Backbone, BackboneKind
from embedsvc.errors import InvalidArgument

#: model_type values that are causal (decoder-only) LMs, for configs without ``architectures``
CAUSAL_MODEL_TYPES = frozenset(
    {
        "llama",
        "mistral",
        "mixtral",
        "qwen2",
        "qwen2_moe",
        "qwen3",
        "qwen3_moe",
        "gemma",
        "gemma2",
        "gemma3_text",
        "phi",
        "phi3",
        "smollm3",
        "gpt2",
        "gpt_neox",
        "opt",
        "falcon",
        "olmo",
        "olmo2",
        "granite",
        "stablelm",
    }
)

#: files whose bytes are the weights (hashed by ``folder_fingerprint``)
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pt", ".pth", ".onnx")
_MIB = 1 << 20
#: tokenizer.model_max_length above this means "not set" (HF uses int(1e30) as a sentinel)
_NO_LIMIT = 1_000_000


def folder_fingerprint(folder: Path) -> str:
    """A short sha256 of the weights: file names, sizes, first and last MiB of each, + config.

    Reading 2 MiB per file instead of hashing gigabytes keeps start-up fast while still changing
    whenever a checkpoint is replaced (retraining changes every tensor, so the head/tail differ).
    """
    h = hashlib.sha256()
    folder = Path(folder)
    config = folder / "config.json"
    if config.is_file():
        h.update(_config_identity(config))
    for path in sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in WEIGHT_SUFFIXES):
        _hash_file_ends(h, path)
    return h.hexdigest()[:16]


#: config.json keys that record *who wrote* the file, not what the model is: a converted
#: checkpoint written by another transformers release must keep its fingerprint, or every
#: trained artifact recorded against it would be refused
_VOLATILE_CONFIG_KEYS = ("transformers_version",)


def _config_identity(config: Path) -> bytes:
    """config.json as canonical JSON without the volatile keys (raw bytes if not JSON)."""
    raw = config.read_bytes()
    try:
        data = json.loads(raw)
    except ValueError:
        return raw
    if not isinstance(data, dict):
        return raw
    for key in _VOLATILE_CONFIG_KEYS:
        data.pop(key, None)
    return json.dumps(data, sort_keys=True, separators=(",", ":")).encode()


def file_fingerprint(path: Path) -> str:
    """Like ``folder_fingerprint`` for one file (e.g. a GGUF that a cached conversion came from)."""
    h = hashlib.sha256()
    _hash_file_ends(h, Path(path))
    return h.hexdigest()[:16]


def _hash_file_ends(h: Any, path: Path) -> None:
    size = path.stat().st_size
    h.update(f"{path.name}\0{size}\0".encode())
    with path.open("rb") as f:
        h.update(f.read(_MIB))
        if size > 2 * _MIB:
            f.seek(size - _MIB)
            h.update(f.read(_MIB))


def is_decoder_config(config: Any) -> bool:
    """True when an HF config describes a causal (decoder-only) language model."""
    if getattr(config, "is_decoder", False):
        return True
    archs = getattr(config, "architectures", None) or []
    if any(a.endswith("ForCausalLM") for a in archs):
        return True
    return getattr(config, "model_type", None) in CAUSAL_MODEL_TYPES


def _max_length(folder: Path, config: Any, tokenizer: Any) -> int:
    """The input limit as the model is meant to be served.

    ``sentence_bert_config.json`` wins (MiniLM: 256, what it was trained on, not the 512 positions
    BERT has); otherwise the tighter of the tokenizer's and the position embeddings' limits.
    """
    st_config = folder / "sentence_bert_config.json"
    if st_config.is_file():
        value = json.loads(st_config.read_text()).get("max_seq_length")
        if value:
            return int(value)
    limits = []
    tok_max = getattr(tokenizer, "model_max_length", None)
    if isinstance(tok_max, int) and 0 < tok_max < _NO_LIMIT:
        limits.append(tok_max)
    pos_max = getattr(config, "max_position_embeddings", None)
    if isinstance(pos_max, int) and pos_max > 0:
        limits.append(pos_max)
    return min(limits) if limits else 512


class SerializedTokenizer:
    """A shared HF tokenizer whose calls never overlap.

    A fast tokenizer keeps padding/truncation as mutable state that every call resets, so two
    threads tokenising at once (the engine counting tokens in a request thread while the batcher
    encodes) fail with "Unable to create tensor" or get wrong lengths. Tokenising costs ~0.1 ms
    per sentence, so one lock per backbone costs nothing next to a forward pass. Everything else
    (attributes, ``save_pretrained``, ``decode``) is delegated unchanged.
    """

    _LOCKED = ("__call__", "encode", "encode_plus", "batch_encode_plus", "pad", "tokenize")

    def __init__(self, tokenizer: Any) -> None:
        object.__setattr__(self, "_tokenizer", tokenizer)
        object.__setattr__(self, "_lock", threading.RLock())

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            return self._tokenizer(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._tokenizer, name)
        if name in self._LOCKED and callable(value):

            def locked(*args: Any, **kwargs: Any) -> Any:
                with self._lock:
                    return value(*args, **kwargs)

            return locked
        return value

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._tokenizer, name, value)

    def __len__(self) -> int:
        return len(self._tokenizer)


def ensure_pad_token(tokenizer: Any) -> None:
    """Give the tokenizer a pad token if it has none (batching needs one).

    EOS is the usual choice for decoders; the attention mask hides the padding either way.
    """
    if tokenizer.pad_token is not None:
        return
    for candidate in (tokenizer.eos_token, tokenizer.unk_token, tokenizer.bos_token):
        if candidate is not None:
            tokenizer.pad_token = candidate
            return
    raise InvalidArgument("the tokenizer has no pad, eos, unk or bos token to pad batches with")


def load_folder(
    folder: Path,
    *,
    name: str | None = None,
    kind: BackboneKind | None = None,
    fingerprint: str | None = None,
) -> Backbone:
    """Load a local HF model folder (config + weights + tokenizer) as a float32 eval Backbone."""
    import torch
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer

    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise InvalidArgument(
            f"{folder} is not a model folder: it has no config.json", field="backbone"
        )
    config = AutoConfig.from_pretrained(folder, local_files_only=True)
    if kind is None:
        kind = "decoder" if is_decoder_config(config) else "encoder"
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    ensure_pad_token(tokenizer)
    auto = AutoModelForCausalLM if kind == "decoder" else AutoModel
    model = auto.from_pretrained(folder, local_files_only=True, dtype=torch.float32)
    model.eval()
    return Backbone(
        name=name or str(folder),
        kind=kind,
        model=model,
        tokenizer=SerializedTokenizer(tokenizer),
        max_length=_max_length(folder, config, tokenizer),
        source=folder,
        fingerprint=fingerprint or folder_fingerprint(folder),
    )
