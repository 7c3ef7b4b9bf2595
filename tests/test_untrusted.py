"""Untrusted upstreams and receivers: each finding of issue 17 against real local servers.

An attacker controls one upstream (or one receiver). Whatever it answers, its
own poll fails cleanly (counted, shown, health events as usual), the daemon
lives on within its memory, every other source keeps polling, credentials stay
on their origin, secrets stay out of every error, and nothing it sends reaches
an operator's terminal raw. The memory findings run the daemon under
`prlimit --data` (a cap on the whole daemon, inherited by its parsing workers).
"""

from __future__ import annotations

import asyncio
import gzip
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import httpx
import pytest

from pollhook.config import load_config
from pollhook.daemon import Daemon

from conftest import SECRET, pollhook, query, wait_until
from servers import Receiver, Reply, Request, _Server, garbage_reply

JSON = {"content-type": "application/json"}
CAP = 1024**3  # the daemon's memory cap in the memory tests (RLIMIT_DATA, inherited by workers)
needs_prlimit = pytest.mark.skipif(shutil.which("prlimit") is None, reason="needs prlimit")


class Hostile(_Server):
    """An upstream answering per path: a reply, or a function of the request giving one."""

    def __init__(self) -> None:
        self.routes: dict[str, Reply | Callable[[Request], Reply]] = {}
        super().__init__()

    def respond(self, req: Request, handler: BaseHTTPRequestHandler) -> Reply:
        route = self.routes.get(req.path.split("?")[0])
        if route is None:
            return 404, {}, b""
        return route(req) if callable(route) else route

    def served(self, path: str) -> int:
        with self.cond:
            return sum(r.path.split("?")[0] == path for r in self.requests)


@pytest.fixture
def hostile() -> Any:
    servers: list[Hostile] = []

    def make() -> Hostile:
        servers.append(Hostile())
        return servers[-1]

    yield make
    for server in servers:
        server.close()


def json_list(items: list[dict[str, Any]]) -> Reply:
    return 200, JSON, json.dumps(items).encode()


def source_row(db: Path, name: str) -> dict[str, Any]:
    try:
        rows = query(
            db, "SELECT consecutive_failures, last_error, items_count, last_success_at"
            " FROM sources WHERE name = ?", name,
        )  # fmt: skip
    except sqlite3.OperationalError:  # the daemon has not made its tables yet
        rows = []
    if not rows:
        return {"consecutive_failures": 0, "last_error": None, "items_count": 0, "ok": None}
    failures, error, count, success = rows[0]
    return {"consecutive_failures": failures, "last_error": error or "", "items_count": count,
            "ok": success}  # fmt: skip


def failed_with(db: Path, name: str, text: str) -> bool:
    row = source_row(db, name)
    return row["consecutive_failures"] >= 1 and text in row["last_error"]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def children(pid: int) -> list[int]:
    """Child processes of `pid` (Linux /proc)."""
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        found += [int(p) for p in task.read_text().split()]
    return found


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().split(")")[-1].split()[0] == "Z")


# -- 1. one source's parsing never stalls the others --------------------------------------


def test_one_sources_parsing_never_stalls_the_others(hostile, write_config, daemon):  # type: ignore[no-untyped-def]
    """The issue's three slow bodies and a regex that backtracks for ever, beside a healthy source."""
    up, healthy = hostile(), hostile()
    up.routes = {
        "/html": (200, {"content-type": "text/html"}, b"<p>x</p>" * 20000),
        "/csv": (200, {"content-type": "text/csv"}, b"id,name\n" + b',"x' * 30000),
        "/digits": (200, {"content-type": "text/plain"}, b"1" * 100_000),
        "/forever": (200, {"content-type": "text/plain"}, b"a" * 40 + b"!"),
    }
    healthy.routes = {"/ok": json_list([{"id": 1}])}
    port = free_port()
    cfg = write_config(f"""
        sources:
          - {{name: html, url: "{up.url}/html", interval: 1s, selector: p}}
          - {{name: csv, url: "{up.url}/csv", interval: 1s, format: csv}}
          - {{name: digits, url: "{up.url}/digits", interval: 1s, regex: '(\\d+) open incidents'}}
          - {{name: forever, url: "{up.url}/forever", interval: 1s, regex: '(a|aa)+$', timeout: 2s}}
          - {{name: healthy, url: "{healthy.url}/ok", interval: 100ms}}
        """)  # fmt: skip
    proc = daemon(cfg).start("--metrics", str(port))
    wait_until(lambda: up.served("/forever") >= 1, "the endless regex served")
    before = healthy.served("/ok")
    health = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)
    assert health.status_code == 200
    wait_until(lambda: failed_with(proc.db, "forever", "left of the source's timeout"), "killed")
    assert healthy.served("/ok") >= before + 5  # polled all along, every 100 ms
    assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200
    # linear now: each answered in milliseconds (the page parsed, the others refused)
    wait_until(lambda: source_row(proc.db, "html")["ok"] is not None, "the page parsed")
    wait_until(lambda: failed_with(proc.db, "csv", "not valid CSV"), "the CSV refused")
    wait_until(lambda: failed_with(proc.db, "digits", "matched nothing"), "the regex answered")
    assert proc.stop() == 0


