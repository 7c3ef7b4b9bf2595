"""SQLite state: items, events, the delivery outbox, and source health.

This module holds the file's lifecycle, its schema and the poll side; the
delivery side of the same `Store` is in outbox.py.

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
from .outbox import IN_JSON, Outbox
from .outbox import DueDelivery as DueDelivery  # re-exported: the delivery worker's types
from .outbox import Outcome as Outcome

SCHEMA_VERSION = 4
HASH_CACHE_MIN = 1000  # items: sources this large keep their hashes in memory

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
    # whether the upstream's validators earned trust (validators.py), and when a poll last
    # saw a whole body; each delivery's item (source/key), so that one item's deliveries go
    # out in detection order: the partial index finds an earlier pending one in one probe
    4: """
    ALTER TABLE sources ADD COLUMN trust TEXT;
    ALTER TABLE sources ADD COLUMN full_at REAL;
    ALTER TABLE deliveries ADD COLUMN item TEXT;
    UPDATE deliveries SET item = (
        SELECT e.source || '/' || e.key FROM events e
        WHERE e.id = deliveries.event_id AND e.key IS NOT NULL
    );
    CREATE INDEX deliveries_item ON deliveries (subscriber, item, id) WHERE status = 'pending';
    """,
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
    trust: str | None = None  # the validators: None (unproven), "proven" or "lying"
    full_at: float | None = None  # when a poll last got a whole body (not a 304)


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
    trust: str | None = None
    full_at: float | None = None


_STATE_SELECT = (
    "SELECT name, fingerprint, etag, last_modified, consecutive_failures, items_count,"
    " held_deletes, health, cursor, body_digest, trust, full_at FROM sources"
)


class Store(Outbox):
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
                f"SELECT key, body FROM items WHERE source = ? AND key IN {IN_JSON}",
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
                " body_digest, trust, full_at) VALUES (?, ?, ?, ?, ?, ?, 0, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (name) DO UPDATE SET fingerprint = excluded.fingerprint,"
                " etag = excluded.etag, last_modified = excluded.last_modified,"
                " last_poll_at = excluded.last_poll_at, last_success_at = excluded.last_success_at,"
                " consecutive_failures = 0, items_count = excluded.items_count,"
                " held_deletes = excluded.held_deletes, cursor = excluded.cursor,"
                " body_digest = excluded.body_digest, trust = excluded.trust,"
                " full_at = excluded.full_at",
                (write.source, write.fingerprint, write.etag, write.last_modified, now, now,
                 write.items_count, write.held_deletes, write.cursor, write.body_digest,
                 write.trust, write.full_at),
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
            " created_at, updated_at, item) VALUES (?, ?, 'pending', 0, ?, ?, ?, ?)",
            (
                (e.id, sub, now, now, now, None if e.key is None else f"{e.source}/{e.key}")
                for e in events
                for sub in e.subscribers
            ),
        )

    def record_unchanged(
        self, source: str, now: float, validators: tuple[str | None, str | None] | None = None,
        full: bool = False,
    ) -> None:  # fmt: skip
        """A 304 or identical body (`full`): a success that writes no items (maybe new validators)."""
        with self.transaction() as conn:
            conn.execute(
                "UPDATE sources SET last_poll_at = ?1, last_success_at = ?1,"
                " consecutive_failures = 0, full_at = CASE WHEN ?2 THEN ?1 ELSE full_at END"
                " WHERE name = ?3",
                (now, full, source),
            )
            if validators is not None:
                conn.execute(
                    "UPDATE sources SET etag = ?, last_modified = ? WHERE name = ?",
                    (*validators, source),
                )

    def touch_sources(
        self, polled: Sequence[tuple[str, float]], full: Sequence[tuple[str, float]] = ()
    ) -> None:
        """Record many unchanged polls at once (the poller batches its 304s and same bodies).

        `full` are those that got a whole body. Only ever moves the times
        forward: a batch written after a later poll's own commit must not turn
        its clock back.
        """
        with self.transaction() as conn:
            conn.executemany(
                "UPDATE sources SET last_poll_at = max(coalesce(last_poll_at, 0), ?1),"
                " last_success_at = max(coalesce(last_success_at, 0), ?1) WHERE name = ?2",
                ((at, name) for name, at in polled),
            )
            conn.executemany(
                "UPDATE sources SET full_at = max(coalesce(full_at, 0), ?1) WHERE name = ?2",
                ((at, name) for name, at in full),
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


def now() -> float:
    return time.time()


def _read_only(path: Path) -> str:
    """A hint for SQLite's terse open/write errors when the file or its folder is read-only."""
    for target in (path, path.parent):
        if target.exists() and not os.access(target, os.W_OK):
            what = "file" if target == path else "folder"
            return f" (the {what} is read-only)"
    return ""
