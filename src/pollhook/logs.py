"""Logging setup: readable text on a terminal, JSON or journald lines when asked.

Log calls name their subject as `source=… subscriber=… event=…` in the text;
the JSON formatter lifts those into fields, so every line can be filtered by
source, subscriber or event id without parsing prose. Every formatter passes
the message through `redact.safe` (no URL query values or userinfo, no control
characters: upstreams choose the errors, keys and headers that log lines quote)
and tracebacks through `redact.redact`.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from datetime import UTC, datetime
from typing import Any

import orjson

from .redact import redact, safe

_FIELDS = re.compile(r"\b(source|subscriber|event|delivery)=([^\s,;:]+)")
_JOURNAL_PRIORITY = {"DEBUG": 7, "INFO": 6, "WARNING": 4, "ERROR": 3, "CRITICAL": 2}


class SafeFormatter(logging.Formatter):
    """Text lines; the message made safe, tracebacks redacted (their newlines kept)."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = safe(record.message)
        return super().formatMessage(record)

    def formatException(self, ei: Any) -> str:
        return redact(super().formatException(ei))


class JsonFormatter(SafeFormatter):
    """One JSON object per line: time, level, logger, message and lifted ids."""

    def format(self, record: logging.LogRecord) -> str:
        message = safe(record.getMessage())
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": message,
            **dict(_FIELDS.findall(message)),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(entry).decode()


class JournalFormatter(SafeFormatter):
    """`<priority>message`: journald reads the level from the prefix, adds its own time."""

    def format(self, record: logging.LogRecord) -> str:
        text = f"{record.name}: {safe(record.getMessage())}"
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return f"<{_JOURNAL_PRIORITY.get(record.levelname, 6)}>{text}"


def setup_logging(level: str, fmt: str = "auto") -> None:
    """`fmt`: text, json, journal, or auto (journal under systemd, else text)."""
    if fmt == "auto":
        fmt = "journal" if os.environ.get("JOURNAL_STREAM") else "text"
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    elif fmt == "journal":
        handler.setFormatter(JournalFormatter())
    else:
        handler.setFormatter(SafeFormatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(getattr(logging, level.upper()))
