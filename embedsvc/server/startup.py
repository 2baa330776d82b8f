"""What a starting server is doing, for health checks and the log, and whether it must stop.

HTTP ``/health`` returns the reason beside ``NOT_SERVING`` ("indexing demo corpus 1,024/5,000,
about 40 s left"); gRPC health has no reason field, so every step is logged too (progress at most
every few seconds). A stop during warm-up cancels it between steps: the warm-up raises
:class:`StartupCancelled` at its next :meth:`StartUp.check`.
"""

from __future__ import annotations

import logging
import threading
import time

from embedsvc.errors import EmbedsvcError

log = logging.getLogger("embedsvc.startup")

#: progress lines in the log at most this often (health always has the latest)
PROGRESS_LOG_INTERVAL_S = 5.0


class StartupCancelled(Exception):
    """The server was asked to stop before its warm-up finished."""


class Readiness(threading.Event):
    """Set while the server is SERVING; ``reason`` says why not while it is clear."""

    def __init__(self) -> None:
        super().__init__()
        self.reason = "starting"


class StartUp:
    """The warm-up's voice (health reason + log) and its stop switch."""

    def __init__(self, readiness: Readiness) -> None:
        self.readiness = readiness
        self._cancel = threading.Event()
        self._progress_started = 0.0
        self._progress_logged = 0.0
        self._estimated = False

    def report(self, reason: str) -> None:
        """Say what the start-up does now (health reason and one log line)."""
        self.readiness.reason = reason
        log.info("start-up: %s", reason)

    def progress(self, what: str, done: int, total: int | None) -> None:
        """``what done/total, about N s left`` (the rate so far from ``done == 0``): health
        always, the log at the start, at the first estimate, every few seconds and at the end.
        Raises
        :class:`StartupCancelled` once the server is stopping."""
        self.check()
        now = time.monotonic()
        first = done == 0 or not self._progress_started
        if first:
            self._progress_started, self._estimated = now, False
        reason = f"{what} {done:,}/{total:,}" if total else f"{what} {done:,}"
        elapsed = now - self._progress_started
        first_estimate = False
        if total and 0 < done < total and elapsed > 0:
            reason += f", about {_duration(elapsed / done * (total - done))} left"
            first_estimate, self._estimated = not self._estimated, True
        self.readiness.reason = reason
        finished = bool(total) and done >= total
        due = now - self._progress_logged >= PROGRESS_LOG_INTERVAL_S
        if first or first_estimate or finished or due:
            self._progress_logged = now
            log.info("start-up: %s", reason)

    def check(self) -> None:
        """Raise :class:`StartupCancelled` once the server is stopping."""
        if self._cancel.is_set():
            raise StartupCancelled

    def cancel(self) -> None:
        self._cancel.set()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{max(1, round(seconds))} s"
    return f"{round(seconds / 60)} min"


def describe(exc: BaseException) -> str:
    """An exception as one line a person can act on."""
    if isinstance(exc, EmbedsvcError):
        message = exc.message
    elif isinstance(exc, OSError):
        message = str(exc)
    else:  # a bug or a library's error: its type helps whoever reads the log
        message = f"{type(exc).__name__}: {exc}"
    return " ".join(message.split())
