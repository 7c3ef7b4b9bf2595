"""Order per item: one subscriber gets the events of one item in detection order.

A later event of an item (same source and key) is not attempted before the
earlier one is delivered or dead; other items and health events never wait.
The rule is in the outbox query, so the first tests check it on a real state
file directly; the rest run the real daemon, `run --once`, a restart and a
replay against real receivers.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from pollhook.outbox import Outcome
from pollhook.store import NewEvent, PollWrite, Store

from conftest import pollhook, query, wait_until
from servers import Receiver, Reply, Request, Upstream

# -- the query, on a real state file -------------------------------------------------------


@pytest.fixture
def store(tmp_path: Path) -> Any:
    made = Store(tmp_path / "state.db")
    yield made
    made.close()


def detect(store: Store, *events: tuple[str, str | None], subs: tuple[str, ...] = ("a",),
           at: float = 100.0) -> list[str]:  # fmt: skip
    """One poll's events: (type, key) each, in detection order; their ids."""
    news = [
        NewEvent(f"msg_{at:.0f}_{n}", "src", kind, key, b"{}", subs)
        for n, (kind, key) in enumerate(events)
    ]
    store.commit_poll(PollWrite("src", "fp", [], [], news, 0), at)
    return [e.id for e in news]


def due(store: Store, sub: str = "a", now: float = 1000.0, exclude: Any = ()) -> list[str]:
    return [d.event_id for d in store.due_deliveries(sub, now, 100, exclude)]


def answer(store: Store, event_id: str, status: str, next_at: float | None = None) -> None:
    [(delivery_id, sub, attempts)] = store.db.conn.execute(
        "SELECT id, subscriber, attempts FROM deliveries WHERE event_id = ?", (event_id,)
    ).fetchall()
    store.record_outcomes([Outcome(delivery_id, 500.0, 500 if status != "delivered" else 204, 1.0,
                                   None, None, status, attempts + 1, next_at, sub, event_id)])  # fmt: skip


def test_a_later_event_of_an_item_waits_until_the_earlier_is_delivered(store: Store) -> None:
    created, updated = detect(store, ("item.created", "1"), ("item.updated", "1"))
    [deleted] = detect(store, ("item.deleted", "1"), at=200.0)
    assert due(store) == [created]
    answer(store, created, "delivered")
    assert due(store) == [updated]
    answer(store, updated, "dead")  # dead lets the next one go too
    assert due(store) == [deleted]


def test_a_failed_earlier_event_keeps_the_later_waiting_and_sets_the_wake_up(store: Store) -> None:
    created, _ = detect(store, ("item.created", "1"), ("item.updated", "1"))
    answer(store, created, "pending", next_at=2000.0)  # failed; its retry is later
    assert due(store) == []
    # the later one is due by its own time but has none: the worker sleeps until the retry
    assert store.next_due_at(["a"]) == 2000.0
    assert due(store, now=2000.0) == [created]
    assert due(store, now=2000.0, exclude=[1]) == []  # in flight: still in the way


def test_other_items_subscribers_and_health_events_never_wait(store: Store) -> None:
    first = detect(store, ("item.created", "1"), subs=("a", "b"))
    later = detect(store, ("item.updated", "1"), ("item.created", "2"), ("source.failing", None),
                   ("source.recovered", None), subs=("a", "b"), at=200.0)  # fmt: skip
    assert due(store) == [first[0], *later[1:]]
    for_b = store.due_deliveries("b", 1000.0, 100)
    assert [d.event_id for d in for_b] == [first[0], *later[1:]]
    assert [d.item for d in for_b] == ["src/1", "src/2", None, None]


def test_a_replayed_delivery_takes_its_original_place(store: Store) -> None:
    created, updated = detect(store, ("item.created", "1"), ("item.updated", "1"))
    answer(store, created, "delivered")
    assert due(store) == [updated]
    store.replay_event(created, ["a"], 300.0)
    assert due(store) == [created]  # the replayed earlier event goes first again


