"""Server log lines: JSON or text, each with the request id, and one access line per request.

``configure_logging`` (called by ``embedsvc serve``) installs one stderr handler on the root
logger. JSON lines are objects with ``timestamp`` (UTC, ISO 8601), ``level``, ``logger``,
``message``, ``request_id`` and, on access lines (logger ``embedsvc.access``), ``rpc`` or
``route`` + ``http_method``, ``status_code`` and ``duration_ms``.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import datetime, timezone
from typing import Any

from embedsvc.config import LoggingConfig
from embedsvc.telemetry import install_log_record_factory

access_log = logging.getLogger("embedsvc.access")

#: extra fields of access lines, copied into JSON lines when a record has them
ACCESS_FIELDS = ("rpc", "route", "http_method", "status_code", "duration_ms")


class JsonFormatter(logging.Formatter):
    """One JSON object per line."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "timestamp": datetime.fromtimestamp(record.created, timezone.utc).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", None),
        }
        for key in ACCESS_FIELDS:
            value = getattr(record, key, None)
            if value is not None:
                line[key] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exception"] = record.exc_text
        if record.stack_info:
            line["stack"] = record.stack_info
        return json.dumps(line, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        if getattr(record, "request_id", None) is None:
            record.request_id = "-"
        return super().format(record)


def configure_logging(config: LoggingConfig) -> logging.Handler:
    """Send every log line to stderr in ``config.format`` at ``config.level`` (replaces the
    handler a previous call installed)."""
    install_log_record_factory()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if config.format == "json" else TextFormatter())
    handler._embedsvc = True  # type: ignore[attr-defined]
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "_embedsvc", False)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(config.level.upper())
    return handler


def log_access(
    status_code: int | str,
    seconds: float,
    *,
    rpc: str | None = None,
    route: str | None = None,
    http_method: str | None = None,
    quiet: bool = False,
) -> None:
    """The access line of one request (DEBUG for health checks and scrapes, else INFO)."""
    level = logging.DEBUG if quiet else logging.INFO
    if not access_log.isEnabledFor(level):
        return
    duration_ms = round(seconds * 1000, 3)
    what = rpc if rpc is not None else f"{http_method} {route}"
    access_log.log(
        level,
        "%s %s %.3f ms",
        what,
        status_code,
        duration_ms,
        extra={
            "rpc": rpc,
            "route": route,
            "http_method": http_method,
            "status_code": status_code,
            "duration_ms": duration_ms,
        },
    )
