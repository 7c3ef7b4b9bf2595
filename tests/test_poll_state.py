"""What the daemon keeps in memory between polls, checked against the real state file.

The poller keeps each source's state, the digest of its last body and a batch
of unchanged polls; the store keeps each source's item hashes. These tests run
a real `Daemon` in-process (so the caches live across polls) against a real
upstream and SQLite file, and check every cached fact against the file.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from pollhook import parsing
from pollhook import store as store_module
from pollhook.config import load_config
from pollhook.daemon import Daemon
from pollhook.store import _MIGRATIONS, HASH_CACHE_MIN, SCHEMA_VERSION, PollWrite, Store

from conftest import query
from servers import WAIT, Upstream

Rounds = Callable[[Callable[[Daemon], Awaitable[None]]], None]


@pytest.fixture
def rounds(tmp_path: Path, upstream: Upstream, write_config: Any) -> Rounds:
    """Run `steps(daemon)` against one in-process daemon over two sources on `upstream`."""
    config = write_config(f"""
        sources:
          - name: one
            url: {upstream.url}/one
            interval: 1h
          - name: two
            url: {upstream.url}/two
            interval: 1h
    """)

    def run(steps: Callable[[Daemon], Awaitable[None]]) -> None:
        async def main() -> None:
            async with Daemon(load_config(config), tmp_path / "state.db") as daemon:
                await steps(daemon)

        asyncio.run(main())

    return run


def _count_calls(monkeypatch: pytest.MonkeyPatch, owner: Any, name: str) -> list[Any]:
    calls: list[Any] = []
    original = getattr(owner, name)

    def spy(*args: Any, **kwargs: Any) -> Any:
        calls.append(args)
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, spy)
    return calls


def test_the_same_body_is_not_parsed_again_but_a_change_is(
    rounds: Rounds, upstream: Upstream, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    upstream.items = [{"id": 1, "v": "a"}]
    extracted = _count_calls(monkeypatch, parsing, "read_page")
    db = tmp_path / "state.db"

    async def steps(daemon: Daemon) -> None:
        await daemon.run_once()  # baseline: both sources parsed
        assert len(extracted) == 2
        await daemon.run_once()  # the same bytes: nothing parsed, nothing written but times
        assert len(extracted) == 2
        upstream.items = [{"id": 1, "v": "b"}]
        await daemon.run_once()
        assert len(extracted) == 4

    rounds(steps)
    assert query(db, "SELECT source, type FROM events ORDER BY source") == [
        ("one", "item.updated"),
        ("two", "item.updated"),
    ]
    assert len(upstream.requests) == 6  # every poll still went to the upstream


def test_the_digest_survives_a_restart_and_an_older_state_file_gains_it(
    rounds: Rounds, upstream: Upstream, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = tmp_path / "state.db"
    conn = sqlite3.connect(db)  # a state file as schema 2 left it
    for version in (1, 2):
        conn.executescript(_MIGRATIONS[version])
    conn.execute("PRAGMA user_version = 2")
    conn.close()
    upstream.items = [{"id": 1}]
    extracted = _count_calls(monkeypatch, parsing, "read_page")

    async def once(daemon: Daemon) -> None:
        await daemon.run_once()

    rounds(once)  # migrated, then the baseline
    rounds(once)  # a new process: the same bytes are recognised from the file
    assert len(extracted) == 2
    assert query(db, "PRAGMA user_version") == [(SCHEMA_VERSION,)]
    assert [len(d) for (d,) in query(db, "SELECT body_digest FROM sources")] == [16, 16]


MODIFIED = "Fri, 27 Nov 2026 08:00:00 GMT"


def test_the_same_body_with_a_new_etag_is_not_parsed_but_the_etag_is_stored(
    rounds: Rounds, upstream: Upstream, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Load-balanced servers send one body under several ETags: keep the newest."""
    upstream.items = [{"id": 1}]
    extracted = _count_calls(monkeypatch, parsing, "read_page")
    body = b'[{"id": 1}]'
    replies = iter(
        [
            (200, {"content-type": "application/json"}, body),
            (200, {"content-type": "application/json", "etag": '"v1"'}, body),
            (304, {}, b""),
            (200, {"content-type": "application/json", "last-modified": MODIFIED}, body),
        ]
    )
    db = tmp_path / "state.db"
    validators: list[list[tuple[Any, ...]]] = []

    async def steps(daemon: Daemon) -> None:
        await daemon.run_once()
        upstream.fault = lambda req, handler: next(replies)
        for _ in range(4):
            await daemon.poller.poll(daemon.config.sources[0])
            validators.append(query(db, "SELECT etag, last_modified FROM sources WHERE name = 'one'"))

    rounds(steps)
    assert len(extracted) == 2  # the baseline of both sources; the same bytes never again
    assert validators == [[(None, None)], [('"v1"', None)], [('"v1"', None)], [(None, MODIFIED)]]
    # in order of arrival: a handler thread may record its answer after the next request's
    assert upstream.arrived[-2].headers.get("if-none-match") == '"v1"'
    # an ETag not yet seen to change with the content is not sent twice in a row
    assert "if-none-match" not in upstream.arrived[-1].headers
    assert query(db, "SELECT count(*) FROM events") == [(0,)]


