"""When each source is polled: APScheduler interval jobs with spread and backoff.

Each source's first poll gets a fixed offset inside its interval derived
from its name (as Prometheus spreads scrapes), so a restart never fires every
source at once. A failing source is pushed back by `retry.source_backoff`.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Awaitable, Callable, Iterable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from .config import Source
from .poll import PollResult
from .retry import source_backoff

if TYPE_CHECKING:
    from apscheduler.schedulers.asyncio import AsyncIOScheduler

log = logging.getLogger("pollhook.schedule")
logging.getLogger("apscheduler").setLevel(logging.ERROR)


def spread_offset(name: str, interval: float) -> float:
    """A stable offset in [0, interval) for `name`."""
    digest = hashlib.sha256(name.encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 * interval


class PollSchedule:
    """One interval job per source, reconfigurable on reload."""

    def __init__(self, run_poll: Callable[[str], Awaitable[PollResult]]) -> None:
        self.run_poll = run_poll
        self._scheduler: AsyncIOScheduler | None = None
        self.sources: dict[str, Source] = {}

    @property
    def scheduler(self) -> AsyncIOScheduler:
        """Made on first use: `run --once` never schedules, and importing APScheduler is ~40 ms."""
        if self._scheduler is None:
            from apscheduler.schedulers.asyncio import AsyncIOScheduler

            self._scheduler = AsyncIOScheduler(timezone=UTC)
        return self._scheduler

    def start(self, sources: Iterable[Source]) -> None:
        self.scheduler.start()
        self.apply(sources)

    def apply(self, sources: Iterable[Source]) -> None:
        """Add new sources, drop removed ones, reschedule those whose interval changed."""
        wanted = {s.name: s for s in sources}
        for name in list(self.sources):
            if name not in wanted:
                self.scheduler.remove_job(name)
                del self.sources[name]
                log.info("source=%s removed", name)
        for name, source in wanted.items():
            old = self.sources.get(name)
            self.sources[name] = source
            if old is not None and (old.interval, old.jitter) == (source.interval, source.jitter):
                continue
            if old is not None:
                self.scheduler.remove_job(name)
            self._add(source)

    def _add(self, source: Source) -> None:
        now = datetime.now(UTC)
        first = now + timedelta(seconds=spread_offset(source.name, source.interval))
        self.scheduler.add_job(
            self._job, "interval", args=[source.name], id=source.name,
            seconds=source.interval, start_date=first, next_run_time=first,
            jitter=source.jitter or None,  # each later poll: up to `jitter` seconds late
            max_instances=1, coalesce=True, misfire_grace_time=None,
        )  # fmt: skip

    async def _job(self, name: str) -> None:
        result = await self.run_poll(name)
        source = self.sources.get(name)
        if result.ok or source is None or self.scheduler.get_job(name) is None:
            return
        delay = source_backoff(source.interval, result.failures, result.retry_after)
        self.scheduler.modify_job(name, next_run_time=datetime.now(UTC) + timedelta(seconds=delay))
        log.info("source=%s next poll in %.1fs (backing off)", name, delay)

    def next_run(self, name: str) -> datetime | None:
        job = self.scheduler.get_job(name)
        return job.next_run_time if job else None

    def shutdown(self) -> None:
        if self._scheduler is not None and self._scheduler.running:
            self._scheduler.shutdown(wait=False)
