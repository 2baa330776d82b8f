"""The repository's top level as the project was specified: the default data folder ``indexes/``
is part of it, holding only its README in git (collections made at run time are ignored)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _git(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=30)


def test_indexes_folder_has_its_readme():
    readme = ROOT / "indexes" / "README.md"
    assert readme.is_file()
    text = readme.read_text()
    assert ".embedsvc.lock" in text and "docs.sqlite" in text and "one process" in text.lower()


def test_indexes_readme_is_tracked_and_collections_are_ignored():
    if shutil.which("git") is None or _git("rev-parse", "--git-dir").returncode != 0:
        pytest.skip("not a git checkout")
    assert _git("check-ignore", "-q", "indexes/README.md").returncode == 1, "README not ignored"
    assert _git("check-ignore", "-q", "indexes/demo/docs.sqlite").returncode == 0
    assert _git("check-ignore", "-q", "indexes/.embedsvc.lock").returncode == 0
