"""The demo corpus that ships with embedsvc (``embedsvc/data/demo/``, CC BY-SA 3.0).

1,312 Wikipedia passages (the gold passages of 1,328 NaturalQuestions-Open dev questions, from
*Lost in the Middle*) and those questions with the id of their gold passage, so a search on the
demo collection can be checked. Provenance, licence and attribution: ``PROVENANCE.md`` beside the
data; rebuilt by ``scripts/build_demo_corpus.py``.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

DEMO_DIR = Path(__file__).resolve().parent / "data" / "demo"
#: ``{"id", "title", "text"}`` per line; read by ``embedsvc.documents.read_documents``
DEMO_CORPUS = DEMO_DIR / "passages.jsonl.gz"
#: ``{"question", "answers", "gold_id"}`` per line
DEMO_QUESTIONS = DEMO_DIR / "questions.jsonl.gz"
DEMO_COLLECTION = "demo"


def demo_questions() -> list[dict[str, Any]]:
    """The demo questions with their answers and the id of their gold passage."""
    with gzip.open(DEMO_QUESTIONS, "rt", encoding="utf-8") as handle:
        return [json.loads(line) for line in handle]
