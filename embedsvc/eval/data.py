"""Readers for the evaluation files: STS pairs (STS-B or SICK) and BEIR retrieval sets.

Held-out splits of the same datasets are run through these readers unseen, so they accept any
file in the published layout (the format is detected, never assumed from the file name) and
reject anything else with an :class:`InvalidArgument` naming the file and line, instead of
silently producing a wrong score.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Literal

from embedsvc.errors import InvalidArgument

StsFormat = Literal["stsb", "sick"]

#: the header of a SICK file (its first five columns; later releases add more)
SICK_HEADER = ("pair_ID", "sentence_A", "sentence_B", "relatedness_score", "entailment_judgment")
#: STS-B: genre, filename, year, id, score, sentence1, sentence2 [, source fields ...]
STSB_MIN_FIELDS = 7


@dataclass(frozen=True)
class StsPairs:
    """Sentence pairs with their gold similarity, in file order."""

    path: Path
    format: StsFormat
    sentences1: list[str]
    sentences2: list[str]
    scores: list[float]

    def __len__(self) -> int:
        return len(self.scores)


@dataclass(frozen=True)
class Document:
    """One BEIR corpus entry."""

    doc_id: str
    title: str
    text: str

    def passage(self) -> str:
        """The text a passage encoder sees.

        Same as BEIR's ``SentenceBERT.encode_corpus`` (sep ``" "``, then ``strip()``), so our
        numbers are comparable with published BEIR/MTEB ones.
        """
        return (self.title + " " + self.text).strip()


def _open_text(path: Path) -> IO[str]:
    """Open a text file (transparently gunzipped); missing files become InvalidArgument."""
    if not path.is_file():
        raise InvalidArgument(f"{path}: no such file")
    # newline="" keeps CRLF handling to the csv module (and lets us strip it for jsonl).
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", newline="")
    return open(path, encoding="utf-8", newline="")  # noqa: SIM115 - caller closes


def _score(value: str, path: Path, line: int, column: str) -> float:
    try:
        out = float(value)
    except ValueError:
        raise InvalidArgument(f"{path}:{line}: {column} must be a number, got {value!r}") from None
    if not math.isfinite(out):
        raise InvalidArgument(f"{path}:{line}: {column} must be finite, got {value!r}")
    return out


# ---------------------------------------------------------------------------------------- STS


def read_sts(path: str | Path) -> StsPairs:
    """Read an STS file in the STS-B or the SICK layout (detected from the first row).

    A first row that starts with ``pair_ID`` is a SICK header; anything else is STS-B, which
    has no header. Both are read with quoting off, because sentences contain ``"``.
    """
    path = Path(path)
    try:
        with _open_text(path) as fh:
            rows = list(csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE))
    except UnicodeDecodeError as exc:
        raise InvalidArgument(f"{path}: not UTF-8 text ({exc})") from None
    except csv.Error as exc:
        raise InvalidArgument(f"{path}: unreadable as tab-separated text ({exc})") from None
    # Keep 1-based physical line numbers; drop blank lines (e.g. a trailing newline).
    numbered = [(i + 1, r) for i, r in enumerate(rows) if r and any(c.strip() for c in r)]
    if not numbered:
        raise InvalidArgument(f"{path}: empty STS file")
    first = numbered[0][1]
    if first[0].strip().lstrip("\ufeff") == SICK_HEADER[0]:
        pairs = _read_sick(path, numbered)
    else:
        pairs = _read_stsb(path, numbered)
    if not pairs.scores:
        raise InvalidArgument(f"{path}: no sentence pairs")
    return pairs


def _read_stsb(path: Path, rows: list[tuple[int, list[str]]]) -> StsPairs:
    s1: list[str] = []
    s2: list[str] = []
    scores: list[float] = []
    for line, row in rows:
        if len(row) < STSB_MIN_FIELDS:
            raise InvalidArgument(
                f"{path}:{line}: expected at least {STSB_MIN_FIELDS} tab-separated fields "
                f"(genre, filename, year, id, score, sentence1, sentence2), got {len(row)}; "
                "a SICK file must start with its header row"
            )
        scores.append(_score(row[4], path, line, "score (column 5)"))
        s1.append(row[5])
        s2.append(row[6])
    return StsPairs(path, "stsb", s1, s2, scores)


def _read_sick(path: Path, rows: list[tuple[int, list[str]]]) -> StsPairs:
    header_line, header = rows[0]
    names = [h.strip().lstrip("\ufeff") for h in header]
    missing = [c for c in ("sentence_A", "sentence_B", "relatedness_score") if c not in names]
    if missing:
        raise InvalidArgument(f"{path}:{header_line}: SICK header lacks {', '.join(missing)}")
    ia, ib, isc = (names.index(c) for c in ("sentence_A", "sentence_B", "relatedness_score"))
    width = max(ia, ib, isc) + 1
    s1: list[str] = []
    s2: list[str] = []
    scores: list[float] = []
    for line, row in rows[1:]:
        if len(row) < width:
            raise InvalidArgument(
                f"{path}:{line}: expected {len(names)} tab-separated fields like the header, "
                f"got {len(row)}"
            )
        scores.append(_score(row[isc], path, line, "relatedness_score"))
        s1.append(row[ia])
        s2.append(row[ib])
    return StsPairs(path, "sick", s1, s2, scores)


# ----------------------------------------------------------------------------------- BEIR


def _jsonl(path: Path) -> Iterator[tuple[int, dict]]:
    try:
        with _open_text(path) as fh:
            for i, raw in enumerate(fh, start=1):
                raw = raw.strip()
                if not raw:
                    continue
                try:
                    obj = json.loads(raw)
                except json.JSONDecodeError as exc:
                    raise InvalidArgument(f"{path}:{i}: invalid JSON ({exc.msg})") from None
                if not isinstance(obj, dict):
                    raise InvalidArgument(f"{path}:{i}: expected a JSON object per line")
                yield i, obj
    except (UnicodeDecodeError, gzip.BadGzipFile, EOFError) as exc:
        raise InvalidArgument(f"{path}: unreadable ({exc})") from None


def _id(obj: dict, path: Path, line: int) -> str:
    value = obj.get("_id")
    if value is None or (isinstance(value, str) and not value):
        raise InvalidArgument(f'{path}:{line}: missing "_id"')
    return str(value)


def _str_field(obj: dict, key: str, path: Path, line: int) -> str:
    value = obj.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise InvalidArgument(f'{path}:{line}: "{key}" must be a string')
    return value


def read_corpus(path: str | Path) -> dict[str, Document]:
    """Read a BEIR ``corpus.jsonl`` (or ``.jsonl.gz``): ``{"_id", "title", "text"}`` per line."""
    path = Path(path)
    out: dict[str, Document] = {}
    for line, obj in _jsonl(path):
        doc_id = _id(obj, path, line)
        if doc_id in out:
            raise InvalidArgument(f"{path}:{line}: duplicate _id {doc_id!r}")
        out[doc_id] = Document(
            doc_id, _str_field(obj, "title", path, line), _str_field(obj, "text", path, line)
        )
    if not out:
        raise InvalidArgument(f"{path}: empty corpus")
    return out


def read_queries(path: str | Path) -> dict[str, str]:
    """Read a BEIR ``queries.jsonl``: ``{"_id", "text", ...}`` per line (other keys ignored)."""
    path = Path(path)
    out: dict[str, str] = {}
    for line, obj in _jsonl(path):
        qid = _id(obj, path, line)
        if qid in out:
            raise InvalidArgument(f"{path}:{line}: duplicate _id {qid!r}")
        out[qid] = _str_field(obj, "text", path, line)
    if not out:
        raise InvalidArgument(f"{path}: no queries")
    return out


def read_qrels(path: str | Path) -> dict[str, dict[str, int]]:
    """Read BEIR qrels: TSV with header ``query-id corpus-id score`` (CRLF allowed).

    Returns ``{query_id: {doc_id: relevance}}`` with every row kept (relevance 0 included, as
    pytrec_eval would see it).
    """
    path = Path(path)
    out: dict[str, dict[str, int]] = {}
    try:
        with _open_text(path) as fh:
            lines = fh.read().splitlines()
    except UnicodeDecodeError as exc:
        raise InvalidArgument(f"{path}: not UTF-8 text ({exc})") from None
    body = [(i + 1, ln) for i, ln in enumerate(lines) if ln.strip()]
    if not body:
        raise InvalidArgument(f"{path}: empty qrels file")
    header_line, header = body[0]
    cols = [c.strip().lstrip("\ufeff") for c in header.split("\t")]
    if cols[:3] != ["query-id", "corpus-id", "score"]:
        raise InvalidArgument(
            f"{path}:{header_line}: expected header 'query-id<TAB>corpus-id<TAB>score', "
            f"got {header.strip()!r}"
        )
    for line, text in body[1:]:
        fields = [f.strip() for f in text.split("\t")]
        if len(fields) < 3 or not fields[0] or not fields[1]:
            raise InvalidArgument(
                f"{path}:{line}: expected 'query-id<TAB>corpus-id<TAB>score', got {text!r}"
            )
        try:
            rel = int(fields[2])
        except ValueError:
            value = _score(fields[2], path, line, "score")
            if value != int(value):
                raise InvalidArgument(
                    f"{path}:{line}: score must be an integer, got {fields[2]!r}"
                ) from None
            rel = int(value)
        out.setdefault(fields[0], {})[fields[1]] = rel
    if not out:
        raise InvalidArgument(f"{path}: no judgements")
    return out
