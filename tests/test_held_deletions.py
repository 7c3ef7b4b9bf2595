"""A held mass deletion is confirmed, or released, by the next complete poll: 200 or 304.

Every test runs the real daemon (or `run --once`) against a real upstream on
127.0.0.1 and a real receiver. The upstreams answer If-None-Match as a server
would: an honest one from a hash of the body, a hostile one from a constant
ETag whatever it serves.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
from pathlib import Path
from typing import Any

from conftest import pollhook, query, wait_until
from servers import Receiver, Reply, Request, _Server

ITEMS = [{"id": 1}, {"id": 2}, {"id": 3}]


class EtagApi(_Server):
    """Serves `items` as JSON with an ETag; answers 304 when If-None-Match matches.

    `constant` makes the ETag one value forever (validators that never change);
    `wipe_once` serves one empty list to the next request that is not answered 304.
    """

    def __init__(self, constant: bool = False) -> None:
        self.items: list[dict[str, Any]] = list(ITEMS)
        self.constant = constant
        self.wipe_once = False
        self.served: list[tuple[int, Any]] = []  # (status, items) per answered request
        self.lock = threading.Lock()
        super().__init__()

    def respond(self, req: Request, handler: Any) -> Reply:
        with self.lock:
            body = json.dumps(self.items).encode()
            etag = '"same"' if self.constant else f'"{hashlib.sha256(body).hexdigest()[:12]}"'
            if req.headers.get("if-none-match") == etag:
                self.served.append((304, None))
                return 304, {"etag": etag}, b""
            if self.wipe_once:
                self.wipe_once, body = False, b"[]"
            self.served.append((200, json.loads(body)))
            return 200, {"content-type": "application/json", "etag": etag}, body


def config(tmp_path: Path, api: EtagApi, receiver: Receiver, interval: str = "200ms") -> Path:
    path = tmp_path / "sources.yaml"
    path.write_text(
        f"sources:\n  - name: list\n    url: {api.url}/list\n    interval: {interval}\n"
        f"subscribers:\n  - name: hooks\n    url: {receiver.url}/hooks\n    retry: [100ms]\n"
    )
    return path


def deletes(receiver: Receiver) -> list[str]:
    return sorted(e["data"]["key"] for e in receiver.events() if e["type"] == "item.deleted")


def held(db: Path) -> Any:
    rows = query(db, "SELECT held_deletes FROM sources")
    return rows[0][0] if rows else None


def baseline(db: Path) -> bool:
    """The daemon recorded its first poll (the file and its tables may not exist yet)."""
    try:
        return db.exists() and query(db, "SELECT items_count FROM sources") == [(3,)]
    except sqlite3.OperationalError:  # no such table: the daemon is still creating it
        return False


def test_a_held_wipe_is_confirmed_by_a_304(tmp_path: Path, daemon: Any) -> None:
    """The issue's case: 3 items, then an empty list, then only 304s."""
    api, receiver = EtagApi(), Receiver()
    proc = daemon(config(tmp_path, api, receiver)).start()
    wait_until(lambda: baseline(proc.db), "a baseline")
    with api.lock:
        api.items = []
    wait_until(lambda: held(proc.db) is not None, "the wipe held back")
    receiver.wait_accepted(3)
    assert proc.stop() == 0

    assert deletes(receiver) == ["1", "2", "3"]
    assert held(proc.db) is None
    wipe = next(i for i, (status, items) in enumerate(api.served) if items == [])
    assert [status for status, _ in api.served[wipe + 1 :]] == [304] * (len(api.served) - wipe - 1)
    # confirmed by the poll right after the wipe: before the one after it was even asked
    [(detected,)] = query(proc.db, "SELECT max(created_at) FROM events")
    if len(api.arrived) > wipe + 2:  # `arrived` is in the order served
        assert detected < api.arrived[wipe + 2].at
    status = pollhook("status", "--json", "-c", str(proc.config), "--db", str(proc.db))
    [row] = json.loads(status.stdout)["sources"]
    assert (row["held_deletions"], row["items_count"], row["validators"]) == (0, 0, "proven")
    api.close()
    receiver.close()


def test_run_once_confirms_a_held_wipe_with_a_304(tmp_path: Path) -> None:
    api, receiver = EtagApi(), Receiver()
    cfg = config(tmp_path, api, receiver)
    db = str(tmp_path / "once.db")

    def once() -> None:
        done = pollhook("run", "--once", "-c", str(cfg), "--db", db)
        assert done.returncode == 0, done.stderr

    once()  # the baseline
    api.items = []
    once()  # the wipe, held (a first poll of a process is never conditional)
    assert held(Path(db)) is not None and receiver.events() == []
    once()  # a 304 to the ETag of the empty list: confirmed
    assert [s for s, _ in api.served] == [200, 200, 304]
    assert deletes(receiver) == ["1", "2", "3"]
    assert held(Path(db)) is None
    api.close()
    receiver.close()


def test_the_same_bytes_confirm_a_held_wipe_without_parsing(tmp_path: Path, daemon: Any) -> None:
    """No validators at all: the second empty body is recognised by its digest."""
    from servers import Upstream

    upstream, receiver = Upstream(list(ITEMS)), Receiver()
    cfg = tmp_path / "sources.yaml"
    cfg.write_text(
        f"sources:\n  - name: list\n    url: {upstream.url}/list\n    interval: 200ms\n"
        f"subscribers:\n  - name: hooks\n    url: {receiver.url}/hooks\n"
    )
    proc = daemon(cfg).start()
    wait_until(lambda: baseline(proc.db), "a baseline")
    upstream.items = []
    receiver.wait_accepted(3)
    assert proc.stop() == 0
    assert deletes(receiver) == ["1", "2", "3"]
    upstream.close()
    receiver.close()


def test_a_304_from_untrusted_validators_never_confirms_a_wipe(tmp_path: Path, daemon: Any) -> None:
    """One ETag forever: the empty list once, then the items again. Nothing is deleted.

    The empty list makes the ETag a liar (other items under it): the poll after
    it is unconditional, sees the items and releases the hold.
    """
    api, receiver = EtagApi(constant=True), Receiver()
    proc = daemon(config(tmp_path, api, receiver)).start()
    wait_until(lambda: baseline(proc.db), "a baseline")
    with api.lock:
        api.wipe_once = True
    wait_until(lambda: any(items == [] for _, items in api.served), "the empty list served")
    wait_until(lambda: held(proc.db) is not None, "the wipe held back")
    wait_until(lambda: held(proc.db) is None, "the hold released")
    api.wait_for(len(api.served) + 2)
    assert proc.stop() == 0
    assert receiver.events() == []
    wipe = next(i for i, (_, items) in enumerate(api.served) if items == [])
    after = api.arrived[wipe + 1 :]
    assert after and all("if-none-match" not in r.headers for r in after)
    assert "conditional requests are off" in proc.output()
    api.close()
    receiver.close()
