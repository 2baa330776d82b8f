"""``multisense`` / ``multisense_student``: sense-dictionary replacement of token states.

Reference
    Wang et al., "Multi-Sense Embeddings for Language Models and Knowledge Distillation"
    (SenseDict; code Qitong-Wang/SenseDict, Qitong-Wang/SenseDictionary, read, not copied).

Inputs / Outputs
    ``encode(texts)`` -> ``dense`` float32 [n, 384]: every non-pad token's last-layer state is
    replaced by the nearest (L2) sense centroid of the same token id, then masked mean pooling
    (+ L2 normalisation), exactly as ``mean`` pools. Tokens the dictionary never saw keep their
    state (reported as sense id -1). ``sense_ids(texts)`` -> per text ``[(token, sense), ...]``,
    the compact form (a token id + a small sense index per token). ``senses(texts)`` adds, per
    token, stored example contexts of its sense and the nearest senses of *other* tokens
    (what the ``Senses`` RPC returns).

    ``multisense_student``: the first ``layers`` MiniLM blocks + a trained linear head; the head
    output ``z`` classifies each token into its own senses with logits ``<z, s_j> - |s_j|^2 / 2``
    (= nearest-centroid ranking, matching the teacher's L2 targets), the predicted sense vector
    replaces the token, then mean pooling. Trained by ``training/train_sense_student.py``.

Hyper-parameters
    Dictionary (built by ``training/build_sense_dictionary.py``): last layer, <= ~1000 samples
    per token, ``k = min(20, n)`` k-means senses per token, fp16 centroids. Student: ``layers``
    (3), head = Linear(384, 384).
"""

from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field

from embedsvc.backbones import Backbone, load_backbone
from embedsvc.errors import FailedPrecondition
from embedsvc.strategies._batches import length_sorted_batches
from embedsvc.strategies._limits import apply_token_limit, check_texts, count_with_specials
from embedsvc.strategies.base import Embedding, Role, Strategy, StrategyConfig, register_strategy

DEFAULT_STUDENT = Path(__file__).resolve().parents[1] / "artifacts" / "multisense-student"


class MultiSenseConfig(StrategyConfig):
    backbone: str = "minilm"
    #: dictionary folder; None = <cache>/sense_dicts/minilm-wiki
    dictionary: str | None = None
    batch_size: int = Field(32, ge=1)
    max_length: int | None = Field(None, ge=2)
    #: replace token states by senses (False = plain pooling of the same model: ablation)
    replace: bool = True
    #: use the distilled student (first ``layers`` blocks + head) instead of the full encoder
    student: bool = False
    student_artifact: str | None = None
    #: blocks of the student when no head is loaded (``replace=False``); else from the artifact
    student_layers: int = Field(3, ge=1)


def student_logits(z, cands, valid):
    """Nearest-centroid logits ``<z, s> - |s|^2/2`` over each token's own senses.

    ``z`` [n, d], ``cands`` [n, m, d], ``valid`` bool [n, m] -> [n, m] (invalid = -inf)."""
    logits = (cands * z[:, None, :]).sum(-1) - 0.5 * (cands * cands).sum(-1)
    return logits.masked_fill(~valid, float("-inf"))


def candidates(token_ids, offsets, centroids, max_senses: int):
    """Padded sense block of each token: ``(cands [n, m, d], valid [n, m])``."""
    import torch

    starts = offsets[token_ids]
    counts = offsets[token_ids + 1] - starts
    ar = torch.arange(max_senses)
    idx = (starts[:, None] + ar).clamp(max=max(0, centroids.shape[0] - 1))
    return centroids[idx], ar[None, :] < counts[:, None]


