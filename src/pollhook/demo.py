"""`pollhook demo`: the whole product in one offline terminal session.

A local "legacy" ticket API that only answers when asked changes every few
seconds; pollhook polls it with a packaged copy of the repository's
sources.yaml (`-c` for another file); a local
receiver verifies each Standard Webhooks signature and prints what arrived.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import sys
import tempfile
import time
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from .config import Config, load_config
from .daemon import Daemon
from .errors import ConfigError, PollhookError

STEP_SECONDS = 3.0
_TITLES = ["VPN drops every hour", "Invoice PDF is blank", "Badge reader offline",
           "Password reset mail late", "Coffee machine API 500s"]  # fmt: skip


class LegacyApi:
    """The upstream: a ticket list that a script edits every few seconds."""

    def __init__(self) -> None:
        self.tickets: dict[int, dict[str, Any]] = {
            1: _ticket(1, "Printer jams on page 2", "open"),
            2: _ticket(2, "Cannot log in to CRM", "open"),
            3: _ticket(3, "Laptop battery swollen", "in_progress"),
        }
        self.next_id = 4
        self.changes = 0
        self.polls = 0

    async def handle(self, request: web.Request) -> web.Response:
        self.polls += 1
        body = {"tickets": list(self.tickets.values()), "generated_at": time.time()}
        return web.Response(body=orjson.dumps(body), content_type="application/json")

    def step(self, n: int) -> str:
        """Apply the n-th scripted change and describe it."""
        actions: list[Callable[[], str]] = [self._create, self._update, self._touch, self._delete]
        return actions[n % len(actions)]()

    def _create(self) -> str:
        tid = self.next_id
        self.next_id += 1
        self.tickets[tid] = _ticket(tid, _TITLES[tid % len(_TITLES)], "open")
        self.changes += 1
        return f"ticket {tid} created: {self.tickets[tid]['title']!r}"

    def _update(self) -> str:
        ticket = self.tickets[min(self.tickets)]
        old = ticket["status"]
        ticket["status"] = {"open": "in_progress", "in_progress": "closed"}.get(old, "open")
        ticket["updated_at"] = _now()
        self.changes += 1
        return f"ticket {ticket['id']} status {old} -> {ticket['status']}"

    def _touch(self) -> str:
        ticket = self.tickets[max(self.tickets)]
        ticket["updated_at"] = _now()
        return (
            f"ticket {ticket['id']}: only updated_at changed (ignored by sources.yaml: no webhook)"
        )

    def _delete(self) -> str:
        tid = min(self.tickets)
        del self.tickets[tid]
        self.changes += 1
        return f"ticket {tid} deleted"


class Receiver:
    """The subscriber: verifies every signature with the reference library."""

    def __init__(self, secret: str | None) -> None:
        self.webhook = Webhook(secret) if secret else None
        self.received = 0
        self.verified = 0
        self.ids: set[str] = set()

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.received += 1
        mark = "unsigned"
        if self.webhook is not None:
            try:
                self.webhook.verify(body, dict(request.headers))
                self.verified += 1
                mark = "signature ok"
            except WebhookVerificationError as exc:
                mark = f"BAD SIGNATURE ({exc})"
        self.ids.add(request.headers.get("webhook-id", ""))
        event = orjson.loads(body)
        _say("receiver", f"{event['type']:<13} {_summary(event)}  [{mark}]")
        return web.Response(status=204)


def run_demo(duration: float, config_path: Path | None = None) -> int:
    """Entry point of `pollhook demo`; returns the exit code."""
    config = _demo_config(config_path)
    try:
        return asyncio.run(_main(config, duration))
    except OSError as exc:
        raise PollhookError(f"demo cannot start its local servers: {exc}") from None


def _demo_config(config_path: Path | None) -> Config:
    """The packaged demo config, not ./sources.yaml: that one becomes the user's own."""
    if config_path is not None:
        return load_config(config_path)
    bundled = resources.files("pollhook").joinpath("demo_sources.yaml")
    with resources.as_file(bundled) as path:
        return load_config(path)


