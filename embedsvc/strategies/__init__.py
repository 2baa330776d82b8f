"""Strategies: one module per technique, each registered by name (see ``base``).

Importing this package imports every module in it, so a new strategy is one new file.
"""

from __future__ import annotations

import importlib
import pkgutil

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

for _module in pkgutil.iter_modules(__path__):
    if _module.name != "base" and not _module.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_module.name}")

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
