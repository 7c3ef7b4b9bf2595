"""Crash safety: SIGKILL the real daemon again and again while the upstream keeps changing.

Afterwards the receiver's view, rebuilt from the events it accepted, must equal
the upstream's final state (nothing lost), every event must describe a state
the upstream really served (nothing invented), duplicates may only repeat an
already-seen webhook-id with the same bytes, and each item's events must have
been accepted in the order they were detected (a later one is never attempted
before the earlier one is delivered, across every kill).

The upstream sends a strong ETag and answers If-None-Match with 304, changes
only on every other request, and now and then serves an empty list for one or
three requests: a held wipe that the next full list releases, or that a 304
confirms. At the end it empties for good, and only 304s follow: the receiver
must still converge to an empty list.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import threading
import time
from typing import Any

from conftest import WAIT, wait_until
from servers import Receiver, Upstream

KILLS = int(os.environ.get("POLLHOOK_KILLS", "25"))
WIPE_EVERY = 10  # steps


class ChangingApi:
    """Every other request advances one step: create item k, update k-2, delete k-4."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.items: dict[str, dict[str, Any]] = {}
        self.step = 0
        self.requests = 0
        self.wiping = 0  # requests left that get an empty list
        self.frozen = False
        self.wiped = False  # the final wipe: an empty list for good
        self.served: dict[str, list[dict[str, Any]]] = {}  # every version of every item served
        self.statuses: list[int] = []
        self.wipes = 0

    def reply(self, req: Any, handler: Any) -> tuple[int, dict[str, str], bytes]:
        with self.lock:
            self.requests += 1
            if not self.frozen and self.requests % 2 == 0:
                self._advance()
            empty = self.wiped or self.wiping > 0
            self.wiping = max(self.wiping - 1, 0)
            listed = [] if empty else sorted(self.items.values(), key=lambda i: i["id"])
            body = json.dumps(listed).encode()
            etag = f'"{hashlib.sha256(body).hexdigest()[:16]}"'
            if req.headers.get("if-none-match") == etag:
                self.statuses.append(304)
                return 304, {"etag": etag}, b""
            for item in listed:
                self.served.setdefault(str(item["id"]), []).append(dict(item))
            self.statuses.append(200)
        return 200, {"content-type": "application/json", "etag": etag}, body

    def _advance(self) -> None:
        self.step += 1
        k = self.step
        self.items[str(k)] = {"id": k, "version": 0}
        if str(k - 2) in self.items:
            self.items[str(k - 2)] = {"id": k - 2, "version": self.items[str(k - 2)]["version"] + 1}
        self.items.pop(str(k - 4), None)
        if k % WIPE_EVERY == 0:  # alternately released by the next list, confirmed by a 304
            self.wipes += 1
            self.wiping = 1 if self.wipes % 2 else 3


def rebuild(receiver: Receiver) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Apply each distinct accepted event once, in detection order."""
    unique: dict[str, bytes] = {}
    for req in sorted(receiver.accepted(), key=lambda r: r.at):  # the order of arrival
        wid = req.headers["webhook-id"]
        assert unique.setdefault(wid, req.body) == req.body, "a duplicate id carried other bytes"
    events = sorted((json.loads(body) | {"id": wid} for wid, body in unique.items()),
                    key=lambda e: (e["timestamp"], e["id"]))  # fmt: skip
    state: dict[str, Any] = {}
    arrived: dict[str, list[str]] = {}  # per item, ids in order of first acceptance
    for wid, body in unique.items():
        arrived.setdefault(json.loads(body)["data"]["key"], []).append(wid)
    for key, ids in arrived.items():
        detected = [e["id"] for e in events if e["data"]["key"] == key]
        assert ids == detected, f"item {key}: accepted {ids}, detected {detected}"
    for event in events:
        key, data = event["data"]["key"], event["data"]
        if event["type"] == "item.deleted":
            assert key in state, f"delete of {key} that was never created"
            del state[key]
        else:
            assert (key in state) == (event["type"] == "item.updated"), event
            state[key] = data["item"]
    return state, events


def test_repeated_sigkill_loses_and_invents_nothing(write_config, daemon, tmp_path) -> None:  # type: ignore[no-untyped-def]
    rng = random.Random(7)
    api = ChangingApi()
    upstream = Upstream()
    upstream.fault = api.reply
    receiver = Receiver(
        plan=lambda i, req: (500, {}, b"flaky") if rng.random() < 0.2 else (204, {}, b"")
    )
    cfg = write_config(f"""
        sources:
          - name: churn
            url: {upstream.url}/items
            interval: 100ms
            emit_initial: true   # the baseline arrives too, so the receiver can rebuild it all
        subscribers:
          - name: sink
            url: {receiver.url}/hooks
            retry: [{", ".join(["1s"] * 30)}]   # longer than the gap between events of an item
        """)  # fmt: skip
    db = tmp_path / "state.db"
    for _ in range(KILLS):
        proc = daemon(cfg, db).start()
        upstream.wait_for(upstream.count() + rng.randint(1, 4))
        time.sleep(rng.uniform(0, 0.15))  # a random moment to kill at, not a wait for an event
        proc.kill()

    final = daemon(cfg, db).start()
    upstream.wait_for(upstream.count() + 2)
    with api.lock:
        api.frozen, api.wiping = True, 0
        expected = {k: dict(v) for k, v in api.items.items()}
    wait_until(
        lambda: rebuild(receiver)[0] == expected, "the receiver to converge", timeout=WAIT * 2
    )
    state, events = rebuild(receiver)
    assert state == expected
    with api.lock:
        api.wiped = True  # empty for good: held, then confirmed by a 304
        wiped_at = len(api.statuses)
    wait_until(lambda: rebuild(receiver)[0] == {}, "the final wipe delivered", timeout=WAIT * 2)
    assert final.stop() == 0
    assert 304 in api.statuses[wiped_at:]  # the held wipe saw 304s (proven ETags)

    state, events = rebuild(receiver)
    for event in events:  # nothing invented: every item version was really served
        item = event["data"]["item"] or event["data"]["previous"]
        assert item in api.served[event["data"]["key"]], event
    duplicates = len(receiver.accepted()) - len(events)
    print(f"kills={KILLS} steps={api.step} wipes={api.wipes + 1} events={len(events)} "
          f"duplicates={duplicates} 304s={api.statuses.count(304)} "
          f"receiver_requests={receiver.count()}")  # fmt: skip
    assert api.step > KILLS and len(events) > KILLS and api.wipes >= 2
    upstream.close()
    receiver.close()
