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
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field

from embedsvc.errors import FailedPrecondition
from embedsvc.strategies.base import Role, StrategyConfig, register_strategy
from embedsvc.strategies.core import ENCODER_INPUTS
from embedsvc.strategies.features import check_texts
from embedsvc.strategies.hf import HFStrategy
from embedsvc.strategies.runner import Runner

DEFAULT_STUDENT = Path(__file__).resolve().parents[2] / "artifacts" / "multisense-student"


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


@register_strategy("multisense")
class MultiSense(HFStrategy):
    """Sense replacement + mean pooling (see module doc)."""

    output_kind = "dense"
    config_cls = MultiSenseConfig
    description = "multi-sense dictionary: tokens replaced by their nearest sense, mean pooled"
    int8_sts_delta = +0.06  # int8 - fp32 STS-B dev, measured in issue 7
    config: MultiSenseConfig
    #: the faiss index over every sense centroid (nearest senses of other tokens), built lazily
    _index: Any = None
    _parts: dict[str, Any] | None = None

    # ------------------------------------------------------------------ loading
    def _load(self) -> dict[str, Any]:
        return self.lazy("_parts", self._load_parts)

    def dictionary_dir(self) -> Path:
        from embedsvc.strategies.multisense.io import default_dictionary_dir

        if self.config.dictionary:
            return Path(self.config.dictionary)
        return default_dictionary_dir(cache_dir=self._cache_dir)

    @property
    def source(self) -> Path | None:
        return self.dictionary_dir()

    def _load_parts(self) -> dict[str, Any]:
        import torch

        from embedsvc.strategies.multisense.io import load_dictionary

        folder = self.dictionary_dir()
        try:
            sd = load_dictionary(folder)
        except FileNotFoundError:
            raise FailedPrecondition(
                f"sense dictionary missing in {folder}; build it with "
                "`.venv/bin/python training/build_sense_dictionary.py`"
            ) from None
        bb = self.backbone
        parts: dict[str, Any] = {
            "backbone": bb,
            "dict": sd,
            # torch views of the table (the student trainer's targets and the neighbour index)
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

    # ---------------------------------------------------------------- contract
    @property
    def model_fingerprint(self) -> str:
        p = self._load()
        key = (
            f"{self.name}|{self.backbone.fingerprint}|{p['digest']}|{p['layers']}|"
            f"{self.config.replace}|{self.max_tokens}"
        )
        return self.digest(key)

    def build_core(self) -> Any:
        """Encoder (or student) + the sense dictionary, nearest-sense replacement and mean
        pooling: one module."""
        from embedsvc.strategies.multisense.model import MultiSenseCore

        p = self._load()
        table = p["dict"].table
        tok = self.backbone.tokenizer
        student = bool(self.config.student)
        names = (
            tuple(n for n in ENCODER_INPUTS if n in tok.model_input_names)
            if student
            else ("input_ids", "attention_mask")
        )
        mb = table.centroids.shape[0] * table.centroids.shape[1] * 2 / 1e6
        notes = (
            "tokenisation and truncation run in Python (tokenizer files saved beside)",
            f"sense dictionary in the graph: offsets [{table.offsets.shape[0]}] int64 + "
            f"centroids {list(table.centroids.shape)} fp16 ({mb:.0f} MB initializer), "
            f"max_senses={p['max_senses']}; per-token candidate gather + "
            + ("student logits argmax" if p["head"] is not None else "L2 argmin")
            + " + replacement + masked mean",
        )
        return MultiSenseCore(
            self.backbone.model,
            table.offsets,
            table.centroids,
            p["max_senses"],
            replace=self.config.replace,
            student_layers=int(p["layers"]) if student else None,
            head=p["head"],
            input_names=names,
            notes=notes,
        )

    # ------------------------------------------------------------ inspection
    def sense_ids(self, texts: list[str]) -> list[list[tuple[int, int]]]:
        """Per text, ``(token id, local sense index)`` of every token (-1 = no senses)."""
        out, _, _ = Runner(self).outputs(check_texts(texts), Role.PASSAGE, per_token=("sense_ids",))
        return [
            list(zip(ids.tolist(), senses.tolist(), strict=True))
            for ids, senses in zip(out["input_ids"], out["sense_ids"], strict=True)
        ]

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
    int8_sts_delta = -0.83
    description = "multi-sense KD student: first 3 MiniLM blocks + sense classifier head"
