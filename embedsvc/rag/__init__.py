"""RAG backend: context selection (Adaptive-k) over a collection's score distribution."""

from __future__ import annotations

from embedsvc.rag.adaptive_k import (
    AdaptiveKConfig,
    AdaptiveKResult,
    largest_gap_cut,
    select_adaptive_k,
    within_budget,
)

__all__ = [
    "AdaptiveKConfig",
    "AdaptiveKResult",
    "largest_gap_cut",
    "select_adaptive_k",
    "within_budget",
]
