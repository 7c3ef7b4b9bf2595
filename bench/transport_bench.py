#!/usr/bin/env python3
"""Which HTTP client stack should pollhook use?  A local, self-terminating benchmark.

    python bench/transport_bench.py [--seconds N] [--repeats N] [--out PATH]

A fast aiohttp.web server runs in a child process pinned to CPU 0; the clients run in
this process, pinned to CPU 1.  Everything talks to 127.0.0.1 only.  Clients compared:

  aiohttp          raw aiohttp.ClientSession (TCPConnector(limit=100)) -- the ceiling
  httpx            httpx.AsyncClient() with its default transport (httpcore;
                   Limits(max_connections=100, max_keepalive_connections=20))
  httpx+sniffio    the same, with a stand-in `sniffio` module in sys.modules for the cell:
                   httpcore 1.0.9 does `import sniffio` on every lock/event setup and
                   anyio >= 4.12 no longer pulls sniffio in, so without it every call
                   pays a failed import (encode/httpcore#1103).  Shows the cost of that.
  httpx-ka100      httpx.AsyncClient(limits=Limits(100, max_keepalive_connections=100)):
                   the default transport with a keep-alive pool big enough for c=50
  httpx+aiohttp    httpx.AsyncClient(transport=AiohttpTransport(limits=Limits(100)))
                   (httpx_aiohttp maps only max_connections -> TCPConnector(limit=...);
                   max_keepalive_connections is ignored, keepalive_expiry ->
                   keepalive_timeout)

Workloads: GET /doc (~20 KB JSON, 100 objects) + orjson.loads; conditional GET that
answers 304; POST /hook with a 1 KB JSON body (204).  Concurrency 10 and 50: that many
worker coroutines loop until the cell's deadline (and at most --max-requests each).
Each cell gets a fresh client and a short unmeasured warm-up.  Cells are interleaved
(repeat-major, client order rotated) and the median over repeats is reported.

After the throughput table, a semantics check points httpx (default transport) and
httpx+aiohttp at small misbehaving local servers (refused connection, slow headers,
stalled body, dropped connection, non-HTTP reply, slow drip) and records which
exception each raises.

Results (markdown) are printed and written to bench/results/transport.md.

This is the record of why pollhook calls aiohttp directly.  It also needs httpx and
httpx-aiohttp, which pollhook itself no longer depends on (`pip install httpx-aiohttp`).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as _dt
import gc
import hashlib
import importlib.metadata as md
import importlib.util
import multiprocessing as mp
import os
import platform
import shlex
import socket
import statistics
import sys
import time
import types
from collections.abc import Awaitable, Callable
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

HOST = "127.0.0.1"
SERVER_CPU = 0
CLIENT_CPU = 1
SERVER_LIFETIME_S = 900.0  # the server exits by itself after this, whatever happens
WORKLOADS = ("get-20KB", "get-304", "post-1KB")
CONCURRENCY = (10, 50)
CLIENTS = ("aiohttp", "httpx", "httpx+sniffio", "httpx-ka100", "httpx+aiohttp")
NOISY_OTHER_CPU = 0.15  # other processes above this (fraction of a core) make a run "noisy"
REAL_SNIFFIO = importlib.util.find_spec("sniffio") is not None


# --------------------------------------------------------------------------- payloads


def make_doc() -> bytes:
    """A deterministic ~20 KB JSON list of 100 small objects."""
    items = [
        {
            "id": i,
            "slug": f"item-{i:04d}",
            "title": f"Release notes for component {i} of the example catalogue",
            "status": ("open", "closed", "merged")[i % 3],
            "updated_at": f"2024-05-{1 + i % 28:02d}T12:{i % 60:02d}:00Z",
            "score": round(i * 1.37, 2),
            "tags": ["alpha", "beta", f"t{i % 7}"],
            "url": f"https://example.invalid/items/{i}",
        }
        for i in range(100)
    ]
    return orjson.dumps(items)


def make_hook_body() -> bytes:
    """A ~1 KB JSON webhook payload."""
    body = {
        "type": "change",
        "source": "example",
        "id": "evt_0123456789abcdef",
        "changes": [
            {"op": "replace", "path": f"/items/{i}/status", "value": "closed"} for i in range(14)
        ],
    }
    raw = orjson.dumps(body)
    pad = 1024 - len(raw) - len(',"pad":""')
    body["pad"] = "x" * max(pad, 0)
    return orjson.dumps(body)


DOC = make_doc()
ETAG = '"' + hashlib.sha256(DOC).hexdigest()[:32] + '"'
HOOK_BODY = make_hook_body()


# --------------------------------------------------------------------------- server process


def _pin(cpu: int) -> str:
    if not hasattr(os, "sched_setaffinity"):
        return "unpinned (no sched_setaffinity)"
    allowed = os.sched_getaffinity(0)
    if cpu not in allowed or len(allowed) < 2:
        return f"unpinned (allowed CPUs {sorted(allowed)})"
    os.sched_setaffinity(0, {cpu})
    return f"CPU {cpu}"


def server_main(conn: Any, cpu: int, lifetime: float) -> None:
    """Child process: serve /doc and /hook on 127.0.0.1:<ephemeral> until told to stop."""
    from aiohttp import web

    pinned = _pin(cpu)
    parent = os.getppid()

    async def doc(request: web.Request) -> web.Response:
        if request.headers.get("If-None-Match") == ETAG:
            return web.Response(status=304, headers={"ETag": ETAG})
        return web.Response(body=DOC, content_type="application/json", headers={"ETag": ETAG})

    async def hook(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(status=204)

    async def main() -> None:
        app = web.Application()
        app.router.add_get("/doc", doc)
        app.router.add_post("/hook", hook)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, HOST, 0, backlog=1024)
        await site.start()
        port = runner.addresses[0][1]
        conn.send({"port": port, "pinned": pinned})
        deadline = time.monotonic() + lifetime
        try:
            while time.monotonic() < deadline and os.getppid() == parent:
                if conn.poll(0):
                    break  # "stop" message (or EOF)
                await asyncio.sleep(0.2)
        except (EOFError, OSError):
            pass
        finally:
            await runner.cleanup()

    asyncio.run(main())


def machine_busy_seconds() -> float:
    """Busy CPU seconds of the whole machine so far, from /proc/stat (0.0 where it is missing)."""
    try:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        # user nice system idle iowait irq softirq steal ...
        return (v[0] + v[1] + v[2] + v[5] + v[6] + v[7]) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def proc_cpu_seconds(pid: int) -> float:
    """utime+stime of a process from /proc, in seconds (0.0 where /proc is missing)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


