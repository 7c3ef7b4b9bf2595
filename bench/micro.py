#!/usr/bin/env python3
"""Micro-measurements behind figures quoted in BENCHMARKS.md and commit messages.

Not part of `bench/run.py`: each answers one design question, in seconds,
pinned to CPU 1 when `taskset` is there. Everything stays on 127.0.0.1.

  python bench/micro.py once-304       in-process `run_once` 304 rounds over 1,000 sources
  python bench/micro.py group-commit   1,000 one-item poll writes: one transaction each vs 50
  python bench/micro.py gc-threshold   scenario 3's pollhook stages under several GC thresholds
  python bench/micro.py parse-overhead JSON bodies of 10 to 100k items: inline vs a parsing worker
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))


def _pin() -> None:
    if hasattr(os, "sched_setaffinity") and os.cpu_count() and os.cpu_count() > 1:  # type: ignore[operator]
        os.sched_setaffinity(0, {1})


def once_304(tmp: Path, rounds: int) -> dict[str, float]:
    """The polling scenario's 304 round, in-process, each round a fresh Daemon (as the suite does)."""
    from benchlib import Server
    from scenario_polling import Upstream, write_config

    from pollhook.config import load_config
    from pollhook.daemon import Daemon

    with Server() as server:
        up = Upstream(server, 1000)
        write_config(tmp / "sources.yaml", server.base, 1000, 50)
        config = load_config(tmp / "sources.yaml")

        async def main() -> list[float]:
            # two rounds of new bodies under new ETags: the first stores the ETags, the
            # second shows them changing with the content, so pollhook trusts them and
            # the measured rounds send them back (docs/sources-http.md, Politeness)
            for _ in range(2):
                up.set("changed")
                async with Daemon(config, tmp / "state.db") as daemon:
                    await daemon.run_once()
            up.set("304")
            server.call("/control/reset", {})
            times = []
            for _ in range(rounds):
                async with Daemon(config, tmp / "state.db") as daemon:
                    started = time.perf_counter()
                    await daemon.run_once()
                    times.append(time.perf_counter() - started)
            return times

        times = asyncio.run(main())
        counts = server.call("/control/stats", {})["counts"]  # the measured rounds' answers
    return {"median_s": statistics.median(times), "min_s": min(times), "rounds": rounds,
            "answers": counts}  # fmt: skip


def group_commit(tmp: Path, group: int) -> dict[str, float]:
    """What batching poll transactions would save: the same writes, 1 vs `group` per transaction."""
    from pollhook.store import NewEvent, PollWrite, Store

    def run(grouped: bool) -> float:
        path = tmp / f"group-{grouped}.db"
        store = Store(path)
        for i in range(1000):
            upserts = [(str(k), "h", b'{"a":1}') for k in range(100)]
            store.commit_poll(PollWrite(f"s{i}", "fp", upserts, [], [], 100), 1.0)
        writes = [
            PollWrite(f"s{i}", "fp", [("0", "h2", b'{"a":2}')], [],
                      [NewEvent(uuid.uuid4().hex, f"s{i}", "item.updated", "0", b"x" * 700,
                                ("sub",))], 100)
            for i in range(1000)
        ]  # fmt: skip
        started = time.perf_counter()
        if grouped:
            for k in range(0, len(writes), group):
                with store.transaction() as conn:
                    for w in writes[k : k + group]:
                        conn.executemany(
                            "INSERT INTO items (source, key, hash, body) VALUES (?, ?, ?, ?)"
                            " ON CONFLICT (source, key) DO UPDATE SET hash = excluded.hash,"
                            " body = excluded.body",
                            ((w.source, key, h, body) for key, h, body in w.upserts),
                        )
                        store._insert_events(conn, w.events, 2.0)
                        conn.execute(
                            "UPDATE sources SET last_poll_at = ? WHERE name = ?", (2.0, w.source)
                        )
        else:
            for w in writes:
                store.commit_poll(w, 2.0)
        elapsed = time.perf_counter() - started
        store.close()
        return elapsed

    one = [run(False) for _ in range(3)]
    many = [run(True) for _ in range(3)]
    return {"one_per_poll_s": statistics.median(one), f"{group}_per_transaction_s": statistics.median(many)}