@register_strategy("multisense")
class MultiSense(Strategy):
    """Sense replacement + mean pooling (see module doc)."""

    output_kind = "dense"
    config_cls = MultiSenseConfig
    description = "multi-sense dictionary: tokens replaced by their nearest sense, mean pooled"
    config: MultiSenseConfig

    def __init__(
        self, config: MultiSenseConfig | None = None, *, cache_dir: Path | None = None
    ) -> None:
        super().__init__(config)
        self._cache_dir = cache_dir
        self._parts: dict[str, Any] | None = None
        self._index: Any = None
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ loading
    def _load(self) -> dict[str, Any]:
        if self._parts is None:
            with self._lock:
                if self._parts is None:
                    self._parts = self._load_parts()
        return self._parts

    def dictionary_dir(self) -> Path:
        from embedsvc.strategies._sense_io import default_dictionary_dir

        if self.config.dictionary:
            return Path(self.config.dictionary)
        return default_dictionary_dir(cache_dir=self._cache_dir)

    def _load_parts(self) -> dict[str, Any]:
        import torch

        from embedsvc.strategies._sense_io import load_dictionary

        folder = self.dictionary_dir()
        try:
            sd = load_dictionary(folder)
        except FileNotFoundError:
            raise FailedPrecondition(
                f"sense dictionary missing in {folder}; build it with "
                "`.venv/bin/python training/build_sense_dictionary.py`"
            ) from None
        bb = load_backbone(self.config.backbone, self._cache_dir)
        parts: dict[str, Any] = {
            "backbone": bb,
            "dict": sd,
            "offsets": torch.from_numpy(sd.table.offsets),
            "centroids": torch.from_numpy(sd.table.centroids.astype(np.float32)),
            "max_senses": sd.table.max_senses,
            "digest": hashlib.sha256(json.dumps(sd.manifest, sort_keys=True).encode()).hexdigest()[
                :16
            ],
            "layers": bb.num_layers,
            "head": None,
        }
        if self.config.student and not self.config.replace:
            # the truncated student with plain pooling needs no head (ablation baseline)
            parts["layers"] = self.config.student_layers
        elif self.config.student:
            folder = Path(self.config.student_artifact or DEFAULT_STUDENT)
            if not (folder / "head.npz").is_file():
                raise FailedPrecondition(
                    f"student head missing in {folder}; train it with "
                    "`.venv/bin/python training/train_sense_student.py --ship`"
                )
            cfg = json.loads((folder / "student_config.json").read_text())
            with np.load(folder / "head.npz") as z:
                head = torch.nn.Linear(z["weight"].shape[1], z["weight"].shape[0])
                head.weight.data = torch.from_numpy(z["weight"].astype(np.float32))
                head.bias.data = torch.from_numpy(z["bias"].astype(np.float32))
            parts["head"] = head.eval()
            parts["layers"] = int(cfg["layers"])
            parts["digest"] += hashlib.sha256((folder / "head.npz").read_bytes()).hexdigest()[:8]
        return parts

    @property
    def backbone(self) -> Backbone:
        return self._load()["backbone"]

    # ---------------------------------------------------------------- contract
    @property
    def dim(self) -> int:
        return self.backbone.hidden_size

    @property
    def max_tokens(self) -> int:
        return self.config.max_length or self.backbone.max_length

    @property
    def fingerprint(self) -> str:
        p = self._load()
        key = (
            f"{self.name}|{self.backbone.fingerprint}|{p['digest']}|{p['layers']}|"
            f"{self.config.replace}|{self.max_tokens}"
        )
        return hashlib.sha256(key.encode()).hexdigest()[:16]

    def count_tokens(self, texts: list[str], role: Role = Role.PASSAGE) -> list[int]:
        return count_with_specials(self.backbone.tokenizer, texts)

    def onnx_spec(self) -> Any:
        """Export hook: encoder (or student) + the sense dictionary as an initializer, the
        nearest-sense replacement and mean pooling in one graph."""
        from embedsvc.export.trained_modules import multisense_spec

        return multisense_spec(self)

    def token_states(self, enc: dict[str, Any]):
        """``(states [B, T, d], sense ids [B, T])`` after (optional) sense replacement."""
        import torch

        from embedsvc.strategies._btr_codes import lower_states
        from embedsvc.strategies._senses import replace_with_senses

        p = self._load()
        model = self.backbone.model
        inputs = {k: v for k, v in enc.items() if k in ("input_ids", "attention_mask")}
        mask, ids = enc["attention_mask"], enc["input_ids"]
        if not self.config.student:
            hidden = model(**inputs).last_hidden_state
            if not self.config.replace:
                return hidden, torch.full_like(ids, -1)
            return replace_with_senses(
                hidden, ids, mask, p["offsets"], p["centroids"], p["max_senses"]
            )
        # only the first ``layers`` blocks run: that is the student's whole speed-up
        hidden = lower_states(model, ids, mask, p["layers"], enc.get("token_type_ids"))
        if not self.config.replace:  # the truncated student with plain pooling (ablation)
            return hidden, torch.full_like(ids, -1)
        z = p["head"](hidden)
        flat_z, flat_ids = z.reshape(-1, z.shape[-1]), ids.reshape(-1)
        sense = torch.full_like(flat_ids, -1)
        out = flat_z.clone()
        pos = mask.reshape(-1).bool().nonzero(as_tuple=True)[0]
        cands, valid = candidates(flat_ids[pos], p["offsets"], p["centroids"], p["max_senses"])
        has = valid.any(-1)
        pick = student_logits(flat_z[pos][has], cands[has], valid[has]).argmax(-1)
        sense[pos[has]] = pick
        out[pos[has]] = cands[has][torch.arange(pick.shape[0]), pick]
        return out.reshape(z.shape), sense.reshape(ids.shape)

    def _run(self, texts: list[str], truncate: bool):
        """``(batches, token counts, truncated counts)``; batches = (indices, tokenizer output)
        longest first, tokenised lazily."""
        counts = self.count_tokens(texts)
        seen, truncated = apply_token_limit(counts, self.max_tokens, truncate)
        batches = length_sorted_batches(
            self.backbone.tokenizer, texts, counts, self.config.batch_size, self.max_tokens
        )
        return batches, seen, truncated

    def encode(
        self,
        texts: list[str],
        role: Role = Role.PASSAGE,
        *,
        normalize: bool = True,
        truncate: bool = True,
    ) -> Embedding:
        import torch

        from embedsvc.strategies._senses import masked_mean

        texts = check_texts(texts)
        dim = self.dim
        if not texts:
            return Embedding.empty("dense", dim)
        out = np.empty((len(texts), dim), dtype=np.float32)
        batches, seen, truncated = self._run(texts, truncate)
        with torch.inference_mode():
            for idx, enc in batches:
                states, _ = self.token_states(enc)
                pooled = masked_mean(states, enc["attention_mask"])
                if normalize:
                    pooled = torch.nn.functional.normalize(pooled, dim=-1)
                out[idx] = pooled.numpy()
        return Embedding("dense", out, dim, seen, truncated)

    # ------------------------------------------------------------ inspection
    def sense_ids(self, texts: list[str]) -> list[list[tuple[int, int]]]:
        """Per text, ``(token id, local sense index)`` of every token (-1 = no senses)."""
        import torch

        texts = check_texts(texts)
        out: list[list[tuple[int, int]]] = [[] for _ in texts]
        with torch.inference_mode():
            for idx, enc in self._run(texts, True)[0]:
                _, sense = self.token_states(enc)
                for j, i in enumerate(idx):
                    n = int(enc["attention_mask"][j].sum())
                    ids = enc["input_ids"][j, :n].tolist()
                    out[i] = list(zip(ids, sense[j, :n].tolist(), strict=True))
        return out

    def _neighbour_index(self):
        if self._index is None:
            import faiss

            c = self._load()["centroids"].numpy()
            index = faiss.IndexFlatL2(c.shape[1])
            index.add(np.ascontiguousarray(c))
            self._index = index
        return self._index

    def senses(self, texts: list[str], neighbours: int = 5) -> list[list[dict[str, Any]]]:
        """Per text, per token: token, ids, sense count, example contexts of the sense and the
        nearest senses of other tokens (``neighbours`` of them)."""
        p = self._load()
        sd, offsets = p["dict"], p["dict"].table.offsets
        tok = self.backbone.tokenizer
        row_token = np.repeat(np.arange(len(offsets) - 1), np.diff(offsets))
        result = []
        for pairs in self.sense_ids(texts):
            items = []
            for token_id, sense in pairs:
                n = int(offsets[token_id + 1] - offsets[token_id])
                item: dict[str, Any] = {
                    "token": tok.convert_ids_to_tokens(token_id),
                    "token_id": int(token_id),
                    "sense_id": int(sense),
                    "num_senses": n,
                    "examples": [],
                    "neighbours": [],
                }
                if sense >= 0:
                    row = int(offsets[token_id] + sense)
                    item["occurrences"] = int(sd.sizes[row])
                    item["examples"] = sd.examples[row] if sd.examples else []
                    if neighbours > 0:
                        q = sd.table.centroids[row : row + 1].astype(np.float32)
                        dist, nn = self._neighbour_index().search(q, neighbours + n + 1)
                        for dd, r in zip(dist[0], nn[0], strict=True):
                            if r < 0 or row_token[r] == token_id:
                                continue
                            t = int(row_token[r])
                            item["neighbours"].append(
                                {
                                    "token": tok.convert_ids_to_tokens(t),
                                    "token_id": t,
                                    "sense_id": int(r - offsets[t]),
                                    "distance": float(np.sqrt(max(dd, 0.0))),
                                    "example": (
                                        sd.examples[r][0] if sd.examples and sd.examples[r] else ""
                                    ),
                                }
                            )
                            if len(item["neighbours"]) >= neighbours:
                                break
                items.append(item)
            result.append(items)
        return result


class MultiSenseStudentConfig(MultiSenseConfig):
    student: bool = True


@register_strategy("multisense_student")
class MultiSenseStudent(MultiSense):
    """The distilled student: first blocks + head classifying into the teacher's senses."""

    config_cls = MultiSenseStudentConfig
    description = "multi-sense KD student: first 3 MiniLM blocks + sense classifier head"
