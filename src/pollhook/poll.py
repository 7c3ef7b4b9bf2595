"""One poll of one source: fetch → extract → diff → one transaction.

Nothing is written unless the whole poll succeeded; a failure only updates
the source's health record. Health events are sent once when a source starts
failing and once when it recovers, never once per failure.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import sqlite3
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import aiohttp
import orjson

from . import cursor, metrics, paginate, validators
from .config import Config, HttpSettings, Source, Subscriber
from .diff import Delta, changes_for, compare
from .document import document_changes
from .errors import SourceError
from .events import build_event, iso_timestamp
from .extract import Item, stored_json
from .fetch import Fetched, HostLimits, describe_error, fetch
from .parsing import Parsers
from .redact import redact
from .request import Clients, query
from .store import PollWrite, SourceState, Store
from .validators import NONE, Validators

log = logging.getLogger("pollhook.poll")

DbCall = Callable[..., Awaitable[Any]]

INLINE_DIGEST_LIMIT = (
    256 * 1024
)  # larger bodies are hashed on a thread (hashlib lets go of the GIL)


@dataclass(frozen=True)
class PollResult:
    """What one poll did, for the scheduler's backoff and for `run --once`."""

    source: str
    ok: bool
    events: int = 0
    error: str | None = None
    retry_after: float | None = None
    failures: int = 0


