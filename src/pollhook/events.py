"""Detected changes become events: an id, exact body bytes, and their routes.

The body is serialised once here and stored; every attempt sends those bytes
unchanged, so a signature always covers exactly what was sent.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import orjson

from .config import Subscriber
from .store import NewEvent


def new_event_id(now: float | None = None) -> str:
    """`msg_` + time-ordered hex: unique, sortable, stable across retries."""
    millis = int((time.time() if now is None else now) * 1000)
    return f"msg_{millis:012x}{os.urandom(7).hex()}"


def iso_timestamp(at: float) -> str:
    """RFC 3339 UTC with milliseconds, as the wire format shows."""
    return (
        datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%dT%H:%M:%S.")
        + f"{int(at * 1000) % 1000:03d}Z"
    )


def event_body(event_type: str, at: float, data: dict[str, Any]) -> bytes:
    return orjson.dumps({"type": event_type, "timestamp": iso_timestamp(at), "data": data})


def build_event(
    source: str, event_type: str, key: str | None, data: dict[str, Any],
    subscribers: Sequence[Subscriber], at: float,
) -> NewEvent:  # fmt: skip
    """One event with the subscribers that want it (routing of CONTRACT.md)."""
    routes = tuple(s.name for s in subscribers if s.wants(source, event_type))
    return NewEvent(
        id=new_event_id(at),
        source=source,
        type=event_type,
        key=key,
        body=event_body(event_type, at, data),
        subscribers=routes,
    )
