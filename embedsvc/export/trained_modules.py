"""Traceable modules and specs of the strategies with trained artifacts.

``dupmae*`` (merged-LoRA MiniLM + CLS reduction + tied vocab head + top-k + hashed buckets),
``btr`` (MiniLM split at the cut layer: sentence-code projection + the token codes stored as
payloads), ``multisense`` / ``multisense_student`` (per-token nearest-sense replacement with the
sense dictionary as an initializer) and ``text2token*`` (merged-LoRA SmolLM2, masked mean). Each
module re-expresses the strategy's torch ``encode`` path op for op (same formulas, same order),
so that ``tests/export/test_onnx_trained.py`` can hold it to the torch vectors; each
``*_spec`` builds the featurizer from the strategy's own tokenizer call.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from embedsvc.export.modules import DECODER_INT8_KEEP_FLOAT
from embedsvc.export.spec import OnnxSpec
from embedsvc.strategies.base import Role

ENCODER_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def _featurizer(tok: Any, names: tuple[str, ...], limit: int):
    """The strategies' shared batch call: ``tok(texts, padding, truncation, max_length)``."""

    def featurize(texts: list[str], role: Role) -> dict[str, np.ndarray]:
        enc = tok(texts, padding=True, truncation=True, max_length=limit, return_tensors="np")
        return {n: enc[n].astype(np.int64) for n in names}

    return featurize


def _masked_mean(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)


def _encoder_names(tok: Any) -> tuple[str, ...]:
    return tuple(n for n in ENCODER_INPUTS if n in tok.model_input_names)


# ------------------------------------------------------------------------------------- DupMAE