class Poller:
    """Runs polls; owns nothing but borrows the client, the store runner and the config."""

    def __init__(
        self, db: DbCall, client: aiohttp.ClientSession, config: Config,
        on_events: Callable[[], None] = lambda: None,
    ) -> None:  # fmt: skip
        self.db = db
        self.client = client
        self.clients = Clients(client)  # sources with their own TLS settings get their own
        self.config = config
        self.limits = HostLimits(config.http.max_per_host, config.http.min_delay)
        self.parsers = Parsers(config.http.parse_workers)  # started on the first body needing one
        self.on_events = on_events
        # The daemon is the only writer of source state, so it is read from SQLite once
        # (all sources in one query) and then kept current here: a poll reads nothing.
        self._states: dict[str, SourceState] | None = None
        self._loading = asyncio.Lock()  # the first polls all wait for that one read
        # Unchanged polls of healthy sources, written in one batch by `flush` (their
        # only effect is the last-poll time that `pollhook status` shows), and of those
        # the ones that got a whole body (when validators were last checked).
        self._touched: dict[str, float] = {}
        self._looked: dict[str, float] = {}
        # sources whose last poll in this process got a whole body: only those may send
        # unproven validators (validators.py, rule 2)
        self._full: set[str] = set()

    def reconfigure(self, config: Config) -> None:
        old = self.config.http
        if (config.http.max_per_host, config.http.min_delay) != (old.max_per_host, old.min_delay):
            self.limits = HostLimits(config.http.max_per_host, config.http.min_delay)
        self.config = config

    async def aclose(self) -> None:
        await self.parsers.aclose()  # first: a stop never waits for a parse
        await self.clients.aclose()

    async def poll(self, source: Source) -> PollResult:
        """Poll once; never raises for upstream problems (they become a failed result)."""
        state = await self._state(source.name)
        settled = state if state is not None and state.fingerprint == source.fingerprint else None
        started = time.monotonic()
        sent = validators.to_send(source, settled, source.name in self._full, time.time())
        try:
            got = await _fetch_items(
                self.clients, self.parsers, source, self.config.http, self.limits, settled, sent,
                seen=settled.body_digest if settled else None,
            )  # fmt: skip
            if got.fetched.body is None:
                self._full.discard(source.name)
            else:
                self._full.add(source.name)
            if got.unchanged and not _confirms_hold(settled, got, sent):
                await self._unchanged(source.name, state, got)
                events: list[str] = []
            else:
                write: PollWrite = await self.db(
                    _commit, source, state, got, self.config.subscribers, time.time()
                )
                self._committed(source, state, write)
                events = [e.type for e in write.events]
        except SourceError as exc:
            metrics.POLLS.labels(source.name, "error").inc()
            return await self._failed(source, state, exc)
        except sqlite3.Error:  # the state file, not the source: the daemon reports it
            raise
        except Exception as exc:  # a bug met on this source: a failed poll like any other
            log.exception("source=%s poll crashed", source.name)
            metrics.POLLS.labels(source.name, "error").inc()
            return await self._failed(
                source, state, SourceError(f"internal error: {describe_error(exc)}")
            )
        outcome = "not_modified" if got.fetched.body is None else "ok"
        metrics.POLLS.labels(source.name, outcome).inc()
        metrics.POLL_SECONDS.labels(source.name).observe(time.monotonic() - started)
        for event_type in events:
            metrics.EVENTS.labels(source.name, event_type).inc()
        count = len(events)
        if state is not None and state.health == "failing":
            await self._health(
                source, "ok", "source.recovered", {"failures": state.consecutive_failures}
            )
            log.info(
                "source=%s recovered after %d failures", source.name, state.consecutive_failures
            )
        elapsed = time.monotonic() - started
        if count:
            log.info("source=%s poll ok events=%d in %.0fms", source.name, count, elapsed * 1000)
            self.on_events()
        return PollResult(source.name, ok=True, events=count)

    async def flush(self) -> None:
        """Write the batched unchanged polls (every few seconds, and before stopping)."""
        if self._touched:
            polled, self._touched = list(self._touched.items()), {}
            looked, self._looked = list(self._looked.items()), {}
            await self.db(Store.touch_sources, polled, looked)

    async def _state(self, name: str) -> SourceState | None:
        if self._states is None:
            async with self._loading:
                if self._states is None:
                    self._states = await self.db(Store.source_states)
        return self._states.get(name)

    def _set_state(self, state: SourceState) -> None:
        if self._states is not None:
            self._states[state.name] = state

    async def _unchanged(self, name: str, state: SourceState | None, got: Fetch) -> None:
        """A 304 or the same bytes: batched, unless a failure count or validators change.

        Servers behind a load balancer often send the same body with another
        node's ETag: the new validators are stored, the body is still not parsed.
        """
        now = time.time()
        log.debug("source=%s not modified", name)
        if state is None:  # a 304 before any commit (a misbehaving server): no row to update
            return
        full = got.fetched.body is not None
        moved = full and got.validators != (state.etag, state.last_modified)
        if state.consecutive_failures == 0 and not moved:
            self._touched[name] = now
            if full:  # the validators' last check: kept current here, written with the batch
                self._looked[name] = now
                self._set_state(replace(state, full_at=now))
            return
        await self.db(Store.record_unchanged, name, now, got.validators if moved else None, full)
        if moved:
            state = replace(state, etag=got.validators[0], last_modified=got.validators[1])
        self._set_state(
            replace(state, consecutive_failures=0, full_at=now if full else state.full_at)
        )

    def _committed(self, source: Source, state: SourceState | None, write: PollWrite) -> None:
        """Mirror what `Store.commit_poll` just wrote, without reading it back."""
        self._touched.pop(source.name, None)
        self._looked.pop(source.name, None)
        new = SourceState(
            name=source.name, fingerprint=write.fingerprint, etag=write.etag,
            last_modified=write.last_modified, consecutive_failures=0,
            items_count=write.items_count, held_deletes=write.held_deletes,
            health=state.health if state is not None else "ok", cursor=write.cursor,
            body_digest=write.body_digest, trust=write.trust, full_at=write.full_at,
        )  # fmt: skip
        self._set_state(new)
        before = state.trust if state is not None else None
        if write.trust != before and write.trust == validators.LYING:
            log.warning(
                "source=%s sent other items under the same ETag/Last-Modified: conditional"
                " requests are off for it (set `conditional: never` to say so in the config)",
                source.name,
            )
        elif write.trust != before and write.trust == validators.PROVEN:
            log.info("source=%s validators changed with the content: trusted", source.name)

    async def _failed(
        self, source: Source, state: SourceState | None, exc: SourceError
    ) -> PollResult:
        """Count the failure, record its redacted error, and send source.failing at the threshold.

        The error goes to the log, the state file (`status`) and webhooks:
        a key in a URL's query string is redacted from it first.
        """
        error = redact(str(exc))
        failures: int = await self.db(Store.record_failure, source.name, error, time.time())
        self._touched.pop(source.name, None)
        self._looked.pop(source.name, None)
        self._set_state(
            replace(state, consecutive_failures=failures)
            if state is not None
            else SourceState(source.name, None, None, None, failures, 0, None, "ok")
        )
        log.warning("source=%s poll failed (%d in a row): %s", source.name, failures, error)
        healthy = state is None or state.health != "failing"
        if failures >= source.failing_after and healthy:
            await self._health(
                source, "failing", "source.failing", {"failures": failures, "error": error}
            )
        return PollResult(
            source.name, ok=False, error=error, retry_after=exc.retry_after, failures=failures
        )

    async def _health(
        self, source: Source, health: str, event_type: str, info: dict[str, Any]
    ) -> None:
        now = time.time()
        data = {"source": source.name, "at": iso_timestamp(now), **info}
        event = build_event(source.name, event_type, None, data, self.config.subscribers, now)
        await self.db(
            Store.set_health, source.name, health, [event] if event.subscribers else [], now
        )
        state = await self._state(source.name)
        if state is not None:
            self._set_state(replace(state, health=health))
        if event.subscribers:
            self.on_events()


