"""Storage failures as library errors, simulated (the real read-only mount and full disk are in
``tests/server/test_storage_health.py``, which skips where a tmpfs cannot be mounted)."""

from __future__ import annotations

import errno
import sqlite3

import pytest

from embedsvc.collections.storage import probe, read_only_uri, storage_error, storage_guarded
from embedsvc.errors import FailedPrecondition, ResourceExhausted, Unavailable


@pytest.mark.parametrize(
    ("exc", "kind", "words"),
    [
        (sqlite3.OperationalError("database or disk is full"), ResourceExhausted, "is full"),
        (OSError(errno.ENOSPC, "No space left on device"), ResourceExhausted, "free space"),
        (OSError(errno.EDQUOT, "Disk quota exceeded"), ResourceExhausted, "is full"),
        (
            sqlite3.OperationalError("attempt to write a readonly database"),
            FailedPrecondition,
            "remount it read-write",
        ),
        (OSError(errno.EROFS, "Read-only file system"), FailedPrecondition, "cannot be written"),
        (OSError(errno.EACCES, "Permission denied"), FailedPrecondition, "permissions"),
        (sqlite3.OperationalError("disk I/O error"), Unavailable, "I/O error"),
    ],
)
def test_storage_errors_map_to_codes_with_advice(tmp_path, exc, kind, words):
    mapped = storage_error(exc, tmp_path)
    assert isinstance(mapped, kind) and words in mapped.message and str(tmp_path) in mapped.message


def test_other_errors_stay_bugs(tmp_path):
    assert storage_error(sqlite3.OperationalError("no such table: docs"), tmp_path) is None
    assert storage_error(OSError(errno.EBADF, "Bad file descriptor"), tmp_path) is None
    assert storage_error(ValueError("x"), tmp_path) is None


def test_guarded_methods_raise_the_library_error(tmp_path):
    class Writer:
        directory = tmp_path

        @storage_guarded("directory")
        def write(self):
            raise sqlite3.OperationalError("database or disk is full")

        @storage_guarded("directory")
        def bug(self):
            raise sqlite3.OperationalError("near 'SELEC': syntax error")

    with pytest.raises(ResourceExhausted):
        Writer().write()
    with pytest.raises(sqlite3.OperationalError):
        Writer().bug()


def test_probe_and_read_only_uri(tmp_path):
    assert probe(tmp_path) is None and list(tmp_path.iterdir()) == []
    assert "No such file" in probe(tmp_path / "missing")
    db = tmp_path / "docs.sqlite"
    db.touch()
    assert read_only_uri(db).endswith("?mode=ro&immutable=1")  # a clean stop leaves no WAL
    (tmp_path / "docs.sqlite-wal").touch()
    (tmp_path / "docs.sqlite-shm").touch()
    assert read_only_uri(db).endswith("?mode=ro")  # read through the WAL a crash left


def test_a_collection_with_out_of_bounds_settings_is_refused_not_opened(tmp_path):
    """A meta.json from before the index-parameter bounds (hnsw_m=1000000) is not rebuilt."""
    import json

    from embedsvc.collections import CollectionManager
    from embedsvc.errors import FailedPrecondition

    with CollectionManager(tmp_path) as manager:
        manager.create("c", "s", "dense", 8, "hnsw")
    meta = tmp_path / "c" / "meta.json"
    data = json.loads(meta.read_text())
    data["index_config"]["hnsw_m"] = 1000000
    meta.write_text(json.dumps(data))
    with CollectionManager(tmp_path) as manager:
        with pytest.raises(FailedPrecondition, match="hnsw_m.*create it again"):
            manager.get("c")
        manager.delete("c")  # what the message advises works without opening it
        assert manager.list() == []


def test_filter_keys_sqlite_cannot_parse_are_refused() -> None:
    """A NUL or other control character in a filter key broke SQLite's JSON path (a 500 found
    by the HTTP fuzz test); it is now INVALID_ARGUMENT naming the filter."""
    import pytest as _pytest

    from embedsvc.collections.store import filter_sql
    from embedsvc.errors import InvalidArgument

    for key in ("\x00", "a\nb", 'x"y', "ok.\x1f"):
        with _pytest.raises(InvalidArgument) as err:
            filter_sql({key: None})
        assert err.value.field == "filter"
    sql, params = filter_sql({"lang": "en", "größe": 1})
    assert sql and params
