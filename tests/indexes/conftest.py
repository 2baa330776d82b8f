"""Session fixtures for index tests (data from ``synthetic``)."""

from __future__ import annotations

import numpy as np
import pytest

from tests.indexes.synthetic import D, N, binary_codes, clustered


@pytest.fixture(scope="session")
def dense_data() -> tuple[np.ndarray, np.ndarray]:
    x = clustered(N, D)
    rng = np.random.default_rng(5)
    q = x[rng.choice(N, 100, replace=False)] + 0.2 * rng.standard_normal((100, D))
    q = (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)
    return x, q


@pytest.fixture(scope="session")
def binary_data(dense_data) -> tuple[np.ndarray, np.ndarray]:
    x, q = dense_data
    return binary_codes(x), binary_codes(q)