@dataclass(frozen=True)
class DryRun:
    """What a poll would write now, and why it would be a baseline (None: it would not)."""

    write: PollWrite
    baseline: str | None


def baseline_reason(state: SourceState | None, source: Source) -> str | None:
    """Why the next poll records a baseline instead of diffing; None when it diffs."""
    if state is None or state.fingerprint is None:
        return "no state yet"
    if state.fingerprint != source.fingerprint:
        return "detection settings changed"
    return None


async def dry_run(
    db: DbCall, client: aiohttp.ClientSession, config: Config, source: Source
) -> DryRun:
    """Fetch and diff like a real poll (unconditionally), but write nothing."""
    state: SourceState | None = await db(Store.source_state, source.name)
    settled = state if state is not None and state.fingerprint == source.fingerprint else None
    clients, parsers = Clients(client), Parsers(config.http.parse_workers)
    try:
        got = await _fetch_items(
            clients, parsers, source, config.http, HostLimits(config.http.max_per_host), settled
        )
    finally:
        await parsers.aclose()
        await clients.aclose()
    write: PollWrite = await db(
        plan, source, state, got.items, got.validators, config.subscribers, time.time()
    )
    return DryRun(write, baseline_reason(state, source))


@dataclass(frozen=True)
class Fetch:
    """One poll's response and items; `unchanged` when nothing needs diffing."""

    fetched: Fetched
    items: dict[str, Item]
    digest: bytes | None = None  # of a single-response body, to recognise it next time
    unchanged: bool = False
    validators: Validators = NONE  # of a whole body: those worth storing (validators.kept)