def test_state_is_read_once_per_source_and_kept_current(
    rounds: Rounds, upstream: Upstream, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    upstream.items = [{"id": 1}]
    reads = _count_calls(monkeypatch, Store, "source_states")
    single_reads = _count_calls(monkeypatch, Store, "source_state")
    db = tmp_path / "state.db"
    seen: dict[str, Any] = {}

    async def steps(daemon: Daemon) -> None:
        await daemon.run_once()
        upstream.fault = lambda req, handler: (500, {}, b"down")
        await daemon.run_once()
        await daemon.run_once()
        seen["failing"] = dict(daemon.poller._states)
        upstream.fault = None
        upstream.items = [{"id": 1}, {"id": 2}]
        await daemon.run_once()
        seen["after"] = dict(daemon.poller._states)

    rounds(steps)
    assert (len(reads), len(single_reads)) == (1, 0)  # all sources at once, in four rounds
    assert {s.consecutive_failures for s in seen["failing"].values()} == {2}
    fresh = Store(db)
    try:
        for name, cached in seen["after"].items():
            assert cached == fresh.source_state(name)
    finally:
        fresh.close()
    assert query(db, "SELECT items_count, consecutive_failures FROM sources") == [(2, 0)] * 2


def test_unchanged_polls_are_written_in_a_batch_that_never_turns_back_the_clock(
    rounds: Rounds, upstream: Upstream, tmp_path: Path
) -> None:
    upstream.items = [{"id": 1}]
    db = tmp_path / "state.db"
    times: list[list[tuple[Any, ...]]] = []

    async def steps(daemon: Daemon) -> None:
        await daemon.run_once()
        times.append(query(db, "SELECT last_poll_at, last_success_at FROM sources"))
        await daemon.run_once()  # same body: recorded by the batch run_once flushes
        times.append(query(db, "SELECT last_poll_at, last_success_at FROM sources"))
        await daemon.db(Store.touch_sources, [("one", 1.0), ("two", 1.0)])
        times.append(query(db, "SELECT last_poll_at, last_success_at FROM sources"))

    rounds(steps)
    first, second, after_old_batch = times
    assert all(new[0] > old[0] and new[1] > old[1] for old, new in zip(first, second, strict=True))
    assert after_old_batch == second


def test_cached_item_hashes_follow_commits_and_ignore_failed_ones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store_module, "HASH_CACHE_MIN", 0)  # cache this 2-item source too
    db = tmp_path / "state.db"
    store = Store(db)

    def write(upserts: list[tuple[str, str, bytes]], deletes: list[str]) -> PollWrite:
        return PollWrite("s", "fp", upserts, deletes, [], items_count=0)

    try:
        assert store.item_hashes("s") == {}  # cached from here on
        store.commit_poll(write([("a", "h1", b"1"), ("b", "h2", b"2")], []), 1.0)
        store.commit_poll(write([("a", "h3", b"3")], ["b"]), 2.0)
        store.db.conn.execute("CREATE TRIGGER no BEFORE INSERT ON items BEGIN SELECT RAISE(ABORT, 'no'); END")
        with pytest.raises(Exception, match="no"):
            store.commit_poll(write([("c", "h4", b"4")], ["a"]), 3.0)
        cached = dict(store.item_hashes("s"))
        assert store._hashes["s"] == cached  # the cache was in use throughout
    finally:
        store.close()
    fresh = Store(db)
    try:
        assert cached == fresh.item_hashes("s") == {"a": "h3"}
    finally:
        fresh.close()


def test_only_large_sources_keep_their_hashes_after_a_commit(tmp_path: Path) -> None:
    store = Store(tmp_path / "state.db")
    try:
        for name, size in (("small", HASH_CACHE_MIN - 1), ("large", HASH_CACHE_MIN)):
            store.item_hashes(name)
            upserts = [(str(i), "h", b"1") for i in range(size)]
            store.commit_poll(PollWrite(name, "fp", upserts, [], [], items_count=size), 1.0)
        assert set(store._hashes) == {"large"}
        assert len(store._hashes["large"]) == HASH_CACHE_MIN
    finally:
        store.close()


def test_run_once_gives_each_host_its_own_workers(tmp_path: Path, write_config: Any) -> None:
    """A slow host holds back only its own sources, and never more than max_per_host."""
    slow, fast = Upstream([{"id": 1}]), Upstream([{"id": 1}])
    body = (200, {"content-type": "application/json"}, b'[{"id": 1}]')
    slow.fault = lambda req, handler: body if slow.release.wait(WAIT) else (500, {}, b"")
    names = [f"{host}-{i}" for host in ("slow", "fast") for i in range(3)]
    config = write_config(
        "http:\n  max_per_host: 1\nsources:\n"
        + "".join(
            f"  - name: {name}\n    url: {(slow if name.startswith('slow') else fast).url}/{name}\n"
            "    interval: 1h\n"
            for name in names
        )
    )

    async def main() -> list[Any]:
        async with Daemon(load_config(config), tmp_path / "state.db") as daemon:
            polling = asyncio.ensure_future(daemon.run_once())
            await asyncio.to_thread(fast.wait_for, 3)  # all of them while slow-0 is held
            held = len(slow.arrived)
            slow.release.set()
            results = await polling
            return [held, results]

    try:
        held, results = asyncio.run(main())
    finally:
        slow.close()
        fast.close()
    assert held == 1  # max_per_host: 1 keeps the other two slow sources waiting
    assert [(r.source, r.ok) for r in results] == [(name, True) for name in names]
    assert len(slow.requests) == 3
