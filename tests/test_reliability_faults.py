"""Hostile receivers and upstreams against the real daemon: nothing lost, nothing invented.

Receivers (the ones tests/test_e2e_delivery.py does not cover already): one
that answers byte by byte, slower than its timeout; one that sends a 50 MB
body; one that accepts the TCP connection and never reads a byte. Each ends
in the documented outcome while a healthy subscriber gets every event at once.

Upstreams: one daemon per fault. The fault never becomes an event, the
source's consecutive failures grow (`pollhook status --json`), subscribers of
health events hear `source.failing` once, and once the fault is gone the
source recovers by itself: a sentinel change is then the only event the
receiver ever sees, followed by one `source.recovered`.

Every wait is bounded and wakes on its event; fault bodies that a careless
client might accept carry a new item (id 666), so acceptance would show up
as an invented event.
"""

from __future__ import annotations

import contextlib
import io
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest
import yaml

from pollhook.cli import build_parser

from conftest import SECRET, pollhook, query, wait_until
from servers import Receiver, Reply, Request, Upstream, garbage_reply, reset_connection

ITEMS = [{"id": 1, "status": "open"}, {"id": 2, "status": "open"}]
SENTINEL = {"id": 99, "status": "sentinel"}
INVENTED = {"id": 666, "status": "invented"}  # in fault bodies: accepting one would show


# -- helpers ---------------------------------------------------------------------------


def peak_rss_mb(pid: int) -> float:
    """The process's high-water resident set size (VmHWM), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def raw_reply(handler: BaseHTTPRequestHandler, head: bytes, body: Iterator[bytes],
              gap: float = 0.0, chunked: bool = False) -> int:  # fmt: skip
    """Take over the socket: write `head`, then the body pieces (optionally `gap` apart).

    Returns the body bytes written before the client went away.
    """
    sent = 0
    try:
        handler.wfile.write(head)
        handler.wfile.flush()
        for piece in body:
            if gap:
                time.sleep(gap)
            handler.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece)
            handler.wfile.flush()
            sent += len(piece)
        if chunked:
            handler.wfile.write(b"0\r\n\r\n")
            handler.wfile.flush()
    except OSError:
        pass  # the client hung up: that is what these faults expect
    handler.close_connection = True
    return sent


def drip(data: bytes) -> Iterator[bytes]:
    for i in range(len(data)):
        yield data[i : i + 1]


class BlackHole:
    """A TCP listener that accepts connections and then never reads or writes a byte."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(128)
        self.port = self.sock.getsockname()[1]
        self.held: list[socket.socket] = []
        self.cond = threading.Condition()
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with self.cond:
                self.held.append(conn)
                self.cond.notify_all()

    def accepted(self) -> int:
        with self.cond:
            return len(self.held)

    def close(self) -> None:
        self.sock.close()
        for conn in self.held:
            conn.close()


def attempts(db: Path, subscriber: str) -> list[tuple[Any, ...]]:
    return query(
        db,
        "SELECT d.event_id, a.status_code, a.error, a.duration_ms, a.response_body"
        " FROM attempts a JOIN deliveries d ON d.id = a.delivery_id"
        " WHERE d.subscriber = ? ORDER BY a.id",
        subscriber,
    )


def statuses(db: Path, subscriber: str) -> list[tuple[str, int]]:
    return query(
        db, "SELECT status, attempts FROM deliveries WHERE subscriber = ? ORDER BY id", subscriber
    )


# -- receivers -------------------------------------------------------------------------

DRIP_TIMEOUT = 2.0  # the dripping receiver's subscriber timeout
DRIP_GAP = 0.05  # between two bytes: far below any per-read timeout
HOLE_TIMEOUT = 4.0
HUGE = 50 * 1024 * 1024