async def _fetch_items(
    clients: Clients, parsers: Parsers, source: Source, http: HttpSettings, limits: HostLimits,
    state: SourceState | None, sent: Validators = NONE, seen: bytes | None = None,
) -> Fetch:  # fmt: skip
    """Every page of one poll and its items, or a SourceError; no items after a 304.

    `state` is the settled state (None re-baselines): its cursor is sent in
    incremental mode. `sent` makes the request conditional (validators.to_send).
    A body whose digest is `seen` is not parsed again: the same bytes read with
    the same settings give the same items (not in incremental mode, whose
    requests differ).
    """
    client = clients.get(source)
    params = query(
        source, paginate.first_page(source),
        [(source.incremental.param, since)]
        if source.incremental and (since := cursor.since(source, state.cursor if state else None))
        else [],
    )  # fmt: skip
    fetched = await fetch(
        client, source, http, limits, etag=sent[0], last_modified=sent[1], params=params
    )
    if fetched.body is None:
        return Fetch(fetched, {}, unchanged=True)
    kept = validators.kept(fetched, time.time())
    digest = None
    if source.pagination is None:
        digest = await _digest(fetched)
        if seen == digest and source.incremental is None:
            return Fetch(fetched, {}, digest, unchanged=True, validators=kept)
    pagination = source.pagination
    next_expression = pagination.next if pagination is not None else None
    first = await parsers.extract(source, fetched, http, next_expression)
    items = first.items
    if pagination is not None:
        items = await paginate.more_pages(
            client, source, http, limits, fetched, first, params,
            lambda page: parsers.extract(source, page, http, next_expression),
        )  # fmt: skip
    return Fetch(fetched, items, digest, validators=kept)


def _confirms_hold(state: SourceState | None, got: Fetch, sent: Validators) -> bool:
    """An unchanged answer while deletions are held: the same content, so it confirms them.

    The same bytes, or a 304 to the validators of the body that caused the hold
    (a 304 to an unconditional request means nothing).
    """
    if state is None or not state.held_deletes:
        return False
    return got.fetched.body is not None or sent != NONE


async def _digest(fetched: Fetched) -> bytes:
    """The body and the type it was parsed as: both decide what the items are."""
    body = fetched.body or b""
    hasher = hashlib.blake2b(fetched.content_type.encode(), digest_size=16)
    if len(body) > INLINE_DIGEST_LIMIT:
        await asyncio.to_thread(hasher.update, body)
    else:
        hasher.update(body)
    return hasher.digest()


def _commit(
    store: Store, source: Source, state: SourceState | None, got: Fetch,
    subscribers: Sequence[Subscriber], now: float,
) -> PollWrite:  # fmt: skip
    """Diff against the stored state and write everything in one transaction (DB thread).

    An unchanged answer gets here only to confirm held deletions: its items are
    the stored ones without the held keys, its validators those stored.
    """
    if got.unchanged:
        assert state is not None and state.held_deletes
        full = got.fetched.body is not None
        kept = got.validators if full else (state.etag, state.last_modified)
        write = plan(store, source, state, _without_held(store, state), kept, subscribers, now)
        write = replace(write, body_digest=state.body_digest, trust=state.trust,
                        full_at=now if full else state.full_at)  # fmt: skip
    else:
        write = plan(store, source, state, got.items, got.validators, subscribers, now)
        write = replace(write, body_digest=got.digest, full_at=now, trust=_trust(state, got, write))
    store.commit_poll(write, now)
    return write


def _without_held(store: Store, state: SourceState) -> dict[str, Item]:
    """The items of the body that caused the hold: the stored ones, held keys left out."""
    held = set(orjson.loads(state.held_deletes or "[]"))
    stored = store.item_hashes(state.name)
    return {key: Item(key, digest, None) for key, digest in stored.items() if key not in held}


def _trust(state: SourceState | None, got: Fetch, write: PollWrite) -> str | None:
    """The validators' trust after this whole body (a re-baseline starts over).

    The stored validators are those kept (none after a weak Last-Modified); the
    new ones are as received: too fresh to be sent back, they still show
    whether the server changed them with the content.
    """
    if state is None or write.fingerprint != state.fingerprint:
        return None
    changed = bool(write.upserts or write.deletes or write.held_deletes)
    return validators.judge(
        state.trust, (state.etag, state.last_modified),
        (got.fetched.etag, got.fetched.last_modified),
        body_changed=got.digest != state.body_digest, items_changed=changed,
    )  # fmt: skip


