"""Reading and writing a sense dictionary folder (kept apart from the tensor code in ``model``).

Layout of ``<cache>/sense_dicts/<name>/`` (rebuilt by ``training/build_sense_dictionary.py``,
never committed: it is tens of MB):

* ``senses.npz``: ``offsets`` int64 [V+1], ``centroids`` float16 [S, d], ``sizes`` int32 [S]
  (sampled occurrences per sense);
* ``examples.json``: for each sense row, up to a few context snippets of its nearest occurrences;
* ``manifest.json``: base model + fingerprint, corpus + sha256, sampling cap, k rule, seed,
  counts, build seconds, the command.

The manifest is written last (atomically), so a folder without one is an unfinished build.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from embedsvc.strategies.multisense.model import SenseTable

MANIFEST = "manifest.json"
ARRAYS = "senses.npz"
EXAMPLES = "examples.json"


@dataclass
class SenseDictionary:
    table: SenseTable
    sizes: np.ndarray
    examples: list[list[str]] = field(default_factory=list)
    manifest: dict[str, Any] = field(default_factory=dict)


def default_dictionary_dir(name: str = "minilm-wiki", cache_dir: Path | None = None) -> Path:
    from embedsvc.config import default_cache_dir

    return Path(cache_dir or default_cache_dir()) / "sense_dicts" / name


def save_dictionary(directory: Path, dictionary: SenseDictionary) -> None:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / MANIFEST).unlink(missing_ok=True)  # mark "in progress" while we write
    t = dictionary.table
    tmp = directory / (ARRAYS + ".tmp.npz")
    np.savez(
        tmp,
        offsets=t.offsets.astype(np.int64),
        centroids=t.centroids.astype(np.float16),
        sizes=dictionary.sizes.astype(np.int32),
    )
    os.replace(tmp, directory / ARRAYS)
    (directory / EXAMPLES).write_text(json.dumps(dictionary.examples))
    tmp_m = directory / (MANIFEST + ".tmp")
    tmp_m.write_text(json.dumps(dictionary.manifest, indent=2))
    os.replace(tmp_m, directory / MANIFEST)


def load_dictionary(directory: Path, *, examples: bool = True) -> SenseDictionary:
    directory = Path(directory)
    if not (directory / MANIFEST).is_file():
        raise FileNotFoundError(directory / MANIFEST)
    with np.load(directory / ARRAYS) as z:
        table = SenseTable(z["offsets"].astype(np.int64), z["centroids"])
        sizes = z["sizes"]
    ex: list[list[str]] = []
    if examples and (directory / EXAMPLES).is_file():
        ex = json.loads((directory / EXAMPLES).read_text())
    manifest = json.loads((directory / MANIFEST).read_text())
    return SenseDictionary(table, sizes, ex, manifest)
