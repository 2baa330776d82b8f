"""``btr``: binary token representations (BTR) with binary sentence codes and re-ranking.

Reference
    Cao et al., "BTR: Binary Token Representations for Efficient Retrieval Augmented Language
    Models" (ICLR 2024, arXiv 2310.01329). The official repo (csarron/BTR) holds only a README,
    so every detail below is our choice; binarisation follows BPR (studio-ousia/bpr). See
    ``_btr_codes`` for the calibration maths and ``training/train_btr.py`` for the objective.

Inputs / Outputs
    ``encode(texts, role)`` -> ``binary`` embedding: ``bits``-wide sentence codes (sign of the
    float mean-pooled embedding, centred and projected by PCA + random rotation), packed uint8,
    for a FAISS ``binary`` (Hamming) index. For ``Role.PASSAGE`` the embedding also carries one
    ``payload`` per text: that passage's **token codes** at the cut layer (``d/8`` bytes of bits
    + one fp16 scale per token), which a collection stores beside the document.
    ``rescore(queries, payloads)`` recomputes each candidate's dense embedding from its token
    codes (reconstruct -> upper blocks -> mean pool) and scores it against the float query
    embedding (cosine): the second stage of a two-stage search.

Hyper-parameters
    ``cut`` (from the artifact, default 4 of MiniLM's 6 blocks: codes are layer-4 states and
    re-embedding costs 2 blocks), ``bits`` (256: FAISS's fast Hamming path), adapter ``rank``
    (32), ``rerank_depth`` (100 Hamming candidates per query), ``reconstruction``
    (``trained`` | ``calibrated`` | ``naive``: ablations for the benchmark).

Design choices (not in the paper): queries are not binarised (a bi-encoder has no joint
query-passage upper layers, so the query takes the plain float path, as BPR's re-ranking does);
the sentence code is computed from the float path at indexing time (the upper blocks run once
anyway), while re-ranking uses only the stored token codes.
"""

from __future__ import annotations

import hashlib
import json
import struct
import threading
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field

from embedsvc.backbones import Backbone, load_backbone
from embedsvc.errors import FailedPrecondition, InvalidArgument
from embedsvc.strategies._batches import length_sorted_batches
from embedsvc.strategies._btr_codes import pack_bits, unpack_bits
from embedsvc.strategies._limits import apply_token_limit, check_texts, count_with_specials
from embedsvc.strategies.base import Embedding, Role, Strategy, StrategyConfig, register_strategy

DEFAULT_ARTIFACT = Path(__file__).resolve().parents[1] / "artifacts" / "btr"
#: payload header: magic, format version, token count, hidden size
_HEADER = struct.Struct("<4sBHH")
_MAGIC = b"BTR1"


class BTRConfig(StrategyConfig):
    backbone: str = "minilm"
    #: folder with btr.npz + btr_config.json (training/train_btr.py --ship writes it)
    artifact: str | None = None
    batch_size: int = Field(32, ge=1)
    max_length: int | None = Field(None, ge=2)
    rerank_depth: int = Field(100, ge=0)
    reconstruction: str = Field("trained", pattern="^(trained|calibrated|naive)$")


def encode_payload(bits: np.ndarray, scales: np.ndarray) -> bytes:
    """One passage's token codes: header + packed bits [n, d/8] + fp16 scales [n]."""
    n, d = bits.shape
    return (
        _HEADER.pack(_MAGIC, 1, n, d)
        + pack_bits(bits).tobytes()
        + np.asarray(scales, dtype="<f2").tobytes()
    )


