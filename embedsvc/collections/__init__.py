"""Collections: documents in SQLite + vectors in a FAISS index, managed under one data folder."""

from __future__ import annotations

from embedsvc.collections.collection import Collection, CollectionMeta, Hit, UpsertResult
from embedsvc.collections.manager import CollectionManager, validate_name
from embedsvc.collections.store import DocStore, Document

__all__ = [
    "Collection",
    "CollectionManager",
    "CollectionMeta",
    "DocStore",
    "Document",
    "Hit",
    "UpsertResult",
    "validate_name",
]
