"""The delivery worker: take due deliveries from the outbox and POST them.

At least once: a delivery stays `pending` in SQLite until its outcome is
recorded, so a process killed mid-attempt resends it on restart with the
same `webhook-id`. Each subscriber has its own in-flight limit, so a receiver
that hangs or fails never delays the others (Convoy #1926). Outcomes are
written in batches: one transaction per burst of completions, not per POST.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import Awaitable, Callable, Iterable
from datetime import UTC, datetime
from typing import Any

import aiohttp
from standardwebhooks.webhooks import Webhook

from . import metrics
from .config import Subscriber
from .events import event_body, new_event_id
from .fetch import USER_AGENT, describe_error
from .retry import delivery_delay, parse_retry_after
from .store import DueDelivery, Outcome, Store

log = logging.getLogger("pollhook.deliver")

RESPONSE_KEEP = 4096
IDLE_WAKE = 1.0
MIN_WAKE = 0.01  # a due delivery found by a racing writer: look again soon, never spin
DbCall = Callable[..., Awaitable[Any]]


def signature_header(secrets: Iterable[str], msg_id: str, timestamp: int, body: bytes) -> str:
    """`v1,<sig>` per secret, space-separated, so receivers can rotate secrets."""
    when = datetime.fromtimestamp(timestamp, UTC)
    text = body.decode("utf-8")
    return " ".join(_webhook(s).sign(msg_id, when, text) for s in secrets)


_WEBHOOKS: dict[str, Webhook] = {}


def _webhook(secret: str) -> Webhook:
    if secret not in _WEBHOOKS:
        _WEBHOOKS[secret] = Webhook(secret)
    return _WEBHOOKS[secret]


class DeliveryWorker:
    """Delivers the outbox; one instance per daemon, owning every attempt task."""

    def __init__(
        self, db: DbCall, client: aiohttp.ClientSession, subscribers: tuple[Subscriber, ...]
    ) -> None:
        self.db = db
        self.client = client
        self.subscribers = {s.name: s for s in subscribers}
        self.in_flight: dict[str, set[int]] = {}
        self.paused: dict[str, str] = {}
        self._pausing: dict[str, str] = {}  # paused here; a DB read may not show it yet
        self._pause_written: set[str] = set()  # ...whose write has completed
        self.tasks: set[asyncio.Task[None]] = set()
        self._outcomes: list[Outcome] = []
        self._outcome_ready = asyncio.Event()
        self._wake = asyncio.Event()
        self._flusher: asyncio.Task[None] | None = None
        self.heartbeat = time.monotonic()  # the dispatch loop turns at least every IDLE_WAKE
        self._once_limits: dict[str, asyncio.Semaphore] = {}

    # -- control ----------------------------------------------------------------

    def wake(self) -> None:
        """New deliveries may be due (a poll committed, an attempt finished)."""
        self._wake.set()

    def reconfigure(self, subscribers: tuple[Subscriber, ...]) -> None:
        self.subscribers = {s.name: s for s in subscribers}
        self.wake()

    async def run(self, stopping: asyncio.Event) -> None:
        """Deliver until `stopping` is set; then stop taking new work."""
        self._flusher = asyncio.create_task(self._flush_forever())
        while not stopping.is_set():
            self._wake.clear()
            self.heartbeat = time.monotonic()
            try:
                timeout = await self._dispatch(time.time())
            except sqlite3.OperationalError as exc:  # busy, I/O: transient; corruption is not
                log.error("deliveries: cannot read the outbox (state file: %s); retrying", exc)
                timeout = IDLE_WAKE
            wake = asyncio.create_task(self._wake.wait())
            stop = asyncio.create_task(stopping.wait())
            await asyncio.wait({wake, stop}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            wake.cancel()
            stop.cancel()

    async def drain_due(self) -> None:
        """`run --once`: one attempt for every delivery due now, then return.

        Item by item in detection order: first every delivery that waits for
        no other, then, as answers come in, those that waited behind one that
        is now delivered or dead. One still pending after its attempt keeps the
        later ones of its item waiting for the next run. Only attempts that
        something waits for are watched; the rest are recorded in one batch.
        """
        now = time.time()
        await self._refresh_paused()
        behind: dict[str, set[str]] = await self.db(
            Store.items_waiting, [s.name for s in self._active()], now
        )
        watched: dict[asyncio.Task[None], tuple[str, str]] = {}  # attempt → (subscriber, item)
        started: set[int] = set()
        answered: dict[str, set[str]] | None = None  # None: the first round, every item
        while True:
            for sub in self._active():
                items = None if answered is None else answered.get(sub.name)
                if answered is not None and not items:
                    continue
                due = await self.db(Store.due_deliveries, sub.name, now, 1_000_000, (), items)
                for delivery in due:
                    if delivery.id in started:  # each at most once: the loop ends
                        continue
                    started.add(delivery.id)
                    task = self._start(sub, delivery, limit=True)
                    if delivery.item is not None and delivery.item in behind.get(sub.name, ()):
                        watched[task] = (sub.name, delivery.item)
            if not watched:
                break
            done, _ = await asyncio.wait(set(watched), return_when=asyncio.FIRST_COMPLETED)
            await self._flush()  # the next query must see these answers
            answered = {}
            for task in done:
                name, item = watched.pop(task)
                answered.setdefault(name, set()).add(item)
        await self.close(grace=None)

    async def close(self, grace: float | None) -> None:
        """Wait for in-flight attempts (up to `grace` seconds), cancel the rest, flush."""
        if self.tasks:
            _done, pending = await asyncio.wait(set(self.tasks), timeout=grace)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending)
                log.info("abandoned %d in-flight deliveries; they resume on restart", len(pending))
        if self._flusher:
            self._flusher.cancel()
        await self._flush()

    # -- dispatch -----------------------------------------------------------------

    def _active(self) -> list[Subscriber]:
        return [s for s in self.subscribers.values() if s.name not in self.paused]

    async def _dispatch(self, now: float) -> float:
        """Start every due delivery a subscriber has room for; return how long to sleep.

        One trip to the DB thread per turn (pauses, due deliveries, the next
        due time): the worker turns after every batch of outcomes, and three
        hand-offs a turn were a visible share of a busy delivery run.
        """
        written = set(self._pause_written)  # a read issued now is sure to show these
        wanted = [
            (s.name, s.max_in_flight, set(self.in_flight.get(s.name, ())))
            for s in self.subscribers.values()
        ]
        view: tuple[dict[str, str], dict[str, list[DueDelivery]], float | None] = await self.db(
            _dispatch_view, wanted, set(self._pausing), now
        )
        stored, due, next_due = view
        self._settle_paused(stored, written)
        for sub in self._active():  # a pause that began during the read starts nothing
            for delivery in due.get(sub.name, ()):
                self._start(sub, delivery)
        # a subscriber with no free slot is woken by its own completions (`_flush`)
        if next_due is None:
            return IDLE_WAKE
        return min(IDLE_WAKE, max(next_due - now, MIN_WAKE))

    async def _refresh_paused(self) -> None:
        """Pauses from the DB (`pollhook resume` clears them there), plus our own new ones.

        A read issued before `_pause`'s write completed may not show it; without
        `_pausing` it would un-pause the subscriber for a round of attempts.
        """
        written = set(self._pause_written)  # a read issued now is sure to show these
        stored: dict[str, str] = await self.db(Store.paused_subscribers)
        self._settle_paused(stored, written)

    def _settle_paused(self, stored: dict[str, str], written: set[str]) -> None:
        for name in written:
            self._pausing.pop(name, None)
        self._pause_written -= written
        self.paused = {**stored, **self._pausing}

    def _start(
        self, sub: Subscriber, delivery: DueDelivery, limit: bool = False
    ) -> asyncio.Task[None]:
        self.in_flight.setdefault(sub.name, set()).add(delivery.id)
        task = asyncio.create_task(self._attempt(sub, delivery, limit))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    async def _attempt(self, sub: Subscriber, delivery: DueDelivery, limit: bool) -> None:
        started = time.monotonic()
        try:
            if limit:  # run --once starts everything at once; keep the per-subscriber cap
                sem = self._once_limits.setdefault(sub.name, asyncio.Semaphore(sub.max_in_flight))
                async with sem:
                    outcome = await attempt(self.client, sub, delivery)
            else:
                outcome = await attempt(self.client, sub, delivery)
            if outcome.status_code == 410:
                await self._pause(sub)
        except Exception as exc:  # a bug here must not leave the delivery in flight forever
            log.exception("subscriber=%s event=%s attempt crashed", sub.name, delivery.event_id)
            duration_ms = (time.monotonic() - started) * 1000
            error = f"internal error: {describe_error(exc)}"
            outcome = _decide(sub, delivery, None, error, None, None, duration_ms)
        self._outcomes.append(outcome)
        self._outcome_ready.set()

    async def _pause(self, sub: Subscriber) -> None:
        if sub.name in self.paused:
            return
        reason = "receiver answered 410 Gone"
        self.paused[sub.name] = self._pausing[sub.name] = reason
        await self.db(Store.pause_subscriber, sub.name, reason, time.time())
        self._pause_written.add(sub.name)
        log.warning(
            "subscriber=%s paused: %s; its deliveries are kept. Resume with"
            " `pollhook resume %s`", sub.name, reason, sub.name,
        )  # fmt: skip

    async def _flush_forever(self) -> None:
        while True:
            await self._outcome_ready.wait()
            try:
                await self._flush()
            except sqlite3.Error as exc:  # locked, full: keep the batch, try again shortly
                log.error("could not record %d delivery outcomes (state file: %s); retrying",
                          len(self._outcomes), exc)  # fmt: skip
                await asyncio.sleep(IDLE_WAKE)
            except Exception:  # a bug: the same, with the traceback
                log.exception("could not record delivery outcomes; retrying")
                await asyncio.sleep(IDLE_WAKE)

    async def _flush(self) -> None:
        self._outcome_ready.clear()
        batch, self._outcomes = self._outcomes, []
        if not batch:
            return
        try:
            await self.db(Store.record_outcomes, batch)
        except Exception:  # rolled back (not a cancel: the DB thread finishes those writes)
            self._outcomes[:0] = batch  # not recorded: the deliveries stay in flight until it is
            self._outcome_ready.set()
            raise
        for outcome in batch:
            self.in_flight.get(outcome.subscriber, set()).discard(outcome.delivery_id)
            _log_failure(outcome)
            _count(outcome)
        _log_delivered(batch)
        self.wake()


def _dispatch_view(
    store: Store, wanted: list[tuple[str, int, set[int]]], pausing: set[str], now: float
) -> tuple[dict[str, str], dict[str, list[DueDelivery]], float | None]:
    """On the DB thread: pauses, each subscriber's due deliveries, the next due time.

    `wanted` is (subscriber, max in flight, ids in flight). The next due time
    covers only subscribers left with a free slot, skipping every delivery
    that is (or is about to be) in flight.
    """
    paused = store.paused_subscribers()
    due: dict[str, list[DueDelivery]] = {}
    ready: list[str] = []
    open_ids: set[int] = set()
    for name, limit, flying in wanted:
        if name in paused or name in pausing:
            continue
        free = limit - len(flying)
        due[name] = store.due_deliveries(name, now, free, flying) if free > 0 else []
        if len(flying) + len(due[name]) < limit:
            ready.append(name)
            open_ids |= flying | {d.id for d in due[name]}
    return paused, due, store.next_due_at(ready, open_ids)


async def attempt(client: aiohttp.ClientSession, sub: Subscriber, delivery: DueDelivery) -> Outcome:
    """POST one delivery and decide what happens next. Never raises for receiver faults."""
    timestamp = int(time.time())
    # header names are case-insensitive: a configured `Webhook-Id` must not ride along
    # next to ours as a second value, so the reserved names are dropped in any case
    headers = {k: v for k, v in sub.headers.items() if not _reserved(k)}
    headers.update(
        {
            "content-type": "application/json",
            "user-agent": USER_AGENT,
            "webhook-id": delivery.event_id,
            "webhook-timestamp": str(timestamp),
        }
    )
    if sub.secrets:
        headers["webhook-signature"] = signature_header(
            sub.secrets, delivery.event_id, timestamp, delivery.body
        )
    started = time.monotonic()
    status: int | None = None
    body: str | None = None
    error: str | None = None
    retry_after: float | None = None
    try:
        async with asyncio.timeout(sub.timeout):
            status, body, retry_after, location = await _post(
                client, sub.url, delivery.body, headers
            )
        if 300 <= status < 400:
            error = f"redirect to {location or '?'} not followed"
        elif not 200 <= status < 300:
            error = f"HTTP {status}"
    except TimeoutError:
        error = f"timed out after {sub.timeout:g}s"
    except Exception as exc:  # refused, reset, malformed answer...: all retried (outpost #314)
        error = describe_error(exc)
    duration_ms = (time.monotonic() - started) * 1000
    return _decide(sub, delivery, status, error, body, retry_after, duration_ms)


TEST_EVENT = "pollhook.test"


async def send_test(client: aiohttp.ClientSession, sub: Subscriber) -> Outcome:
    """`pollhook send-test`: one `pollhook.test` event through `attempt`, recorded nowhere.

    The same path as every delivery (headers, signature, timeout, no redirects),
    so what the receiver sees is what a real change will look like.
    """
    now = time.time()
    data = {"subscriber": sub.name, "message": "a test from `pollhook send-test`; nothing changed"}
    body = event_body(TEST_EVENT, now, data)
    return await attempt(client, sub, DueDelivery(0, new_event_id(now), sub.name, 0, body, now))


_RESERVED = frozenset({"content-type", "content-length", "transfer-encoding", "host"})


def _reserved(name: str) -> bool:
    """Headers pollhook owns: the Standard Webhooks ones and the body's framing."""
    lower = name.lower()
    return lower.startswith("webhook-") or lower in _RESERVED