def decode_payload(payload: bytes) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of :func:`encode_payload`: ``(bits bool [n, d], scales float32 [n])``."""
    magic, version, n, d = _HEADER.unpack_from(payload)
    if magic != _MAGIC or version != 1:
        raise InvalidArgument("not a BTR token-code payload (bad magic/version)")
    off = _HEADER.size
    nb = n * (d // 8)
    codes = np.frombuffer(payload, dtype=np.uint8, count=nb, offset=off).reshape(n, d // 8)
    scales = np.frombuffer(payload, dtype="<f2", count=n, offset=off + nb).astype(np.float32)
    return unpack_bits(codes, d), scales


@register_strategy("btr")
class BinaryTokenRepresentations(Strategy):
    """Binary sentence codes for Hamming search + token codes for re-ranking (see module doc)."""

    output_kind = "binary"
    config_cls = BTRConfig
    description = "BTR: binary token codes (cut layer) + 256-bit sentence codes, re-ranking"
    config: BTRConfig

    def __init__(self, config: BTRConfig | None = None, *, cache_dir: Path | None = None) -> None:
        super().__init__(config)
        self._cache_dir = cache_dir
        self._backbone: Backbone | None = None
        self._parts: dict[str, Any] | None = None
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ loading
    @property
    def artifact_dir(self) -> Path:
        return Path(self.config.artifact) if self.config.artifact else DEFAULT_ARTIFACT

    @property
    def backbone(self) -> Backbone:
        self._load()
        assert self._backbone is not None
        return self._backbone

    def _load(self) -> dict[str, Any]:
        if self._parts is None:
            with self._lock:
                if self._parts is None:
                    self._parts = self._load_parts()
        return self._parts

    def _load_parts(self) -> dict[str, Any]:
        import torch

        from embedsvc.strategies._btr_codes import Calibration

        folder = self.artifact_dir
        if not (folder / "btr.npz").is_file():
            raise FailedPrecondition(
                f"BTR artifact missing in {folder}; build it with "
                "`.venv/bin/python training/train_btr.py --ship`"
            )
        cfg = json.loads((folder / "btr_config.json").read_text())
        with np.load(folder / "btr.npz") as z:
            arrays = {k: z[k] for k in z.files}
        bb = load_backbone(self.config.backbone, self._cache_dir)
        if cfg["cut"] >= bb.num_layers:
            raise InvalidArgument(f"cut {cfg['cut']} must be below {bb.num_layers} layers")
        calib = Calibration(arrays["centre"], np.exp(arrays["log_mag"]), int(cfg["rank"]))
        state = {k: torch.from_numpy(v) for k, v in arrays.items() if k in calib.state_dict()}
        calib.load_state_dict(state)
        if self.config.reconstruction == "calibrated":
            # statistics only: undo the trained offset/adapter (rank 0), keep centre/magnitude
            # from the stored pre-training calibration when present
            c0 = arrays.get("init_centre", arrays["centre"])
            m0 = arrays.get("init_mag", np.exp(arrays["log_mag"]))
            calib = Calibration(c0, m0, 0)
        calib.eval()
        digest = hashlib.sha256((folder / "btr.npz").read_bytes()).hexdigest()[:16]
        self._backbone = bb
        return {
            "cut": int(cfg["cut"]),
            "bits": int(cfg["bits"]),
            "calib": calib,
            "proj_centre": torch.from_numpy(arrays["proj_centre"]),
            "projection": torch.from_numpy(arrays["projection"]),
            "digest": digest,
        }

    # ---------------------------------------------------------------- contract
    @property
    def dim(self) -> int:
        return int(self._load()["bits"])

    @property
    def max_tokens(self) -> int:
        return self.config.max_length or self.backbone.max_length

    @property
    def rescore_depth(self) -> int:
        return self.config.rerank_depth

    @property
    def cut(self) -> int:
        return int(self._load()["cut"])

    @property
    def fingerprint(self) -> str:
        p = self._load()
        key = (
            f"btr|{self.backbone.fingerprint}|{p['digest']}|{p['cut']}|{p['bits']}|"
            f"{self.max_tokens}|{self.config.reconstruction}"
        )
        return hashlib.sha256(key.encode()).hexdigest()[:16]

    def count_tokens(self, texts: list[str], role: Role = Role.PASSAGE) -> list[int]:
        return count_with_specials(self.backbone.tokenizer, texts)

    def onnx_spec(self) -> Any:
        """Export hook: split encoder, sentence-code projection and token codes in the graph;
        bit packing in Python (``embedsvc.export.trained_modules.btr_spec``)."""
        from embedsvc.export.trained_modules import btr_spec

        return btr_spec(self)

    def _batches(self, texts: list[str], truncate: bool):
        """Yield ``(indices, tokenizer output)`` longest first; also returns the limit stats."""
        counts = self.count_tokens(texts)
        seen, truncated = apply_token_limit(counts, self.max_tokens, truncate)
        batches = length_sorted_batches(
            self.backbone.tokenizer, texts, counts, self.config.batch_size, self.max_tokens
        )
        return list(batches), seen, truncated

    def encode(
        self,
        texts: list[str],
        role: Role = Role.PASSAGE,
        *,
        normalize: bool = True,
        truncate: bool = True,
    ) -> Embedding:
        """Sentence codes (binary); passages also get their token codes as ``payloads``."""
        texts = check_texts(texts)
        bits = self.dim
        if not texts:
            return Embedding.empty("binary", bits)
        codes, payloads, _, seen, truncated = self.index_passages(
            texts, truncate=truncate, payloads=role == Role.PASSAGE
        )
        emb = Embedding("binary", codes, bits, seen, truncated)
        emb.payloads = payloads
        return emb

    def index_passages(self, texts: list[str], *, truncate: bool = True, payloads: bool = True):
        """One forward per batch gives everything indexing needs: ``(sentence codes uint8
        [n, bits/8], token-code payloads or None, float pooled embeddings [n, d] (normalised:
        the ``mean`` baseline's vectors), token counts, truncated counts)``."""
        import torch

        from embedsvc.strategies._btr_codes import (
            lower_states,
            masked_mean,
            sentence_bits,
            upper_states,
        )

        p = self._load()
        batches, seen, truncated = self._batches(check_texts(texts), truncate)
        codes = np.empty((len(texts), p["bits"] // 8), dtype=np.uint8)
        floats = np.empty((len(texts), self.backbone.hidden_size), dtype=np.float32)
        out: list[bytes] = [b""] * len(texts)
        model, cut, calib = self.backbone.model, p["cut"], p["calib"]
        with torch.inference_mode():
            for idx, enc in batches:
                mask = enc["attention_mask"]
                low = lower_states(model, enc["input_ids"], mask, cut, enc.get("token_type_ids"))
                pooled = masked_mean(upper_states(model, low, mask, cut), mask)
                pooled = torch.nn.functional.normalize(pooled, dim=-1)
                floats[idx] = pooled.numpy()
                sb = sentence_bits(pooled, p["proj_centre"], p["projection"])
                codes[idx] = pack_bits(sb.numpy())
                if payloads:
                    tb, ts = calib.encode(low)
                    for j, i in enumerate(idx):
                        n = int(mask[j].sum())
                        out[i] = encode_payload(tb[j, :n].numpy(), ts[j, :n].numpy())
        return codes, (out if payloads else None), floats, seen, truncated

    # ------------------------------------------------------------ re-ranking
    def token_codes(self, texts: list[str]) -> list[bytes]:
        """Token-code payloads of ``texts`` (lower blocks only: what indexing stores)."""
        import torch

        from embedsvc.strategies._btr_codes import lower_states

        texts = check_texts(texts)
        p = self._load()
        out: list[bytes] = [b""] * len(texts)
        batches, _, _ = self._batches(texts, True)
        with torch.inference_mode():
            for idx, enc in batches:
                mask = enc["attention_mask"]
                low = lower_states(
                    self.backbone.model, enc["input_ids"], mask, p["cut"], enc.get("token_type_ids")
                )
                tb, ts = p["calib"].encode(low)
                for j, i in enumerate(idx):
                    n = int(mask[j].sum())
                    out[i] = encode_payload(tb[j, :n].numpy(), ts[j, :n].numpy())
        return out

    def reembed(self, payloads: list[bytes], normalize: bool = True) -> np.ndarray:
        """Dense float32 [n, d] embeddings recomputed from token codes (upper blocks only)."""
        import torch

        from embedsvc.strategies._btr_codes import masked_mean, naive_roundtrip, upper_states

        p = self._load()
        d = self.backbone.hidden_size
        out = np.empty((len(payloads), d), dtype=np.float32)
        decoded = [decode_payload(x) for x in payloads]
        order = np.argsort([-b.shape[0] for b, _ in decoded], kind="stable")
        bs = self.config.batch_size
        with torch.inference_mode():
            for start in range(0, len(order), bs):
                idx = order[start : start + bs]
                n = max(decoded[i][0].shape[0] for i in idx)
                signs = torch.zeros(len(idx), n, d)
                scales = torch.zeros(len(idx), n)
                mask = torch.zeros(len(idx), n, dtype=torch.long)
                for j, i in enumerate(idx):
                    b, s = decoded[i]
                    signs[j, : len(s)] = torch.from_numpy(b.astype(np.float32) * 2 - 1)
                    scales[j, : len(s)] = torch.from_numpy(s)
                    mask[j, : len(s)] = 1
                if self.config.reconstruction == "naive":
                    h = naive_roundtrip(signs)
                else:
                    h = p["calib"].reconstruct(signs, scales)
                pooled = masked_mean(upper_states(self.backbone.model, h, mask, p["cut"]), mask)
                if normalize:
                    pooled = torch.nn.functional.normalize(pooled, dim=-1)
                out[idx] = pooled.numpy()
        return out

    def query_vectors(self, texts: list[str]) -> np.ndarray:
        """Float (not binarised) query embeddings: the full model, mean pooled, normalised."""
        import torch

        from embedsvc.strategies._btr_codes import lower_states, masked_mean, upper_states

        p = self._load()
        out = np.empty((len(texts), self.backbone.hidden_size), dtype=np.float32)
        batches, _, _ = self._batches(check_texts(texts), True)
        with torch.inference_mode():
            for idx, enc in batches:
                mask = enc["attention_mask"]
                m = self.backbone.model
                low = lower_states(m, enc["input_ids"], mask, p["cut"], enc.get("token_type_ids"))
                pooled = masked_mean(upper_states(m, low, mask, p["cut"]), mask)
                out[idx] = torch.nn.functional.normalize(pooled, dim=-1).numpy()
        return out

    def rescore(self, queries: list[str], candidates: list[list[bytes]]) -> list[np.ndarray]:
        """Cosine of each float query embedding to its candidates re-embedded from codes."""
        q = self.query_vectors(queries)
        flat = [c for row in candidates for c in row]
        docs = self.reembed(flat) if flat else np.zeros((0, q.shape[1]), np.float32)
        out, at = [], 0
        for i, row in enumerate(candidates):
            out.append(docs[at : at + len(row)] @ q[i])
            at += len(row)
        return out