def test_a_schema_3_file_gains_the_item_of_each_delivery(tmp_path: Path) -> None:
    import sqlite3

    from pollhook.store import _MIGRATIONS, SCHEMA_VERSION

    db = tmp_path / "old.db"
    conn = sqlite3.connect(db)
    for version in (1, 2, 3):
        conn.executescript(_MIGRATIONS[version])
    conn.executemany(
        "INSERT INTO events (id, source, type, key, created_at, body) VALUES (?, 's', ?, ?, 1, '{}')",
        [("e1", "item.created", "7"), ("e2", "item.updated", "7"), ("e3", "source.failing", None)],
    )
    conn.executemany(
        "INSERT INTO deliveries (event_id, subscriber, status, next_attempt_at, created_at,"
        " updated_at) VALUES (?, 'a', 'pending', 1, 1, 1)",
        [("e1",), ("e2",), ("e3",)],
    )
    conn.execute("PRAGMA user_version = 3")
    conn.commit()
    conn.close()
    migrated = Store(db)
    try:
        assert [d.event_id for d in migrated.due_deliveries("a", 10.0, 10)] == ["e1", "e3"]
        assert query(db, "SELECT item FROM deliveries ORDER BY id") == [("s/7",), ("s/7",), (None,)]
        assert query(db, "PRAGMA user_version") == [(SCHEMA_VERSION,)]
    finally:
        migrated.close()


# -- the real daemon, run --once, restarts and replay ----------------------------------------


class Gate:
    """A receiver plan: answers by event, and records when each answer was sent."""

    def __init__(self) -> None:
        self.fail: set[tuple[str, str]] = set()  # (type, key) answered 500 while listed
        self.slow: dict[tuple[str, str], float] = {}  # (type, key) → seconds before answering
        self.answered: dict[str, float] = {}  # webhook-id → when its 2xx was sent
        self.lock = threading.Lock()

    def __call__(self, index: int, req: Request) -> Reply:
        event = json.loads(req.body)
        what = (event["type"], event["data"]["key"])
        if what in self.fail:
            return 500, {}, b"not now"
        time.sleep(self.slow.get(what, 0.0))  # a slow receiver: the point of the test
        with self.lock:
            self.answered.setdefault(req.headers["webhook-id"], time.time())
        return 204, {}, b""


def in_order(receiver: Receiver) -> list[Request]:
    """Accepted webhooks by arrival (a handler may record its answer after the next one's)."""
    return sorted(receiver.accepted(), key=lambda r: r.at)


def accepted(receiver: Receiver) -> list[tuple[str, str]]:
    return [(e["type"], e["data"]["key"]) for e in (json.loads(r.body) for r in in_order(receiver))]


def config(tmp_path: Path, upstream: Upstream, receiver: Receiver, retry: list[str]) -> Path:
    path = tmp_path / "sources.yaml"
    path.write_text(yaml.safe_dump({
        "sources": [{"name": "src", "url": f"{upstream.url}/items", "interval": "200ms"}],
        "subscribers": [{"name": "hooks", "url": f"{receiver.url}/hooks", "retry": retry}],
    }))  # fmt: skip
    return path


def events_in(db: Path) -> int:
    try:
        return int(query(db, "SELECT count(*) FROM events")[0][0]) if db.exists() else 0
    except Exception:  # the daemon is still creating the file
        return 0


def test_daemon_keeps_item_order_across_a_failure_and_a_restart(tmp_path: Path, daemon: Any) -> None:
    gate = Gate()
    upstream, receiver = Upstream([]), Receiver(plan=gate)
    cfg = config(tmp_path, upstream, receiver, ["1s", "1s", "1s"])
    proc = daemon(cfg).start()
    upstream.wait_for(2)  # the (empty) baseline is recorded
    gate.fail.add(("item.created", "1"))
    upstream.items = [{"id": 1, "v": 0}]
    wait_until(lambda: receiver.count() >= 1, "the first attempt of item 1's creation")
    upstream.items = [{"id": 1, "v": 1}, {"id": 2, "v": 0}]  # item 1 changes; item 2 is new
    receiver.wait_accepted(1)  # item 2 does not wait for item 1
    assert accepted(receiver) == [("item.created", "2")]
    wait_until(lambda: events_in(proc.db) == 3, "item 1's update detected")
    proc.kill()  # SIGKILL with item 1's update waiting behind its failed creation

    proc = daemon(cfg).start()
    upstream.wait_for(upstream.count() + 3)  # the restarted daemon runs, and holds it back
    assert accepted(receiver) == [("item.created", "2")]
    gate.fail.clear()
    receiver.wait_accepted(3)
    assert proc.stop() == 0
    assert accepted(receiver) == [
        ("item.created", "2"), ("item.created", "1"), ("item.updated", "1")
    ]
    upstream.close()
    receiver.close()