# --------------------------------------------------------------------------- clients


Op = Callable[[], Awaitable[None]]


class BadStatus(Exception):
    pass


def make_client(kind: str) -> Any:
    import aiohttp
    import httpx

    if kind == "aiohttp":
        return aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=100), timeout=aiohttp.ClientTimeout(total=10)
        )
    if kind in ("httpx", "httpx+sniffio"):
        return httpx.AsyncClient(trust_env=False, timeout=10)
    if kind == "httpx-ka100":
        return httpx.AsyncClient(
            trust_env=False,
            timeout=10,
            limits=httpx.Limits(max_connections=100, max_keepalive_connections=100),
        )
    if kind == "httpx+aiohttp":
        from httpx_aiohttp import AiohttpTransport

        return httpx.AsyncClient(
            trust_env=False,
            timeout=10,
            transport=AiohttpTransport(trust_env=False, limits=httpx.Limits(max_connections=100)),
        )
    raise ValueError(kind)


async def close_client(kind: str, client: Any) -> None:
    if kind == "aiohttp":
        await client.close()
    else:
        await client.aclose()


@contextmanager
def sniffio_present(enabled: bool) -> Any:
    """Make `import sniffio` succeed (as it does when the sniffio package is installed) for the block.

    httpcore only calls sniffio.current_async_library(); under asyncio that answers "asyncio",
    which is also what httpcore assumes when the import fails.  Behaviour is unchanged; only the
    per-call failed-import cost goes away.  A no-op where the real sniffio is installed.
    """
    if not enabled or REAL_SNIFFIO or "sniffio" in sys.modules:
        yield
        return
    shim = types.ModuleType("sniffio")

    def current_async_library() -> str:
        asyncio.get_running_loop()  # RuntimeError outside a loop, like sniffio's AsyncLibraryNotFoundError
        return "asyncio"

    shim.current_async_library = current_async_library  # type: ignore[attr-defined]
    sys.modules["sniffio"] = shim
    try:
        yield
    finally:
        sys.modules.pop("sniffio", None)


