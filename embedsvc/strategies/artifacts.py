"""Trained artifacts: finding a shipped or local artifact folder and reading its manifest.

A trained strategy loads a small committed folder under ``embedsvc/artifacts/`` (or any local
folder of the same layout): weights, a config and a ``manifest.json`` naming the base model (and
its fingerprint), data, steps, seed, eval scores and the command that rebuilds it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from embedsvc.errors import FailedPrecondition

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
MANIFEST = "manifest.json"


def find_artifact(name_or_path: str, marker: str, what: str, hint: str) -> Path:
    """``embedsvc/artifacts/<name>`` or a folder, whichever holds ``marker``; else a
    FailedPrecondition naming both places and how to build it (``hint``)."""
    for cand in (ARTIFACTS / name_or_path, Path(name_or_path).expanduser()):
        if (cand / marker).exists():
            return cand.resolve()
    raise FailedPrecondition(
        f"{what} artifact {name_or_path!r} not found (no {marker} under "
        f"{ARTIFACTS / name_or_path} or that folder); {hint}",
        field="artifact",
    )


def read_manifest(folder: Path) -> dict[str, Any]:
    """The artifact's ``manifest.json`` ({} when it has none)."""
    path = Path(folder) / MANIFEST
    return json.loads(path.read_text()) if path.is_file() else {}


def check_base(folder: Path, want: str | None, have: str, hint: str) -> None:
    """Refuse an artifact trained on another backbone (fingerprint ``want`` vs ``have``)."""
    if want and want != have:
        raise FailedPrecondition(
            f"artifact {folder} was trained on backbone fingerprint {want}, not {have}; {hint}",
            field="artifact",
        )


def files_digest(paths: Iterable[Path], length: int = 16) -> str:
    """sha256 over the bytes of ``paths`` in order (what a fingerprint of weights needs)."""
    h = hashlib.sha256()
    for p in paths:
        h.update(Path(p).read_bytes())
    return h.hexdigest()[:length]
