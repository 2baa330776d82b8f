"""Vector indexes over FAISS: one module per kind, each registered by name (see ``base``).

Importing this package imports every module in it, so a new kind is one new file.
"""

from __future__ import annotations

from embedsvc.indexes.base import (
    IndexConfig,
    VectorIndex,
    available_index_kinds,
    create_index,
    index_kind_class,
    load_index,
    register_index_kind,
)
from embedsvc.plugins import import_plugins

import_plugins(__name__, __path__)

__all__ = [
    "IndexConfig",
    "VectorIndex",
    "available_index_kinds",
    "create_index",
    "index_kind_class",
    "load_index",
    "register_index_kind",
]
