"""Logging setup: readable text on a terminal, JSON or journald lines when asked.

Log calls name their subject as `source=… subscriber=… event=…` in the text;
the JSON formatter lifts those into fields, so every line can be filtered by
source, subscriber or event id without parsing prose.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from datetime import UTC, datetime

import orjson

_FIELDS = re.compile(r"\b(source|subscriber|event|delivery)=([^\s,;:]+)")
_JOURNAL_PRIORITY = {"DEBUG": 7, "INFO": 6, "WARNING": 4, "ERROR": 3, "CRITICAL": 2}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message and lifted ids."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
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


class JournalFormatter(logging.Formatter):
    """`<priority>message`: journald reads the level from the prefix, adds its own time."""

    def format(self, record: logging.LogRecord) -> str:
        text = f"{record.name}: {record.getMessage()}"
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
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(getattr(logging, level.upper()))
