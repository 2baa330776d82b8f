"""Reading documents to index: JSONL (optionally gzipped) or Parquet, one document per row.

A row has ``id`` (or BEIR's ``_id``), ``text`` and optionally ``metadata`` (an object). A
``title`` column is prepended to the text, as BEIR does; any other columns go into metadata.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from embedsvc.errors import InvalidArgument

_RESERVED = {"id", "_id", "text", "title", "metadata"}


def _row_to_document(row: dict[str, Any], where: str) -> dict[str, Any]:
    doc_id = row.get("id", row.get("_id"))
    text = row.get("text")
    if doc_id is None or doc_id == "" or not isinstance(text, str):
        raise InvalidArgument(f"{where}: a document needs a non-empty 'id' and a string 'text'")
    title = row.get("title")
    if isinstance(title, str) and title.strip():
        text = f"{title} {text}"
    metadata = dict(row.get("metadata") or {})
    metadata.update({k: v for k, v in row.items() if k not in _RESERVED and v is not None})
    return {"id": str(doc_id), "text": text, "metadata": metadata}


def read_documents(path: str | Path) -> Iterator[dict[str, Any]]:
    """Yield ``{"id", "text", "metadata"}`` dicts from a JSONL(.gz) or Parquet file."""
    path = Path(path)
    if not path.exists():
        raise InvalidArgument(f"{path}: no such file")
    name = path.name.lower()
    if name.endswith(".parquet"):
        import pyarrow.parquet as pq

        for batch in pq.ParquetFile(path).iter_batches(batch_size=1024):
            for i, row in enumerate(batch.to_pylist()):
                yield _row_to_document(row, f"{path} row {i}")
        return
    if not name.endswith((".jsonl", ".jsonl.gz", ".json", ".ndjson")):
        raise InvalidArgument(f"{path}: expected a .jsonl, .jsonl.gz or .parquet file")
    opener = gzip.open if name.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as handle:
        for lineno, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise InvalidArgument(f"{path}:{lineno}: not valid JSON ({exc.msg})") from None
            if not isinstance(row, dict):
                raise InvalidArgument(f"{path}:{lineno}: expected a JSON object per line")
            yield _row_to_document(row, f"{path}:{lineno}")


def count_documents(path: str | Path) -> int | None:
    """Row count for a progress bar (None when counting would mean reading it all twice)."""
    path = Path(path)
    if path.name.lower().endswith(".parquet"):
        import pyarrow.parquet as pq

        return pq.ParquetFile(path).metadata.num_rows
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as handle:
        return sum(1 for line in handle if line.strip())
