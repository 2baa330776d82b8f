"""Build the demo corpus that ships with embedsvc (``embedsvc/data/demo/``) from the shared data.

Source: ``../shared/data/nq_open_gold/nq-open-oracle.jsonl.gz`` (1,328 NQ-Open dev questions,
each with its gold Wikipedia passage; see its PROVENANCE.md). Output, byte-for-byte reproducible
(gzip mtime 0, fixed order):

- ``passages.jsonl.gz``: the distinct gold passages (deduplicated by title and text), in order
  of first appearance, ``{"id": "p0000", "title", "text"}``; ``embedsvc index`` and
  ``serve --demo`` read this layout (the title is prepended to the text when embedding).
- ``questions.jsonl.gz``: every question with its answers and the id of its gold passage,
  ``{"question", "answers", "gold_id"}``.

Usage: ``python scripts/build_demo_corpus.py [--source PATH] [--out DIR]``; prints the sha256 of
what it wrote (recorded in ``embedsvc/data/demo/PROVENANCE.md``).
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT.parent / "shared/data/nq_open_gold/nq-open-oracle.jsonl.gz"
SOURCE_SHA256 = "499698036e4cab703a3c281abf8134c6bc0c87ba870df7f0bc71711dd3e091d9"
OUT = ROOT / "embedsvc/data/demo"


def build(source: Path) -> tuple[list[dict], list[dict]]:
    """(passages, questions) from the oracle file; one gold passage per question."""
    passages: dict[tuple[str, str], dict] = {}
    questions = []
    with gzip.open(source, "rt", encoding="utf-8") as handle:
        for line in handle:
            row = json.loads(line)
            gold = [c for c in row["ctxs"] if c["isgold"]]
            if len(gold) != 1:
                raise ValueError(f"{row['question']!r}: expected one gold passage, got {len(gold)}")
            key = (gold[0]["title"], gold[0]["text"])
            if key not in passages:
                passages[key] = {"id": f"p{len(passages):04d}", "title": key[0], "text": key[1]}
            questions.append(
                {"question": row["question"], "answers": row["answers"], "gold_id": passages[key]["id"]}
            )
    return list(passages.values()), questions


def write_jsonl_gz(path: Path, rows: list[dict]) -> str:
    """Write gzip'd JSON lines with mtime 0 (reproducible bytes); returns the file's sha256."""
    buffer = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buffer, mtime=0) as gz:
        for row in rows:
            gz.write((json.dumps(row, ensure_ascii=False) + "\n").encode("utf-8"))
    path.write_bytes(buffer.getvalue())
    return hashlib.sha256(buffer.getvalue()).hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--source", type=Path, default=SOURCE)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    digest = hashlib.sha256(args.source.read_bytes()).hexdigest()
    if digest != SOURCE_SHA256:
        raise SystemExit(f"{args.source}: sha256 {digest}, expected {SOURCE_SHA256}")
    passages, questions = build(args.source)
    args.out.mkdir(parents=True, exist_ok=True)
    for name, rows in (("passages", passages), ("questions", questions)):
        sha = write_jsonl_gz(args.out / f"{name}.jsonl.gz", rows)
        print(f"{name}.jsonl.gz  {len(rows)} rows  sha256 {sha}")


if __name__ == "__main__":
    main()
