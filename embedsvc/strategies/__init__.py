"""Strategies: one module per technique, each registered by name (see ``base``).

Importing this package imports every module in it, so a new strategy is one new file.
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

import_plugins(__name__, __path__)

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
