"""Storage faults against the real daemon: read-only, full, locked and corrupt state files.

Each ends in a clear error (one line naming the file, no traceback), leaves no
partial state (no event without its item state, no item state without its
events), and heals once the fault is gone: a change the upstream made during
the fault is then delivered exactly once.

The tests run as root in CI, which ignores file modes, so read-only files and
full disks are real mounts: a small tmpfs, and a read-only bind mount of the
state file itself. Where mounting is not allowed those tests skip, saying why.
"""

from __future__ import annotations

import errno
import json
import os
import random
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import SECRET, pollhook, query, wait_until
from servers import Receiver, Upstream

ITEMS = [{"id": 1, "status": "open"}, {"id": 2, "status": "open"}]


def config(write_config: Any, upstream: Upstream, receiver: Receiver) -> Path:
    path: Path = write_config(f"""
        sources:
          - name: api
            url: {upstream.url}/items
            interval: 100ms
        subscribers:
          - name: hooks
            url: {receiver.url}/h
            secret: {SECRET}
            retry: [100ms, 100ms, 100ms, 100ms, 100ms]
        """)  # fmt: skip
    return path


def one_clear_line(result: subprocess.CompletedProcess[str], db: Path) -> str:
    """Exit 1, one line on stderr naming the state file, no traceback."""
    assert result.returncode == 1, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert str(db) in lines[0], lines[0]
    return lines[0]


def settled(db: Path) -> bool:
    """The baseline is recorded (a row with a fingerprint)."""
    try:
        rows = query(db, "SELECT fingerprint FROM sources")
    except sqlite3.OperationalError:
        return False
    return bool(rows and rows[0][0])


def snapshot(db: Path) -> tuple[Any, ...]:
    """What a poll writes: items, events and deliveries (all must move together)."""
    return (
        query(db, "SELECT source, key, hash FROM items ORDER BY source, key"),
        query(db, "SELECT id FROM events ORDER BY id"),
        query(db, "SELECT event_id, subscriber FROM deliveries ORDER BY id"),
    )


def integrity(db: Path) -> str:
    return str(query(db, "PRAGMA integrity_check")[0][0])