async def _post(
    client: aiohttp.ClientSession, url: str, body: bytes, headers: dict[str, str]
) -> tuple[int, str, float | None, str | None]:
    """POST the stored bytes, never following a redirect; keep the answer's first 4 KB.

    The rest of a longer answer is not read: its connection is closed instead of reused.
    """
    async with client.post(url, data=body, headers=headers, allow_redirects=False) as r:
        kept = b""
        while len(kept) < RESPONSE_KEEP:
            chunk = await r.content.read(RESPONSE_KEEP - len(kept))
            if not chunk:
                break
            kept += chunk
        retry_after = parse_retry_after(r.headers.get("retry-after"), time.time())
        return (
            r.status,
            kept.decode("utf-8", errors="replace"),
            retry_after,
            r.headers.get("location"),
        )


def _decide(
    sub: Subscriber, delivery: DueDelivery, status: int | None, error: str | None,
    body: str | None, retry_after: float | None, duration_ms: float,
) -> Outcome:  # fmt: skip
    """Delivered, paused (410: the attempt does not count), retried later, or dead."""
    now = time.time()
    attempts = delivery.attempts + 1
    new_status, next_at = "delivered", None
    if status == 410:
        new_status, attempts, next_at = "pending", delivery.attempts, now
    elif error is not None:
        delay = delivery_delay(sub.retry, attempts, retry_after)
        new_status = "dead" if delay is None else "pending"
        next_at = None if delay is None else now + delay
    return Outcome(
        delivery_id=delivery.id, at=now, status_code=status, duration_ms=duration_ms, error=error,
        response_body=body, new_status=new_status, attempts=attempts, next_attempt_at=next_at,
        subscriber=sub.name, event_id=delivery.event_id, detected_at=delivery.detected_at,
    )  # fmt: skip