def test_slow_huge_and_silent_receivers_end_as_documented_and_block_no_one(
    upstream: Upstream, write_config: Any, daemon: Any
) -> None:
    tries: dict[tuple[str, str], int] = {}
    lock = threading.Lock()
    sent: list[int] = []

    def nth(name: str, req: Request) -> int:
        with lock:
            key = (name, req.headers["webhook-id"])
            tries[key] = tries.get(key, 0) + 1
            return tries[key]

    def dripping(i: int, req: Request) -> Reply:
        if nth("drip", req) <= 2:  # two answers too slow to finish in time, then a quick 200
            body = b"x" * 200  # 200 bytes at 20 per second: 10 s, far past the 2 s timeout
            head = b"HTTP/1.1 200 OK\r\ncontent-length: 200\r\n\r\n"
            raw_reply(req.handler, b"", drip(head + body), gap=DRIP_GAP)
            return -1, {}, b""
        return 200, {}, b"ok"

    def huge(i: int, req: Request) -> Reply:
        status = b"500 Internal Server Error" if nth("huge", req) == 1 else b"200 OK"
        head = b"HTTP/1.1 %s\r\ncontent-type: text/plain\r\ncontent-length: %d\r\n\r\n" % (
            status, HUGE,
        )  # fmt: skip
        piece = b"E" * 65536
        sent.append(raw_reply(req.handler, head, (piece for _ in range(HUGE // len(piece)))))
        return -1, {}, b""

    good, slow, big, hole = Receiver(), Receiver(dripping), Receiver(huge), BlackHole()
    upstream.items = list(ITEMS)
    cfg = write_config(yaml.safe_dump({
        "sources": [{"name": "tickets", "url": f"{upstream.url}/t", "interval": "200ms"}],
        "subscribers": [
            {"name": "good", "url": f"{good.url}/h", "secret": SECRET},
            {"name": "drip", "url": f"{slow.url}/h", "timeout": f"{DRIP_TIMEOUT:g}s",
             "retry": ["100ms", "100ms"]},
            {"name": "huge", "url": f"{big.url}/h", "retry": ["100ms"]},
            {"name": "hole", "url": f"{hole.url}/h", "timeout": f"{HOLE_TIMEOUT:g}s",
             "retry": ["100ms"]},
        ],
    }, sort_keys=False))  # fmt: skip
    proc = daemon(cfg).start()
    upstream.wait_for(2)  # the baseline and one more poll
    assert proc.proc is not None
    rss_before = peak_rss_mb(proc.proc.pid)

    upstream.items = [*ITEMS, {"id": 3}, {"id": 4}, {"id": 5}]  # three events for everyone
    good.wait_accepted(3)
    # the healthy subscriber got all three while the others' first attempts are still open
    assert attempts(proc.db, "hole") == [], "the healthy receiver waited for the silent one"
    wait_until(lambda: hole.accepted() >= 3, "the silent receiver's three connections")

    wait_until(
        lambda: statuses(proc.db, "drip") == [("delivered", 3)] * 3, "drip: delivered on try 3"
    )
    wait_until(
        lambda: statuses(proc.db, "huge") == [("delivered", 2)] * 3, "huge: delivered on try 2"
    )
    wait_until(lambda: statuses(proc.db, "hole") == [("dead", 2)] * 3, "hole: dead after 2 tries")
    rss_growth = peak_rss_mb(proc.proc.pid) - rss_before
    assert proc.stop() == 0

    # drip: each too-slow answer is a timeout at the subscriber's timeout, not at its end
    rows = attempts(proc.db, "drip")
    assert len(rows) == 9 and len({r[0] for r in rows}) == 3
    for event_id in {r[0] for r in rows}:
        mine = [r for r in rows if r[0] == event_id]
        assert [r[1] for r in mine] == [None, None, 200], mine
        for _, _, error, ms, _ in mine[:2]:
            assert error == f"timed out after {DRIP_TIMEOUT:g}s"
            assert DRIP_TIMEOUT * 1000 * 0.9 <= ms < DRIP_TIMEOUT * 1000 + 3000, ms
    # huge: the status decides (500 retried, 200 delivered); only 4 KB of 50 MB kept
    rows = attempts(proc.db, "huge")
    assert sorted(r[1] for r in rows) == [200] * 3 + [500] * 3
    assert all(r[4] == "E" * 4096 for r in rows), [len(r[4] or "") for r in rows]
    assert rss_growth < 40, f"peak memory grew {rss_growth:.0f} MB: 50 MB answers were buffered"
    assert max(sent) < HUGE // 4, f"pollhook read on past the 4 KB it keeps: {sent}"
    # silent: every attempt a timeout, then dead
    rows = attempts(proc.db, "hole")
    assert len(rows) == 6 and all(r[1] is None for r in rows)
    assert all(r[2] == f"timed out after {HOLE_TIMEOUT:g}s" for r in rows), rows
    assert hole.accepted() == 6
    # and each event went to every subscriber under one id
    ids = {r.headers["webhook-id"] for r in good.accepted()}
    assert (
        {r[0] for r in attempts(proc.db, "hole")}
        == ids
        == {r[0] for r in attempts(proc.db, "drip")}
    )
    for server in (good, slow, big, hole):
        server.close()


# -- upstreams ---------------------------------------------------------------------------


def _json(body: Any, status: int = 200) -> Callable[[Request, BaseHTTPRequestHandler], Reply]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return lambda req, h: (status, {"content-type": "application/json"}, data)


def _hang(up: Upstream) -> Callable[[Request, BaseHTTPRequestHandler], Reply]:
    def fault(req: Request, h: BaseHTTPRequestHandler) -> Reply:
        up.release.wait(3)  # far past the source's 500ms timeout, then a tempting answer
        return 200, {"content-type": "application/json"}, json.dumps([*ITEMS, INVENTED]).encode()

    return fault


def _truncated(req: Request, h: BaseHTTPRequestHandler) -> Reply:
    body = json.dumps([*ITEMS, INVENTED]).encode()
    head = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n" % (
        len(body) + 500
    )  # fmt: skip
    raw_reply(h, head, iter([body[:-1]]))  # all but the closing bracket, 501 bytes short
    h.connection.shutdown(socket.SHUT_RDWR)
    return -1, {}, b""


def _slow_drip(req: Request, h: BaseHTTPRequestHandler) -> Reply:
    body = json.dumps([*ITEMS, INVENTED]).encode()  # valid, complete, and 3 s long
    head = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n" % len(
        body
    )
    raw_reply(h, head, drip(body), gap=3.0 / len(body))
    return -1, {}, b""


def _huge(up: Upstream, chunked: bool) -> Callable[[Request, BaseHTTPRequestHandler], Reply]:
    total = 200 * 1000 * 1000

    def body() -> Iterator[bytes]:  # 200 MB of valid JSON, generated, never held anywhere
        first = json.dumps([*ITEMS, INVENTED]).encode()[:-1]
        yield first
        pad = b" " * 65536
        left = total - len(first) - 1
        while left > 0:
            yield pad[: min(left, len(pad))]
            left -= len(pad)
        yield b"]"

    def fault(req: Request, h: BaseHTTPRequestHandler) -> Reply:
        framing = b"transfer-encoding: chunked" if chunked else b"content-length: %d" % total
        head = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n%s\r\n\r\n" % framing
        up.sent.append(raw_reply(h, head, body(), chunked=chunked))  # type: ignore[attr-defined]
        return -1, {}, b""

    return fault


def _empty_once(up: Upstream) -> Callable[[Request, BaseHTTPRequestHandler], Reply]:
    def fault(req: Request, h: BaseHTTPRequestHandler) -> Reply:
        up.fault = None  # the next poll sees the full list again
        return 200, {"content-type": "application/json"}, b"[]"

    return fault


def _redirect_loop(req: Request, h: BaseHTTPRequestHandler) -> Reply:
    return 302, {"location": req.path}, b""


def _refuse(up: Upstream) -> None:
    """Close the listening socket; connections kept alive are hung up on their next request."""
    up.httpd.shutdown()
    up.httpd.server_close()
    up.fault = lambda req, h: (h.connection.shutdown(socket.SHUT_RDWR), (-1, {}, b""))[1]


def _listen_again(up: Upstream) -> None:
    httpd = type(up.httpd)(("127.0.0.1", up.port), up.httpd.RequestHandlerClass)
    httpd.daemon_threads = True
    up.httpd = httpd
    up.thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    up.thread.start()
    up.fault = None


@dataclass
class Fault:
    name: str
    apply: Callable[[Upstream], None]
    error: str  # what `pollhook status` must show as the source's last error
    remove: Callable[[Upstream], None] = lambda up: setattr(up, "fault", None)
    source: dict[str, Any] = field(default_factory=dict)  # extra source settings
    fails: bool = True  # False: the poll succeeds but must still change nothing
    check: Callable[[Upstream, int, float], None] | None = None  # (upstream, pid, rss before)


def _set(
    fault: Callable[[Upstream], Callable[[Request, BaseHTTPRequestHandler], Reply]],
) -> Callable[[Upstream], None]:
    return lambda up: setattr(up, "fault", fault(up))


def _streamed_little(up: Upstream, pid: int, rss_before: float) -> None:
    sent = up.sent  # type: ignore[attr-defined]
    assert sent and max(sent) < 100 * 1000 * 1000, f"pollhook read {max(sent)} bytes of 200 MB"
    assert peak_rss_mb(pid) - rss_before < 60, "the body was held in memory"


FAULTS = [
    Fault("timeout", _set(_hang), "timed out after 0.5s", source={"timeout": "500ms"}),
    Fault("refused", _refuse, "Cannot connect to host", remove=_listen_again),
    Fault("http-500", _set(lambda up: _json(b"upstream broke", 500)), "HTTP 500"),
    Fault("reset", _set(lambda up: lambda req, h: reset_connection(h)), "Connection reset by peer"),
    Fault("not-http", _set(lambda up: lambda req, h: garbage_reply(h)), "Bad status line"),
    Fault(
        "html-200",
        _set(
            lambda up: (
                lambda req, h: (
                    200,
                    {"content-type": "text/html"},
                    b"<html><body>Down for maintenance</body></html>",
                )
            )
        ),
        "HTML page",
    ),
    Fault("truncated-json", _set(lambda up: _truncated), "payload is not completed"),
    Fault(
        "wrong-shape-object", _set(lambda up: _json({"items": [*ITEMS, INVENTED]})), "not a list"
    ),
    Fault("wrong-shape-scalars", _set(lambda up: _json([1, 2, 666])), "not a string or number"),
    Fault(
        "duplicate-keys",
        _set(lambda up: _json([*ITEMS, INVENTED, {"id": 1, "status": "x"}])),
        "duplicate key '1'",
    ),
    Fault(
        "body-200MB-declared",
        _set(lambda up: _huge(up, chunked=False)),
        "exceeds max_body_size",
        check=_streamed_little,
    ),
    Fault(
        "body-200MB-chunked",
        _set(lambda up: _huge(up, chunked=True)),
        "exceeds max_body_size",
        source={"max_body_size": "5MB"},
        check=_streamed_little,
    ),
    Fault(
        "invalid-utf8",
        _set(lambda up: _json(b'[{"id": 1, "status": "caf\xe9"}, {"id": 666}]')),
        "not valid JSON",
    ),
    Fault("slow-drip", _set(lambda up: _slow_drip), "timed out after 1s", source={"timeout": "1s"}),
    Fault("redirect-loop", _set(lambda up: _redirect_loop), "too many redirects"),
    Fault("empty-list-once", _set(_empty_once), "", fails=False),
]


def status_of(cfg: Path, db: Path) -> dict[str, Any]:
    """`pollhook status --json`'s source row, through the CLI's own code, in-process (fast)."""
    args = build_parser().parse_args(["status", "--json", "-c", str(cfg), "--db", str(db)])
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert args.func(args) == 0
    (row,) = json.loads(out.getvalue())["sources"]
    return dict(row)


def held(db: Path) -> Any:
    return query(db, "SELECT held_deletes FROM sources")[0][0]


def failures(db: Path) -> int:
    rows = query(db, "SELECT consecutive_failures FROM sources")
    return int(rows[0][0]) if rows else 0


@pytest.mark.parametrize("fault", FAULTS, ids=[f.name for f in FAULTS])
def test_upstream_fault_is_never_an_event_and_heals_itself(
    fault: Fault, write_config: Any, daemon: Any
) -> None:
    up = Upstream(list(ITEMS))
    up.sent = []  # type: ignore[attr-defined]
    hooks, ops = Receiver(), Receiver()
    cfg = write_config(yaml.safe_dump({
        "sources": [{"name": "api", "url": f"{up.url}/items", "interval": "100ms",
                     "failing_after": 2, **fault.source}],
        "subscribers": [
            {"name": "hooks", "url": f"{hooks.url}/h", "secret": SECRET, "retry": ["100ms"] * 5},
            {"name": "ops", "url": f"{ops.url}/h", "events": ["source.failing", "source.recovered"],
             "retry": ["100ms"] * 5},
        ],
    }, sort_keys=False))  # fmt: skip
    proc = daemon(cfg).start()
    up.wait_for(2)  # baseline recorded and confirmed
    assert proc.proc is not None
    rss_before = peak_rss_mb(proc.proc.pid)
    items_before = query(proc.db, "SELECT key, hash FROM items ORDER BY key")

    fault.apply(up)
    if fault.fails:
        wait_until(lambda: failures(proc.db) >= 2, f"failed polls under {fault.name}")
        status = status_of(cfg, proc.db)
        assert status["consecutive_failures"] >= 2 and status["outcome"] == "failing", status
        assert fault.error in (status["last_error"] or ""), status["last_error"]
        ops.wait_accepted(1)  # told once that the source is failing
    else:  # one empty answer: held back as a suspected wipe, cleared by the next full list
        wait_until(lambda: held(proc.db) is not None, "the empty list held back")
        wait_until(lambda: held(proc.db) is None, "the hold cleared by a full list")
        assert failures(proc.db) == 0
    assert query(proc.db, "SELECT key, hash FROM items ORDER BY key") == items_before
    assert query(proc.db, "SELECT COUNT(*) FROM events WHERE type LIKE 'item.%'") == [(0,)]
    if fault.check:
        fault.check(up, proc.proc.pid, rss_before)

    # the fault goes away; the next real change is the only event anyone ever sees
    up.items = [*ITEMS, SENTINEL]
    fault.remove(up)
    hooks.wait_accepted(1)
    if fault.fails:
        ops.wait_accepted(2)
    wait_until(lambda: failures(proc.db) == 0, "the failure count reset")
    up.wait_for(up.count() + 2)  # a few more polls: still nothing else
    assert proc.stop() == 0

    events = hooks.events()
    assert [(e["type"], e["data"]["key"]) for e in events] == [("item.created", "99")], events
    assert events[0]["data"]["item"] == SENTINEL
    health = [(e["type"], e["data"]["source"]) for e in ops.events()]
    expected = [("source.failing", "api"), ("source.recovered", "api")] if fault.fails else []
    assert health == expected
    assert status_of(cfg, proc.db)["consecutive_failures"] == 0
    assert "Traceback" not in proc.output()
    for server in (up, hooks, ops):
        server.close()


def test_fault_catalogue_is_complete() -> None:
    """Issue 7's list of upstream faults, each covered above (docs/reliability.md counts them)."""
    names = {f.name for f in FAULTS}
    for wanted in ("timeout", "refused", "http-500", "html-200", "truncated-json",
                   "wrong-shape-object", "duplicate-keys", "body-200MB-chunked", "invalid-utf8",
                   "slow-drip", "redirect-loop", "empty-list-once"):  # fmt: skip
        assert wanted in names


def test_a_followed_redirect_is_a_plain_get(write_config: Any, tmp_path: Path) -> None:
    def moved(req: Request, h: BaseHTTPRequestHandler) -> Reply:
        if req.path == "/old":
            return 301, {"location": "/new"}, b""
        return 200, {"content-type": "application/json"}, json.dumps(ITEMS).encode()

    up = Upstream()
    up.fault = moved
    cfg = write_config(yaml.safe_dump(
        {"sources": [{"name": "api", "url": f"{up.url}/old", "interval": "1s"}]}
    ))  # fmt: skip
    result = pollhook("run", "--once", "-c", str(cfg), "--db", str(tmp_path / "r.db"))
    assert result.returncode == 0, result.stderr
    (followed,) = [r for r in up.arrived if r.path == "/new"]
    up.close()
    assert "transfer-encoding" not in followed.headers, followed.headers
    assert "content-type" not in followed.headers, followed.headers