def test_run_once_attempts_what_became_due_behind_an_answered_event(tmp_path: Path) -> None:
    gate = Gate()
    upstream, receiver = Upstream([]), Receiver(plan=gate)
    cfg = config(tmp_path, upstream, receiver, ["100ms", "1h"])
    db = str(tmp_path / "once.db")

    def once() -> None:
        done = pollhook("run", "--once", "-c", str(cfg), "--db", db)
        assert done.returncode == 0, done.stderr

    once()  # the baseline
    gate.fail.add(("item.created", "1"))
    upstream.items = [{"id": 1, "v": 0}]
    once()  # created: answered 500, retried in 100 ms
    gate.fail.clear()
    gate.slow[("item.created", "1")] = 0.3
    upstream.items = [{"id": 1, "v": 1}]
    retry_due(Path(db))  # so the creation is due in the next run
    once()  # the creation's retry, then (once it is delivered) the update: both in this run
    assert accepted(receiver) == [("item.created", "1"), ("item.updated", "1")]
    created, updated = in_order(receiver)
    assert updated.at >= gate.answered[created.headers["webhook-id"]]  # not attempted before

    gate.fail.add(("item.updated", "1"))
    upstream.items = [{"id": 1, "v": 2}, {"id": 2, "v": 0}]
    once()  # the update fails (next try in 100 ms) ...
    upstream.items = [{"id": 1, "v": 3}, {"id": 2, "v": 0}]
    gate.fail.clear()
    retry_due(Path(db))
    once()  # ... and is due again: the newer update waits behind it, in this same run
    kinds = accepted(receiver)
    assert kinds[2:] == [("item.created", "2"), ("item.updated", "1"), ("item.updated", "1")]
    versions = [json.loads(r.body)["data"]["item"]["v"] for r in in_order(receiver)[3:]]
    assert versions == [2, 3]
    upstream.close()
    receiver.close()


def test_replayed_dead_deliveries_go_out_in_their_original_order(tmp_path: Path, daemon: Any) -> None:
    gate = Gate()
    upstream, receiver = Upstream([]), Receiver(plan=gate)
    cfg = config(tmp_path, upstream, receiver, ["100ms"])
    proc = daemon(cfg).start()
    upstream.wait_for(2)
    gate.fail |= {("item.created", "1"), ("item.updated", "1")}
    upstream.items = [{"id": 1, "v": 0}]
    wait_until(lambda: "dead" in statuses(proc.db), "the creation dead")
    upstream.items = [{"id": 1, "v": 1}]
    wait_until(lambda: statuses(proc.db) == ["dead", "dead"], "the update dead too")
    gate.fail.clear()
    gate.slow[("item.created", "1")] = 0.3  # a slow answer would let an unordered update pass
    done = pollhook("replay", "--dead", "--subscriber", "hooks", "-c", str(cfg),
                    "--db", str(proc.db))  # fmt: skip
    assert done.returncode == 0, done.stderr
    receiver.wait_accepted(2)
    assert proc.stop() == 0
    assert accepted(receiver) == [("item.created", "1"), ("item.updated", "1")]
    created, updated = in_order(receiver)
    assert updated.at >= gate.answered[created.headers["webhook-id"]]
    upstream.close()
    receiver.close()


def retry_due(db: Path) -> None:
    """Wait until every pending delivery's retry time has come."""
    wait_until(
        lambda: query(db, "SELECT max(next_attempt_at) FROM deliveries WHERE status = 'pending'")
        [0][0] <= time.time(),
        "the retry delay to pass",
    )


def statuses(db: Path) -> list[str]:
    return [row[0] for row in query(db, "SELECT status FROM deliveries ORDER BY id")]