def _count(o: Outcome) -> None:
    """Prometheus: attempts by outcome, and detection-to-delivery latency."""
    outcome = "failed" if o.new_status == "pending" else o.new_status
    metrics.DELIVERIES.labels(o.subscriber, outcome).inc()
    if o.new_status == "delivered" and o.detected_at:
        metrics.DELIVERY_SECONDS.labels(o.subscriber).observe(max(o.at - o.detected_at, 0.0))


def _log_delivered(batch: list[Outcome]) -> None:
    """One INFO line per subscriber and batch: thousands a second would flood the journal.

    journald drops a service's messages past its rate limit (10,000 per 30 s by
    default), which would hide the warnings that matter. A batch of one, or any
    batch at `--log-level debug`, is logged delivery by delivery.
    """
    delivered: dict[str, list[Outcome]] = {}
    for o in batch:
        if o.new_status == "delivered":
            delivered.setdefault(o.subscriber, []).append(o)
    each = log.isEnabledFor(logging.DEBUG)
    for sub, done in delivered.items():
        if len(done) > 1 and not each:
            log.info("subscriber=%s delivered %d webhooks", sub, len(done))
            continue
        for o in done:
            log.info("subscriber=%s event=%s delivered (HTTP %s, %.0fms)",
                     sub, o.event_id, o.status_code, o.duration_ms)  # fmt: skip


def _log_failure(o: Outcome) -> None:
    """Dead deliveries and failed attempts, one line each (successes: `_log_delivered`)."""
    if o.new_status == "dead":
        log.error("subscriber=%s event=%s dead after %d attempts: %s",
                  o.subscriber, o.event_id, o.attempts, o.error)  # fmt: skip
    elif o.new_status == "pending" and o.status_code != 410:
        wait = (o.next_attempt_at or o.at) - o.at
        log.warning("subscriber=%s event=%s attempt %d failed: %s; retry in %.1fs",
                    o.subscriber, o.event_id, o.attempts, o.error, wait)  # fmt: skip