def test_a_parser_that_dies_fails_its_poll_and_the_next_poll_gets_a_new_one(hostile, write_config, daemon):  # type: ignore[no-untyped-def]
    """A worker killed mid-parse (as a SIGSEGV would): that poll fails, the next one works."""
    up = hostile()
    up.routes = {"/slow": (200, {"content-type": "text/plain"}, b"a" * 40 + b"!")}
    cfg = write_config(f"""
        sources:
          - {{name: slow, url: "{up.url}/slow", interval: 200ms, regex: '(a|aa)+$', timeout: 20s}}
        """)  # fmt: skip
    proc = daemon(cfg).start()
    wait_until(lambda: children(proc.proc.pid), "a parsing worker")
    (worker,) = children(proc.proc.pid)
    os.kill(worker, signal.SIGSEGV)
    wait_until(lambda: failed_with(proc.db, "slow", "the parser died (signal 11)"), "died")
    up.routes["/slow"] = (200, {"content-type": "text/plain"}, b"aaaa")
    wait_until(lambda: source_row(proc.db, "slow")["consecutive_failures"] == 0, "recovered")
    assert proc.proc.poll() is None
    assert proc.stop() == 0


# -- 2. feeds that declare entities ------------------------------------------------------

ENTITY_BOMB = (
    '<?xml version="1.0"?>\n<!DOCTYPE rss [\n<!ENTITY a "' + "x" * 100_000 + '">\n]>\n'
    '<rss version="2.0"><channel><title>t</title><item><guid>1</guid><title>'
    + "&a;" * 10_000 + "</title></item></channel></rss>"
).encode()


@needs_prlimit
def test_a_feed_declaring_entities_is_refused_before_feedparser(hostile, write_config, daemon):  # type: ignore[no-untyped-def]
    up = hostile()
    bomb = gzip.compress(ENTITY_BOMB, 9)
    assert len(bomb) < 400  # the 357-byte feed, give or take the gzip header
    up.routes = {
        "/feed": (200, {"content-type": "application/rss+xml", "content-encoding": "gzip"}, bomb)
    }
    cfg = write_config(f"""
        sources:
          - {{name: bomb, url: "{up.url}/feed", interval: 500ms, failing_after: 1}}
        """)  # fmt: skip
    proc = daemon(cfg).start(prefix=("prlimit", f"--data={CAP}"))
    wait_until(lambda: failed_with(proc.db, "bomb", "declares XML entities"), "refused")
    assert proc.proc.poll() is None and "poll crashed" not in proc.output()
    assert proc.stop() == 0


# -- 3. memory far beyond max_body_size ------------------------------------------------------

_BOMB: list[bytes] = []


def empty_objects_bomb() -> bytes:
    """96 KB of gzip that is 99 MB of `[{},{},...]` (made once per test run)."""
    if not _BOMB:
        _BOMB.append(gzip.compress(b"[" + b"{}," * 33_000_000 + b"{}]", 9))
    return _BOMB[0]


