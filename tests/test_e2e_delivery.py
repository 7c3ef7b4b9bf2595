"""Webhook delivery end to end: real upstreams, real receivers, the real daemon process.

Every wait is bounded and wakes on what it waits for (a request at a server,
a row in the state file); no fixed sleeps. Timing assertions are lower bounds,
except a few upper bounds set by CONTRACT.md (SIGTERM: 10 s) or by the
property under test (a retry not waiting for a slow answer), each at least
four times what the daemon needs, so they hold on a loaded 2-core machine.
"""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path
from typing import Any

import yaml
from standardwebhooks.webhooks import Webhook

from conftest import SECRET, pollhook, query, wait_until
from servers import Receiver, Request, Upstream, garbage_reply, reset_connection

FAST = 15.0  # "promptly": far below a hanging receiver's 60 s timeout, generous under load


def make_config(
    write_config: Any, sources: dict[str, Upstream], subscribers: list[dict[str, Any]]
) -> Path:
    """A config polling each upstream every 200ms, with the given subscribers."""
    doc = {
        "sources": [
            {"name": name, "url": f"{up.url}/{name}", "interval": "200ms", "key": "id"}
            for name, up in sources.items()
        ],
        "subscribers": subscribers,
    }
    return write_config(yaml.safe_dump(doc, sort_keys=False))


def sub(name: str, receiver: Receiver | str, **extra: Any) -> dict[str, Any]:
    url = receiver if isinstance(receiver, str) else f"{receiver.url}/hooks"
    return {"name": name, "url": url, "secret": SECRET, "retry": ["100ms", "100ms"], **extra}


def cli_json(cfg: Path, db: Path, *args: str) -> Any:
    result = pollhook(*args, "--json", "-c", str(cfg), "--db", str(db))
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def deliveries(cfg: Path, db: Path, *args: str) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = cli_json(cfg, db, "deliveries", *args)
    return rows


def statuses(db: Path, subscriber: str) -> list[str]:
    return [
        r[0] for r in query(db, "SELECT status FROM deliveries WHERE subscriber = ?", subscriber)
    ]


def all_in(db: Path, subscriber: str, status: str, n: int) -> bool:
    got = statuses(db, subscriber)
    return len(got) == n and all(s == status for s in got)


def baseline(upstream: Upstream) -> None:
    """Wait until the first poll (a silent baseline) and one more were served."""
    upstream.wait_for(upstream.count() + 2)


def add_items(upstream: Upstream, *ids: int) -> None:
    upstream.items = upstream.items + [{"id": i, "status": "open"} for i in ids]


def ids_of(requests: list[Request]) -> list[str]:
    return [r.headers["webhook-id"] for r in requests]