async def _main(config: Config, duration: float) -> int:
    source = config.sources[0]
    subscriber = config.subscribers[0] if config.subscribers else None
    if subscriber is None:
        raise ConfigError(f"{config.path}: the demo needs a subscriber")
    api, receiver = LegacyApi(), Receiver(subscriber.secrets[0] if subscriber.secrets else None)
    runners = [
        await _serve(source.url, api.handle, "GET"),
        await _serve(subscriber.url, receiver.handle, "POST"),
    ]
    _intro(source.url, subscriber.url, source.interval)
    _quiet_logs()
    with tempfile.TemporaryDirectory(prefix="pollhook-demo-") as tmp:
        try:
            async with Daemon(config, Path(tmp) / "demo.db", db_fixed=True) as daemon:
                stepper = asyncio.create_task(_script(api, duration))
                runner = asyncio.create_task(daemon.run())
                await asyncio.wait({stepper, runner}, return_when=asyncio.FIRST_COMPLETED)
                if not runner.done():  # the script ended: let the last change arrive
                    await _settle(receiver, api)
                stepper.cancel()
                daemon.stop()
                await runner
        finally:
            for r in runners:
                await r.cleanup()
    return _outro(api, receiver)


async def _serve(url: str, handler: Any, method: str) -> web.AppRunner:
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    app = web.Application()
    app.router.add_route(method, parts.path or "/", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, parts.hostname, parts.port).start()
    return runner


async def _script(api: LegacyApi, duration: float) -> None:
    await asyncio.sleep(STEP_SECONDS)
    deadline = time.monotonic() + duration if duration > 0 else float("inf")
    for n in itertools.count():
        if time.monotonic() + STEP_SECONDS > deadline:
            return
        _say("upstream", api.step(n))
        await asyncio.sleep(STEP_SECONDS)


async def _settle(receiver: Receiver, api: LegacyApi, timeout: float = 10.0) -> None:
    """Give the last change time to arrive before stopping."""
    deadline = time.monotonic() + timeout
    while receiver.received < api.changes and time.monotonic() < deadline:
        await asyncio.sleep(0.1)


def _intro(api_url: str, hook_url: str, interval: float) -> None:
    print(
        "pollhook demo: a legacy API that only answers when asked, turned into webhooks.\n"
        f"  upstream  {api_url}  (its tickets change every {STEP_SECONDS:g}s)\n"
        f"  pollhook  polls it every {interval:g}s, diffs tickets by id, stores state in SQLite\n"
        f"  receiver  {hook_url}  (verifies each Standard Webhooks signature)\n"
        "The first poll is a silent baseline; then every change becomes one signed webhook.\n",
        flush=True,
    )


def _outro(api: LegacyApi, receiver: Receiver) -> int:
    print(
        f"\nsummary: {api.changes} changes upstream, {receiver.received} webhooks received, "
        f"{receiver.verified} signatures verified, {api.polls} polls.\n"
        "Next: edit sources.yaml to point at your own API, then `pollhook run`.",
        flush=True,
    )
    ok = receiver.received >= api.changes and receiver.verified == receiver.received
    return 0 if ok else 1


class _DemoFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return f"{time.strftime('%H:%M:%S')}  {'pollhook':<9}| {record.getMessage()}"


def _quiet_logs() -> None:
    """Show pollhook's own story (events, deliveries, problems), not every poll."""
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(_DemoFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    logging.getLogger("aiohttp").setLevel(logging.WARNING)


def _say(who: str, text: str) -> None:
    print(f"{time.strftime('%H:%M:%S')}  {who:<9}| {text}", flush=True)


def _summary(event: dict[str, Any]) -> str:
    data = event["data"]
    item = data.get("item") or data.get("previous") or {}
    changes = data.get("changes") or []
    what = ", ".join(f"{c['path'].lstrip('/')}={c.get('value')!r}" for c in changes)
    return f"{data['source']}/{data['key']} {item.get('title', '')!r} {what}".rstrip()


def _ticket(tid: int, title: str, status: str) -> dict[str, Any]:
    return {"id": tid, "title": title, "status": status, "updated_at": _now()}


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
