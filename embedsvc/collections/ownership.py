"""One owning process per data folder: an advisory lock that a crashed owner cannot leave stale.

Two processes writing one data folder lose acknowledged writes (each holds its own in-memory
index and its own view of which collections exist), so the first process to open a folder owns it
and every other one is refused. The lock is ``fcntl.flock`` on ``data_dir/.embedsvc.lock``, held
on an open file for the life of the owning :class:`~embedsvc.collections.CollectionManager`:
the kernel drops it when the process exits or is killed, so there is nothing to clean up after a
crash. The file itself stays (an unlocked file means nobody owns the folder) and records who
owns it (pid, host, start time, command, and the gRPC/HTTP addresses once a server has bound
them), so a refused process can say whom to talk to instead.

``flock`` is per open file, so a second manager on the same folder inside one process is refused
too. It also works on a read-only file, so a read-only mount that already has the lock file is
still guarded; on one without it nobody can write through that mount anyway, and the folder
opens unguarded (with a warning). Network filesystems: Linux emulates ``flock`` with POSIX
locks on NFS, which the server enforces; other shared filesystems may not honour it.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import socket
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from embedsvc.errors import FailedPrecondition

log = logging.getLogger(__name__)

LOCK_FILE = ".embedsvc.lock"
_READ_ONLY_ERRNOS = (errno.EROFS, errno.EACCES, errno.EPERM)
_WILDCARD_HOSTS = ("", "0.0.0.0", "::", "[::]")


class DataDirOwned(FailedPrecondition):
    """Another process owns the data folder; ``owner`` is what it recorded (may be empty)."""

    def __init__(self, data_dir: Path, owner: dict[str, Any]) -> None:
        super().__init__(refusal_message(data_dir, owner), field="data_dir")
        self.owner = owner


def refusal_message(data_dir: Path, owner: dict[str, Any]) -> str:
    """One line: whose folder it is and what to do instead."""
    who = []
    if owner.get("pid"):
        who.append(f"pid {owner['pid']} on {owner.get('host', '?')}")
    if owner.get("command"):
        who.append(f"'{owner['command']}'")
    if owner.get("started_at"):
        who.append(f"since {owner['started_at']}")
    if owner.get("grpc"):
        who.append(f"gRPC at {owner['grpc']}")
    if owner.get("http"):
        who.append(f"HTTP at {owner['http']}")
    described = f" ({', '.join(who)})" if who else ""
    message = (
        f"data folder {data_dir} is owned by another embedsvc process{described}; "
        "a data folder has one owning process"
    )
    if owner.get("grpc"):
        return message + f": send requests to that server instead (--server {owner['grpc']})"
    return message + ": wait for it to finish or stop it, or use another --data-dir"


class DataDirLock:
    """The held lock of one data folder; :meth:`release` (or process exit) gives it up."""

    def __init__(self, data_dir: str | Path) -> None:
        """Take the folder's lock now, or raise :class:`DataDirOwned` at once (never waits)."""
        self.data_dir = Path(data_dir)
        self.path = self.data_dir / LOCK_FILE
        self._fd: int | None = None
        self._record: dict[str, Any] = {}
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            self.writable = True
        except OSError as exc:
            if exc.errno not in _READ_ONLY_ERRNOS:
                raise
            self.writable = False
            try:
                fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                log.warning(
                    "data folder %s is read-only and has no %s: opening it without the "
                    "one-owner lock (nothing can be written through this mount)",
                    self.data_dir,
                    LOCK_FILE,
                )
                return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = _read_record(fd)
            os.close(fd)
            raise DataDirOwned(self.data_dir, owner) from None
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        self.record(
            pid=os.getpid(),
            host=socket.gethostname(),
            started_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            command=_command(),
        )

    @property
    def held(self) -> bool:
        return self._fd is not None

    def record(self, **info: Any) -> None:
        """Add to what the lock file says about the owner (e.g. the server's addresses)."""
        for key in ("grpc", "http"):
            if isinstance(info.get(key), str):
                info[key] = _reachable(info[key])
        self._record.update(info)
        if self._fd is None or not self.writable:
            return
        data = json.dumps(self._record, sort_keys=True).encode() + b"\n"
        try:
            os.ftruncate(self._fd, 0)
            os.pwrite(self._fd, data, 0)
        except OSError as exc:  # informational only: a full disk must not stop the owner
            log.warning("cannot write the owner record %s: %s", self.path, exc)

    def release(self) -> None:
        """Give the folder up (closing the file drops the lock)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _read_record(fd: int) -> dict[str, Any]:
    try:
        data = os.pread(fd, 64 * 1024, 0)
        record = json.loads(data.decode("utf-8")) if data.strip() else {}
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def _command() -> str:
    """``embedsvc serve`` / ``embedsvc index`` / the script's name, for the refusal message."""
    argv = sys.argv or ["python"]
    head = Path(argv[0]).name
    if head in ("embedsvc", "cli.py"):  # the console script, or python -m embedsvc.cli
        sub = next((a for a in argv[1:] if not a.startswith("-")), "")
        return f"embedsvc {sub}".strip()
    return "python -c" if head == "-c" else head


def _reachable(address: str) -> str:
    """A wildcard bind address as one a local client can dial."""
    host, sep, port = address.rpartition(":")
    return f"localhost:{port}" if sep and host in _WILDCARD_HOSTS else address
