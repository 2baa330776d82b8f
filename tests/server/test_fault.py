"""kill -9 during streaming upserts: every acknowledged document survives, and nothing that was
not acknowledged is half-written (each stream message commits all of its documents or none).

The short form runs here (3 kills); `benchmarks/bench_fault.py` repeats it 20 times.
"""

from __future__ import annotations

import pytest

from embedsvc.testing import kill_during_upserts


@pytest.mark.parametrize("trial", range(3))
def test_kill9_during_streaming_upserts(tmp_path, trial):
    report = kill_during_upserts(tmp_path / "indexes", seed=trial, writers=4, kill_after_s=1.5)
    assert report.acknowledged > 0, "the server acknowledged some streams before the kill"
    assert report.missing_acknowledged == [], report
    assert report.torn_messages == [], report
    assert report.wrong_text == [], report
    assert report.unsearchable == [], report
