#!/usr/bin/env python3
"""The benchmark's fast local upstream and webhook receivers: one aiohttp.web process.

Started by bench/run.py pinned to CPU 0; prints `{"port": N}` and serves on 127.0.0.1
until told to stop, its parent dies, or `--lifetime` seconds pass (bounded by design).
Bodies are prepared before a measurement (POST /control/...) so that serving one is
a dictionary lookup; uvloop is used when it is installed (the server must never be
the bottleneck: run.py records this process's CPU share next to every throughput).

Upstream documents
  GET /s/{i}      poll source i: `items` items (~200 B each), version `poll_version`;
                  between two versions exactly item 0 changes. ETag `"p{i}-{v}"` and
                  If-None-Match → 304 when `poll_etag` is on; no ETag at all when off.
  GET /big        one large document, `big_items` items; between consecutive versions
                  exactly 1% of items change. ETag honoured.
  GET /bulk/{i}   a fixed document of `bulk_items` items (backlog scenario). ETag honoured.
  GET /lat/{i}    latency source i (10 items, item 0 carries `change: v`); the first time
                  a version is served its monotonic time is recorded. ETag honoured.
Receivers (POST /hook on ports started by /control/receivers/start)
  count every request, unique webhook-ids, first/last arrival; in latency mode the
  body's data.source / data.item.change is recorded with the arrival time.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import time
from typing import Any

import orjson
from aiohttp import web

HOST = "127.0.0.1"
PAD = "lorem ipsum dolor sit amet " * 4  # ~110 bytes of filler per item


def poll_item(i: int, j: int, v: int) -> dict[str, Any]:
    return {
        "id": j,
        "title": f"ticket {i}-{j}",
        "status": "open" if j % 3 else "closed",
        "owner": f"user{j % 17}",
        "rev": v if j == 0 else 0,
        "body": PAD,
    }


def big_item(j: int, v: int) -> dict[str, Any]:
    # rev_j(v) grows by one exactly when v % 100 == j % 100: 1% of items per version
    return {
        "id": j,
        "name": f"record {j}",
        "status": "active" if j % 5 else "archived",
        "score": j % 1000,
        "rev": (v - j % 100 + 100) // 100,
        "body": PAD,
    }


def big_body(items: int, v: int) -> bytes:
    return orjson.dumps([big_item(j, v) for j in range(items)])


class State:
    def __init__(self) -> None:
        self.poll_version = 0
        self.poll_etag = False
        self.poll_bodies: dict[int, bytes] = {}
        self.big_version = 0
        self.big: bytes = b"[]"
        self.bulk_items = 10
        self.bulk: dict[int, bytes] = {}
        self.lat_versions: dict[int, int] = {}
        self.lat_served: dict[str, float] = {}
        self.counts: dict[str, int] = {}
        self.received = 0
        self.ids: set[str] = set()
        self.first: float | None = None
        self.last: float | None = None
        self.per_port: dict[int, int] = {}
        self.latency_mode = False
        self.arrivals: dict[str, float] = {}
        self.receivers: dict[int, web.AppRunner] = {}

    def count(self, what: str) -> None:
        self.counts[what] = self.counts.get(what, 0) + 1

    def prepare_poll(self, count: int, items: int, version: int) -> None:
        self.poll_version = version
        self.poll_bodies = {
            i: orjson.dumps([poll_item(i, j, version) for j in range(items)]) for i in range(count)
        }


S = State()


def conditional(request: web.Request, etag: str, body: bytes, kind: str) -> web.Response:
    if request.headers.get("If-None-Match") == etag:
        S.count(f"{kind}_304")
        return web.Response(status=304, headers={"ETag": etag})
    S.count(f"{kind}_200")
    return web.Response(body=body, content_type="application/json", headers={"ETag": etag})


async def poll_doc(request: web.Request) -> web.Response:
    i = int(request.match_info["i"])
    body = S.poll_bodies.get(i)
    if body is None:
        return web.Response(status=404)
    if S.poll_etag:
        return conditional(request, f'"p{i}-{S.poll_version}"', body, "poll")
    S.count("poll_200")
    return web.Response(body=body, content_type="application/json")


async def big_doc(request: web.Request) -> web.Response:
    return conditional(request, f'"b{S.big_version}"', S.big, "big")


async def bulk_doc(request: web.Request) -> web.Response:
    i = int(request.match_info["i"])
    if i not in S.bulk:
        S.bulk[i] = orjson.dumps(
            [{"id": f"{i}-{j}", "n": j, "body": PAD} for j in range(S.bulk_items)]
        )
    return conditional(request, f'"k{i}-{S.bulk_items}"', S.bulk[i], "bulk")


async def lat_doc(request: web.Request) -> web.Response:
    i = int(request.match_info["i"])
    v = S.lat_versions.get(i, 0)
    etag = f'"l{i}-{v}"'
    if request.headers.get("If-None-Match") == etag:
        S.count("lat_304")
        return web.Response(status=304, headers={"ETag": etag})
    items = [{"id": j, "change": v if j == 0 else 0, "body": PAD} for j in range(10)]
    key = f"lat{i}:{v}"
    if key not in S.lat_served:
        S.lat_served[key] = time.monotonic()
    S.count("lat_200")
    return web.Response(body=orjson.dumps(items), content_type="application/json", headers={"ETag": etag})


async def hook(request: web.Request) -> web.Response:
    body = await request.read()
    now = time.monotonic()
    S.received += 1
    port = request.transport.get_extra_info("sockname")[1] if request.transport else 0
    S.per_port[port] = S.per_port.get(port, 0) + 1
    if S.first is None:
        S.first = now
    S.last = now
    msg_id = request.headers.get("webhook-id")
    if msg_id:
        S.ids.add(msg_id)
    if S.latency_mode:
        with contextlib.suppress(Exception):
            data = orjson.loads(body)["data"]
            S.arrivals.setdefault(f"{data['source']}:{data['item']['change']}", now)
    return web.Response(status=204)


# ------------------------------------------------------------------------- control


async def control(request: web.Request) -> web.Response:
    what = request.match_info["what"]
    payload = await request.json() if request.can_read_body else {}
    out: dict[str, Any] = {"ok": True}
    if what == "poll":
        if "version" in payload:
            S.prepare_poll(payload["count"], payload["items"], payload["version"])
        S.poll_etag = bool(payload.get("etag", S.poll_etag))
        out["bytes"] = sum(len(b) for b in S.poll_bodies.values())
    elif what == "big":
        S.big_version = payload["version"]
        S.big = big_body(payload["items"], payload["version"])
        out["bytes"] = len(S.big)
    elif what == "bulk":
        S.bulk_items = payload["items"]
        S.bulk.clear()
    elif what == "lat_bump":
        i = payload["source"]
        S.lat_versions[i] = S.lat_versions.get(i, 0) + 1
        out["version"] = S.lat_versions[i]
    elif what == "receivers_start":
        out["ports"] = [await start_receiver(p) for p in payload.get("ports", [0] * payload.get("count", 1))]
        S.latency_mode = bool(payload.get("latency", False))
    elif what == "receivers_stop":
        for runner in S.receivers.values():
            await runner.cleanup()
        S.receivers.clear()
    elif what == "reset":
        S.counts.clear()
        S.received, S.ids, S.first, S.last = 0, set(), None, None
        S.per_port.clear()
        S.arrivals.clear()
        S.lat_served.clear()
    elif what == "stats":
        out.update(
            counts=S.counts, received=S.received, unique=len(S.ids), first=S.first, last=S.last,
            per_port={str(k): v for k, v in S.per_port.items()}, now=time.monotonic(),
        )  # fmt: skip
        if request.query.get("latency"):
            out.update(served=S.lat_served, arrivals=S.arrivals)
    else:
        return web.Response(status=404)
    return web.Response(body=orjson.dumps(out), content_type="application/json")


async def start_receiver(port: int) -> int:
    app = web.Application()
    app.router.add_post("/hook", hook)
    app.router.add_post("/hook/{n}", hook)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, HOST, port, backlog=1024, reuse_address=True)
    await site.start()
    actual = runner.addresses[0][1]
    S.receivers[actual] = runner
    return int(actual)


async def main(lifetime: float) -> None:
    app = web.Application(client_max_size=64 * 1024**2)
    app.router.add_get("/s/{i}", poll_doc)
    app.router.add_get("/big", big_doc)
    app.router.add_get("/bulk/{i}", bulk_doc)
    app.router.add_get("/lat/{i}", lat_doc)
    app.router.add_route("*", "/control/{what}", control)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, HOST, 0, backlog=2048)
    await site.start()
    print(orjson.dumps({"port": runner.addresses[0][1]}).decode(), flush=True)
    parent = os.getppid()
    deadline = time.monotonic() + lifetime
    try:
        while time.monotonic() < deadline and os.getppid() == parent:
            await asyncio.sleep(0.5)
    finally:
        for r in S.receivers.values():
            await r.cleanup()
        await runner.cleanup()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--lifetime", type=float, default=1800.0)
    args = parser.parse_args()
    try:
        import uvloop

        factory = uvloop.new_event_loop
    except ImportError:
        factory = asyncio.new_event_loop
    with contextlib.suppress(KeyboardInterrupt), asyncio.Runner(loop_factory=factory) as runner:
        runner.run(main(args.lifetime))
    sys.exit(0)
