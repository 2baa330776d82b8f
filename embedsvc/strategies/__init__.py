"""Strategies: one folder (or module) per technique, each registered by name (see ``base``).

Every strategy is three stages -- pre (``features``), core (``core``: one ``nn.Module``), post --
run by the one encode loop (``runner``) with the shared pooling functions (``pooling``).
Importing this package imports every folder and module in it, so adding a strategy touches one
folder: ``<name>/__init__.py`` (config, stages, registration) and ``<name>/model.py`` (the
paper's model code and its core module).
"""

from __future__ import annotations

from embedsvc.plugins import import_plugins
from embedsvc.strategies.base import (
    Embedding,
    Role,
    Strategy,
    StrategyConfig,
    available_strategies,
    create_strategy,
    get_strategy,
    register_strategy,
    strategy_class,
)

# the pipeline's own modules register nothing; every other module/folder is a strategy
import_plugins(
    __name__,
    __path__,
    skip=("base", "core", "embedding", "features", "hf", "pooling", "runner", "artifacts"),
)

__all__ = [
    "Embedding",
    "Role",
    "Strategy",
    "StrategyConfig",
    "available_strategies",
    "create_strategy",
    "get_strategy",
    "register_strategy",
    "strategy_class",
]
