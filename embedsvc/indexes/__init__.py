"""Vector indexes over FAISS: one module per kind, each registered by name (see ``base``).

Importing this package imports every module in it, so a new kind is one new file.
"""

from __future__ import annotations

import importlib
import pkgutil

from embedsvc.indexes.base import (
    IndexConfig,
    VectorIndex,
    available_index_kinds,
    create_index,
    index_kind_class,
    load_index,
    register_index_kind,
)

for _module in pkgutil.iter_modules(__path__):
    if _module.name != "base" and not _module.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = [
    "IndexConfig",
    "VectorIndex",
    "available_index_kinds",
    "create_index",
    "index_kind_class",
    "load_index",
    "register_index_kind",
]
