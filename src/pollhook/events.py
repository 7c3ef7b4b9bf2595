"""Detected changes become events: an id, exact body bytes, and their routes.

The body is serialised once here and stored; every attempt sends those bytes
unchanged, so a signature always covers exactly what was sent.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from .config import Subscriber
from .extract import stored_json
from .store import NewEvent

_id_lock = threading.Lock()
_last_id = (-1, 0)  # (milliseconds, random part) of the latest id made in this process


def new_event_id(now: float | None = None) -> str:
    """`msg_` + time-ordered hex: unique, sortable, stable across retries.

    Ids made in the same millisecond (one poll's events share a timestamp)
    count up from one random start, so they still sort in creation order.
    """
    global _last_id
    millis = _millis(time.time() if now is None else now)
    with _id_lock:
        last_millis, last_random = _last_id
        # a new millisecond starts at random, top bit clear: room to count up in 14 digits
        part = last_random + 1 if millis == last_millis else int.from_bytes(os.urandom(7)) >> 1
        _last_id = (millis, part)
    return f"msg_{millis:012x}{part:014x}"


def _millis(at: float) -> int:
    """Whole milliseconds, truncated: the one rounding both ids and timestamps use."""
    return int(at * 1000)


def iso_timestamp(at: float) -> str:
    """RFC 3339 UTC with milliseconds, as the wire format shows."""
    seconds, millis = divmod(_millis(at), 1000)
    # from whole seconds: datetime would round 0.9999995 s up into the next second
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{millis:03d}Z"


def event_body(event_type: str, at: float, data: dict[str, Any]) -> bytes:
    return stored_json({"type": event_type, "timestamp": iso_timestamp(at), "data": data})


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
