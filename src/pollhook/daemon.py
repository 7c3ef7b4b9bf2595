"""The daemon's lifecycle: one place owns the store, client, scheduler and worker.

States: starting → running → stopping. SIGTERM/SIGINT stop it (in-flight
polls are abandoned, since they have written nothing, and in-flight deliveries
get a short grace, then stay pending for the next start); SIGHUP reloads the
config, keeping the old one if the new file is invalid.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sqlite3
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from types import TracebackType
from typing import Any

import aiohttp

from . import metrics
from .config import Config, load_config, state_path
from .deliver import DeliveryWorker
from .errors import ConfigError
from .fetch import host_key
from .metrics import MetricsServer
from .notify import Notifier
from .poll import Poller, PollResult
from .report import pending_count, scrape_snapshot
from .request import session
from .schedule import PollSchedule
from .store import Store

log = logging.getLogger("pollhook.daemon")

STOP_GRACE = 5.0
STATUS_EVERY = 10.0
PRUNE_EVERY = 3600.0
FLUSH_EVERY = 5.0  # unchanged polls' last-poll times are written in batches this often
STUCK_AFTER = 30.0  # the delivery loop turns every second; this long without a turn is stuck


class StoreRunner:
    """Runs Store methods on one dedicated thread: serial access, a free event loop."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pollhook-db")

    async def __call__(self, method: Callable[..., Any], *args: Any) -> Any:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, method, self.store, *args)

    def close(self) -> None:
        self.executor.shutdown(wait=True)
        self.store.close()


