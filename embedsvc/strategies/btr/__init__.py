"""``btr``: binary token representations (BTR) with binary sentence codes and re-ranking.

Reference
    Cao et al., "BTR: Binary Token Representations for Efficient Retrieval Augmented Language
    Models" (ICLR 2024, arXiv 2310.01329). The official repo (csarron/BTR) holds only a README,
    so every detail below is our choice; binarisation follows BPR (studio-ousia/bpr). See
    ``model.py`` for the calibration maths and ``training/train_btr.py`` for the objective.

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
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field

from embedsvc.backbones import Backbone
from embedsvc.errors import FailedPrecondition, InvalidArgument
from embedsvc.strategies.base import Role, StrategyConfig, register_strategy
from embedsvc.strategies.core import ENCODER_INPUTS
from embedsvc.strategies.features import check_texts
from embedsvc.strategies.hf import HFStrategy
from embedsvc.strategies.runner import Runner, map_batches

DEFAULT_ARTIFACT = Path(__file__).resolve().parents[2] / "artifacts" / "btr"
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


def pack_bits(bits: np.ndarray) -> np.ndarray:
    """bool/0-1 ``[..., d]`` -> uint8 ``[..., d/8]`` (numpy packbits, big-endian bit order)."""
    return np.packbits(np.asarray(bits, dtype=bool), axis=-1)


def unpack_bits(codes: np.ndarray, dim: int) -> np.ndarray:
    """uint8 ``[..., d/8]`` -> bool ``[..., d]``; inverse of :func:`pack_bits`."""
    return np.unpackbits(np.asarray(codes, dtype=np.uint8), axis=-1, count=dim).astype(bool)


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
class BinaryTokenRepresentations(HFStrategy):
    """Binary sentence codes for Hamming search + token codes for re-ranking (see module doc)."""

    output_kind = "binary"
    config_cls = BTRConfig
    description = "BTR: binary token codes (cut layer) + 256-bit sentence codes, re-ranking"
    config: BTRConfig
    _parts: dict[str, Any] | None = None
    int8_sts_delta = -0.49  # int8 - fp32 STS-B dev (Hamming), measured in issue 7

    # ------------------------------------------------------------------ loading
    @property
    def artifact_dir(self) -> Path:
        return Path(self.config.artifact) if self.config.artifact else DEFAULT_ARTIFACT

    @property
    def source(self) -> Path | None:
        return self.artifact_dir

    def check_backbone(self, backbone: Backbone) -> None:
        cut = int(self._config()["cut"])
        if cut >= backbone.num_layers:
            raise InvalidArgument(f"cut {cut} must be below {backbone.num_layers} layers")

    def _config(self) -> dict[str, Any]:
        folder = self.artifact_dir
        if not (folder / "btr.npz").is_file():
            raise FailedPrecondition(
                f"BTR artifact missing in {folder}; build it with "
                "`.venv/bin/python training/train_btr.py --ship`"
            )
        return json.loads((folder / "btr_config.json").read_text())

    def _load(self) -> dict[str, Any]:
        return self.lazy("_parts", self._load_parts)

    def _load_parts(self) -> dict[str, Any]:
        import torch

        from embedsvc.strategies.btr.model import Calibration

        folder = self.artifact_dir
        cfg = self._config()
        with np.load(folder / "btr.npz") as z:
            arrays = {k: z[k] for k in z.files}
        _ = self.backbone
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
        return int(self._config()["bits"])

    @property
    def rescore_depth(self) -> int:  # type: ignore[override]
        return self.config.rerank_depth

    @property
    def cut(self) -> int:
        return int(self._load()["cut"])

    @property
    def model_fingerprint(self) -> str:
        p = self._load()
        bb, recon = self.backbone.fingerprint, self.config.reconstruction
        return self.digest("btr", bb, p["digest"], p["cut"], p["bits"], self.max_tokens, recon)

    def build_core(self) -> Any:
        """Split encoder, sentence-code projection and token codes: one module."""
        from embedsvc.strategies.btr.model import BTRCore

        p = self._load()
        tok = self.backbone.tokenizer
        names = tuple(n for n in ENCODER_INPUTS if n in tok.model_input_names)
        notes = (
            "tokenisation and truncation run in Python (tokenizer files saved beside)",
            "in the graph: MiniLM split at the cut layer, masked mean, L2 norm, the sentence-code "
            "projection ((e - mu) P^T) and the calibrated token binarisation "
            "(token_bits = h - centre >= 0, token_scales)",
            "in Python (post): sign + numpy packbits of the sentence code, and the payload bytes",
            "re-ranking (rescore) runs the torch upper blocks on the stored codes",
        )
        model = self.backbone.model
        return BTRCore(model, p["cut"], p["calib"], p["proj_centre"], p["projection"], names, notes)

    @staticmethod
    def payloads_of(outputs: dict[str, Any], mask: np.ndarray) -> list[bytes]:
        bits, scales = outputs["token_bits"], outputs["token_scales"]
        return [encode_payload(bits[j][mask[j]], scales[j][mask[j]]) for j in range(len(mask))]

    def post(self, outputs, feeds, role, normalize):  # type: ignore[no-untyped-def]
        """Sentence codes (sign of the projection, packed); passages also get their token codes
        as payloads."""
        codes = pack_bits(np.asarray(outputs["projection"]) >= 0)
        if role != Role.PASSAGE:
            return codes, None
        return codes, self.payloads_of(outputs, feeds["attention_mask"].astype(bool))

    def index_passages(self, texts: list[str], *, truncate: bool = True, payloads: bool = True):
        """One forward per batch gives everything indexing needs: ``(sentence codes uint8
        [n, bits/8], token-code payloads or None, float pooled embeddings [n, d] (normalised:
        the ``mean`` baseline's vectors), token counts, truncated counts)``."""
        per_token = ("token_bits", "token_scales") if payloads else ()
        out, seen, truncated = Runner(self).outputs(
            check_texts(texts), Role.PASSAGE, truncate=truncate, per_token=per_token
        )
        codes = pack_bits(out["projection"] >= 0)
        pays = None
        if payloads:
            pays = [
                encode_payload(b, s)
                for b, s in zip(out["token_bits"], out["token_scales"], strict=True)
            ]
        return codes, pays, out["pooled"], seen, truncated

    # ------------------------------------------------------------ re-ranking
    def token_codes(self, texts: list[str]) -> list[bytes]:
        """Token-code payloads of ``texts`` (what indexing stores)."""
        return self.index_passages(texts)[1] or []

    def reembed(self, payloads: list[bytes], normalize: bool = True) -> np.ndarray:
        """Dense float32 [n, d] embeddings recomputed from token codes (upper blocks only)."""
        import torch
        import torch.nn.functional as F

        from embedsvc.backbones.layers import upper_states
        from embedsvc.strategies.btr.model import naive_roundtrip
        from embedsvc.strategies.pooling import masked_mean

        p = self._load()
        d = self.backbone.hidden_size
        decoded = [decode_payload(x) for x in payloads]

        def run(idx: np.ndarray) -> dict[str, np.ndarray]:
            n = max(decoded[i][0].shape[0] for i in idx)
            signs = torch.zeros(len(idx), n, d)
            scales = torch.zeros(len(idx), n)
            mask = torch.zeros(len(idx), n, dtype=torch.long)
            for j, i in enumerate(idx):
                b, s = decoded[i]
                signs[j, : len(s)] = torch.from_numpy(b.astype(np.float32) * 2 - 1)
                scales[j, : len(s)] = torch.from_numpy(s)
                mask[j, : len(s)] = 1
            with torch.inference_mode():
                if self.config.reconstruction == "naive":
                    h = naive_roundtrip(signs)
                else:
                    h = p["calib"].reconstruct(signs, scales)
                pooled = masked_mean(upper_states(self.backbone.model, h, mask, p["cut"]), mask)
                if normalize:
                    pooled = F.normalize(pooled, dim=-1)
            return {"vec": pooled.numpy()}

        if not decoded:
            return np.zeros((0, d), np.float32)
        lengths = [b.shape[0] for b, _ in decoded]
        return map_batches(lengths, run, self.batch_size)["vec"]

    def query_vectors(self, texts: list[str]) -> np.ndarray:
        """Float (not binarised) query embeddings: the full model, mean pooled, normalised."""
        return Runner(self).outputs(check_texts(texts), Role.QUERY)[0]["pooled"]

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
