"""Crash safety: SIGKILL the real daemon again and again while the upstream keeps changing.

Afterwards the receiver's view, rebuilt from the events it accepted, must equal
the upstream's final state (nothing lost), every event must describe a state
the upstream really served (nothing invented), and duplicates may only repeat
an already-seen webhook-id with the same bytes.
"""

from __future__ import annotations

import json
import os
import random
import threading
import time
from typing import Any

from conftest import WAIT, wait_until
from servers import Receiver, Upstream

KILLS = int(os.environ.get("POLLHOOK_KILLS", "25"))


class ChangingApi:
    """Each poll served advances one step: create item k, update k-2, delete k-4."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.items: dict[str, dict[str, Any]] = {}
        self.step = 0
        self.frozen = False
        self.served: dict[str, list[dict[str, Any]]] = {}  # every version of every item served

    def reply(self, req: Any, handler: Any) -> tuple[int, dict[str, str], bytes]:
        with self.lock:
            if not self.frozen:
                self._advance()
            body = json.dumps(sorted(self.items.values(), key=lambda i: i["id"])).encode()
            for item in self.items.values():
                self.served.setdefault(str(item["id"]), []).append(dict(item))
        return 200, {"content-type": "application/json"}, body

    def _advance(self) -> None:
        self.step += 1
        k = self.step
        self.items[str(k)] = {"id": k, "version": 0}
        if str(k - 2) in self.items:
            self.items[str(k - 2)] = {"id": k - 2, "version": self.items[str(k - 2)]["version"] + 1}
        self.items.pop(str(k - 4), None)


def rebuild(receiver: Receiver) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Apply each distinct accepted event once, in detection order."""
    unique: dict[str, bytes] = {}
    for req in receiver.accepted():
        wid = req.headers["webhook-id"]
        assert unique.setdefault(wid, req.body) == req.body, "a duplicate id carried other bytes"
    events = sorted((json.loads(body) | {"id": wid} for wid, body in unique.items()),
                    key=lambda e: (e["timestamp"], e["id"]))  # fmt: skip
    state: dict[str, Any] = {}
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
            retry: [{", ".join(["100ms"] * 30)}]
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
        api.frozen = True
        expected = {k: dict(v) for k, v in api.items.items()}
    wait_until(
        lambda: rebuild(receiver)[0] == expected, "the receiver to converge", timeout=WAIT * 2
    )
    assert final.stop() == 0

    state, events = rebuild(receiver)
    assert state == expected
    for event in events:  # nothing invented: every item version was really served
        item = event["data"]["item"] or event["data"]["previous"]
        assert item in api.served[event["data"]["key"]], event
    duplicates = len(receiver.accepted()) - len(events)
    print(f"kills={KILLS} steps={api.step} events={len(events)} duplicates={duplicates} "
          f"receiver_requests={receiver.count()}")  # fmt: skip
    assert api.step > KILLS and len(events) > KILLS
    upstream.close()
    receiver.close()