def closed_port_url() -> str:
    """A local URL nothing listens on: connections are refused."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/hooks"


# -- 1. retries --------------------------------------------------------------------------


def test_failed_attempts_are_retried_with_same_id_and_fresh_signature(
    upstream, write_config, daemon
):  # type: ignore[no-untyped-def]
    long_error = b"boom: " + b"E" * 10_000  # more than the 4 KB pollhook keeps

    def plan(i: int, req: Request) -> tuple[int, dict[str, str], bytes]:
        if i == 0:
            return 500, {"content-type": "text/plain"}, long_error
        if i == 1:
            return reset_connection(req.handler)
        return 200, {}, b"thanks"

    receiver = Receiver(plan)
    upstream.items = [{"id": 1}]
    # retry delays over 1.25 s (after at most 20% jitter, still over a second), so each
    # attempt lands in a later second and must carry a new timestamp and signature
    cfg = make_config(write_config, {"tickets": upstream},
                      [sub("hooks", receiver, retry=["1300ms", "1300ms", "1300ms"])])  # fmt: skip
    proc = daemon(cfg).start()
    baseline(upstream)
    add_items(upstream, 2)
    receiver.wait_accepted(1)
    wait_until(lambda: all_in(proc.db, "hooks", "delivered", 1), "delivery recorded")

    tries = receiver.arrived
    assert len(tries) == 3
    assert len(set(ids_of(tries))) == 1
    stamps = [int(r.headers["webhook-timestamp"]) for r in tries]
    assert stamps == sorted(set(stamps)), f"timestamps not fresh per attempt: {stamps}"
    assert len({r.headers["webhook-signature"] for r in tries}) == 3
    for req in tries:
        assert abs(int(req.headers["webhook-timestamp"]) - req.at) < 5
        Webhook(SECRET).verify(req.body, req.headers)
        assert req.body == tries[0].body  # the exact same bytes every time

    (row,) = deliveries(cfg, proc.db)
    assert row["event_id"] == tries[0].headers["webhook-id"]
    assert (row["status"], row["attempts"], row["last_status"]) == ("delivered", 3, 200)
    attempts = cli_json(cfg, proc.db, "deliveries", "--attempts", str(row["id"]))
    assert [a["status_code"] for a in attempts] == [500, None, 200]
    first, reset, ok = attempts
    assert first["error"] == "HTTP 500"
    assert first["response_body"].startswith("boom: EEEE")
    assert 100 <= len(first["response_body"]) <= 4096
    assert reset["error"] and reset["response_body"] is None
    assert ok["error"] is None and ok["response_body"] == "thanks"
    assert proc.stop() == 0
    receiver.close()


# -- 2. isolation ------------------------------------------------------------------------


def test_hanging_receiver_does_not_delay_other_subscribers(upstream, write_config, daemon):  # type: ignore[no-untyped-def]
    hanging = Receiver()
    hanging.plan = lambda i, req: (hanging.release.wait(), (200, {}, b""))[1]
    good = Receiver()
    flaky = Receiver(lambda i, req: (503, {}, b"busy") if i < 8 else (200, {}, b"ok"))
    upstream.items = [{"id": 0}]
    subs = [sub("stuck", hanging, timeout="60s", sources=["tickets"]),
            sub("good", good, sources=["tickets"]),
            sub("flaky", flaky, sources=["flaky"], retry=["100ms"] * 8)]  # fmt: skip
    flaky_source = Upstream([{"id": 0}])
    cfg = make_config(write_config, {"tickets": upstream, "flaky": flaky_source}, subs)
    proc = daemon(cfg).start()
    baseline(upstream)
    baseline(flaky_source)

    add_items(upstream, *range(1, 13))  # 12 events: more than the stuck one's 10 in flight
    hanging.wait_arrived(1, timeout=FAST)
    good.wait_accepted(12, timeout=FAST)
    assert hanging.open_requests() >= 1 and hanging.count() == 0
    add_items(upstream, 13)  # detected while the other receiver still holds requests open
    good.wait_accepted(13, timeout=FAST)
    hanging.wait_arrived(10, timeout=FAST)
    assert hanging.count() == 0
    assert hanging.open_requests() == 10  # its own in-flight limit, and nothing more

    # a short retry schedule elsewhere runs on time while those requests stay open
    add_items(flaky_source, 1)
    flaky.wait_accepted(1, timeout=FAST)
    took = flaky.requests[-1].at - flaky.requests[0].at
    assert hanging.count() == 0 and len(flaky.requests) == 9
    assert took < 5.0, f"8 retries 100ms apart took {took:.1f}s next to a hanging receiver"

    # SIGTERM while requests hang: out within 10 s, the cut-off ones kept for the restart
    stopping = time.monotonic()
    assert proc.stop() == 0
    assert time.monotonic() - stopping < 10
    assert all_in(proc.db, "stuck", "pending", 13)
    proc = daemon(cfg).start()
    hanging.wait_arrived(20)  # the 10 cut off are sent again
    hanging.release.set()
    wait_until(lambda: all_in(proc.db, "stuck", "delivered", 13), "all delivered after restart")
    assert set(ids_of(hanging.arrived)) == set(ids_of(good.accepted()))
    assert proc.stop() == 0
    for server in (hanging, good, flaky, flaky_source):
        server.close()


# -- 3. redirects ------------------------------------------------------------------------


def test_redirects_are_not_followed(upstream, write_config, daemon):  # type: ignore[no-untyped-def]
    elsewhere = Receiver()
    target = f"{elsewhere.url}/hooks"
    moving = Receiver(lambda i, req: ((301, 302, 307)[i % 3], {"location": target}, b"moved"))
    upstream.items = [{"id": 1}]
    cfg = make_config(write_config, {"tickets": upstream}, [sub("moved", moving)])
    proc = daemon(cfg).start()
    baseline(upstream)
    add_items(upstream, 2)
    wait_until(lambda: all_in(proc.db, "moved", "dead", 1), "delivery dead after 3 redirects")

    assert moving.count() == 3 and len(set(ids_of(moving.requests))) == 1
    assert elsewhere.arrived == []
    (row,) = deliveries(cfg, proc.db, "--status", "dead")
    assert (row["attempts"], row["last_status"]) == (3, 307)
    assert "redirect" in row["last_error"] and target in row["last_error"]
    assert proc.stop() == 0
    moving.close()
    elsewhere.close()


# -- 4. 429 and Retry-After ----------------------------------------------------------


def test_429_retry_after_is_honoured(upstream, write_config, daemon):  # type: ignore[no-untyped-def]
    receiver = Receiver(
        lambda i, req: (429, {"retry-after": "2"}, b"slow down") if i == 0 else (200, {}, b"ok")
    )
    upstream.items = [{"id": 1}]
    cfg = make_config(
        write_config, {"tickets": upstream}, [sub("hooks", receiver, retry=["100ms"])]
    )
    proc = daemon(cfg).start()
    baseline(upstream)
    add_items(upstream, 2)
    receiver.wait_accepted(1)
    first, second = receiver.requests
    gap = second.at - first.at
    assert gap >= 0.8 * 2 - 0.05, f"retried {gap:.2f}s after a 429 with Retry-After: 2"
    assert first.headers["webhook-id"] == second.headers["webhook-id"]
    assert proc.stop() == 0
    receiver.close()


# -- 5. 410 Gone pauses ----------------------------------------------------------------


def test_410_pauses_subscriber_until_resumed(upstream, write_config, daemon):  # type: ignore[no-untyped-def]
    gone = Receiver(lambda i, req: (410, {}, b"gone") if i == 0 else (200, {}, b"back"))
    other = Receiver()
    upstream.items = [{"id": 1}]
    cfg = make_config(write_config, {"tickets": upstream}, [sub("gone", gone), sub("other", other)])
    proc = daemon(cfg).start()
    baseline(upstream)
    add_items(upstream, 2)
    gone.wait_for(1)
    wait_until(
        lambda: (
            query(proc.db, "SELECT paused_at FROM subscribers WHERE name = 'gone'")
            and query(proc.db, "SELECT paused_at FROM subscribers WHERE name = 'gone'")[0][0]
        ),
        "subscriber paused",
    )
    add_items(upstream, 3, 4)
    other.wait_accepted(3)
    upstream.wait_for(upstream.count() + 3)  # a few more dispatch rounds
    assert gone.count() == 1, "a paused subscriber was attempted again"
    kept = deliveries(cfg, proc.db, "--subscriber", "gone")
    assert [r["status"] for r in kept] == ["pending"] * 3
    assert sorted(r["attempts"] for r in kept) == [0, 0, 1]  # the 410 answer was an attempt

    result = pollhook("resume", "gone", "-c", str(cfg), "--db", str(proc.db))
    assert result.returncode == 0 and "resumed gone" in result.stdout
    gone.wait_accepted(3)
    wait_until(lambda: all_in(proc.db, "gone", "delivered", 3), "kept deliveries delivered")
    assert sorted(ids_of(gone.accepted())) == sorted(ids_of(other.accepted()))
    assert proc.stop() == 0
    gone.close()
    other.close()


# -- 6. dead and replay ----------------------------------------------------------------


def test_dead_deliveries_can_be_replayed_while_running(upstream, write_config, daemon):  # type: ignore[no-untyped-def]
    state = {"up": False}
    receiver = Receiver(lambda i, req: (200, {}, b"ok") if state["up"] else (503, {}, b"down"))
    refused = closed_port_url()
    upstream.items = [{"id": 1}]
    cfg = make_config(write_config, {"tickets": upstream},
                      [sub("hooks", receiver), sub("nowhere", refused, retry=["100ms"])])  # fmt: skip
    proc = daemon(cfg).start()
    baseline(upstream)
    add_items(upstream, 2, 3)
    wait_until(lambda: all_in(proc.db, "hooks", "dead", 2), "two dead deliveries")
    wait_until(lambda: all_in(proc.db, "nowhere", "dead", 2), "refused ones dead too")
    assert receiver.count() == 6  # 1 + 2 retries each
    dead = deliveries(cfg, proc.db, "--status", "dead", "--subscriber", "hooks")
    assert {r["last_status"] for r in dead} == {503} and {r["attempts"] for r in dead} == {3}
    refused_rows = deliveries(cfg, proc.db, "--subscriber", "nowhere")
    assert all(r["last_status"] is None and r["attempts"] == 2 for r in refused_rows)
    assert all("connect" in r["last_error"].lower() for r in refused_rows), refused_rows

    state["up"] = True
    result = pollhook(
        "replay", "--dead", "--subscriber", "hooks", "-c", str(cfg), "--db", str(proc.db)
    )
    assert result.returncode == 0 and "queued 2" in result.stdout, result.stderr
    receiver.wait_accepted(2)
    assert sorted(ids_of(receiver.accepted())) == sorted(r["event_id"] for r in dead)
    wait_until(lambda: all_in(proc.db, "hooks", "delivered", 2), "replayed deliveries delivered")

    event_id = dead[0]["event_id"]
    result = pollhook(
        "replay", event_id, "--subscriber", "hooks", "-c", str(cfg), "--db", str(proc.db)
    )
    assert result.returncode == 0, result.stderr
    receiver.wait_accepted(3)
    assert receiver.accepted()[-1].headers["webhook-id"] == event_id
    Webhook(SECRET).verify(receiver.accepted()[-1].body, receiver.accepted()[-1].headers)
    assert proc.stop() == 0
    receiver.close()


# -- 7. routing ------------------------------------------------------------------------


def test_routing_by_source_and_event_type_and_late_subscribers(write_config, daemon):  # type: ignore[no-untyped-def]
    a, b = Upstream([{"id": 1}]), Upstream([{"id": 1}])
    every, deletes, only_b, late = Receiver(), Receiver(), Receiver(), Receiver()
    subs = [
        sub("every", every),
        sub("deletes", deletes, events=["item.deleted"]),
        sub("only_b", only_b, sources=["b"]),
    ]
    cfg = make_config(write_config, {"a": a, "b": b}, subs)
    proc = daemon(cfg).start()
    baseline(a)
    baseline(b)
    add_items(a, 2)  # a: created
    add_items(b, 2)  # b: created
    every.wait_accepted(2)
    a.items = [{"id": 2, "status": "open"}]  # a: deleted 1
    b.items = [{"id": 1}]  # b: deleted 2
    every.wait_accepted(4)
    deletes.wait_accepted(2)
    only_b.wait_accepted(2)
    wait_until(lambda: all_in(proc.db, "only_b", "delivered", 2), "all recorded")
    assert proc.stop() == 0

    def seen(r: Receiver) -> list[tuple[str, str, str]]:
        return sorted((e["data"]["source"], e["type"], e["data"]["key"]) for e in r.events())

    assert seen(every) == [("a", "item.created", "2"), ("a", "item.deleted", "1"),
                           ("b", "item.created", "2"), ("b", "item.deleted", "2")]  # fmt: skip
    assert seen(deletes) == [("a", "item.deleted", "1"), ("b", "item.deleted", "2")]
    assert seen(only_b) == [("b", "item.created", "2"), ("b", "item.deleted", "2")]
    routes = query(proc.db, "SELECT subscriber, COUNT(*) FROM deliveries GROUP BY subscriber")
    assert dict(routes) == {"every": 4, "deletes": 2, "only_b": 2}

    # a subscriber added later gets only what is detected after it was configured
    cfg = make_config(write_config, {"a": a, "b": b}, [*subs, sub("late", late)])
    proc = daemon(cfg).start()
    baseline(a)
    add_items(a, 7)
    late.wait_accepted(1)
    every.wait_accepted(5)
    assert [(e["type"], e["data"]["key"]) for e in late.events()] == [("item.created", "7")]
    assert late.requests[0].headers["webhook-id"] == every.requests[-1].headers["webhook-id"]
    assert query(proc.db, "SELECT COUNT(*) FROM deliveries WHERE subscriber = 'late'") == [(1,)]
    assert proc.stop() == 0
    for server in (a, b, every, deletes, only_b, late):
        server.close()


# -- 8. timeouts and malformed answers ----------------------------------------------------


def test_timeout_and_malformed_answer_are_recorded_and_retried(upstream, write_config, daemon):  # type: ignore[no-untyped-def]
    def plan(i: int, req: Request) -> tuple[int, dict[str, str], bytes]:
        if i == 0:
            receiver.release.wait(5)  # answers after 5 s, far past the 500ms timeout
            return 200, {}, b"too late"
        if i == 1:
            return garbage_reply(req.handler)
        return 200, {}, b"ok"

    receiver = Receiver(plan)
    upstream.items = [{"id": 1}]
    cfg = make_config(write_config, {"tickets": upstream},
                      [sub("hooks", receiver, timeout="500ms", retry=["100ms", "100ms"])])  # fmt: skip
    proc = daemon(cfg).start()
    baseline(upstream)
    add_items(upstream, 2)
    wait_until(lambda: all_in(proc.db, "hooks", "delivered", 1), "delivered on the third try")
    arrived = receiver.arrived
    assert len(arrived) == 3 and len(set(ids_of(arrived))) == 1
    assert arrived[1].at - arrived[0].at < 4.5, "the retry waited for the slow answer"

    (row,) = deliveries(cfg, proc.db)
    timeout, garbage, ok = cli_json(cfg, proc.db, "deliveries", "--attempts", str(row["id"]))
    assert timeout["status_code"] is None and "timed out after 0.5s" in timeout["error"]
    assert 450 <= timeout["duration_ms"] < 4500
    assert garbage["status_code"] is None and garbage["error"]
    assert ok["status_code"] == 200
    assert proc.stop() == 0
    receiver.close()


# -- 9. run --once ---------------------------------------------------------------------


def test_run_once_polls_delivers_due_and_exits(upstream, write_config, tmp_path):  # type: ignore[no-untyped-def]
    good = Receiver()
    down = Receiver(lambda i, req: (503, {}, b"down"))
    upstream.items = [{"id": 1}]
    cfg = make_config(write_config, {"tickets": upstream},
                      [sub("good", good), sub("down", down, retry=["1h"])])  # fmt: skip
    db = tmp_path / "once.db"

    def once() -> Any:
        return pollhook("run", "--once", "-c", str(cfg), "--db", str(db))

    result = once()
    assert result.returncode == 0, result.stderr
    assert upstream.count() == 1 and good.arrived == [] and down.arrived == []

    add_items(upstream, 2)
    result = once()
    assert result.returncode == 0, result.stderr
    assert upstream.count() == 2
    # answered before the process exited: no waiting here
    assert len(good.accepted()) == 1 and len(down.arrived) == 1
    Webhook(SECRET).verify(good.requests[0].body, good.requests[0].headers)
    assert dict(query(db, "SELECT subscriber, status FROM deliveries")) == {
        "good": "delivered", "down": "pending",
    }  # fmt: skip

    result = once()  # nothing new, and the failed delivery is not due for an hour
    assert result.returncode == 0 and upstream.count() == 3 and len(down.arrived) == 1

    before = query(db, "SELECT COUNT(*) FROM events")
    items_before = query(db, "SELECT key, hash FROM items ORDER BY key")
    add_items(upstream, 3)
    upstream.fault = lambda req, h: (500, {}, b"upstream broke")
    result = once()
    assert result.returncode == 1
    assert "tickets" in result.stderr and "Traceback" not in result.stderr
    assert query(db, "SELECT COUNT(*) FROM events") == before
    assert query(db, "SELECT key, hash FROM items ORDER BY key") == items_before
    assert len(good.arrived) == 1 and len(down.arrived) == 1
    good.close()
    down.close()


# -- 10. single instance -----------------------------------------------------------------


def test_second_daemon_on_same_state_file_is_refused(upstream, receiver, write_config, daemon):  # type: ignore[no-untyped-def]
    upstream.items = [{"id": 1}]
    cfg = make_config(write_config, {"tickets": upstream}, [sub("hooks", receiver)])
    proc = daemon(cfg).start()
    upstream.wait_for(1)
    for extra in ([], ["--once"]):
        result = pollhook("run", *extra, "-c", str(cfg), "--db", str(proc.db))
        assert result.returncode == 1, (extra, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, result.stderr
        assert "already running" in lines[0] and str(proc.db) in lines[0]
        assert str(proc.proc.pid) in lines[0]
    add_items(upstream, 2)  # the first daemon is unharmed
    receiver.wait_accepted(1)
    assert proc.stop() == 0


# -- 11. custom headers ----------------------------------------------------------------


def test_custom_headers_sent_but_cannot_override_webhook_headers(
    upstream, receiver, write_config, daemon, monkeypatch
):  # type: ignore[no-untyped-def]
    monkeypatch.setenv("HOOK_TOKEN", "s3cret")
    headers = {"X-Tenant": "acme", "Authorization": "Bearer ${HOOK_TOKEN}"}
    for reserved in ("webhook-id", "Webhook-Timestamp", "WEBHOOK-SIGNATURE", "Content-Type"):
        bad = make_config(
            write_config, {"tickets": upstream}, [sub("hooks", receiver, headers={reserved: "x"})]
        )
        result = pollhook("check", "-c", str(bad))
        assert result.returncode == 2 and f"header '{reserved}' is set by pollhook" in result.stderr
    upstream.items = [{"id": 1}]
    cfg = make_config(
        write_config, {"tickets": upstream}, [sub("hooks", receiver, headers=headers)]
    )
    proc = daemon(cfg).start()
    baseline(upstream)
    add_items(upstream, 2)
    (req,) = receiver.wait_accepted(1)
    assert req.headers["x-tenant"] == "acme"
    assert req.headers["authorization"] == "Bearer s3cret"

    def sent(name: str) -> list[str]:
        return [v for k, v in req.raw_headers if k.lower() == name]

    event_id = query(proc.db, "SELECT id FROM events")[0][0]
    assert sent("webhook-id") == [event_id]
    assert len(sent("webhook-timestamp")) == 1 and len(sent("webhook-signature")) == 1
    assert sent("content-type") == ["application/json"]
    Webhook(SECRET).verify(req.body, req.headers)
    assert proc.stop() == 0
