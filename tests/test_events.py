"""events: ids, timestamps, exact body bytes and routing to subscribers."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

from pollhook.config import CHANGE_EVENTS, EVENT_TYPES, HEALTH_EVENTS, Subscriber
from pollhook.events import build_event, event_body, iso_timestamp, new_event_id

AT = 1795795200.123  # 2026-11-27T16:00:00.123Z, the CONTRACT.md example
ID_RE = re.compile(r"^msg_[0-9a-f]{26}$")
TIMESTAMP_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")

TIMESTAMPS = [
    (AT, "2026-11-27T16:00:00.123Z"),
    (1795795200.0, "2026-11-27T16:00:00.000Z"),
    (1795795200.001, "2026-11-27T16:00:00.001Z"),
    (1795795200.999, "2026-11-27T16:00:00.999Z"),
    (1795795200.9994, "2026-11-27T16:00:00.999Z"),
    # just below a second: never rounded up into the next second
    (1795795200.9999995, "2026-11-27T16:00:00.999Z"),
    (1700000000.9999998, "2023-11-14T22:13:20.999Z"),
    (0.0, "1970-01-01T00:00:00.000Z"),
    (0.5, "1970-01-01T00:00:00.500Z"),
    (951782400.25, "2000-02-29T00:00:00.250Z"),
    (4102444799.999, "2099-12-31T23:59:59.999Z"),
]


@pytest.mark.parametrize(("at", "text"), TIMESTAMPS)
def test_iso_timestamp(at: float, text: str) -> None:
    assert iso_timestamp(at) == text
    assert TIMESTAMP_RE.match(text)


def test_iso_timestamp_every_millisecond_of_a_second() -> None:
    for ms in range(1000):
        at = 1795795200 + ms / 1000
        assert iso_timestamp(at) == f"2026-11-27T16:00:00.{ms:03d}Z"


def test_iso_timestamp_parses_back() -> None:
    for at in (AT, 1700000000.5, 1795795200.9999995):
        parsed = datetime.strptime(iso_timestamp(at), "%Y-%m-%dT%H:%M:%S.%f%z")
        assert parsed.tzinfo == UTC
        assert 0 <= at - parsed.timestamp() < 0.001


# -- event ids ----------------------------------------------------------------


def test_event_id_format() -> None:
    assert ID_RE.match(new_event_id())
    assert ID_RE.match(new_event_id(AT))
    assert new_event_id(AT).startswith(f"msg_{1795795200123:012x}")


def test_event_ids_are_unique() -> None:
    ids = [new_event_id(AT) for _ in range(20000)] + [new_event_id() for _ in range(20000)]
    assert len(set(ids)) == len(ids)


def test_event_ids_are_time_ordered() -> None:
    times = [AT + step * 0.001 for step in range(-500, 500, 7)] + [AT + 3600, AT + 86400 * 365]
    ids = [new_event_id(at) for at in times]
    assert ids == sorted(ids)


def test_event_ids_in_one_millisecond_keep_creation_order() -> None:
    """One poll's events share a timestamp: their ids still sort as they were made."""
    ids = [new_event_id(AT + 5) for _ in range(1000)]
    assert ids == sorted(ids)


# -- event bodies ---------------------------------------------------------------

DATA: dict[str, Any] = {
    "source": "tickets",
    "key": "42",
    "item": {"id": 42, "status": "closed", "name": "Zoë"},
    "previous": {"id": 42, "status": "open", "name": "Zoë"},
    "changes": [{"op": "replace", "path": "/status", "value": "closed"}],
}


def test_event_body_is_the_wire_format() -> None:
    body = event_body("item.updated", AT, DATA)
    assert isinstance(body, bytes)
    parsed = orjson.loads(body)
    assert parsed == {"type": "item.updated", "timestamp": "2026-11-27T16:00:00.123Z", "data": DATA}
    assert list(parsed) == ["type", "timestamp", "data"]
    body.decode("utf-8")  # UTF-8 JSON, as content-type application/json means


def test_event_body_is_stable() -> None:
    """Signatures cover the exact bytes: the same event always serialises the same."""
    assert event_body("item.updated", AT, DATA) == event_body("item.updated", AT, dict(DATA))


# -- routing --------------------------------------------------------------------


def sub(name: str, sources: list[str] | None = None, events: list[str] | None = None) -> Subscriber:
    return Subscriber(
        name=name,
        url=f"http://127.0.0.1:9/{name}",
        sources=None if sources is None else frozenset(sources),
        events=None if events is None else frozenset(events),
    )


SUBSCRIBERS = [
    sub("all"),
    sub("tickets-only", sources=["tickets"]),
    sub("created-only", events=["item.created"]),
    sub("health-only", events=["source.failing", "source.recovered"]),
    sub("deleted-and-failing", events=["item.deleted", "source.failing"]),
    sub("documents", events=["document.changed"]),
    sub("tickets-updates", sources=["tickets"], events=["item.updated"]),
    sub("no-sources", sources=[]),
    sub("no-events", events=[]),
]

ROUTES = [
    ("tickets", "item.created", ["all", "tickets-only", "created-only"]),
    ("tickets", "item.updated", ["all", "tickets-only", "tickets-updates"]),
    ("tickets", "item.deleted", ["all", "tickets-only", "deleted-and-failing"]),
    ("tickets", "document.changed", ["all", "tickets-only", "documents"]),
    ("tickets", "source.failing", ["health-only", "deleted-and-failing"]),
    ("tickets", "source.recovered", ["health-only"]),
    ("orders", "item.created", ["all", "created-only"]),
    ("orders", "item.updated", ["all"]),
    ("orders", "document.changed", ["all", "documents"]),
    ("orders", "source.failing", ["health-only", "deleted-and-failing"]),
]


@pytest.mark.parametrize(("source", "event_type", "routes"), ROUTES)
def test_routing(source: str, event_type: str, routes: list[str]) -> None:
    assert [s.name for s in SUBSCRIBERS if s.wants(source, event_type)] == routes
    event = build_event(source, event_type, "k", {"source": source}, SUBSCRIBERS, AT)
    assert event.subscribers == tuple(routes)


def test_default_subscriber_gets_every_change_event_and_no_health_event() -> None:
    default = sub("default")
    assert {"item.created", "item.updated", "item.deleted", "document.changed"} <= set(
        CHANGE_EVENTS
    )
    for event_type in EVENT_TYPES:
        assert default.wants("any", event_type) is (event_type in CHANGE_EVENTS)
    assert HEALTH_EVENTS and not any(default.wants("any", t) for t in HEALTH_EVENTS)


def test_build_event() -> None:
    event = build_event("tickets", "item.updated", "42", DATA, SUBSCRIBERS, AT)
    assert ID_RE.match(event.id) and event.id.startswith(f"msg_{1795795200123:012x}")
    assert (event.source, event.type, event.key) == ("tickets", "item.updated", "42")
    assert event.body == event_body("item.updated", AT, DATA)


def test_build_event_without_subscribers() -> None:
    event = build_event("tickets", "item.created", "1", {}, (), AT)
    assert event.subscribers == ()
    assert ID_RE.match(event.id)