@needs_prlimit
def test_memory_bombs_fail_their_poll_and_the_daemon_lives(hostile, write_config, daemon, receiver):  # type: ignore[no-untyped-def]
    up, healthy = hostile(), hostile()
    big = {"id": 1, "blob": "x" * 2_000_000}  # a 2 MB item: its webhooks would be 6 MB
    up.routes = {
        "/bomb": (200, {**JSON, "content-encoding": "gzip"}, empty_objects_bomb()),
        "/big": json_list([big]),
    }
    healthy.routes = {"/ok": json_list([{"id": 1}])}
    cfg = write_config(f"""
        sources:
          - {{name: bomb, url: "{up.url}/bomb", interval: 1s, key: "to_string(length(@))"}}
          - {{name: big, url: "{up.url}/big", interval: 200ms}}
          - {{name: healthy, url: "{healthy.url}/ok", interval: 100ms}}
        subscribers:
          - {{name: r, url: "{receiver.url}/hooks"}}
        """)  # fmt: skip
    proc = daemon(cfg).start(prefix=("prlimit", f"--data={CAP}"))
    wait_until(lambda: failed_with(proc.db, "big", "exceeds max_item_size 1000000"), "capped")
    wait_until(lambda: source_row(proc.db, "bomb")["consecutive_failures"] >= 1, "bomb failed")
    served = healthy.served("/ok")
    wait_until(lambda: healthy.served("/ok") >= served + 3, "the healthy source still polled")
    assert proc.proc.poll() is None
    assert source_row(proc.db, "bomb")["items_count"] == 0 and receiver.requests == []
    assert proc.stop() == 0


# -- 4. redirects ------------------------------------------------------------------------


def test_redirects_stay_on_the_origin_and_never_carry_credentials(hostile, write_config, tmp_path):  # type: ignore[no-untyped-def]
    origin, other = hostile(), hostile()
    other.routes = {"/data": json_list([{"id": "elsewhere"}])}
    origin.routes = {
        "/moved": (302, {"location": f"{other.url}/data"}, b""),
        "/page1": (200, {**JSON, "link": "</page2>; rel=\"next\""}, b'[{"id": 1}]'),
        "/page2": (302, {"location": f"{other.url}/data"}, b""),
    }
    secrets = """
            headers: {X-Api-Key: key-1, Private-Token: token-2}
            auth: {bearer: bearer-3}"""
    cfg = write_config(f"""
        sources:
          - name: default
            url: {origin.url}/moved
            interval: 1h{secrets}
          - name: anyway
            url: {origin.url}/moved
            interval: 1h
            redirects: any{secrets}
          - name: paged
            url: {origin.url}/page1
            interval: 1h
            redirects: any
            pagination: link{secrets}
        """)  # fmt: skip
    db = tmp_path / "state.db"
    result = pollhook("run", "--once", "-c", str(cfg), "--db", str(db))
    assert result.returncode == 1
    assert failed_with(db, "default", "another origin; not followed")
    assert failed_with(db, "paged", "page 2: HTTP 302 redirect")
    (followed,) = other.requests  # only `anyway` reached the other origin, without credentials
    assert not {"x-api-key", "private-token", "authorization", "cookie"} & set(followed.headers)
    assert source_row(db, "anyway")["items_count"] == 1
    assert [r.headers.get("x-api-key") for r in origin.requests] == ["key-1"] * 4


# -- 5. query-string secrets ---------------------------------------------------------------


def test_query_string_secrets_stay_out_of_logs_status_state_and_webhooks(hostile, write_config, daemon, receiver, monkeypatch):  # type: ignore[no-untyped-def]
    key, token = "k3y-in-the-url-9d1e", "t0ken-in-params-77aa"
    monkeypatch.setenv("API_KEY", key)
    monkeypatch.setenv("API_TOKEN", token)
    up = hostile()
    up.routes = {"/x": lambda req: garbage_reply(req.handler)}  # aiohttp's error quotes the URL
    cfg = write_config(f"""
        sources:
          - name: leaky
            url: "{up.url}/x?api_key=${{API_KEY}}"
            params: {{token: "${{API_TOKEN}}"}}
            interval: 200ms
            failing_after: 1
        subscribers:
          - name: oncall
            url: {receiver.url}/hooks
            secret: {SECRET}
            events: [source.failing]
        """)  # fmt: skip
    proc = daemon(cfg).start()
    (failing,) = [json.loads(r.body) for r in receiver.wait_accepted(1)]
    up.wait_for(3)
    assert proc.stop() == 0
    assert "api_key=***&token=***" in failing["data"]["error"]
    status = pollhook("status", "--json", "-c", str(cfg), "--db", str(proc.db))
    texts = [proc.output(), status.stdout, json.dumps(failing), proc.db.read_bytes().decode("latin-1")]
    wal = proc.db.with_name(proc.db.name + "-wal")
    texts.append(wal.read_bytes().decode("latin-1") if wal.exists() else "")
    assert "api_key=***" in status.stdout
    for text in texts:
        assert key not in text and token not in text


# -- 6. gzip bodies of several members -------------------------------------------------------


