"""What a rendered event becomes: an HTTP request body, or an Apprise notification.

Rendering happens at attempt time from the stored event, so these are built
for each attempt and never stored; the worker records what it sent.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson


@dataclass(frozen=True)
class HttpMessage:
    """A request for the subscriber's `url`: presets and `format: template`."""

    body: bytes
    content_type: str = "application/json"
    method: str = "POST"
    headers: Mapping[str, str] = field(default_factory=dict)  # besides content-type

    @classmethod
    def json(cls, payload: Any, headers: Mapping[str, str] | None = None) -> HttpMessage:
        return cls(orjson.dumps(payload), headers=headers or {})

    def shown(self) -> str:
        """The body as `deliveries --attempts` would show it."""
        return self.body.decode("utf-8", errors="replace")


@dataclass(frozen=True)
class Notification:
    """A title and a body for Apprise, which formats them for each service."""

    title: str
    body: str

    def shown(self) -> str:
        return f"{self.title}\n\n{self.body}" if self.title else self.body


Message = HttpMessage | Notification


def envelope(event_id: str, stored_body: bytes) -> dict[str, Any]:
    """The event as every renderer sees it: `{type, id, timestamp, data}`.

    `stored_body` is the Standard Webhooks body the outbox keeps for the event;
    the id is the event's (the `webhook-id`), which the body does not carry.
    """
    stored = orjson.loads(stored_body)
    return {
        "type": stored.get("type"),
        "id": event_id,
        "timestamp": stored.get("timestamp"),
        "data": stored.get("data"),
    }