def plan(
    store: Store, source: Source, state: SourceState | None, items: Mapping[str, Item],
    kept: Validators, subscribers: Sequence[Subscriber], now: float,
) -> PollWrite:  # fmt: skip
    """Everything a successful poll would write, computed without writing (dry runs use it)."""
    stored = store.item_hashes(source.name)
    baseline = state is None or state.fingerprint != source.fingerprint
    held: set[str] = set()
    if baseline:
        delta = Delta(created=list(items), deleted=[k for k in stored if k not in items])
        changes = []
        if state is None and source.emit_initial:
            changes = changes_for(Delta(created=list(items)), items, {})
        elif state is not None and state.fingerprint is not None:
            log.info("source=%s detection settings changed: re-baselined silently", source.name)
    elif source.incremental is not None:  # only what changed is listed: nothing is ever deleted
        delta = compare(stored, items)
        delta = Delta(delta.created, delta.updated, [])
        previous = store.item_values(source.name, delta.updated)
        changes = changes_for(delta, items, previous, source.ignore)
    else:
        delta = compare(stored, items)
        delta, held = _hold_mass_delete(source, delta, state, len(stored))
        previous = store.item_values(source.name, delta.updated + delta.deleted)
        changes = changes_for(delta, items, previous, source.ignore)
    cap = source.max_events_per_poll
    if not baseline and cap is not None and len(changes) > cap:
        raise SourceError(
            f"implausible poll: {len(changes)} changes exceed max_events_per_poll {cap};"
            " nothing recorded (raise the cap to accept them)"
        )
    if source.mode == "document":
        changes = document_changes(changes)
    events = [
        build_event(source.name, c.type, c.key, c.data(source.name), subscribers, now)
        for c in changes
    ]
    upserts = [
        (key, items[key].hash, stored_json(items[key].value))
        for key in delta.created + delta.updated
    ]
    return PollWrite(
        source=source.name,
        fingerprint=source.fingerprint,
        upserts=upserts,
        deletes=delta.deleted,
        events=events,
        items_count=len(items) + len(held)
        if source.incremental is None or baseline
        else len(stored) + len(delta.created),
        etag=kept[0],
        last_modified=kept[1],
        held_deletes=orjson.dumps(sorted(held)).decode() if held else None,
        cursor=cursor.advance(source, None if baseline or state is None else state.cursor, items),
    )


def _hold_mass_delete(
    source: Source, delta: Delta, state: SourceState | None, tracked: int
) -> tuple[Delta, set[str]]:
    """Hold back a mass deletion until the next complete poll confirms it.

    A paginated source holds every deletion (unless `confirm_deletions: false`):
    an item that moved between pages while they were fetched looks deleted once.
    """
    previously_held = (
        set(orjson.loads(state.held_deletes)) if state and state.held_deletes else set()
    )
    confirmed = [k for k in delta.deleted if k in previously_held]
    rest = [k for k in delta.deleted if k not in previously_held]
    everything = bool(rest) and len(rest) == tracked  # an empty list is as suspect as a flood
    limit = source.mass_delete
    paged = source.pagination is not None and source.pagination.confirm_deletions
    if rest and paged:
        log.info(
            "source=%s %d items gone: deletions of a paginated source wait for the next poll",
            source.name, len(rest),
        )  # fmt: skip
        return Delta(delta.created, delta.updated, confirmed), set(rest)
    if everything or (len(rest) > limit.min and len(rest) > limit.ratio * tracked):
        log.warning(
            "source=%s %d of %d items vanished at once: holding the deletion until the next poll"
            " confirms it",
            source.name, len(rest), tracked,
        )  # fmt: skip
        return Delta(delta.created, delta.updated, confirmed), set(rest)
    return Delta(delta.created, delta.updated, confirmed + rest), set()