def test_every_gzip_member_is_read_or_the_poll_fails(hostile, write_config, daemon, receiver):  # type: ignore[no-untyped-def]
    rows = [f"{i},item {i}\n".encode() for i in range(10)]
    head = b"id,name\n"
    gz = {"content-type": "text/csv", "content-encoding": "gzip"}
    up = hostile()
    up.routes = {"/csv": (200, gz, gzip.compress(head + b"".join(rows)))}
    cfg = write_config(f"""
        sources:
          - {{name: rows, url: "{up.url}/csv", interval: 200ms}}
        subscribers:
          - {{name: r, url: "{receiver.url}/hooks"}}
        """)  # fmt: skip
    proc = daemon(cfg).start()
    wait_until(lambda: source_row(proc.db, "rows")["items_count"] == 10, "the baseline")
    two = gzip.compress(head + b"".join(rows[:5])) + gzip.compress(b"".join(rows[5:]))
    up.routes["/csv"] = (200, gz, two)  # the same 10 rows, as two members
    served = up.served("/csv")
    wait_until(lambda: up.served("/csv") >= served + 3, "polls of the two-member body")
    up.routes["/csv"] = (200, gz, two + b"trailing garbage")
    wait_until(lambda: failed_with(proc.db, "rows", "after the end of the gzip data"), "refused")
    up.routes["/csv"] = (200, gz, gzip.compress(head + b"".join(rows) + b"10,new\n"))
    (created,) = [json.loads(r.body) for r in receiver.wait_accepted(1)]
    assert created["type"] == "item.created" and created["data"]["key"] == "10"
    assert proc.stop() == 0
    assert receiver.count() == 1  # no item.deleted ever
    assert source_row(proc.db, "rows")["items_count"] == 11


# -- 7. crashed polls are failures ---------------------------------------------------------


def test_a_poll_that_crashes_is_counted_shown_and_reported(hostile, write_config, daemon, receiver):  # type: ignore[no-untyped-def]
    up = hostile()  # a next link that urlsplit cannot read: a ValueError deep in pagination
    up.routes = {"/p": (200, JSON, b'{"items": [{"id": 1}], "next": "http://[::1/x"}')}
    cfg = write_config(f"""
        sources:
          - name: crashy
            url: {up.url}/p
            interval: 200ms
            items: items
            failing_after: 1
            pagination: {{type: next_url, next: next}}
        subscribers:
          - {{name: oncall, url: "{receiver.url}/hooks", events: [source.failing]}}
        """)  # fmt: skip
    proc = daemon(cfg).start()
    (failing,) = [json.loads(r.body) for r in receiver.wait_accepted(1)]
    wait_until(lambda: source_row(proc.db, "crashy")["consecutive_failures"] >= 3, "3 failures")
    assert proc.stop() == 0
    assert failing["type"] == "source.failing" and "not a valid URL" in failing["data"]["error"]
    status = json.loads(pollhook("status", "--json", "-c", str(cfg), "--db", str(proc.db)).stdout)
    (row,) = status["sources"]
    assert row["outcome"] == "failing" and row["consecutive_failures"] >= 3
    assert receiver.count() == 1


def test_an_unexpected_exception_in_a_poll_goes_through_the_failure_path(hostile, write_config, tmp_path, monkeypatch, caplog):  # type: ignore[no-untyped-def]
    """Any bug met on one source (here: a parser raising RuntimeError) is a counted failure."""
    up = hostile()
    up.routes = {"/x": json_list([{"id": 1}])}
    cfg = write_config(f"""
        sources:
          - {{name: buggy, url: "{up.url}/x", interval: 1h, failing_after: 1}}
        """)  # fmt: skip

    def broken(*args: Any) -> Any:
        raise RuntimeError("a bug")

    try:  # not at the top: the module also runs against the code before issue 17
        from pollhook import parsing

        monkeypatch.setattr(parsing, "read_page", broken)
    except ImportError:
        from pollhook import poll

        monkeypatch.setattr(poll, "read_items", broken)

    async def main() -> list[Any]:
        async with Daemon(load_config(cfg), tmp_path / "state.db") as d:
            return [await d.poller.poll(d.config.sources[0]) for _ in range(2)]

    results = asyncio.run(main())
    assert [r.ok for r in results] == [False, False] and results[1].failures == 2
    assert "internal error: RuntimeError: a bug" in (results[0].error or "")
    row = source_row(tmp_path / "state.db", "buggy")
    assert row["consecutive_failures"] == 2 and "RuntimeError" in row["last_error"]
    (health,) = query(tmp_path / "state.db", "SELECT health FROM sources")
    assert health == ("failing",)
    assert "poll crashed" in caplog.text


