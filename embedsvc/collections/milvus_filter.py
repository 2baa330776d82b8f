"""Metadata equality filters as Milvus boolean expressions, built from typed values only.

``{"lang": "en", "src.year": 2020}`` -> ``metadata["lang"] == "en" and metadata["src"]["year"]
== 2020``: the same filters the FAISS backend's SQLite store answers (a dot walks into nested
objects; all equalities must hold), on the collection's JSON field ``metadata``.

No string injection: the expression is assembled here from the filter's keys and values, never
from caller text spliced as is. A string value (and every key) becomes a double-quoted Milvus
string literal in which ``\\`` and ``"`` are escaped, the two escapes Milvus's parser decodes
(it does not decode ``\\n``, ``\\t`` or ``\\u`` escapes: it keeps them as typed, so other
characters go in raw, which it matches exactly; verified on milvus-lite 2.5.1 for control
characters, non-ASCII and non-BMP text). Line breaks (``\\r``, ``\\n``) cannot stand raw in a
Milvus string literal, so a value holding one is refused. Numbers are written from Python ints /
finite floats, booleans as ``true``/``false``. Milvus's expression templates (``filter_params``)
would do the quoting server-side, but milvus-lite 2.5's parser does not know them. The
literals are tested against the real parser with arbitrary strings
(``tests/collections/test_milvus.py``).

Milvus compares JSON values type-strictly, as the SQLite store does: ``== 1`` does not match
``true``, ``== true`` does not match ``1``, ``== 1`` matches ``1.0``. What Milvus cannot
express (verified on milvus-lite 2.5.1): equality with ``null`` (``is null`` on a JSON key is a
type-check error), with a list or an object, integers outside int64, and keys holding quotes,
backslashes or control characters. Those raise ``InvalidArgument`` (gRPC INVALID_ARGUMENT)
before anything reaches Milvus, naming the key.
"""

from __future__ import annotations

import math
from typing import Any

from embedsvc.errors import InvalidArgument

FIELD = "metadata"
_INT64 = (-(2**63) + 1, 2**63 - 1)  # -2**63 does not parse as a negated literal


def expressible(text: str) -> bool:
    """Whether ``text`` can be written as a Milvus string literal (no line breaks)."""
    return "\n" not in text and "\r" not in text


def string_literal(text: str) -> str:
    """``text`` as a double-quoted Milvus string literal: ``\\`` and ``"`` escaped, the rest
    raw. Raises ValueError on a line break (see :func:`expressible`)."""
    if not expressible(text):
        raise ValueError("a Milvus string literal cannot hold a line break")
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _key_path(key: Any) -> str:
    parts = key.split(".") if isinstance(key, str) else []
    if not parts or any(
        not p or any(c in p for c in '"\\') or any(ord(c) < 32 or ord(c) == 127 for c in p)
        for p in parts
    ):
        raise InvalidArgument(
            f"bad filter key {key!r} for a Milvus collection: use non-empty key names without "
            "quotes, backslashes or control characters ('.' walks into nested objects)",
            field="filter",
        )
    return FIELD + "".join(f"[{string_literal(p)}]" for p in parts)


def _literal(key: str, value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        if not _INT64[0] <= value <= _INT64[1]:
            raise InvalidArgument(
                f"filter value for {key!r} is outside the 64-bit integers Milvus stores",
                field="filter",
            )
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidArgument(
                f"filter value for {key!r} is not a finite number", field="filter"
            )
        return repr(value)
    if isinstance(value, str):
        if not expressible(value):
            raise InvalidArgument(
                f"filter value for {key!r} holds a line break, which a Milvus expression "
                "cannot carry",
                field="filter",
            )
        return string_literal(value)
    what = {type(None): "null", list: "a list", dict: "an object"}.get(type(value))
    if what is not None:
        raise InvalidArgument(
            f"a Milvus collection cannot filter {key!r} by equality with {what}: Milvus "
            "expressions compare JSON keys with strings, numbers and booleans only "
            "(the FAISS backend can)",
            field="filter",
        )
    raise InvalidArgument(
        f"filter value for {key!r} must be a string, number or boolean, got {type(value).__name__}",
        field="filter",
    )


def filter_expression(filter: dict[str, Any] | None) -> str:
    """The Milvus boolean expression of a metadata equality filter ("" = no filter)."""
    if not filter:
        return ""
    if not isinstance(filter, dict):
        raise InvalidArgument("filter must be an object of metadata key -> value", field="filter")
    return " and ".join(f"{_key_path(k)} == {_literal(k, v)}" for k, v in filter.items())
