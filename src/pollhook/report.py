"""Read-only views of the state file for `pollhook status`, `events` and `items`.

They read through SQLite's WAL, so they work beside a running daemon and
never block it.
"""

from __future__ import annotations

import json
import random
from typing import Any

import orjson

from .config_outline import Outline
from .outbox import IN_JSON, where_equal
from .retry import source_backoff
from .store import Store


def source_status(store: Store, config: Outline | None) -> list[dict[str, Any]]:
    """One row per source: configured ones first, then ones only the state file knows."""
    rows = {
        r["name"]: r
        for r in store.db.query(
            "SELECT name, last_poll_at, last_success_at, last_error, last_error_at,"
            " consecutive_failures, items_count, health, held_deletes, cursor, trust FROM sources"
        )
    }
    out = []
    for source in config.sources if config else ():
        row = rows.pop(source.name, None) or {"name": source.name, "consecutive_failures": 0}
        out.append(_with_outcome(row, source.interval))
        if source.conditional == "never":
            out[-1]["validators"] = "not used"
    out.extend(_with_outcome(row, None, configured=config is None) for row in rows.values())
    return out


def _with_outcome(
    row: dict[str, Any], interval: float | None, configured: bool = True
) -> dict[str, Any]:
    row = dict(row)
    held = row.pop("held_deletes", None)  # deletions waiting for a confirming poll
    row["held_deletions"] = len(json.loads(held)) if held else 0
    row["validators"] = row.pop("trust", None) or "unproven"  # see validators.py
    failures = row.get("consecutive_failures") or 0
    last = row.get("last_poll_at")
    row["outcome"] = "never polled" if last is None else ("failing" if failures else "ok")
    if not configured:
        row["outcome"] = "not in config"
    row["next_poll_at"] = None
    if last is not None and interval is not None:
        wait = source_backoff(interval, failures, None, _NoJitter()) if failures else interval
        row["next_poll_at"] = last + wait  # an estimate: the daemon adds its own spread
    return row


class _NoJitter(random.Random):
    """Always 0: gives the upper bound of the jittered backoff."""

    def random(self) -> float:
        return 0.0


def subscriber_status(store: Store, config: Outline | None) -> list[dict[str, Any]]:
    """Pending, failing and dead counts, last success and pause state per subscriber."""
    counts: dict[str, dict[str, Any]] = {}
    for sub, status, failing, n in store.db.conn.execute(
        "SELECT subscriber, status, attempts > 0, COUNT(*) FROM deliveries"
        " WHERE status != 'delivered' GROUP BY subscriber, status, attempts > 0"
    ):
        entry = counts.setdefault(sub, {"pending": 0, "failing": 0, "dead": 0})
        entry[status] = entry.get(status, 0) + n
        if status == "pending" and failing:
            entry["failing"] += n
    extra = {
        r["name"]: r
        for r in store.db.query(
            "SELECT name, paused_at, paused_reason, last_success_at FROM subscribers"
        )
    }
    oldest = dict(
        store.db.conn.execute(
            "SELECT subscriber, MIN(created_at) FROM deliveries WHERE status = 'pending' GROUP BY subscriber"
        ).fetchall()
    )
    names = [s.name for s in config.subscribers] if config else []
    names += sorted((set(counts) | set(extra)) - set(names))
    return [
        {
            "name": name,
            **counts.get(name, {"pending": 0, "failing": 0, "dead": 0}),
            "oldest_pending_at": oldest.get(name),
            "last_success_at": extra.get(name, {}).get("last_success_at"),
            "paused": extra.get(name, {}).get("paused_reason"),
            "configured": config is None or name in {s.name for s in config.subscribers},
        }
        for name in names
    ]


def recent_events(
    store: Store, *, source: str | None = None, event_type: str | None = None, limit: int = 50
) -> list[dict[str, Any]]:
    """Newest events first, each with how its deliveries stand."""
    where, args = where_equal([("e.source", source), ("e.type", event_type)])
    sql = (
        "SELECT e.id, e.type, e.source, e.key, e.created_at,"
        " (SELECT COUNT(*) FROM deliveries d WHERE d.event_id = e.id) AS deliveries,"
        " (SELECT COUNT(*) FROM deliveries d WHERE d.event_id = e.id AND d.status = 'delivered')"
        " AS delivered FROM events e"
        f" WHERE {where} ORDER BY e.created_at DESC, e.id DESC LIMIT ?"
    )
    return list(store.db.query(sql, [*args, limit]))


CHANGE_TYPES = ("item.created", "item.updated", "document.changed")


def tracked_items(store: Store, source: str, limit: int) -> tuple[list[dict[str, Any]], int]:
    """A source's stored items in key order, and how many it has.

    The state keeps no change time per item; `changed_at` is derived from the
    newest kept event that created or changed the item, so it is None for an
    item unchanged since a silent baseline, or whose events retention pruned.
    """
    rows = list(
        store.db.query(
            "SELECT key, hash, body FROM items WHERE source = ? ORDER BY key LIMIT ?",
            [source, limit],
        )
    )
    keys = json.dumps([row["key"] for row in rows])
    changed = dict(
        store.db.conn.execute(
            "SELECT key, MAX(created_at) FROM events WHERE source = ? AND type IN"
            f" {IN_JSON} AND key IN {IN_JSON} GROUP BY key",
            (source, json.dumps(CHANGE_TYPES), keys),
        ).fetchall()
    )
    total = store.db.conn.execute(
        "SELECT COUNT(*) FROM items WHERE source = ?", (source,)
    ).fetchone()[0]
    items = [
        {"key": row["key"], "hash": row["hash"], "changed_at": changed.get(row["key"]),
         "item": orjson.loads(row["body"])}
        for row in rows
    ]  # fmt: skip
    return items, int(total)


def pending_count(store: Store) -> int:
    """Deliveries still to be made (for systemd's STATUS line)."""
    row = store.db.conn.execute(
        "SELECT COUNT(*) FROM deliveries WHERE status = 'pending'"
    ).fetchone()
    return int(row[0])


def scrape_snapshot(store: Store, sources: list[str], subscribers: list[str]) -> dict[str, Any]:
    """What /metrics reads from the state file at each scrape.

    Pending deliveries per subscriber and items tracked per source, with every
    configured name present (0 when it has none: a series that vanished would
    read as "no data", not as "nothing pending"), and the oldest pending time.
    """
    pending = dict.fromkeys(subscribers, 0)
    pending.update(
        store.db.conn.execute(
            "SELECT subscriber, COUNT(*) FROM deliveries WHERE status = 'pending' GROUP BY subscriber"
        ).fetchall()
    )
    tracked = dict(store.db.conn.execute("SELECT name, items_count FROM sources").fetchall())
    oldest = store.db.conn.execute(
        "SELECT MIN(created_at) FROM deliveries WHERE status = 'pending'"
    ).fetchone()[0]
    items = {name: tracked.get(name) or 0 for name in sources}
    return {"pending": pending, "oldest": oldest, "items": items}
