"""The strategy contract and its registry.

A strategy turns texts into an :class:`Embedding` for a role (query or passage). One module per
technique lives beside this file and registers itself with ``@register_strategy("name")``; the
package imports every module in this folder, so adding a module *is* adding a strategy. Nothing
else in the code base dispatches on strategy names.
"""

from __future__ import annotations

import json
import threading
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import BaseModel

from embedsvc.errors import InvalidArgument, NotFound

OutputKind = Literal["dense", "binary"]


class Role(str, Enum):
    """Who the text is: a search query or a stored passage (some strategies treat them apart)."""

    QUERY = "query"
    PASSAGE = "passage"


@dataclass
class Embedding:
    """What a strategy returns for ``n`` texts.

    ``vectors`` is float32 ``[n, dim]`` for ``dense`` and uint8 ``[n, dim // 8]`` (bit-packed,
    ``numpy.packbits`` order) for ``binary``. ``token_counts[i]`` is how many tokens of text ``i``
    the model saw; ``truncated_tokens[i]`` how many were dropped to fit the model's limit.
    """

    kind: OutputKind
    vectors: np.ndarray
    dim: int
    token_counts: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    truncated_tokens: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    #: seconds spent per stage (queue, tokenize, inference), filled in by the serving path
    timings: dict[str, float] = field(default_factory=dict)
    #: optional per-text bytes a collection stores beside each document and hands back to
    #: ``Strategy.rescore`` (e.g. BTR token codes); None for strategies without one
    payloads: list[bytes] | None = None
    #: optional second, sparse view of the same texts (``scipy.sparse`` CSR ``[n, vocab]``,
    #: non-negative weights per vocabulary id) for dual strategies such as ``dupmae_dual``;
    #: collections index it beside the dense vectors and fuse both at search time
    sparse: Any = None

    def __len__(self) -> int:
        return int(self.vectors.shape[0])

    @staticmethod
    def empty(kind: OutputKind, dim: int) -> Embedding:
        """The embedding of no texts (``[0, dim]`` floats or ``[0, dim // 8]`` packed bits)."""
        if kind == "binary":
            vectors = np.zeros((0, dim // 8), np.uint8)
        else:
            vectors = np.zeros((0, dim), np.float32)
        none = np.zeros(0, dtype=np.int64)
        return Embedding(kind, vectors, dim, none, none.copy())

    def slice(self, start: int, stop: int) -> Embedding:
        return Embedding(
            self.kind,
            self.vectors[start:stop],
            self.dim,
            self.token_counts[start:stop],
            self.truncated_tokens[start:stop],
            payloads=None if self.payloads is None else self.payloads[start:stop],
            sparse=None if self.sparse is None else self.sparse[start:stop],
        )

    @staticmethod
    def concat(parts: list[Embedding]) -> Embedding:
        if not parts:
            raise ValueError("nothing to concatenate")
        first = parts[0]
        return Embedding(
            first.kind,
            np.concatenate([p.vectors for p in parts]),
            first.dim,
            np.concatenate([p.token_counts for p in parts]),
            np.concatenate([p.truncated_tokens for p in parts]),
            payloads=(
                None
                if any(p.payloads is None for p in parts)
                else [x for p in parts for x in p.payloads]  # type: ignore[union-attr]
            ),
            sparse=(
                None
                if any(p.sparse is None for p in parts)
                else _vstack_sparse([p.sparse for p in parts])
            ),
        )


def _vstack_sparse(parts: list[Any]) -> Any:
    from scipy import sparse

    return sparse.vstack(parts, format="csr")


class StrategyConfig(BaseModel):
    """Base of every strategy's config; what ``save`` writes beside the weights."""

    model_config = {"extra": "forbid"}


class Strategy(ABC):
    """Texts in, an :class:`Embedding` out (subclasses set the class attributes)."""

    name: ClassVar[str]
    output_kind: ClassVar[OutputKind]
    config_cls: ClassVar[type[StrategyConfig]] = StrategyConfig
    description: ClassVar[str] = ""

    def __init__(self, config: StrategyConfig | None = None) -> None:
        self.config = config if config is not None else self.config_cls()

    @property
    @abstractmethod
    def dim(self) -> int:
        """Output dimension: floats for dense, bits for binary."""

    @property
    @abstractmethod
    def max_tokens(self) -> int:
        """The longest input (in tokens) the model sees; longer texts are truncated."""

    @property
    @abstractmethod
    def fingerprint(self) -> str:
        """Identifies the weights + config, so caches keyed by it never serve stale vectors."""

    @abstractmethod
    def count_tokens(self, texts: list[str], role: Role = Role.PASSAGE) -> list[int]:
        """Untruncated token count of each text (the batcher budgets with it)."""

    @abstractmethod
    def encode(
        self,
        texts: list[str],
        role: Role = Role.PASSAGE,
        *,
        normalize: bool = True,
        truncate: bool = True,
    ) -> Embedding:
        """Embed ``texts``. With ``truncate=False`` an over-long text raises InvalidArgument."""

    #: candidates per query the index returns for ``rescore`` (0 = this strategy never rescores)
    rescore_depth: int = 0

    def rescore(self, queries: list[str], candidates: list[list[bytes]]) -> list[np.ndarray]:
        """Second-stage scores: for each query, one score per candidate payload (higher is
        better). Only called when ``rescore_depth > 0``; the payloads are what ``encode``
        returned in ``Embedding.payloads`` for those passages."""
        raise NotImplementedError(f"strategy {self.name!r} does not rescore")

    def onnx_spec(self) -> Any:
        """Export hook: an ``embedsvc.export.OnnxSpec`` (the traceable module and how to feed
        it), or None when there is nothing to export (no transformer). ``embedsvc export`` and
        the ONNX runtime call only this; strategies that export override it."""
        return None

    def save(self, directory: Path) -> None:
        """Write the config (and any trained weights) to ``directory``."""
        directory.mkdir(parents=True, exist_ok=True)
        payload = {"name": self.name, "config": self.config.model_dump(mode="json")}
        (directory / "strategy.json").write_text(json.dumps(payload, indent=2))


_REGISTRY: dict[str, type[Strategy]] = {}
_INSTANCES: dict[str, Strategy] = {}
_LOCK = threading.Lock()


def register_strategy(name: str):
    """Class decorator: make ``cls`` available as strategy ``name``."""

    def wrap(cls: type[Strategy]) -> type[Strategy]:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"strategy {name!r} registered twice ({_REGISTRY[name]} and {cls})")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return wrap


def available_strategies() -> dict[str, type[Strategy]]:
    return dict(sorted(_REGISTRY.items()))


def strategy_class(name: str) -> type[Strategy]:
    try:
        return _REGISTRY[name]
    except KeyError:
        valid = ", ".join(sorted(_REGISTRY)) or "(none)"
        raise NotFound(
            f"unknown strategy {name!r}; valid strategies: {valid}", field="strategy"
        ) from None


def create_strategy(name: str, **config: Any) -> Strategy:
    """A new instance of strategy ``name`` with ``config`` overriding its defaults."""
    cls = strategy_class(name)
    try:
        cfg = cls.config_cls(**config)
    except Exception as exc:  # pydantic.ValidationError: bad user config
        raise InvalidArgument(f"bad config for strategy {name!r}: {exc}") from exc
    return cls(cfg)


def get_strategy(name: str) -> Strategy:
    """The shared, lazily created default instance of ``name`` (models load once per process)."""
    with _LOCK:
        inst = _INSTANCES.get(name)
        if inst is None:
            inst = create_strategy(name)
            _INSTANCES[name] = inst
        return inst