@pytest.fixture
def mounts(tmp_path: Path) -> Iterator[Callable[..., Path]]:
    """`mounts(name, size=...)` a fresh tmpfs; `mounts(file, bind_ro=True)` a read-only file."""
    done: list[Path] = []

    def mount(target: Path | str, size: str = "8m", bind_ro: bool = False) -> Path:
        path = target if isinstance(target, Path) else tmp_path / target
        if bind_ro:
            steps = [["mount", "--bind", str(path), str(path)],
                     ["mount", "-o", "remount,ro,bind", str(path)]]  # fmt: skip
        else:
            path.mkdir()
            steps = [["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)]]
        for step in steps:
            try:
                result = subprocess.run(step, capture_output=True, text=True)
            except FileNotFoundError:
                pytest.skip("no `mount` command here; these faults need real mounts")
            if result.returncode != 0:
                pytest.skip(f"cannot mount here ({' '.join(step[:3])}: {result.stderr.strip()});"
                            " these faults need root with CAP_SYS_ADMIN")  # fmt: skip
            if step is steps[0]:
                done.append(path)
        return path

    yield mount
    for path in reversed(done):
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def umount(path: Path) -> None:
    subprocess.run(["umount", str(path)], check=True, capture_output=True)


# -- read-only ---------------------------------------------------------------------------


def test_read_only_state_is_refused_at_start_and_heals(
    upstream: Upstream, receiver: Receiver, write_config: Any, daemon: Any, mounts: Any
) -> None:
    disk = mounts("disk")
    db = disk / "state.db"
    upstream.items = list(ITEMS)
    cfg = config(write_config, upstream, receiver)
    proc = daemon(cfg, db).start()
    wait_until(lambda: settled(db), "the baseline")
    assert proc.stop() == 0
    before = snapshot(db)
    upstream.items = [*ITEMS, {"id": 3, "status": "new"}]  # a change made while it cannot write

    # the file itself read-only (chmod 0444 for everyone, root included)
    mounts(db, bind_ro=True)
    polled = upstream.count()
    for command in (["run"], ["run", "--once"]):
        line = one_clear_line(pollhook(*command, "-c", str(cfg), "--db", str(db), timeout=20), db)
        assert "read-only" in line or "readonly" in line, line
    assert upstream.count() == polled, "it polled although it could record nothing"
    result = pollhook("status", "--json", "-c", str(cfg), "--db", str(db))
    assert result.returncode == 0 and '"api"' in result.stdout, result.stderr  # reading still works
    umount(db)

    # the whole folder read-only (a read-only mount)
    subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
    line = one_clear_line(pollhook("run", "-c", str(cfg), "--db", str(db), timeout=20), db)
    assert "read-only" in line, line
    subprocess.run(["mount", "-o", "remount,rw", str(disk)], check=True)
    assert snapshot(db) == before and receiver.arrived == []

    proc = daemon(cfg, db).start()
    (hook,) = receiver.wait_accepted(1)
    assert proc.stop() == 0
    assert [(e["type"], e["data"]["key"]) for e in receiver.events()] == [("item.created", "3")]
    assert hook.headers["webhook-id"] == query(db, "SELECT id FROM events")[0][0]
    assert integrity(db) == "ok"


# -- disk full ---------------------------------------------------------------------------


def fill(disk: Path) -> Path:
    """Write a file until the disk is full, down to the last byte."""
    filler = disk / "filler"
    fd = os.open(filler, os.O_CREAT | os.O_WRONLY, 0o600)
    try:
        for size in (1 << 16, 1 << 12, 1):
            block = b"\0" * size
            while True:
                try:
                    os.write(fd, block)
                except OSError as exc:
                    assert exc.errno == errno.ENOSPC, exc
                    break
    finally:
        os.close(fd)
    return filler


def test_disk_full_fails_polls_cleanly_and_recovers(
    upstream: Upstream, write_config: Any, daemon: Any, mounts: Any
) -> None:
    disk = mounts("small", size="6m")
    db = disk / "state.db"
    gate = {"open": False}
    receiver = Receiver(lambda i, req: (200, {}, b"ok") if gate["open"] else (503, {}, b"later"))
    upstream.items = list(ITEMS)
    cfg = config(write_config, upstream, receiver)
    proc = daemon(cfg, db).start()
    wait_until(lambda: settled(db), "the baseline")
    upstream.items = [*ITEMS, {"id": 3, "status": "before the disk filled"}]
    receiver.wait_for(1)  # detected and recorded; its delivery is failing for now
    before = snapshot(db)

    filler = fill(disk)
    big = {"id": 4, "status": "written while full", "pad": "x" * 500_000}
    upstream.items = [*upstream.items, big]
    gate["open"] = True  # the first event's delivery succeeds now, while nothing can be written
    wait_until(lambda: "disk is full" in proc.output(), "a poll failing on the full disk")
    upstream.wait_for(upstream.count() + 3)  # it keeps polling, and keeps failing cleanly
    assert proc.proc is not None and proc.proc.poll() is None, "the daemon died"
    assert snapshot(db)[0] == before[0] and snapshot(db)[1] == before[1], "partial state"
    assert integrity(db) == "ok"

    filler.unlink()
    wait_until(lambda: len({r.headers["webhook-id"] for r in receiver.accepted()}) == 2,
               "both events delivered once space is back")  # fmt: skip
    wait_until(lambda: query(db, "SELECT COUNT(*) FROM deliveries WHERE status != 'delivered'")
               == [(0,)], "outcomes recorded")  # fmt: skip
    assert proc.stop() == 0
    assert len(receiver.accepted()) == 2, "an outcome kept in memory was sent again"
    events = {e["data"]["key"]: e for e in (json.loads(r.body) for r in receiver.accepted())}
    assert sorted(events) == ["3", "4"]
    assert events["4"]["type"] == "item.created" and events["4"]["data"]["item"] == big
    assert integrity(db) == "ok"
    assert "Traceback" not in proc.output()
    assert "database or disk is full" in proc.output()


# -- locked by another process ---------------------------------------------------------------

LOCKER = textwrap.dedent("""
    import sqlite3, sys
    conn = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=30)
    conn.execute("BEGIN EXCLUSIVE")
    print("locked", flush=True)
    sys.stdin.readline()  # held until the test says so (or its pipe closes)
    conn.execute("ROLLBACK")
""")


def test_state_locked_by_another_process_waits_then_resumes(
    upstream: Upstream, receiver: Receiver, write_config: Any, daemon: Any, tmp_path: Path
) -> None:
    db = tmp_path / "state.db"
    upstream.items = list(ITEMS)
    cfg = config(write_config, upstream, receiver)
    proc = daemon(cfg, db).start()
    wait_until(lambda: settled(db), "the baseline")
    before = snapshot(db)

    locker = subprocess.Popen([sys.executable, "-c", LOCKER, str(db)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert locker.stdout is not None and locker.stdout.readline() == "locked\n"
        upstream.items = [*ITEMS, {"id": 3, "status": "new"}]
        # a write waits for the lock (10 s), then the poll fails cleanly and is retried
        wait_until(lambda: "database is locked" in proc.output(), "a poll giving up on the lock")
        assert proc.proc is not None and proc.proc.poll() is None, "the daemon died"
        assert snapshot(db) == before and receiver.arrived == []
    finally:
        assert locker.stdin is not None
        locker.stdin.close()  # release
        locker.wait(10)
        assert locker.stdout is not None
        locker.stdout.close()
    receiver.wait_accepted(1)
    wait_until(lambda: query(db, "SELECT status FROM deliveries") == [("delivered",)], "recorded")
    upstream.wait_for(upstream.count() + 3)
    assert proc.stop() == 0
    assert [(e["type"], e["data"]["key"]) for e in receiver.events()] == [("item.created", "3")]
    assert "Traceback" not in proc.output()


# -- corrupt ---------------------------------------------------------------------------------


def test_corrupt_state_file_is_one_clear_error_and_a_fresh_file_recovers(
    upstream: Upstream, receiver: Receiver, write_config: Any, tmp_path: Path
) -> None:
    upstream.items = list(ITEMS)
    cfg = config(write_config, upstream, receiver)
    db = tmp_path / "state.db"
    rng = random.Random(7)

    # random bytes where the state file should be
    db.write_bytes(rng.randbytes(64 * 1024))
    for command in (["run"], ["status"]):
        line = one_clear_line(pollhook(*command, "-c", str(cfg), "--db", str(db), timeout=20), db)
        assert "not a database" in line, line
    assert upstream.count() == 0

    # a real state file whose pages (all but the header page) were overwritten
    good = tmp_path / "good.db"
    assert pollhook("run", "--once", "-c", str(cfg), "--db", str(good)).returncode == 0
    upstream.items = [*ITEMS, {"id": 3}]
    assert pollhook("run", "--once", "-c", str(cfg), "--db", str(good)).returncode == 0
    receiver.wait_accepted(1)
    sqlite3.connect(good).execute("PRAGMA wal_checkpoint(TRUNCATE)").close()
    data = bytearray(good.read_bytes())
    page = 4096
    for at in range(page, len(data), page):
        data[at : at + page] = rng.randbytes(page)
    bad = tmp_path / "bad.db"
    bad.write_bytes(bytes(data))
    for command in (["status"], ["run"]):
        result = pollhook(*command, "-c", str(cfg), "--db", str(bad), timeout=20)
        if command != ["status"]:  # found only once the daemon reads a bad page: logs come first
            result.stderr = result.stderr.strip().splitlines()[-1]
        line = one_clear_line(result, bad)
        assert line.startswith("pollhook: error:") and "malformed" in line, line

    # the fault removed (the file moved aside): a fresh state file baselines and delivers again
    db.rename(tmp_path / "state.db.corrupt")
    assert pollhook("run", "--once", "-c", str(cfg), "--db", str(db)).returncode == 0
    upstream.items = [*upstream.items, {"id": 4}]
    assert pollhook("run", "--once", "-c", str(cfg), "--db", str(db)).returncode == 0
    receiver.wait_accepted(2)
    assert [e["data"]["key"] for e in receiver.events()] == ["3", "4"]


# -- retention horizon (found by the soak) -----------------------------------------------------


def test_events_no_one_waits_for_are_pruned_at_the_delivered_horizon(tmp_path: Path) -> None:
    """With `dead` longer than `delivered`, delivered events must not live as long as dead ones."""
    from pollhook.store import NewEvent, PollWrite, Store

    store = Store(tmp_path / "prune.db")
    now = 1_000_000.0
    events = [
        NewEvent(f"msg_{n}", "api", "item.created", str(n), b"{}", ("hooks",)) for n in (1, 2)
    ]
    store.commit_poll(PollWrite("api", "fp", [], [], events, 0), now)
    conn = store.db.conn
    conn.execute("UPDATE deliveries SET status = 'delivered' WHERE event_id = 'msg_1'")
    conn.execute("UPDATE deliveries SET status = 'dead' WHERE event_id = 'msg_2'")
    later = now + 120  # both finished two minutes ago; delivered: 60s, dead: 1h
    store.prune(delivered_before=later - 60, dead_before=later - 3600)
    assert query(tmp_path / "prune.db", "SELECT id FROM events") == [("msg_2",)]
    assert query(tmp_path / "prune.db", "SELECT event_id, status FROM deliveries") == [
        ("msg_2", "dead")
    ]
    store.close()


def test_pruning_and_lookups_do_not_grow_the_statement_cache(tmp_path: Path) -> None:
    """`IN (?, ?, ...)` of varying length is a new prepared statement each time; SQLite's
    statement cache keeps 128 of them, a few hundred KB each (found by the soak's memory)."""
    from pollhook.store import NewEvent, PollWrite, Store

    def rss_mb() -> float:
        status = Path("/proc/self/status").read_text()
        return int(next(x for x in status.splitlines() if x.startswith("VmRSS:")).split()[1]) / 1024

    store = Store(tmp_path / "cache.db")
    rounds, grown = 140, 0.0
    for n in range(rounds):
        count = 1000 + n  # a different number of rows, so a different IN list, each round
        events = [NewEvent(f"m{n}_{i}", "api", "item.created", str(i), b"{}", ("hooks",))
                  for i in range(count)]  # fmt: skip
        upserts = [(str(i), "h", b"{}") for i in range(count)]
        store.commit_poll(PollWrite("api", "fp", upserts, [], events, count), 1.0)
        store.db.conn.execute("UPDATE deliveries SET status = 'delivered', updated_at = 1")
        store.item_values("api", [str(i) for i in range(n + 1)])
        store.prune(delivered_before=2.0, dead_before=2.0)
        if n == 9:  # after a warm-up
            grown = rss_mb()
    grown = rss_mb() - grown
    store.close()
    assert grown < 8, f"memory grew {grown:.1f} MB over {rounds} prunes"