class DupMAEModule(nn.Module):
    """``DupMAE.channel_vectors`` for one channel choice: the unit vector the strategy serves.

    Merged encoder -> ``normalize(cls_reduce(h[CLS]))``; tied LM head over every position,
    ``log1p(relu(.))``, masked (padding/[CLS]/[SEP] -> 0) max over positions, ``TopK``, the k
    winners' logits recomputed at their arg-max positions (as ``ot_topk`` does), normalised,
    signed-hashed by ``ScatterElements(add)`` into ``ot_dim`` buckets, normalised; ``both``
    concatenates ``sqrt(w) cls ; sqrt(1-w) ot``.
    """

    def __init__(
        self,
        encoder: nn.Module,
        heads: nn.Module,
        bucket: torch.Tensor,
        sign: torch.Tensor,
        *,
        channels: str,
        top_k: int,
        ot_dim: int,
        cls_weight: float,
        specials: tuple[int, ...],
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.heads = heads
        self.register_buffer("bucket", bucket.detach().clone().long())
        self.register_buffer("sign", sign.detach().clone().float())
        self.channels = channels
        vocab = int(heads.lm_head.decoder_weight.shape[0])
        self.top_k = min(int(top_k), vocab)  # a Python int: TopK's k is a graph constant
        self.ot_dim = int(ot_dim)
        self.cls_weight = float(cls_weight)
        self.specials = tuple(int(s) for s in specials)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        import math

        # the torch path passes no token_type_ids: BERT then uses zeros (its buffer)
        h = self.encoder(
            input_ids=input_ids,
            attention_mask=attention_mask,
            token_type_ids=torch.zeros_like(input_ids),
        ).last_hidden_state
        cls = F.normalize(self.heads.cls_reduce(h[:, 0]), dim=-1)
        if self.channels == "cls":
            return cls
        keep = attention_mask > 0
        for sid in self.specials:
            keep = keep & (input_ids != sid)
        head = self.heads.lm_head
        t = head.transform(h)  # [B, L, d]
        weight, bias = head.decoder_weight, head.bias
        act = torch.log1p(torch.relu(F.linear(t, weight, bias)))
        act = act * keep.unsqueeze(-1).to(act.dtype)
        ot, argpos = act.max(dim=1)  # [B, V]
        _, indices = ot.topk(self.top_k, dim=1)
        pos = argpos.gather(1, indices)  # [B, k]
        rows = t.gather(1, pos.unsqueeze(-1).expand(-1, -1, t.shape[-1]))  # [B, k, d]
        z = (rows * weight[indices]).sum(-1) + bias[indices]
        values = torch.log1p(torch.relu(z)) * keep.any(dim=1, keepdim=True).to(z.dtype)
        values = F.normalize(values, dim=1)
        hashed = torch.zeros(values.shape[0], self.ot_dim, dtype=values.dtype)
        hashed = hashed.scatter_add(1, self.bucket[indices], values * self.sign[indices])
        ot_vec = F.normalize(hashed, dim=-1)
        if self.channels == "ot":
            return ot_vec
        w = self.cls_weight
        return torch.cat([cls * math.sqrt(w), ot_vec * math.sqrt(1.0 - w)], 1)


def dupmae_spec(strategy: Any) -> OnnxSpec:
    """The ``OnnxSpec`` of a ``dupmae*`` strategy (``embedsvc.strategies.dupmae``)."""
    from embedsvc.strategies.dupmae import artifact_dir

    m = strategy.model
    tok = strategy.backbone.tokenizer
    module = DupMAEModule(
        m.encoder,
        m.heads,
        m.bucket,
        m.sign,
        channels=strategy.config.channels,
        top_k=strategy.top_k,
        ot_dim=m.ot_dim,
        cls_weight=strategy.cls_weight,
        specials=(tok.cls_token_id, tok.sep_token_id),
    ).eval()
    return OnnxSpec(
        module=module,
        input_names=("input_ids", "attention_mask"),
        featurize=_featurizer(tok, ("input_ids", "attention_mask"), strategy.max_tokens),
        tokenizer=tok,
        source=artifact_dir(strategy.config.artifact),
        source_fingerprint=strategy.fingerprint,
        batch_size=strategy.config.batch_size,
        notes=[
            "tokenisation and truncation run in Python (tokenizer files saved beside)",
            "LoRA adapter merged into the encoder weights; CLS reduction, tied vocab head, "
            "masked max over ordinary tokens, TopK and the signed-hash ScatterElements(add) "
            "are in the graph",
            f"channels={strategy.config.channels}, top_k={strategy.top_k}, "
            f"cls_weight={strategy.cls_weight}; outputs are unit vectors already",
        ],
    )


# ---------------------------------------------------------------------------------------- BTR


class BTRModule(nn.Module):
    """``BinaryTokenRepresentations.index_passages`` up to the bit packing.

    Outputs ``(projection [B, bits], token_bits bool [B, T, d], token_scales [B, T])``: the
    sentence code is ``projection >= 0`` (``sentence_bits`` of the normalised float pooled
    embedding); the token codes are ``Calibration.encode`` of the cut-layer states.
    """

    def __init__(
        self,
        model: nn.Module,
        cut: int,
        calib: nn.Module,
        proj_centre: torch.Tensor,
        projection: torch.Tensor,
        input_names: tuple[str, ...],
    ) -> None:
        super().__init__()
        self.model = model
        self.cut = int(cut)
        self.calib = calib
        self.register_buffer("proj_centre", proj_centre.detach().clone().float())
        self.register_buffer("projection", projection.detach().clone().float())
        self.input_names = input_names

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        from embedsvc.strategies._btr_codes import lower_states, masked_mean, upper_states

        kw = dict(zip(self.input_names, inputs))
        ids, mask = kw["input_ids"], kw["attention_mask"]
        low = lower_states(self.model, ids, mask, self.cut, kw.get("token_type_ids"))
        pooled = masked_mean(upper_states(self.model, low, mask, self.cut), mask)
        pooled = F.normalize(pooled, dim=-1)
        proj = (pooled - self.proj_centre) @ self.projection.t()
        bits, scales = self.calib.encode(low)
        return proj, bits, scales


def btr_spec(strategy: Any) -> OnnxSpec:
    """The ``OnnxSpec`` of ``btr``: the graph gives the float projection and the token codes;
    the sign/bit packing of the sentence code and the payload bytes are made in ``finalize``."""
    from embedsvc.strategies._btr_codes import pack_bits
    from embedsvc.strategies.btr import encode_payload

    p = strategy._load()
    tok = strategy.backbone.tokenizer
    names = _encoder_names(tok)
    module = BTRModule(
        strategy.backbone.model, p["cut"], p["calib"], p["proj_centre"], p["projection"], names
    ).eval()

    def finalize(
        outputs: dict[str, np.ndarray], feeds: dict[str, np.ndarray], role: Role
    ) -> tuple[np.ndarray, list[bytes] | None]:
        codes = pack_bits(outputs["embedding"] >= 0)
        if role != Role.PASSAGE:
            return codes, None
        mask = feeds["attention_mask"].astype(bool)
        bits, scales = outputs["token_bits"], outputs["token_scales"]
        pays = [encode_payload(bits[j][mask[j]], scales[j][mask[j]]) for j in range(len(mask))]
        return codes, pays

    return OnnxSpec(
        module=module,
        input_names=names,
        featurize=_featurizer(tok, names, strategy.max_tokens),
        tokenizer=tok,
        source=strategy.artifact_dir,
        source_fingerprint=strategy.fingerprint,
        batch_size=strategy.config.batch_size,
        extra_outputs=("token_bits", "token_scales"),
        finalize=finalize,
        notes=[
            "tokenisation and truncation run in Python (tokenizer files saved beside)",
            "in the graph: MiniLM split at the cut layer, masked mean, L2 norm, the sentence-code "
            "projection ((e - mu) P^T, output 'embedding') and the calibrated token binarisation "
            "(token_bits = h - centre >= 0, token_scales)",
            "in Python: sign + numpy packbits of the sentence code, and the payload bytes "
            "(bit packing + fp16 scales, header) of the passages' token codes",
            "re-ranking (rescore: float query path + re-embedding from stored codes) still runs "
            "the torch strategy",
        ],
    )


# --------------------------------------------------------------------------------- Multisense


class MultiSenseModule(nn.Module):
    """``MultiSense.token_states`` + masked mean, teacher (full encoder) or student.

    The sense dictionary is in the graph: ``offsets`` int64 ``[V+1]`` and ``centroids`` fp16
    ``[S, d]`` (cast to float32 after the gather: the torch path holds a float32 copy of the
    same fp16 values, so the numbers are identical). Each token gathers its padded block of
    ``max_senses`` candidate rows; the teacher picks the nearest by L2 (``assign_senses``), the
    student by ``<z, s> - |s|^2/2`` over its head output (``student_logits``). Tokens without
    senses keep their state (the teacher's hidden state / the student's ``z``).
    """

    def __init__(
        self,
        model: nn.Module,
        offsets: np.ndarray,
        centroids: np.ndarray,
        max_senses: int,
        *,
        replace: bool,
        student_layers: int | None,
        head: nn.Module | None,
        input_names: tuple[str, ...],
    ) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("offsets", torch.from_numpy(np.asarray(offsets, dtype=np.int64)))
        self.register_buffer(
            "centroids", torch.from_numpy(np.ascontiguousarray(centroids, dtype=np.float16))
        )
        self.max_senses = int(max_senses)
        self.replace = bool(replace) and self.max_senses > 0 and centroids.shape[0] > 0
        self.student_layers = student_layers
        self.head = head
        self.input_names = input_names

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        from embedsvc.strategies._btr_codes import lower_states

        kw = dict(zip(self.input_names, inputs))
        ids, mask = kw["input_ids"], kw["attention_mask"]
        if self.student_layers is None:
            hidden = self.model(input_ids=ids, attention_mask=mask).last_hidden_state
        else:
            hidden = lower_states(
                self.model, ids, mask, self.student_layers, kw.get("token_type_ids")
            )
        if not self.replace:
            return _masked_mean(hidden, mask)
        states = hidden if self.head is None else self.head(hidden)
        starts = self.offsets[ids]  # [B, T]
        counts = self.offsets[ids + 1] - starts
        ar = torch.arange(self.max_senses, device=ids.device)
        idx = (starts.unsqueeze(-1) + ar).clamp(max=self.centroids.shape[0] - 1)  # [B, T, m]
        valid = ar < counts.unsqueeze(-1)
        cand = self.centroids[idx].float()  # [B, T, m, d]
        if self.head is None:
            dist = ((cand - states.unsqueeze(2)) ** 2).sum(-1)
            best = dist.masked_fill(~valid, float("inf")).argmin(-1)
        else:
            logits = (cand * states.unsqueeze(2)).sum(-1) - 0.5 * (cand * cand).sum(-1)
            best = logits.masked_fill(~valid, float("-inf")).argmax(-1)
        picked = cand.gather(2, best[..., None, None].expand(-1, -1, 1, cand.shape[-1]))
        has = ((counts > 0) & (mask > 0)).unsqueeze(-1)
        out = torch.where(has, picked.squeeze(2), states)
        return _masked_mean(out, mask)


def multisense_spec(strategy: Any) -> OnnxSpec:
    """The ``OnnxSpec`` of ``multisense`` / ``multisense_student`` (dictionary in the graph)."""
    p = strategy._load()
    table = p["dict"].table
    tok = strategy.backbone.tokenizer
    student = bool(strategy.config.student)
    names = _encoder_names(tok) if student else ("input_ids", "attention_mask")
    module = MultiSenseModule(
        strategy.backbone.model,
        table.offsets,
        table.centroids,
        p["max_senses"],
        replace=strategy.config.replace,
        student_layers=int(p["layers"]) if student else None,
        head=p["head"],
        input_names=names,
    ).eval()
    mb = table.centroids.shape[0] * table.centroids.shape[1] * 2 / 1e6
    return OnnxSpec(
        module=module,
        input_names=names,
        featurize=_featurizer(tok, names, strategy.max_tokens),
        tokenizer=tok,
        source=strategy.dictionary_dir(),
        source_fingerprint=strategy.fingerprint,
        batch_size=strategy.config.batch_size,
        notes=[
            "tokenisation and truncation run in Python (tokenizer files saved beside)",
            f"sense dictionary in the graph: offsets [{table.offsets.shape[0]}] int64 + "
            f"centroids {list(table.centroids.shape)} fp16 ({mb:.0f} MB initializer), "
            f"max_senses={p['max_senses']}; per-token candidate gather + "
            + ("student logits argmax" if p["head"] is not None else "L2 argmin")
            + " + replacement + masked mean",
            "sense ids / examples / neighbours (the Senses RPC) still run the torch strategy",
        ],
    )


# --------------------------------------------------------------------------------- Text2Token


class DecoderMeanModule(nn.Module):
    """``_t2t_model.pooled``: the body's last hidden state (after the final norm), masked mean.

    Positions are passed as ``0..T-1`` (what the model defaults to without a cache), so the
    graph has no data-dependent position code.
    """

    def __init__(self, body: nn.Module) -> None:
        super().__init__()
        self.body = body

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        positions = torch.ones_like(input_ids).cumsum(dim=1) - 1
        hidden = self.body(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=positions,
            use_cache=False,
        ).last_hidden_state
        return _masked_mean(hidden, attention_mask)


def text2token_spec(strategy: Any) -> OnnxSpec:
    """The ``OnnxSpec`` of ``text2token*`` (adapters already merged by the strategy)."""
    from embedsvc.strategies._t2t_model import body

    model = strategy.model
    backbone = strategy.backbone
    tok = backbone.tokenizer
    folder = strategy._folder()
    names = ("input_ids", "attention_mask")
    return OnnxSpec(
        module=DecoderMeanModule(body(model)).eval(),
        input_names=names,
        featurize=_featurizer(tok, names, strategy.max_tokens),
        tokenizer=tok,
        source=folder if folder is not None else backbone.source,
        source_fingerprint=strategy.fingerprint,
        batch_size=strategy.config.batch_size,
        notes=[
            "tokenisation and truncation run in Python (tokenizer files saved beside)",
            "LoRA adapters merged into the decoder weights (in order); final norm and masked "
            "mean pooling in the graph",
        ],
        int8_keep_float=DECODER_INT8_KEEP_FLOAT,
    )
