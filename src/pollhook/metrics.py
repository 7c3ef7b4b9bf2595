"""Prometheus metrics and /healthz on an optional loopback listener.

Counters and histograms are updated where things happen (poll, deliver);
outbox depth, the oldest pending age and the items tracked are read from
SQLite at scrape time, so they are right even after a restart.

Until `enable()` (called when `--metrics` starts the listener) every metric is
a no-op stand-in: `run --once` and a daemon without `--metrics` never import
prometheus_client or aiohttp.web. Callers read `metrics.POLLS` and the rest
at update time, so they see the real metrics once enabled.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from .errors import ListenError

if TYPE_CHECKING:
    from aiohttp import web
    from prometheus_client import Counter, Gauge, Histogram

log = logging.getLogger("pollhook.metrics")


class _Off:
    """Stands in for a metric until `enable()`: labels and updates do nothing."""

    def labels(self, *values: str) -> _Off:
        return self

    def inc(self, amount: float = 1) -> None:
        pass

    def set(self, value: float) -> None:
        pass

    def observe(self, amount: float) -> None:
        pass

    def clear(self) -> None:
        pass


_OFF = _Off()
POLLS: Counter | _Off = _OFF
POLL_SECONDS: Histogram | _Off = _OFF
ITEMS: Gauge | _Off = _OFF
EVENTS: Counter | _Off = _OFF
DELIVERIES: Counter | _Off = _OFF
DELIVERY_SECONDS: Histogram | _Off = _OFF
OUTBOX: Gauge | _Off = _OFF
OLDEST: Gauge | _Off = _OFF
HEARTBEAT: Gauge | _Off = _OFF


def enable() -> None:
    """Register the real metrics in prometheus_client's default registry (once per process)."""
    global POLLS, POLL_SECONDS, ITEMS, EVENTS, DELIVERIES, DELIVERY_SECONDS, OUTBOX, OLDEST
    global HEARTBEAT
    if not isinstance(POLLS, _Off):
        return
    from prometheus_client import Counter, Gauge, Histogram

    from . import process_metrics

    process_metrics.install()
    POLLS = Counter("pollhook_polls_total", "Polls by source and outcome", ["source", "outcome"])
    POLL_SECONDS = Histogram(
        "pollhook_poll_duration_seconds", "Poll duration (fetch, parse, diff, commit)", ["source"],
        buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
    )  # fmt: skip
    ITEMS = Gauge("pollhook_items_tracked", "Items tracked per source", ["source"])
    EVENTS = Counter(
        "pollhook_events_total", "Events detected by source and type", ["source", "type"]
    )
    DELIVERIES = Counter(
        "pollhook_deliveries_total",
        "Delivery attempts by subscriber and outcome",
        ["subscriber", "outcome"],
    )
    DELIVERY_SECONDS = Histogram(
        "pollhook_delivery_latency_seconds", "Event detection to successful delivery", ["subscriber"],
        buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5, 30, 300, 3600, 86400),
    )  # fmt: skip
    OUTBOX = Gauge("pollhook_outbox_pending", "Deliveries waiting to be made", ["subscriber"])
    OLDEST = Gauge("pollhook_outbox_oldest_pending_seconds", "Age of the oldest pending delivery")
    HEARTBEAT = Gauge(
        "pollhook_last_heartbeat_timestamp_seconds", "Last liveness check that passed"
    )


Refresh = Callable[[], Awaitable[dict[str, Any]]]
Health = Callable[[], Awaitable[bool]]


class MetricsServer:
    """`/metrics` in the Prometheus text format, `/healthz` 200 or 503."""

    def __init__(self, host: str, port: int, refresh: Refresh, healthy: Health) -> None:
        enable()  # before any poll can run: the daemon makes this before scheduling
        self.host, self.port = host, port
        self.refresh, self.healthy = refresh, healthy
        self.runner: web.AppRunner | None = None

    async def start(self) -> None:
        from aiohttp import web

        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        try:
            await web.TCPSite(self.runner, self.host, self.port).start()
        except OSError as exc:
            await self.runner.cleanup()
            self.runner = None
            reason = exc.strerror or str(exc)
            raise ListenError(
                f"--metrics: cannot listen on {self.host}:{self.port}: {reason}"
            ) from None
        log.info("metrics on http://%s:%d/metrics", self.host, self.port)

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    async def _metrics(self, request: web.Request) -> web.Response:
        from aiohttp import web
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        state = await self.refresh()
        for gauge, key in ((OUTBOX, "pending"), (ITEMS, "items")):
            gauge.clear()  # names no longer configured (or pending) go away
            for name, value in state[key].items():
                gauge.labels(name).set(value)
        oldest = state["oldest"]
        OLDEST.set(time.time() - oldest if oldest else 0)
        body = generate_latest()
        return web.Response(body=body, headers={"content-type": CONTENT_TYPE_LATEST})

    async def _healthz(self, request: web.Request) -> web.Response:
        from aiohttp import web

        if await self.healthy():
            return web.json_response({"status": "ok"})
        return web.json_response({"status": "stuck"}, status=503)
