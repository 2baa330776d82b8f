"""Fixtures for backbone tests: the real cache dir, so SmolLM2 converts once across runs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def model_cache_dir() -> Path:
    """``EMBEDSVC_CACHE_DIR`` if set, else the default: never a tmp dir (conversion takes ~25 s)."""
    from embedsvc.config import default_cache_dir

    return default_cache_dir()