def gc_threshold(tmp: Path, thresholds: list[str]) -> dict[str, dict[str, float]]:
    """Scenario 3's in-process stages (bench/benchworker.py large-pollhook) per GC setting."""
    worker = [sys.executable, str(BENCH / "benchworker.py")]
    subprocess.run([*worker, "gen-big", "--items", "100000", "--versions", "6", "--out-dir", str(tmp)],
                   check=True, capture_output=True, timeout=300)  # fmt: skip
    out: dict[str, dict[str, float]] = {}
    for setting in thresholds:
        for db in tmp.glob("gc.db*"):
            db.unlink()
        done = subprocess.run(
            [*worker, "large-pollhook", "--dir", str(tmp), "--db", str(tmp / "gc.db"),
             "--repeats", "5", "--gc", setting],
            check=True, capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        rows = json.loads(done.stdout.strip().splitlines()[-1])["rows"]
        out[setting] = {
            k: round(statistics.median(r[k] for r in rows), 3)
            for k in ("parse", "extract", "plan", "commit", "total")
        }
    return out


def parse_overhead(sizes: list[int]) -> dict[str, dict[str, float]]:
    """Per body: the inline parse, and a parsing worker's round trip (wall and daemon CPU).

    The worker inherits the pinning, so it shares CPU 1 with the daemon: the
    wall time is what one core pays; the daemon's CPU is what its loop pays.
    """
    import orjson

    from pollhook import parsing
    from pollhook.config import HttpSettings, Source
    from pollhook.fetch import Fetched
    from pollhook.formats import read_page

    def body(n: int) -> bytes:
        return orjson.dumps([
            {"id": i, "name": f"item {i}", "status": "open", "tags": ["a", "b"],
             "updated_at": "2026-11-27T16:00:00Z", "n": i * 3}
            for i in range(n)
        ])  # fmt: skip

    async def measure() -> dict[str, dict[str, float]]:
        source, http, out = Source("s", "http://x/", 1.0), HttpSettings(), {}
        workers = parsing.Parsers(1)
        inline_limit, parsing.INLINE_JSON = parsing.INLINE_JSON, 0  # every body to the worker
        try:
            for n in sizes:
                raw = body(n)
                fetched = Fetched(200, raw, "application/json", None, None)
                reps = max(5, min(200, 200_000 // n))
                inline = []
                for _ in range(reps):
                    started = time.perf_counter()
                    read_page(source, raw, "application/json")
                    inline.append(time.perf_counter() - started)
                await workers.extract(source, fetched, http, None)  # a started worker
                walls, cpu = [], time.process_time()
                for _ in range(reps):
                    started = time.perf_counter()
                    await workers.extract(source, fetched, http, None)
                    walls.append(time.perf_counter() - started)
                out[f"{n} items, {len(raw) // 1024} KB"] = {
                    "inline_ms": round(statistics.median(inline) * 1000, 3),
                    "worker_wall_ms": round(statistics.median(walls) * 1000, 3),
                    "worker_daemon_cpu_ms": round((time.process_time() - cpu) / reps * 1000, 3),
                }
        finally:
            parsing.INLINE_JSON = inline_limit
            await workers.aclose()
        return out

    return asyncio.run(measure())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("once-304").add_argument("--rounds", type=int, default=7)
    sub.add_parser("group-commit").add_argument("--group", type=int, default=50)
    sub.add_parser("gc-threshold").add_argument(
        "--thresholds", default="700,10,10;10000,10,10;50000,10,10"
    )
    sub.add_parser("parse-overhead").add_argument("--sizes", default="10,100,300,1000,10000,100000")
    args = parser.parse_args()
    _pin()
    tmp = Path(tempfile.mkdtemp(prefix="pollhook-micro-"))
    try:
        if args.cmd == "once-304":
            result: object = once_304(tmp, args.rounds)
        elif args.cmd == "group-commit":
            result = group_commit(tmp, args.group)
        elif args.cmd == "parse-overhead":
            result = parse_overhead([int(n) for n in args.sizes.split(",")])
        else:
            result = gc_threshold(tmp, args.thresholds.split(";"))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