def make_op(kind: str, client: Any, workload: str, base: str) -> Op:
    doc_url, hook_url = base + "/doc", base + "/hook"
    inm = {"If-None-Match": ETAG}
    jh = {"Content-Type": "application/json"}

    if kind == "aiohttp":
        if workload == "get-20KB":

            async def op() -> None:
                async with client.get(doc_url) as r:
                    body = await r.read()
                if r.status != 200:
                    raise BadStatus(r.status)
                orjson.loads(body)

        elif workload == "get-304":

            async def op() -> None:
                async with client.get(doc_url, headers=inm) as r:
                    await r.read()
                if r.status != 304:
                    raise BadStatus(r.status)

        else:

            async def op() -> None:
                async with client.post(hook_url, data=HOOK_BODY, headers=jh) as r:
                    await r.read()
                if r.status != 204:
                    raise BadStatus(r.status)

        return op

    # every httpx.AsyncClient variant
    if workload == "get-20KB":

        async def op() -> None:
            r = await client.get(doc_url)
            if r.status_code != 200:
                raise BadStatus(r.status_code)
            orjson.loads(r.content)

    elif workload == "get-304":

        async def op() -> None:
            r = await client.get(doc_url, headers=inm)
            if r.status_code != 304:
                raise BadStatus(r.status_code)

    else:

        async def op() -> None:
            r = await client.post(hook_url, content=HOOK_BODY, headers=jh)
            if r.status_code != 204:
                raise BadStatus(r.status_code)

    return op


# --------------------------------------------------------------------------- measuring


@dataclass
class CellRun:
    ok: int
    errors: int
    elapsed: float
    p50_ms: float
    p99_ms: float
    server_cpu: float  # fraction of one core
    other_cpu: float  # cores used by everything else on the machine during the cell
    client_cpu: float
    first_error: str = ""

    @property
    def rps(self) -> float:
        return self.ok / self.elapsed if self.elapsed > 0 else 0.0


@dataclass
class Cell:
    runs: list[CellRun] = field(default_factory=list)

    def med(self, attr: str) -> float:
        return float(statistics.median(getattr(r, attr) for r in self.runs))


def pct(sorted_vals: list[float], q: float) -> float:
    if not sorted_vals:
        return float("nan")
    i = min(len(sorted_vals) - 1, max(0, round(q * (len(sorted_vals) - 1))))
    return sorted_vals[i]


async def drive(
    op: Op, conc: int, seconds: float, max_requests: int, lats: list[float] | None
) -> tuple[int, int, str]:
    """`conc` workers call `op` until the deadline or `max_requests` each.  Returns (ok, errors, first error)."""
    deadline = time.perf_counter() + seconds
    ok = errors = 0
    first_error = ""

    async def worker() -> None:
        nonlocal ok, errors, first_error
        pc = time.perf_counter
        for _ in range(max_requests):
            t0 = pc()
            if t0 >= deadline:
                return
            try:
                await op()
            except Exception as exc:  # counted and reported, never hidden
                errors += 1
                if not first_error:
                    first_error = f"{type(exc).__module__}.{type(exc).__qualname__}: {exc}"[:200]
                continue
            if lats is not None:
                lats.append(pc() - t0)
            ok += 1

    async with asyncio.timeout(seconds + 30):  # hard stop if a request hangs past its own timeout
        await asyncio.gather(*(worker() for _ in range(conc)))
    return ok, errors, first_error


async def run_cell(
    kind: str,
    workload: str,
    conc: int,
    seconds: float,
    warmup: float,
    max_requests: int,
    base: str,
    server_pid: int,
) -> CellRun:
    with sniffio_present(kind == "httpx+sniffio"):
        client = make_client(kind)
        try:
            op = make_op(kind, client, workload, base)
            await drive(op, conc, warmup, max_requests, None)  # opens the connections; not measured
            gc.collect()
            lats: list[float] = []
            m0 = machine_busy_seconds()
            s0, c0 = proc_cpu_seconds(server_pid), time.process_time()
            t0 = time.perf_counter()
            ok, errors, first_error = await drive(op, conc, seconds, max_requests, lats)
            elapsed = time.perf_counter() - t0
            s1, c1 = proc_cpu_seconds(server_pid), time.process_time()
            m1 = machine_busy_seconds()
        finally:
            await close_client(kind, client)
        lats.sort()
        return CellRun(
            ok=ok,
            errors=errors,
            elapsed=elapsed,
            p50_ms=pct(lats, 0.50) * 1e3,
            p99_ms=pct(lats, 0.99) * 1e3,
            server_cpu=(s1 - s0) / elapsed,
            other_cpu=max(0.0, (m1 - m0) - (s1 - s0) - (c1 - c0)) / elapsed,
            client_cpu=(c1 - c0) / elapsed,
            first_error=first_error,
        )