# -- 8. stopping while a worker parses -------------------------------------------------------

FOREVER = (200, {"content-type": "text/plain"}, b"a" * 300_000 + b"!")  # over the old thread limit


def _parse_started(proc: subprocess.Popen[bytes]) -> list[int]:
    """The parsing worker, once there is one (none on a build that parses in a thread)."""
    try:
        wait_until(lambda: children(proc.pid), "a parsing worker", timeout=2)
    except AssertionError:
        return []
    return children(proc.pid)


def test_sigterm_stops_the_daemon_at_once_during_a_hostile_parse(hostile, write_config, daemon):  # type: ignore[no-untyped-def]
    up = hostile()
    up.routes = {"/x": FOREVER}
    cfg = write_config(f"""
        sources:
          - {{name: slow, url: "{up.url}/x", interval: 100ms, regex: '(a|aa)+$', timeout: 5m}}
        """)  # fmt: skip
    proc = daemon(cfg).start()
    wait_until(lambda: up.served("/x") >= 1, "the body served")
    workers = _parse_started(proc.proc)
    started = time.monotonic()
    proc.signal(signal.SIGTERM)
    assert proc.wait(timeout=10) == 0 and time.monotonic() - started < 10
    assert "stopped cleanly" in proc.output()
    assert workers and not any(alive(pid) for pid in workers)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_run_once_stops_at_once_during_a_hostile_parse(hostile, write_config, tmp_path, sig):  # type: ignore[no-untyped-def]
    up = hostile()
    up.routes = {"/x": FOREVER}
    cfg = write_config(f"""
        sources:
          - {{name: slow, url: "{up.url}/x", interval: 1h, regex: '(a|aa)+$', timeout: 5m}}
        """)  # fmt: skip
    once = subprocess.Popen(
        [sys.executable, "-m", "pollhook", "run", "--once", "-c", str(cfg),
         "--db", str(tmp_path / "once.db")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        wait_until(lambda: up.served("/x") >= 1, "the body served")
        workers = _parse_started(once)
        once.send_signal(sig)
        _, err = once.communicate(timeout=10)
    finally:
        if once.poll() is None:
            once.kill()
            once.wait()
    assert once.returncode == 1, err
    assert b"source slow failed" in err and b"Traceback" not in err
    assert workers and not any(alive(pid) for pid in workers)


# -- 9. terminal escapes -------------------------------------------------------------------


def test_keys_bodies_and_locations_are_shown_escaped(hostile, write_config, daemon):  # type: ignore[no-untyped-def]
    up = hostile()
    up.routes = {"/x": json_list([{"id": "a\x1b[2J\nforged row"}])}
    answers = iter([
        (500, {}, b"\x1b]0;pwned\x07\nforged  row"),
        (307, {"location": "http://127.0.0.1:1/\x1b[31mred"}, b""),
    ])  # fmt: skip
    receiver = Receiver(lambda i, req: next(answers, (204, {}, b"")))
    cfg = write_config(f"""
        sources:
          - {{name: s, url: "{up.url}/x", interval: 100ms, emit_initial: true}}
        subscribers:
          - {{name: r, url: "{receiver.url}/hooks", retry: [50ms, 50ms]}}
        """)  # fmt: skip
    proc = daemon(cfg).start()
    receiver.wait_accepted(1)
    assert proc.stop() == 0
    receiver.close()
    outputs = {
        "events": pollhook("events", "-c", str(cfg), "--db", str(proc.db)).stdout,
        "deliveries": pollhook("deliveries", "-c", str(cfg), "--db", str(proc.db)).stdout,
        "attempts": pollhook("deliveries", "--attempts", "1", "-c", str(cfg), "--db", str(proc.db)).stdout,
        "log": proc.output(),
    }
    for name, text in outputs.items():
        assert "\x1b" not in text and "\x07" not in text, name
    assert len(outputs["events"].splitlines()) == 2 and "\\x1b[2J\\nforged" in outputs["events"]
    assert len(outputs["deliveries"].splitlines()) == 2
    assert len(outputs["attempts"].splitlines()) == 4  # the header and three attempts
    assert "\\x1b]0;pwned\\x07\\nforged" in outputs["attempts"]
    assert "\\x1b[31mred" in outputs["log"]
