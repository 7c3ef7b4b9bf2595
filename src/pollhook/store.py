"""SQLite state: items, events, the delivery outbox, and source health.

The invariant everything else relies on: a poll's new item state, its events
and their pending deliveries are written in one transaction (`commit_poll`).
A crash either keeps all of it, so every webhook is still sent, or none of
it, so the next poll detects the same change again.

All methods are synchronous and must be called from one thread (the daemon
runs them on a single-thread executor); WAL mode lets `pollhook status`,
`deliveries` and `replay` read and write from other processes meanwhile.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sqlite3
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import sqlite_utils

from .errors import LockedError, StateError

SCHEMA_VERSION = 3
HASH_CACHE_MIN = 1000  # items: sources this large keep their hashes in memory

# A list parameter as one JSON array, so each query's text is fixed: `IN (?, ?, ...)`
# with a varying count is a new prepared statement each time, and the connection's
# statement cache keeps 128 of them: a prune of a few thousand ids holds a few hundred
# KB of native memory per cached statement, tens of MB once the cache is full.
_IN_JSON = "(SELECT value FROM json_each(?))"

_MIGRATIONS: dict[int, str] = {
    1: """
    CREATE TABLE sources (
        name TEXT PRIMARY KEY,
        fingerprint TEXT,
        etag TEXT,
        last_modified TEXT,
        last_poll_at REAL,
        last_success_at REAL,
        last_error TEXT,
        last_error_at REAL,
        consecutive_failures INTEGER NOT NULL DEFAULT 0,
        items_count INTEGER NOT NULL DEFAULT 0,
        held_deletes TEXT,
        health TEXT NOT NULL DEFAULT 'ok'
    );
    CREATE TABLE items (
        source TEXT NOT NULL,
        key TEXT NOT NULL,
        hash TEXT NOT NULL,
        body BLOB NOT NULL,
        PRIMARY KEY (source, key)
    ) WITHOUT ROWID;
    CREATE TABLE events (
        id TEXT PRIMARY KEY,
        source TEXT NOT NULL,
        type TEXT NOT NULL,
        key TEXT,
        created_at REAL NOT NULL,
        body BLOB NOT NULL
    );
    CREATE INDEX events_created ON events (created_at);
    CREATE TABLE deliveries (
        id INTEGER PRIMARY KEY,
        event_id TEXT NOT NULL REFERENCES events(id),
        subscriber TEXT NOT NULL,
        status TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt_at REAL,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        last_status INTEGER,
        last_error TEXT,
        UNIQUE (event_id, subscriber)
    );
    CREATE INDEX deliveries_due ON deliveries (subscriber, status, next_attempt_at);
    CREATE INDEX deliveries_status ON deliveries (status, updated_at);
    CREATE TABLE attempts (
        id INTEGER PRIMARY KEY,
        delivery_id INTEGER NOT NULL REFERENCES deliveries(id),
        at REAL NOT NULL,
        status_code INTEGER,
        duration_ms REAL NOT NULL,
        error TEXT,
        response_body TEXT
    );
    CREATE INDEX attempts_delivery ON attempts (delivery_id);
    CREATE TABLE subscribers (
        name TEXT PRIMARY KEY,
        paused_at REAL,
        paused_reason TEXT,
        last_success_at REAL
    );
    """,
    # incremental mode: the cursor of the last complete poll, as JSON, written with its state
    2: "ALTER TABLE sources ADD COLUMN cursor TEXT",
    # the digest of the body the stored items came from: the same bytes are not parsed again
    3: "ALTER TABLE sources ADD COLUMN body_digest BLOB",
}


@dataclass(frozen=True)
class SourceState:
    """What the store remembers about one source between polls."""

    name: str
    fingerprint: str | None
    etag: str | None
    last_modified: str | None
    consecutive_failures: int
    items_count: int
    held_deletes: str | None
    health: str
    cursor: str | None = None  # incremental mode's cursor, JSON
    body_digest: bytes | None = None  # of the body (and its type) the items were read from


@dataclass(frozen=True)
class NewEvent:
    """An event to insert, with the subscribers it is routed to."""

    id: str
    source: str
    type: str
    key: str | None
    body: bytes
    subscribers: tuple[str, ...]


@dataclass(frozen=True)
class PollWrite:
    """Everything one successful poll writes, applied in one transaction."""

    source: str
    fingerprint: str
    upserts: Sequence[tuple[str, str, bytes]]  # key, hash, body
    deletes: Sequence[str]
    events: Sequence[NewEvent]
    items_count: int
    etag: str | None = None
    last_modified: str | None = None
    held_deletes: str | None = None
    cursor: str | None = None
    body_digest: bytes | None = None


@dataclass(frozen=True)
class DueDelivery:
    """A delivery ready for its next attempt."""

    id: int
    event_id: str
    subscriber: str
    attempts: int
    body: bytes
    detected_at: float = 0.0


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


_STATE_SELECT = (
    "SELECT name, fingerprint, etag, last_modified, consecutive_failures, items_count,"
    " held_deletes, health, cursor, body_digest FROM sources"
)


class Store:
    """The state file behind one small interface."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock_fd: int | None = None
        # the stored item hashes of large sources, once read: this process is the only writer
        # of items (commit_poll keeps them current), so a 100k-item source is not re-read
        # per poll; small ones are cheaper to read again than to keep (~150 bytes an item),
        # so commit_poll drops them
        self._hashes: dict[str, dict[str, str]] = {}
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            if not path.exists():
                os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
            conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            self.db = sqlite_utils.Database(conn)
            self.db.execute("PRAGMA busy_timeout = 10000")
            self.db.execute("PRAGMA journal_mode = WAL")
            self.db.execute("PRAGMA synchronous = NORMAL")
            self.db.execute("PRAGMA foreign_keys = ON")
            self._migrate()
        except sqlite3.DatabaseError as exc:
            raise StateError(f"{path}: cannot open state file: {exc}{_read_only(path)}") from None
        except OSError as exc:
            raise StateError(f"{path}: cannot create state file: {exc.strerror}") from None

    # -- lifecycle -----------------------------------------------------------

    def _migrate(self) -> None:
        version = self.db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise StateError(
                f"{self.path}: state file has schema {version}, newer than this pollhook "
                f"({SCHEMA_VERSION}); upgrade pollhook"
            )
        for target in range(version + 1, SCHEMA_VERSION + 1):
            script = (
                f"BEGIN IMMEDIATE; {_MIGRATIONS[target]}; PRAGMA user_version = {target}; COMMIT;"
            )
            try:
                self.db.conn.executescript(script)
            except sqlite3.Error:
                if self.db.conn.in_transaction:
                    self.db.conn.execute("ROLLBACK")
                raise

    def lock(self) -> None:
        """Take the single-instance lock: two daemons on one file would poll twice."""
        lock_path = self.path.with_name(self.path.name + ".lock")
        try:
            fd = os.open(lock_path, os.O_CREAT | os.O_RDWR, 0o600)
        except OSError as exc:
            raise StateError(
                f"{self.path}: cannot open its lock file {lock_path.name}: {exc.strerror}"
                f"{_read_only(self.path)}"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise LockedError(
                f"{self.path}: another pollhook (pid {holder}) is already running on this state file"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._lock_fd = fd

    def check_writable(self) -> None:
        """Refuse a state file that cannot be written, at start rather than at the first poll.

        SQLite opens a file it may not write (a read-only mount, an immutable
        file, a mode the daemon's user lacks) read-only without complaint, and
        then fails every write. Rewriting the header's user_version is a one-page write; a busy
        or full file passes here: those are transient and handled at run time.
        """
        conn = self.db.conn
        conn.execute("PRAGMA busy_timeout = 0")
        try:
            with self.transaction():
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        except sqlite3.Error as exc:
            if exc.sqlite_errorcode & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_FULL):
                return
            raise StateError(
                f"{self.path}: state file cannot be written: {exc}{_read_only(self.path)}"
            ) from None
        finally:
            conn.execute("PRAGMA busy_timeout = 10000")

    def close(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self.db.conn.close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        conn = self.db.conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
            conn.execute("COMMIT")  # a full disk fails here, when the pages reach the WAL
        except BaseException:
            # SQLite may have rolled back already (SQLITE_FULL, IOERR) or not (a failed
            # COMMIT can leave the transaction open, and every later BEGIN would fail)
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            raise

    # -- sources and items ---------------------------------------------------

    def source_state(self, name: str) -> SourceState | None:
        row = self.db.conn.execute(f"{_STATE_SELECT} WHERE name = ?", (name,)).fetchone()
        return SourceState(*row) if row else None

    def source_states(self) -> dict[str, SourceState]:
        """Every source's state in one read (the poller's start)."""
        return {row[0]: SourceState(*row) for row in self.db.conn.execute(_STATE_SELECT)}

    def item_hashes(self, source: str) -> dict[str, str]:
        """key → hash of the stored items; the caller must not modify the returned dict."""
        hashes = self._hashes.get(source)
        if hashes is None:
            rows = self.db.conn.execute("SELECT key, hash FROM items WHERE source = ?", (source,))
            hashes = self._hashes[source] = dict(rows.fetchall())  # until the commit that follows
        return hashes

    def item_values(self, source: str, keys: Iterable[str]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        keys = list(keys)
        for start in range(0, len(keys), 500):
            chunk = orjson.dumps(keys[start : start + 500]).decode()
            rows = self.db.conn.execute(
                f"SELECT key, body FROM items WHERE source = ? AND key IN {_IN_JSON}",
                (source, chunk),
            )
            out.update((key, orjson.loads(body)) for key, body in rows)
        return out

    def commit_poll(self, write: PollWrite, now: float) -> None:
        """New state, events and their deliveries: all or nothing."""
        with self.transaction() as conn:
            conn.executemany(
                "INSERT INTO items (source, key, hash, body) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (source, key) DO UPDATE SET hash = excluded.hash, body = excluded.body",
                ((write.source, key, digest, body) for key, digest, body in write.upserts),
            )
            conn.executemany(
                "DELETE FROM items WHERE source = ? AND key = ?",
                ((write.source, key) for key in write.deletes),
            )
            self._insert_events(conn, write.events, now)
            conn.execute(
                "INSERT INTO sources (name, fingerprint, etag, last_modified, last_poll_at,"
                " last_success_at, consecutive_failures, items_count, held_deletes, cursor,"
                " body_digest) VALUES (?, ?, ?, ?, ?, ?, 0, ?, ?, ?, ?)"
                " ON CONFLICT (name) DO UPDATE SET fingerprint = excluded.fingerprint,"
                " etag = excluded.etag, last_modified = excluded.last_modified,"
                " last_poll_at = excluded.last_poll_at, last_success_at = excluded.last_success_at,"
                " consecutive_failures = 0, items_count = excluded.items_count,"
                " held_deletes = excluded.held_deletes, cursor = excluded.cursor,"
                " body_digest = excluded.body_digest",
                (write.source, write.fingerprint, write.etag, write.last_modified, now, now,
                 write.items_count, write.held_deletes, write.cursor, write.body_digest),
            )  # fmt: skip
        hashes = self._hashes.get(write.source)  # only once the transaction is committed
        if hashes is not None:
            hashes.update((key, digest) for key, digest, _ in write.upserts)
            for key in write.deletes:
                hashes.pop(key, None)
            if len(hashes) < HASH_CACHE_MIN:
                del self._hashes[write.source]

    def _insert_events(
        self, conn: sqlite3.Connection, events: Sequence[NewEvent], now: float
    ) -> None:
        conn.executemany(
            "INSERT INTO events (id, source, type, key, created_at, body) VALUES (?, ?, ?, ?, ?, ?)",
            ((e.id, e.source, e.type, e.key, now, e.body) for e in events),
        )
        conn.executemany(
            "INSERT INTO deliveries (event_id, subscriber, status, attempts, next_attempt_at,"
            " created_at, updated_at) VALUES (?, ?, 'pending', 0, ?, ?, ?)",
            ((e.id, sub, now, now, now) for e in events for sub in e.subscribers),
        )

    def record_unchanged(self, source: str, now: float) -> None:
        """A 304 or identical body: a success that writes no items."""
        with self.transaction() as conn:
            conn.execute(
                "UPDATE sources SET last_poll_at = ?, last_success_at = ?, consecutive_failures = 0"
                " WHERE name = ?",
                (now, now, source),
            )

    def touch_sources(self, polled: Sequence[tuple[str, float]]) -> None:
        """Record many unchanged polls at once (the poller batches its 304s).

        Only ever moves the times forward: a batch written after a later poll's
        own commit must not turn its clock back.
        """
        with self.transaction() as conn:
            conn.executemany(
                "UPDATE sources SET last_poll_at = max(coalesce(last_poll_at, 0), ?1),"
                " last_success_at = max(coalesce(last_success_at, 0), ?1) WHERE name = ?2",
                ((at, name) for name, at in polled),
            )

    def record_failure(self, source: str, error: str, now: float) -> int:
        """Note a failed poll; returns the consecutive failure count."""
        with self.transaction() as conn:
            conn.execute(
                "INSERT INTO sources (name, last_poll_at, last_error, last_error_at,"
                " consecutive_failures) VALUES (?, ?, ?, ?, 1)"
                " ON CONFLICT (name) DO UPDATE SET last_poll_at = excluded.last_poll_at,"
                " last_error = excluded.last_error, last_error_at = excluded.last_error_at,"
                " consecutive_failures = consecutive_failures + 1",
                (source, now, error, now),
            )
            row = conn.execute(
                "SELECT consecutive_failures FROM sources WHERE name = ?", (source,)
            ).fetchone()
        return int(row[0])

    def set_health(self, source: str, health: str, events: Sequence[NewEvent], now: float) -> None:
        """Flip a source's health flag together with its health events."""
        with self.transaction() as conn:
            conn.execute("UPDATE sources SET health = ? WHERE name = ?", (health, source))
            self._insert_events(conn, events, now)

    # -- deliveries ----------------------------------------------------------

    def due_deliveries(
        self, subscriber: str, now: float, limit: int, exclude: Iterable[int] = ()
    ) -> list[DueDelivery]:
        skip = set(exclude)
        rows = self.db.conn.execute(
            "SELECT d.id, d.event_id, d.subscriber, d.attempts, e.body, e.created_at"
            " FROM deliveries d"
            " JOIN events e ON e.id = d.event_id"
            " WHERE d.subscriber = ? AND d.status = 'pending' AND d.next_attempt_at <= ?"
            " ORDER BY d.next_attempt_at, d.id LIMIT ?",
            (subscriber, now, limit + len(skip)),
        )
        return [DueDelivery(*row) for row in rows if row[0] not in skip][:limit]

    def next_due_at(self, subscribers: Iterable[str], exclude: Iterable[int] = ()) -> float | None:
        """When the next pending delivery of `subscribers` falls due.

        Deliveries in `exclude` (those in flight, whose `next_attempt_at` is
        already past) are skipped: counting them would make every wait look
        overdue while any attempt is open, and a hanging receiver would delay
        everyone's retries to the worker's idle tick. One index range per
        subscriber, so a large backlog costs nothing here.
        """
        skip = set(exclude)
        best: float | None = None
        for name in subscribers:
            rows = self.db.conn.execute(
                "SELECT id, next_attempt_at FROM deliveries WHERE subscriber = ?"
                " AND status = 'pending' ORDER BY next_attempt_at LIMIT ?",
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
            conn.executemany(
                "INSERT INTO subscribers (name, last_success_at) VALUES (?, ?)"
                " ON CONFLICT (name) DO UPDATE SET last_success_at = excluded.last_success_at",
                ((o.subscriber, o.at) for o in outcomes if o.new_status == "delivered"),
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
        where, args = ["1 = 1"], []
        if status == "failed":
            where.append("d.status = 'pending' AND d.attempts > 0")
        elif status:
            where.append("d.status = ?")
            args.append(status)
        if subscriber:
            where.append("d.subscriber = ?")
            args.append(subscriber)
        if event_id:
            where.append("d.event_id = ?")
            args.append(event_id)
        sql = (
            "SELECT d.id, d.event_id, e.type, e.source, e.key, d.subscriber, d.status, d.attempts,"
            " d.next_attempt_at, d.created_at, d.updated_at, d.last_status, d.last_error"
            " FROM deliveries d JOIN events e ON e.id = d.event_id"
            f" WHERE {' AND '.join(where)} ORDER BY d.id DESC LIMIT ?"
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
        """Queue `event_id` again for each subscriber (a fresh round of attempts)."""
        with self.transaction() as conn:
            count = 0
            for sub in subscribers:
                conn.execute(
                    "INSERT INTO deliveries (event_id, subscriber, status, attempts, next_attempt_at,"
                    " created_at, updated_at) VALUES (?, ?, 'pending', 0, ?, ?, ?)"
                    " ON CONFLICT (event_id, subscriber) DO UPDATE SET status = 'pending',"
                    " attempts = 0, next_attempt_at = excluded.next_attempt_at,"
                    " updated_at = excluded.updated_at",
                    (event_id, sub, now, now, now),
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
                    conn.execute(f"DELETE FROM attempts WHERE delivery_id IN {_IN_JSON}", listed)
                    conn.execute(f"DELETE FROM deliveries WHERE id IN {_IN_JSON}", listed)
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


def now() -> float:
    return time.time()


def _read_only(path: Path) -> str:
    """A hint for SQLite's terse open/write errors when the file or its folder is read-only."""
    for target in (path, path.parent):
        if target.exists() and not os.access(target, os.W_OK):
            what = "file" if target == path else "folder"
            return f" (the {what} is read-only)"
    return ""
