"""The strategy contract and its registry.

A strategy turns texts into an :class:`Embedding` for a role (query or passage) in three stages
(pre -> core -> post, see :class:`Strategy`). One module or folder per technique lives beside
this file and registers itself with ``@register_strategy("name")``; the package imports every
one of them, so adding a folder *is* adding a strategy. Nothing else in the code base
dispatches on strategy names.
"""

from __future__ import annotations

import hashlib
import json
import threading
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from pydantic import BaseModel

from embedsvc.errors import InvalidArgument, NotFound, shorten
from embedsvc.strategies.embedding import Embedding, OutputKind, Role
from embedsvc.strategies.features import Features, check_texts, pad_batch
from embedsvc.strategies.pooling import l2_normalize
from embedsvc.strategies.runner import CoreExecutor, Executor, Runner


class StrategyConfig(BaseModel):
    """Base of every strategy's config; what ``save`` writes beside the weights."""

    model_config = {"extra": "forbid"}


class Strategy(ABC):
    """Texts in, an :class:`Embedding` out, in three stages (subclasses set the class attributes).

    * **pre** -- ``pre(texts, role) -> Features``: tokenise once (role templates, prompts, the
      token limit); the real counts are what the limit and the batcher count.
    * **core** -- ``core``: one ``nn.Module`` (:class:`~embedsvc.strategies.core.CoreModule`),
      the only forward pass; the module ONNX export traces.
    * **post** -- ``post(outputs, feeds, role, normalize) -> (vectors, payloads)``: pool the
      outputs of one batch into the served vectors (normalise, quantise, pack bits).

    ``encode`` runs the three through the :class:`~embedsvc.strategies.runner.Runner` with this
    instance's executor (the core in torch unless a runtime set another with ``use_executor``).
    Model-free strategies (``debug``) may override ``encode`` instead.
    """

    name: ClassVar[str]
    output_kind: ClassVar[OutputKind]
    config_cls: ClassVar[type[StrategyConfig]] = StrategyConfig
    description: ClassVar[str] = ""

    def __init__(self, config: StrategyConfig | None = None, *, cache_dir: Path | None = None):
        self.config = config if config is not None else self.config_cls()
        self._cache_dir = cache_dir
        self._core: Any = None
        self._executor: Any = None
        #: one lock for everything this instance loads lazily (re-entrant: loaders nest)
        self._load_lock = threading.RLock()

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
    def model_fingerprint(self) -> str:
        """Identifies the weights + config (independent of the runtime that executes them)."""

    @property
    def fingerprint(self) -> str:
        """What caches key on: the model's fingerprint, plus the executor when it is not the
        in-process torch one (vectors of different runtimes are never mixed)."""
        executor = self._executor
        if executor is None or executor.name == "torch":
            return self.model_fingerprint
        return self.digest(self.model_fingerprint, executor.name)

    # -- the three stages ----------------------------------------------------------------------

    def pre(self, texts: list[str], role: Role) -> Features:
        """Token ids (within the limit) and untruncated counts of each text.

        Every registered strategy defines it (``HFStrategy`` gives the tokenizer's); only a
        strategy that replaces ``encode`` whole (the eval tests' doubles) may leave it out, and
        then a call that needs it fails here by name."""
        raise NotImplementedError(f"strategy {self.name!r} replaces encode and has no pre stage")

    def build_core(self) -> Any:
        """The core module (built once, on first use of :attr:`core`); None = no model."""
        return None

    def lazy(self, attr: str, load: Any) -> Any:
        """``getattr(self, attr)``, set by ``load()`` on first use under the instance's lock
        (models, artifacts, the core: everything a strategy loads lazily, loaded once)."""
        value = getattr(self, attr, None)
        if value is None:
            with self._load_lock:
                value = getattr(self, attr, None)
                if value is None:
                    value = load()
                    setattr(self, attr, value)
        return value

    @staticmethod
    def digest(*parts: object) -> str:
        """A short sha256 of ``parts`` joined by ``|`` (what fingerprints are made of)."""
        return hashlib.sha256("|".join(str(p) for p in parts).encode()).hexdigest()[:16]

    @property
    def core(self) -> Any:
        def build() -> Any:
            core = self.build_core()
            return core.eval() if core is not None else None

        return self.lazy("_core", build)

    @property
    def pad_id(self) -> int:
        return 0

    def collate(self, ids: list[list[int]]) -> dict[str, np.ndarray]:
        """One padded batch of ``pre``'s ids, named as the core's inputs."""
        return pad_batch(ids, self.pad_id, self.core.input_names)

    def post(
        self,
        outputs: dict[str, np.ndarray],
        feeds: dict[str, np.ndarray],
        role: Role,
        normalize: bool,
    ) -> tuple[np.ndarray, list[bytes] | None]:
        """The served vectors of one batch (default: the ``embedding`` output, normalised)."""
        vectors = np.asarray(outputs["embedding"], dtype=np.float32)
        return (l2_normalize(vectors) if normalize else vectors), None

    #: width of the sparse view (``Embedding.sparse``) of a dual strategy; None = dense only.
    #: Collections keep a sparse side index of this width and fuse it with the dense one
    sparse_vocab: int | None = None

    def post_sparse(
        self, outputs: dict[str, np.ndarray], feeds: dict[str, np.ndarray], role: Role
    ) -> Any:
        """A dual strategy's sparse view of one batch (``scipy.sparse`` CSR ``[b, vocab]``);
        None for dense-only strategies (the default)."""
        return None

    # -- running -------------------------------------------------------------------------------

    @property
    def batch_size(self) -> int:
        """Rows per forward pass (the config's ``batch_size``)."""
        return int(getattr(self.config, "batch_size", 32))

    @property
    def token_budget(self) -> int | None:
        """Padded tokens per forward pass (None: ``batch_size`` rows of any length)."""
        return None

    @property
    def executor(self) -> Executor:
        """What runs the core: the in-process torch module unless a runtime set another."""
        return self.lazy("_executor", lambda: CoreExecutor(self.core))

    def use_executor(self, executor: Executor) -> None:
        """Run the core elsewhere (``embedsvc.runtimes``): pre and post stay the same code."""
        self._executor = executor

    def count_tokens(self, texts: list[str], role: Role = Role.PASSAGE) -> list[int]:
        """Untruncated token count of each text (the batcher budgets with it)."""
        texts = check_texts(texts)
        if not texts:
            return []
        return [int(n) for n in self.pre(texts, role).counts]

    def encode(
        self,
        texts: list[str],
        role: Role = Role.PASSAGE,
        *,
        normalize: bool = True,
        truncate: bool = True,
    ) -> Embedding:
        """Embed ``texts``. With ``truncate=False`` an over-long text raises InvalidArgument."""
        return Runner(self).encode(texts, role, normalize=normalize, truncate=truncate)

    #: STS-B dev Spearman of its ``onnx-int8`` model minus its ``onnx`` fp32 model, as measured
    #: (``docs/results/issue7.md``; None = never measured). The int8 runtime refuses, at
    #: start-up, a strategy outside ``embedsvc.runtimes.base.INT8_GATE``.
    int8_sts_delta: ClassVar[float | None] = None

    #: candidates per query the index returns for ``rescore`` (0 = this strategy never rescores)
    rescore_depth: int = 0

    def rescore(self, queries: list[str], candidates: list[list[bytes]]) -> list[np.ndarray]:
        """Second-stage scores: for each query, one score per candidate payload (higher is
        better). Only called when ``rescore_depth > 0``; the payloads are what ``encode``
        returned in ``Embedding.payloads`` for those passages."""
        raise NotImplementedError(f"strategy {self.name!r} does not rescore")

    @property
    def exportable(self) -> bool:
        """True when the strategy has a core to export (checked without loading a model)."""
        return type(self).build_core is not Strategy.build_core

    @property
    def source(self) -> Path | None:
        """The folder the weights came from (hashed into export manifests)."""
        return None

    @property
    def tokenizer(self) -> Any:
        """The tokenizer ``pre`` uses (saved beside an ONNX export); None for model-free ones."""
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
            f"unknown strategy {shorten(name)}; valid strategies: {valid}", field="strategy"
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