# --------------------------------------------------------------------------- semantics check


async def _misbehaving_server(mode: str) -> asyncio.Server:
    """Tiny raw-socket HTTP servers that misbehave in one specific way."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            if mode == "slow-headers":
                await asyncio.sleep(2.0)
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            elif mode == "stalled-body":
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + b"x" * 10)
                await writer.drain()
                await asyncio.sleep(2.0)
            elif mode == "drop":
                pass  # close without a response
            elif mode == "garbage":
                writer.write(b"THIS IS NOT HTTP\r\n\r\n")
            elif mode == "drip":
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n")
                for _ in range(10):
                    await writer.drain()
                    await asyncio.sleep(0.2)
                    writer.write(b"x")
            await writer.drain()
        except (TimeoutError, OSError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    return await asyncio.start_server(handle, HOST, 0)


def _free_closed_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])  # closed on exit: nothing listens there


SCENARIOS = (
    ("refused", "connection refused"),
    ("slow-headers", "no response headers for 2 s (read timeout 0.3 s)"),
    ("stalled-body", "headers, then body stalls for 2 s (read timeout 0.3 s)"),
    ("drop", "server closes the connection without a response"),
    ("garbage", "server answers `THIS IS NOT HTTP`"),
    ("drip", "10-byte body, one byte per 0.2 s (~2 s total; timeout 0.5 s)"),
)


async def semantics_check() -> list[dict[str, str]]:
    import httpx
    from httpx_aiohttp import AiohttpTransport

    rows = []
    for mode, desc in SCENARIOS:
        server = None
        if mode == "refused":
            url = f"http://{HOST}:{_free_closed_port()}/"
        else:
            server = await _misbehaving_server(mode)
            url = f"http://{HOST}:{server.sockets[0].getsockname()[1]}/"
        timeout = httpx.Timeout(0.5 if mode == "drip" else 0.3)
        row = {"mode": mode, "desc": desc}
        try:
            for kind in ("httpx", "httpx+aiohttp"):
                transport = AiohttpTransport(trust_env=False) if kind == "httpx+aiohttp" else None
                async with httpx.AsyncClient(
                    trust_env=False, timeout=timeout, transport=transport
                ) as client:
                    t0 = time.perf_counter()
                    try:
                        async with asyncio.timeout(10):
                            r = await client.get(url)
                        outcome = f"HTTP {r.status_code}, {len(r.content)} B"
                    except TimeoutError as exc:  # our own 10 s guard (or a non-httpx TimeoutError)
                        if isinstance(exc, httpx.HTTPError):
                            raise
                        outcome = "asyncio guard fired / bare TimeoutError"
                    except Exception as exc:
                        name = type(exc).__qualname__
                        mod = type(exc).__module__.split(".")[0]
                        outcome = f"`{mod}.{name}`" + (
                            ""
                            if isinstance(exc, httpx.HTTPError)
                            else " (**not** an httpx.HTTPError)"
                        )
                    row[kind] = f"{outcome} after {time.perf_counter() - t0:.2f}s"
        finally:
            if server is not None:
                server.close()
                await server.wait_closed()
        rows.append(row)
    return rows


# --------------------------------------------------------------------------- report


def loadavg() -> str:
    try:
        with open("/proc/loadavg") as f:
            return " ".join(f.read().split()[:3])
    except OSError:
        return "n/a"


def versions() -> str:
    libs = ", ".join(
        f"{p} {md.version(p)}"
        for p in ("httpx", "httpcore", "h11", "httpx-aiohttp", "aiohttp", "orjson", "anyio")
    )
    return f"Python {platform.python_version()} ({platform.python_implementation()}), {libs}"


def render(
    cells: dict[tuple[str, int, str], Cell],
    clients: tuple[str, ...],
    args: argparse.Namespace,
    meta: dict[str, str],
    sem: list[dict[str, str]],
) -> str:
    out = []
    out.append("# HTTP client stack benchmark (pollhook)\n")
    out.append(f"- Command: `{meta['command']}`")
    out.append(f"- Date: {meta['date']}")
    out.append(f"- Versions: {meta['versions']}")
    out.append(
        f"- Machine: `nproc` = {meta['nproc']}, {meta['cpu']}, {platform.system()} {platform.release()}"
    )
    out.append(
        f"- Pinning: server {meta['server_pin']}, client {meta['client_pin']}; 127.0.0.1 only, HTTP/1.1, keep-alive"
    )
    out.append(
        f"- Payloads: GET /doc = {len(DOC)} B JSON list of 100 objects (+ `orjson.loads`); "
        f"GET /doc with matching If-None-Match = 304; POST /hook = {len(HOOK_BODY)} B JSON -> 204"
    )
    out.append(
        f"- Cell: {args.seconds:g}s measured after {args.warmup:g}s warm-up, fresh client per cell, "
        f"median of {args.repeats} interleaved repeats (`best req/s` = best repeat); req/s counts successful requests only"
    )
    out.append(
        f"- sniffio installed: {'yes' if REAL_SNIFFIO else 'no'} "
        "(`httpx+sniffio` = default httpx with a stand-in `sniffio` module for the cell"
        + (", i.e. identical to `httpx` here" if REAL_SNIFFIO else "")
        + "; see the note below the table)"
    )
    out.append(f"- Load average (1/5/15 min) at start: {meta['load0']}; at end: {meta['load1']}")
    out.append(f"- Total wall time: {meta['wall']}")
    busy = [r.other_cpu for c in cells.values() for r in c.runs]
    noisy = sum(1 for x in busy if x > NOISY_OTHER_CPU)
    # a cell's median is trustworthy while fewer than half of its repeats were noisy
    bad_cells = sum(
        1
        for c in cells.values()
        if 2 * sum(r.other_cpu > NOISY_OTHER_CPU for r in c.runs) >= len(c.runs)
    )
    if bad_cells:
        out.append(
            f"\n**Warning: the machine was not quiet.** {bad_cells} of {len(cells)} cells had other "
            f"processes using more than {NOISY_OTHER_CPU:.0%} of a core in at least half of their repeats "
            f"(max {max(busy):.0%}); figures in those cells are depressed and noisy.  Re-run on an idle "
            "machine.\n"
        )
    else:
        out.append(
            f"- Machine quiet: {noisy} of {len(busy)} measured runs saw other processes above "
            f"{NOISY_OTHER_CPU:.0%} of a core (max {max(busy, default=0):.0%}); "
            "each cell's median comes from a majority of quiet repeats.\n"
        )
    out.append(
        "| workload | conc | client | req/s | best req/s | vs aiohttp | p50 ms | p99 ms | errors | server CPU | client CPU | other CPU (max) |"
    )
    out.append("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for wl in WORKLOADS:
        for conc in CONCURRENCY:
            base = cells.get((wl, conc, "aiohttp"))
            base_rps = base.med("rps") if base else float("nan")
            for kind in clients:
                c = cells[(wl, conc, kind)]
                rps = c.med("rps")
                errs = sum(r.errors for r in c.runs)
                out.append(
                    f"| {wl} | {conc} | {kind} | {rps:,.0f} | {max(r.rps for r in c.runs):,.0f} | {rps / base_rps:.2f}x | {c.med('p50_ms'):.2f} | "
                    f"{c.med('p99_ms'):.2f} | {errs} | {c.med('server_cpu'):.0%} | {c.med('client_cpu'):.0%} | {max(r.other_cpu for r in c.runs):.0%} |"
                )
    if "aiohttp" in clients:
        out.append("\nGeometric mean of req/s relative to raw aiohttp over the six cells:\n")
        out.append("| client | " + " | ".join(clients) + " |")
        out.append("|---|" + "---:|" * len(clients))
        gm = []
        for kind in clients:
            ratios = [
                cells[(wl, conc, kind)].med("rps") / cells[(wl, conc, "aiohttp")].med("rps")
                for wl in WORKLOADS
                for conc in CONCURRENCY
            ]
            gm.append(f"{statistics.geometric_mean(ratios):.2f}x" if min(ratios) > 0 else "n/a")
        out.append("| vs aiohttp | " + " | ".join(gm) + " |")
    first = [(k, r.first_error) for k, c in cells.items() for r in c.runs if r.first_error]
    if first:
        out.append("\nFirst errors seen:\n")
        for (wl, conc, kind), e in first[:10]:
            out.append(f"- {wl} c={conc} {kind}: `{e}`")
    spread = []
    for c in cells.values():
        rs = [r.rps for r in c.runs]
        if len(rs) > 1 and statistics.median(rs) > 0:
            spread.append((max(rs) - min(rs)) / statistics.median(rs))
    if spread:
        out.append(
            f"\nRun-to-run spread (max-min)/median of req/s across repeats: median {statistics.median(spread):.0%}, "
            f"worst {max(spread):.0%}."
        )
    out.append(
        "\n`server CPU` / `client CPU` = CPU seconds per wall second of each process (each is pinned to one core); "
        "a server near 100% means that cell is server-bound and the client ratios in it are compressed toward 1.  "
        "`other CPU (max)` = CPU used by every other process on the machine during the cell (worst repeat), "
        "from /proc/stat; with 2 cores, anything well above a few % means the cell shared a core with "
        "something else."
    )
    out.append(
        "\nClients: `aiohttp` = `aiohttp.ClientSession(connector=TCPConnector(limit=100))`; `httpx` = "
        "`httpx.AsyncClient()` (httpcore pool, `Limits(max_connections=100, max_keepalive_connections=20)`); "
        "`httpx+sniffio` = the same with `import sniffio` made to succeed (httpcore 1.0.9 imports sniffio inside "
        "`current_async_library()` on every lock/event setup; anyio >= 4.12 dropped its sniffio dependency, so on a "
        "fresh install every call pays a failed import, encode/httpcore#1103; installing `sniffio` removes it); "
        "`httpx-ka100` = default transport with `max_keepalive_connections=100`; `httpx+aiohttp` = "
        "`httpx.AsyncClient(transport=AiohttpTransport(limits=httpx.Limits(max_connections=100)))` (the transport "
        "passes only `max_connections` on, as `TCPConnector(limit=...)`; `max_keepalive_connections` is ignored). "
        "All httpx clients use `trust_env=False`, `timeout=10`."
    )
    if sem:
        out.append("\n## Failure semantics: which exception comes out\n")
        out.append(
            "`httpx.AsyncClient(timeout=httpx.Timeout(t))`, default transport vs `AiohttpTransport`.\n"
        )
        out.append("| scenario | httpx (default transport) | httpx + AiohttpTransport |")
        out.append("|---|---|---|")
        for row in sem:
            out.append(f"| {row['desc']} | {row['httpx']} | {row['httpx+aiohttp']} |")
        out.append(
            f"\nThe notes below were read from httpx-aiohttp 0.2.0's transport.py (installed here: "
            f"{md.version('httpx-aiohttp')}); the table above is what this run observed.  "
            "AiohttpTransport maps httpx timeouts to `aiohttp.ClientTimeout(sock_connect=connect, "
            "sock_read=read, connect=pool)` (aiohttp's `connect` covers waiting for a pooled connection *and* "
            "connecting); the `write` timeout is dropped and `total` is None.  Neither stack has a total-request "
            "timeout (httpx's are per socket operation), so a caller that needs a deadline must wrap the call in "
            "`asyncio.timeout()`.  Its exception map checks `aiohttp.ClientConnectionError -> httpx.ConnectTimeout` "
            "and only upgrades to a later entry when that entry is a *subclass* of the one already chosen, so "
            "`ClientConnectorError` (connection refused) and `ServerDisconnectedError` both come out as "
            "`httpx.ConnectTimeout`; aiohttp errors outside the map (e.g. `ClientResponseError` for a malformed "
            "response) escape as raw aiohttp exceptions."
        )
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------- main


async def bench(
    args: argparse.Namespace, base: str, server_pid: int, clients: tuple[str, ...]
) -> dict[tuple[str, int, str], Cell]:
    cells: dict[tuple[str, int, str], Cell] = {
        (wl, c, k): Cell() for wl in WORKLOADS for c in CONCURRENCY for k in clients
    }
    n = len(cells) * args.repeats
    i = 0
    for rep in range(args.repeats):
        order = clients[rep % len(clients) :] + clients[: rep % len(clients)]
        for wl in WORKLOADS:
            for conc in CONCURRENCY:
                for kind in order:
                    i += 1
                    run = await run_cell(
                        kind,
                        wl,
                        conc,
                        args.seconds,
                        args.warmup,
                        args.max_requests,
                        base,
                        server_pid,
                    )
                    cells[(wl, conc, kind)].runs.append(run)
                    print(
                        f"[{i:3d}/{n}] rep {rep + 1} {wl:9s} c={conc:<3d} {kind:14s} {run.rps:9,.0f} req/s  "
                        f"p50 {run.p50_ms:6.2f} ms  p99 {run.p99_ms:6.2f} ms  err {run.errors}  "
                        f"srv {run.server_cpu:4.0%} cli {run.client_cpu:4.0%} other {run.other_cpu:4.0%}",
                        file=sys.stderr,
                        flush=True,
                    )
    return cells


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--seconds", type=float, default=2.5, help="measured seconds per cell (default 2.5)"
    )
    ap.add_argument(
        "--repeats",
        type=int,
        default=3,
        help="repeats per cell; the median is reported (default 3)",
    )
    ap.add_argument(
        "--warmup",
        type=float,
        default=0.5,
        help="unmeasured warm-up seconds per cell (default 0.5)",
    )
    ap.add_argument(
        "--max-requests", type=int, default=1_000_000, help="per-worker request cap per cell"
    )
    ap.add_argument(
        "--clients", default=",".join(CLIENTS), help=f"comma list from {','.join(CLIENTS)}"
    )
    ap.add_argument("--no-semantics", action="store_true", help="skip the failure-semantics check")
    ap.add_argument(
        "--out",
        default=str(Path(__file__).resolve().parent / "results" / "transport.md"),
        help="markdown output path",
    )
    args = ap.parse_args()
    clients = tuple(c.strip() for c in args.clients.split(",") if c.strip())
    for c in clients:
        if c not in CLIENTS:
            ap.error(f"unknown client {c!r}")
    if not (0 < args.seconds <= 60 and 1 <= args.repeats <= 20 and 0 <= args.warmup <= 10):
        ap.error("--seconds must be in (0, 60], --repeats in [1, 20], --warmup in [0, 10]")

    started = time.monotonic()
    load0 = loadavg()
    nproc = (
        len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    )  # what `nproc` prints
    ctx = mp.get_context("spawn")
    parent_conn, child_conn = ctx.Pipe()
    server = ctx.Process(
        target=server_main, args=(child_conn, SERVER_CPU, SERVER_LIFETIME_S), daemon=True
    )
    server.start()
    try:
        if not parent_conn.poll(30):
            raise SystemExit("server did not start within 30 s")
        info = parent_conn.recv()
        client_pin = _pin(CLIENT_CPU)
        base = f"http://{HOST}:{info['port']}"
        print(
            f"server pid {server.pid} on {base} ({info['pinned']}); client {client_pin}",
            file=sys.stderr,
        )
        assert server.pid is not None
        cells = asyncio.run(bench(args, base, server.pid, clients))
    finally:
        with suppress(OSError):
            parent_conn.send("stop")
        server.join(10)
        if server.is_alive():
            server.terminate()
            server.join(5)

    sem = [] if args.no_semantics else asyncio.run(semantics_check())

    cpu = platform.machine()
    with suppress(OSError), open("/proc/cpuinfo") as f:
        cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    meta = {
        "command": "python "
        + " ".join(shlex.quote(a) for a in [os.path.relpath(sys.argv[0]), *sys.argv[1:]]),
        "date": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "versions": versions(),
        "nproc": str(nproc),
        "cpu": cpu,
        "server_pin": info["pinned"],
        "client_pin": client_pin,
        "load0": load0,
        "load1": loadavg(),
        "wall": f"{time.monotonic() - started:.0f} s",
    }
    text = render(cells, clients, args, meta, sem)
    print(text)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
