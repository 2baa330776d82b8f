"""What the disk under a data folder allows: a writability probe and honest storage errors.

A read-only mount or a full disk is not a bug in the request, and not an INTERNAL error: it is
the operator's to fix, and the message must say so. :func:`storage_error` maps what the kernel
and SQLite report to library errors:

* a full disk (``ENOSPC``, ``EDQUOT``; SQLite "database or disk is full") -> RESOURCE_EXHAUSTED;
* a read-only mount or missing permission (``EROFS``, ``EACCES``, ``EPERM``; SQLite "attempt to
  write a readonly database") -> FAILED_PRECONDITION;
* an I/O error (``EIO``; SQLite "disk I/O error") -> UNAVAILABLE.

A failed write changed nothing: SQLite rolls the transaction back, and the index is only
touched after the commit. :func:`probe` writes, syncs and removes one page under the folder; the
server runs it at start-up and every ``storage_check_interval_s`` and reports the result as the
health of ``CollectionService``.

Read-only mounts and SQLite's WAL mode: a WAL database can be opened on a read-only mount only
when its ``-wal`` and ``-shm`` files exist (left by an unclean stop), or as *immutable*. After a
clean stop neither file exists, so :func:`read_only_uri` opens such a store immutable (nothing
can change it through a read-only mount), and read-only with the WAL when one was left: reads
(search, get, list) keep working, writes answer FAILED_PRECONDITION.
"""

from __future__ import annotations

import errno
import functools
import os
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

from embedsvc.errors import EmbedsvcError, FailedPrecondition, ResourceExhausted, Unavailable

F = TypeVar("F", bound=Callable[..., Any])

_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
_READ_ONLY_ERRNOS = (errno.EROFS, errno.EACCES, errno.EPERM)
PROBE_PREFIX = ".tmp-probe-"  # the manager removes leftovers with this prefix at start-up


def full_message(data_dir: Path | str, detail: str) -> str:
    return (
        f"the disk holding data folder {data_dir} is full ({detail}); nothing was written: "
        "free space on it, or move --data-dir to a larger disk, then retry"
    )


def read_only_message(data_dir: Path | str, detail: str) -> str:
    return (
        f"data folder {data_dir} cannot be written ({detail}); searches and reads still work: "
        "remount it read-write (or fix its permissions), or serve writes from a server with a "
        "writable --data-dir"
    )


def storage_error(exc: BaseException, data_dir: Path | str) -> EmbedsvcError | None:
    """The library error a storage failure stands for, or None when ``exc`` is not one."""
    if isinstance(exc, sqlite3.OperationalError):
        text = str(exc)
        if "disk is full" in text:
            return ResourceExhausted(full_message(data_dir, f"SQLite: {text}"))
        if "readonly database" in text or "read-only" in text:
            return FailedPrecondition(read_only_message(data_dir, f"SQLite: {text}"))
        if "disk I/O error" in text:
            return Unavailable(
                f"I/O error on data folder {data_dir} (SQLite: {text}); check the disk and the "
                "kernel log, then retry"
            )
        return None
    if isinstance(exc, OSError):
        detail = os.strerror(exc.errno) if exc.errno else str(exc)
        if exc.errno in _FULL_ERRNOS:
            return ResourceExhausted(full_message(data_dir, detail))
        if exc.errno in _READ_ONLY_ERRNOS:
            return FailedPrecondition(read_only_message(data_dir, detail))
        if exc.errno == errno.EIO:
            return Unavailable(f"I/O error on data folder {data_dir} ({detail}); check the disk")
    return None


def storage_guarded(where: str) -> Callable[[F], F]:
    """Method decorator: storage failures become :func:`storage_error`'s library errors.

    ``where`` names the attribute holding the data folder (or collection folder) of ``self``.
    """

    def decorate(method: F) -> F:
        @functools.wraps(method)
        def wrapper(self, *args, **kwargs):
            try:
                return method(self, *args, **kwargs)
            except (sqlite3.Error, OSError) as exc:
                mapped = storage_error(exc, getattr(self, where))
                if mapped is None:
                    raise
                raise mapped from exc

        return wrapper  # type: ignore[return-value]

    return decorate


def probe(data_dir: Path | str) -> str | None:
    """None when ``data_dir`` takes a synced one-page write; else why not, in one line."""
    path = Path(data_dir) / f"{PROBE_PREFIX}{os.getpid()}"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, b"\0" * 4096)
            os.fsync(fd)
        finally:
            os.close(fd)
            os.unlink(path)
    except OSError as exc:
        mapped = storage_error(exc, data_dir)
        return mapped.message if mapped is not None else f"data folder {data_dir}: {exc}"
    return None


def writable(directory: Path | str) -> bool:
    """Whether files can be created in ``directory`` (False on a read-only mount)."""
    return os.access(directory, os.W_OK)


def read_only_uri(path: Path | str) -> str:
    """A SQLite URI that reads ``path`` on a read-only mount (see the module docstring)."""
    path = Path(path)
    wal, shm = Path(f"{path}-wal"), Path(f"{path}-shm")
    uri = f"file:{quote(str(path.resolve()))}?mode=ro"
    if wal.exists() and shm.exists():
        return uri  # the WAL holds committed writes: read through it
    return uri + "&immutable=1"
