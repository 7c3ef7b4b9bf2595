"""The delivery side of the state file: due deliveries, outcomes, replay, retention.

A mixin of `store.Store`, which owns the connection and transactions; split
out so each half stays readable. Same rules: one thread, WAL for readers.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
import sqlite_utils

# A list parameter as one JSON array, so each query's text is fixed: `IN (?, ?, ...)`
# with a varying count is a new prepared statement each time, and the connection's
# statement cache keeps 128 of them: a prune of a few thousand ids holds a few hundred
# KB of native memory per cached statement, tens of MB once the cache is full.
IN_JSON = "(SELECT value FROM json_each(?))"

# Order per item: a pending delivery waits while an earlier pending delivery of the same
# item (subscriber, source and key) exists, in flight or waiting for its retry; one that
# is delivered or dead lets the next go. `id` is the detection order (one poll's events
# are inserted in order, a later poll's after its commit); health events have no item
# and never wait. The rule lives in the query, so it holds across restarts and for any
# number of processes sharing the database; `deliveries_item` makes it one index probe.
READY = (
    "NOT EXISTS (SELECT 1 FROM deliveries p WHERE p.subscriber = d.subscriber"
    " AND p.item = d.item AND p.status = 'pending' AND p.id < d.id)"
)


def where_equal(
    conditions: Iterable[tuple[str, Any]], extra: Sequence[str] = ()
) -> tuple[str, list[Any]]:
    """A WHERE clause: `column = ?` for each condition whose value is set, and `extra`."""
    parts, args = list(extra), []
    for column, value in conditions:
        if value:
            parts.append(f"{column} = ?")
            args.append(value)
    return " AND ".join(parts) or "1 = 1", args


@dataclass(frozen=True)
class DueDelivery:
    """A delivery ready for its next attempt."""

    id: int
    event_id: str
    subscriber: str
    attempts: int
    body: bytes
    detected_at: float = 0.0
    item: str | None = None  # "source/key"; None for health events


@dataclass(frozen=True)
class Outcome:
    """The result of one attempt, to be recorded."""

    delivery_id: int
    at: float
    status_code: int | None
    duration_ms: float
    error: str | None
    response_body: str | None
    new_status: str  # pending | delivered | dead
    attempts: int
    next_attempt_at: float | None
    subscriber: str
    event_id: str
    detected_at: float = 0.0  # when the event was detected: delivery latency for metrics


class Outbox:
    """Delivery queries and writes; `Store` provides `db` and `transaction`."""

    db: sqlite_utils.Database
    transaction: Callable[[], contextlib.AbstractContextManager[sqlite3.Connection]]

    def due_deliveries(
        self, subscriber: str, now: float, limit: int, exclude: Iterable[int] = (),
        items: Iterable[str] | None = None,
    ) -> list[DueDelivery]:  # fmt: skip
        """Deliveries due by `now` and not waiting behind an earlier one of their item.

        `exclude` are ids to leave out (in flight); `items` narrows the search to
        those items (`run --once` looks there after their heads were answered).
        """
        skip = set(exclude)
        table, where, args = "deliveries d", "", [subscriber, now]
        if items is not None:  # a few items among many due: walk those items' index entries
            table, where = "deliveries d INDEXED BY deliveries_item", f" AND d.item IN {IN_JSON}"
            args.append(orjson.dumps(sorted(set(items))).decode())
        rows = self.db.conn.execute(
            "SELECT d.id, d.event_id, d.subscriber, d.attempts, e.body, e.created_at, d.item"
            f" FROM {table} JOIN events e ON e.id = d.event_id"
            " WHERE d.subscriber = ? AND d.status = 'pending' AND d.next_attempt_at <= ?"
            f"{where} AND {READY}"
            " ORDER BY d.next_attempt_at, d.id LIMIT ?",
            (*args, limit + len(skip)),
        )
        return [DueDelivery(*row) for row in rows if row[0] not in skip][:limit]

    def items_waiting(self, subscribers: Iterable[str], now: float) -> dict[str, set[str]]:
        """Per subscriber, the items with a delivery due by `now` that waits behind another."""
        out: dict[str, set[str]] = {}
        for name in subscribers:
            rows = self.db.conn.execute(
                "SELECT DISTINCT d.item FROM deliveries d WHERE d.subscriber = ?"
                " AND d.status = 'pending' AND d.next_attempt_at <= ? AND d.item IS NOT NULL"
                f" AND NOT {READY}",
                (name, now),
            )
            out[name] = {row[0] for row in rows}
        return out

    def next_due_at(self, subscribers: Iterable[str], exclude: Iterable[int] = ()) -> float | None:
        """When the next pending delivery of `subscribers` falls due.

        Deliveries in `exclude` (those in flight, whose `next_attempt_at` is
        already past) are skipped: counting them would make every wait look
        overdue while any attempt is open, and a hanging receiver would delay
        everyone's retries to the worker's idle tick. So are those waiting
        behind an earlier one of their item: they have no time of their own
        (the answer to the earlier one wakes the worker). One index range per
        subscriber, so a large backlog costs nothing here.
        """
        skip = set(exclude)
        best: float | None = None
        for name in subscribers:
            rows = self.db.conn.execute(
                "SELECT d.id, d.next_attempt_at FROM deliveries d WHERE d.subscriber = ?"
                f" AND d.status = 'pending' AND {READY} ORDER BY d.next_attempt_at LIMIT ?",
                (name, len(skip) + 1),
            )
            for delivery_id, due in rows:
                if delivery_id not in skip:
                    if due is not None and (best is None or due < best):
                        best = float(due)
                    break
        return best

    def record_outcomes(self, outcomes: Sequence[Outcome]) -> None:
        """Write a batch of attempt results in one transaction."""
        with self.transaction() as conn:
            conn.executemany(
                "INSERT INTO attempts (delivery_id, at, status_code, duration_ms, error, response_body)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                ((o.delivery_id, o.at, o.status_code, o.duration_ms, o.error, o.response_body)
                 for o in outcomes),
            )  # fmt: skip
            conn.executemany(
                "UPDATE deliveries SET status = ?, attempts = ?, next_attempt_at = ?,"
                " updated_at = ?, last_status = ?, last_error = ? WHERE id = ?",
                ((o.new_status, o.attempts, o.next_attempt_at, o.at, o.status_code, o.error,
                  o.delivery_id) for o in outcomes),
            )  # fmt: skip
            last_success: dict[str, float] = {}  # one row per subscriber, not per delivery
            for o in outcomes:
                if o.new_status == "delivered" and o.at > last_success.get(o.subscriber, 0.0):
                    last_success[o.subscriber] = o.at
            conn.executemany(
                "INSERT INTO subscribers (name, last_success_at) VALUES (?, ?)"
                " ON CONFLICT (name) DO UPDATE SET last_success_at = excluded.last_success_at",
                last_success.items(),
            )

    def pause_subscriber(self, name: str, reason: str, now: float) -> None:
        with self.transaction() as conn:
            conn.execute(
                "INSERT INTO subscribers (name, paused_at, paused_reason) VALUES (?, ?, ?)"
                " ON CONFLICT (name) DO UPDATE SET paused_at = excluded.paused_at,"
                " paused_reason = excluded.paused_reason",
                (name, now, reason),
            )

    def resume_subscriber(self, name: str) -> bool:
        with self.transaction() as conn:
            cursor = conn.execute(
                "UPDATE subscribers SET paused_at = NULL, paused_reason = NULL"
                " WHERE name = ? AND paused_at IS NOT NULL",
                (name,),
            )
        return cursor.rowcount > 0

    def source_names(self) -> set[str]:
        """Every source the state file has a record of."""
        return {row[0] for row in self.db.conn.execute("SELECT name FROM sources")}

    def subscriber_names(self) -> set[str]:
        """Every subscriber the state file knows: with deliveries, a pause or a last success."""
        rows = self.db.conn.execute(
            "SELECT DISTINCT subscriber FROM deliveries UNION SELECT name FROM subscribers"
        )
        return {row[0] for row in rows}

    def paused_subscribers(self) -> dict[str, str]:
        rows = self.db.conn.execute(
            "SELECT name, paused_reason FROM subscribers WHERE paused_at IS NOT NULL"
        )
        return {name: reason or "" for name, reason in rows}

    # -- inspection and replay -------------------------------------------------

    def list_deliveries(
        self, *, status: str | None = None, subscriber: str | None = None,
        event_id: str | None = None, limit: int = 50,
    ) -> list[dict[str, Any]]:  # fmt: skip
        failed = status == "failed"  # pending after at least one attempt
        where, args = where_equal(
            [("d.status", None if failed else status), ("d.subscriber", subscriber),
             ("d.event_id", event_id)],
            ["d.status = 'pending' AND d.attempts > 0"] if failed else [],
        )  # fmt: skip
        # `attempts` counts what `attempts_of` lists: every attempt made, before and after a
        # replay, 410 answers too; the column of that name is the retry schedule's position
        sql = (
            "SELECT d.id, d.event_id, e.type, e.source, e.key, d.subscriber, d.status,"
            " (SELECT COUNT(*) FROM attempts a WHERE a.delivery_id = d.id) AS attempts,"
            " d.next_attempt_at, d.created_at, d.updated_at, d.last_status, d.last_error"
            " FROM deliveries d JOIN events e ON e.id = d.event_id"
            f" WHERE {where} ORDER BY d.id DESC LIMIT ?"
        )
        return list(self.db.query(sql, [*args, limit]))

    def attempts_of(self, delivery_id: int) -> list[dict[str, Any]]:
        return list(
            self.db.query(
                "SELECT at, status_code, duration_ms, error, response_body FROM attempts"
                " WHERE delivery_id = ? ORDER BY id",
                [delivery_id],
            )
        )

    def event_exists(self, event_id: str) -> bool:
        row = self.db.conn.execute("SELECT 1 FROM events WHERE id = ?", (event_id,)).fetchone()
        return row is not None

    def event_subscribers(self, event_id: str) -> list[str]:
        rows = self.db.conn.execute(
            "SELECT subscriber FROM deliveries WHERE event_id = ?", (event_id,)
        )
        return [row[0] for row in rows]

    def replay_event(self, event_id: str, subscribers: Iterable[str], now: float) -> int:
        """Queue `event_id` again for each subscriber (a fresh round of attempts).

        A delivery that still exists keeps its row, so its place in its item's
        detection order: later pending deliveries of the item wait for it again.
        """
        with self.transaction() as conn:
            count = 0
            for sub in subscribers:
                conn.execute(
                    "INSERT INTO deliveries (event_id, subscriber, status, attempts, next_attempt_at,"
                    " created_at, updated_at, item) SELECT id, ?, 'pending', 0, ?, ?, ?,"
                    " CASE WHEN key IS NULL THEN NULL ELSE source || '/' || key END"
                    " FROM events WHERE id = ?"
                    " ON CONFLICT (event_id, subscriber) DO UPDATE SET status = 'pending',"
                    " attempts = 0, next_attempt_at = excluded.next_attempt_at,"
                    " updated_at = excluded.updated_at",
                    (sub, now, now, now, event_id),
                )
                count += 1
        return count

    def replay_dead(self, subscriber: str, since: float, now: float) -> int:
        """Queue every dead delivery of `subscriber` created since `since` again."""
        with self.transaction() as conn:
            cursor = conn.execute(
                "UPDATE deliveries SET status = 'pending', attempts = 0, next_attempt_at = ?,"
                " updated_at = ? WHERE subscriber = ? AND status = 'dead' AND created_at >= ?",
                (now, now, subscriber, since),
            )
        return cursor.rowcount

    # -- retention ---------------------------------------------------------------

    def prune(self, delivered_before: float, dead_before: float, batch: int = 5000) -> int:
        """Delete finished deliveries (and their attempts), then events nobody waits for.

        Works in short batches so a large prune never holds the write lock for long;
        pending deliveries and their events are never touched.
        """
        removed = 0
        for status, before in (("delivered", delivered_before), ("dead", dead_before)):
            while True:
                with self.transaction() as conn:
                    ids = [row[0] for row in conn.execute(
                        "SELECT id FROM deliveries WHERE status = ? AND updated_at < ? LIMIT ?",
                        (status, before, batch),
                    )]  # fmt: skip
                    listed = (orjson.dumps(ids).decode(),)
                    conn.execute(f"DELETE FROM attempts WHERE delivery_id IN {IN_JSON}", listed)
                    conn.execute(f"DELETE FROM deliveries WHERE id IN {IN_JSON}", listed)
                removed += len(ids)
                if len(ids) < batch:
                    break
        # an event outlives `delivered` only while a delivery (pending, or dead and kept
        # for `dead`) still points at it; waiting for the longer horizon instead kept every
        # event of a busy source for `dead` (90 days by default), three times too long
        with self.transaction() as conn:
            conn.execute(
                "DELETE FROM events WHERE created_at < ?"
                " AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.event_id = events.id)",
                (delivered_before,),
            )
        return removed