class Daemon:
    """`async with Daemon(config, db_path) as d: await d.run()`."""

    def __init__(
        self, config: Config, db_path: Path, client: aiohttp.ClientSession | None = None,
        metrics_listen: tuple[str, int] | None = None, db_fixed: bool = False,
    ) -> None:  # fmt: skip
        self.config = config
        self.db_fixed = db_fixed  # `--db`: the config's `state:` does not choose the file
        self.metrics_listen = metrics_listen
        self.metrics: MetricsServer | None = None
        self.db_path = db_path
        self.state = "starting"
        self._given_client = client
        self.client: aiohttp.ClientSession  # made in __aenter__, inside the running loop
        self.stopping = asyncio.Event()
        self.poll_tasks: set[asyncio.Task[PollResult]] = set()
        self.db: StoreRunner
        self.poller: Poller
        self.worker: DeliveryWorker
        self.schedule: PollSchedule
        self.notifier = Notifier()

    async def __aenter__(self) -> Daemon:
        store = await asyncio.to_thread(Store, self.db_path)
        try:
            store.lock()
            store.check_writable()
        except BaseException:
            store.close()
            raise
        self.db = StoreRunner(store)
        self.client = self._given_client or session()  # one pool for polls and deliveries
        self.worker = DeliveryWorker(self.db, self.client, self.config.subscribers)
        self.poller = Poller(self.db, self.client, self.config, on_events=self.worker.wake)
        self.schedule = PollSchedule(self._poll)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.state = "stopping"
        self.notifier.stopping()
        self.schedule.shutdown()
        for task in self.poll_tasks:
            task.cancel()
        if self.poll_tasks:
            await asyncio.wait(self.poll_tasks, timeout=STOP_GRACE)
        await self.worker.close(grace=STOP_GRACE)
        await self._flush()
        await self.poller.aclose()  # the clients of sources with their own TLS settings
        if self._given_client is None:
            await self.client.close()
        await asyncio.to_thread(self.db.close)
        self.notifier.close()
        if exc is None or isinstance(exc, asyncio.CancelledError):
            log.info("stopped cleanly")
        else:
            log.error("stopped after an error: %s", exc)

    # -- running ----------------------------------------------------------------

    async def run(self) -> None:
        """Poll and deliver until SIGTERM/SIGINT."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop)
        loop.add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(self.reload()))
        if self.metrics_listen:  # first: it turns the metrics on, and polls must be counted
            host, port = self.metrics_listen
            self.metrics = MetricsServer(host, port, self._scrape, self._alive)
            await self.metrics.start()
        self.schedule.start(self.config.sources)
        self.state = "running"
        log.info(
            "running: %d sources, %d subscribers, state %s",
            len(self.config.sources), len(self.config.subscribers), self.db_path,
        )  # fmt: skip
        background = [
            asyncio.create_task(self._watch()),
            asyncio.create_task(self._prune_forever()),
            asyncio.create_task(self._flush_forever()),
        ]
        try:
            await self.worker.run(self.stopping)
        finally:
            for task in background:
                task.cancel()
            if self.metrics:
                await self.metrics.stop()
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)

    async def run_once(self) -> list[PollResult]:
        """Poll every source now, then make the first attempt of every due delivery.

        Each host gets `max_per_host` workers taking its sources in turn, rather
        than a task per source queued on the host's semaphore: the same
        concurrency for about a third less CPU in a 304 round (BENCHMARKS.md).
        """
        self.state = "running"
        queues: defaultdict[str, list[str]] = defaultdict(list)
        for source in self.config.sources:
            queues[host_key(source.url)].append(source.name)
        results: dict[str, PollResult] = {}

        async def worker(names: Iterator[str]) -> None:
            for name in names:
                if self.stopping.is_set():
                    return
                results[name] = await self._poll(name)

        workers = []
        for names in queues.values():
            turn = iter(names)
            workers += [worker(turn) for _ in range(min(len(names), self.config.http.max_per_host))]
        polls = asyncio.gather(*workers)
        with self._stop_on_signals(polls):
            with contextlib.suppress(asyncio.CancelledError):
                await polls
            await self._flush()
            if not self.stopping.is_set():
                await self.worker.drain_due()
        stopped = PollResult(
            "", ok=False, error="stopped by a signal before this source was polled"
        )
        return [results.get(s.name) or replace(stopped, source=s.name) for s in self.config.sources]

    @contextlib.contextmanager
    def _stop_on_signals(self, polls: asyncio.Future[Any]) -> Iterator[None]:
        """`run --once`: SIGTERM/SIGINT cancel the polls (and their parsing workers) at once."""
        loop = asyncio.get_running_loop()

        def stop() -> None:
            self.stop()
            polls.cancel()

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop)
        try:
            yield
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)

    async def _watch(self) -> None:
        """READY once, then STATUS lines and WATCHDOG pings while the parts are alive."""
        self.notifier.ready(await self._status_line())
        tick = min(self.notifier.watchdog_interval or STATUS_EVERY, STATUS_EVERY * 2) / 2
        last_status = time.monotonic()
        while True:
            await asyncio.sleep(tick)
            if not await self._alive():
                log.error("a part of the daemon is stuck: withholding the watchdog ping")
                continue
            if self.notifier.watchdog_interval:
                self.notifier.watchdog()
            if time.monotonic() - last_status >= STATUS_EVERY:
                self.notifier.status(await self._status_line())
                last_status = time.monotonic()

    async def _alive(self) -> bool:
        """The scheduler runs, the delivery loop turns, the store thread answers."""
        if not self.schedule.scheduler.running:
            return False
        if time.monotonic() - self.worker.heartbeat > STUCK_AFTER:
            return False
        try:
            await asyncio.wait_for(self.db(Store.source_state, ""), timeout=5.0)
        except TimeoutError:
            return False
        metrics.HEARTBEAT.set(time.time())
        return True

    async def _prune_forever(self) -> None:
        """Retention: drop delivered (and, later, dead) records so the file stays flat."""
        while True:
            keep = self.config.retention
            await asyncio.sleep(min(PRUNE_EVERY, max(keep.delivered / 2, 0.5)))
            now = time.time()
            try:
                removed = await self.db(Store.prune, now - keep.delivered, now - keep.dead)
            except Exception:  # e.g. disk full: pruning is retried next round
                log.exception("retention: pruning failed")
                continue
            if removed:
                log.info("retention: pruned %d finished deliveries", removed)

    async def _flush_forever(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_EVERY)
            await self._flush()

    async def _flush(self) -> None:
        """Batched last-poll times; only informational, so a failure is logged, not fatal."""
        try:
            await self.poller.flush()
        except sqlite3.Error as exc:
            log.warning("could not record the last unchanged polls (state file: %s)", exc)

    async def _scrape(self) -> dict[str, Any]:
        sources = [s.name for s in self.config.sources]
        subscribers = [s.name for s in self.config.subscribers]
        snapshot: dict[str, Any] = await self.db(scrape_snapshot, sources, subscribers)
        return snapshot

    async def _status_line(self) -> str:
        pending = await self.db(pending_count)
        return f"{len(self.config.sources)} sources, {pending} deliveries pending"

    def stop(self) -> None:
        if not self.stopping.is_set():
            log.info("stopping")
            self.stopping.set()

    async def reload(self) -> None:
        """SIGHUP: apply a new config, or keep the old one if the file is invalid."""
        try:
            config = await asyncio.to_thread(load_config, self.config.path)
        except ConfigError as exc:
            log.error("reload refused, keeping the previous configuration: %s", exc)
            return
        wanted = state_path(config)
        if not self.db_fixed and wanted.resolve() != self.db_path.resolve():
            log.warning(
                "reload: 'state' now names %s, but this daemon runs on %s until it restarts",
                wanted, self.db_path,
            )  # fmt: skip
        self.config = config
        self.poller.reconfigure(config)
        self.worker.reconfigure(config.subscribers)
        self.schedule.apply(config.sources)
        log.info(
            "reloaded: %d sources, %d subscribers", len(config.sources), len(config.subscribers)
        )

    async def _poll(self, name: str) -> PollResult:
        source = self.config.source(name)
        if source is None or self.stopping.is_set():
            return PollResult(name, ok=True)
        task = asyncio.ensure_future(self.poller.poll(source))
        self.poll_tasks.add(task)
        task.add_done_callback(self.poll_tasks.discard)
        try:
            return await task
        except asyncio.CancelledError:
            return PollResult(name, ok=False, error="cancelled")
        except sqlite3.Error as exc:  # locked, full, read-only: the transaction wrote nothing
            log.error(
                "source=%s poll not recorded: state file %s: %s; nothing was written, the next"
                " poll tries again", name, self.db_path, exc,
            )  # fmt: skip
            return PollResult(name, ok=False, error=f"state file: {exc}")
        except Exception as exc:  # a bug must not kill the daemon; record it per source
            log.exception("source=%s poll crashed", name)
            return PollResult(name, ok=False, error=f"internal error: {exc}")
