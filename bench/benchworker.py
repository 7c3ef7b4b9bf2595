#!/usr/bin/env python3
"""Measured work that must run in its own process (pinned to CPU 1 by bench/run.py).

Each subcommand prints one JSON line with its figures as the last line of stdout:

  get-loop         raw aiohttp GET (+ orjson parse) of N URLs, C concurrent: the polling baseline
  post-loop        raw aiohttp POSTs of one body to K receivers: the delivery baseline
  steady-baseline  raw aiohttp conditional GETs of N URLs every interval, for a bounded time
  gen-big          write the large document's versions to files (so generating them is not measured)
  large-floor      orjson parse + canonical hash + dict diff of the large document: the floor
  large-pollhook   pollhook's own parse_json / extract_items / plan / Store.commit_poll on it
  latency-baseline bump → GET → parse → POST, the raw path the latency scenario compares with
  inproc-rounds    Daemon.run_once rounds on demand (one per stdin line), timed in-process
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import hashlib
import io
import pstats
import resource
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import orjson

HOST = "127.0.0.1"


def emit(data: dict[str, Any]) -> None:
    data["maxrss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    sys.stdout.write(orjson.dumps(data).decode() + "\n")
    sys.stdout.flush()


# --------------------------------------------------------------------------- polling baseline


async def get_round(urls: list[str], concurrency: int, etags: dict[str, str] | None) -> tuple[float, Counter[int]]:
    """One cold round (fresh session, like one `run --once`): every URL once."""
    statuses: Counter[int] = Counter()
    learned: dict[str, str] = {}
    started = time.perf_counter()
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        it = iter(urls)

        async def work() -> None:
            for url in it:
                headers = {"If-None-Match": etags[url]} if etags and url in etags else None
                async with session.get(url, headers=headers) as r:
                    body = await r.read()
                    statuses[r.status] += 1
                    if r.status == 200:
                        orjson.loads(body)
                        if "ETag" in r.headers:
                            learned[url] = r.headers["ETag"]

        await asyncio.gather(*(work() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    if etags is not None:
        etags.update(learned)
    return elapsed, statuses


async def cmd_get_loop(args: argparse.Namespace) -> None:
    urls = [f"{args.base}/s/{i}" for i in range(args.count)]
    etags: dict[str, str] | None = None
    if args.mode == "304":
        etags = {}
        await get_round(urls, args.concurrency, etags)  # learn the ETags (not measured)
    else:
        await get_round(urls, args.concurrency, None)  # warm-up round (not measured)
    times, status_total = [], Counter[int]()
    for _ in range(args.repeats):
        seconds, statuses = await get_round(urls, args.concurrency, etags)
        times.append(seconds)
        status_total.update(statuses)
    emit({"seconds": times, "statuses": {str(k): v for k, v in status_total.items()}})


# --------------------------------------------------------------------------- delivery baseline


async def post_round(urls: list[str], per_url: int, count: int, body: bytes) -> tuple[float, int]:
    connector = aiohttp.TCPConnector(limit=0)
    ok = 0
    headers = {
        "content-type": "application/json",
        "webhook-id": "msg_baseline",
        "webhook-timestamp": str(int(time.time())),
        "webhook-signature": "v1,baseline",
    }
    started = time.perf_counter()
    async with aiohttp.ClientSession(connector=connector) as session:
        share = [count // len(urls) + (1 if k < count % len(urls) else 0) for k in range(len(urls))]

        async def work(url: str, it: Any) -> None:
            nonlocal ok
            for _ in it:
                async with session.post(url, data=body, headers=headers) as r:
                    await r.read()
                    ok += 200 <= r.status < 300

        tasks = []
        for url, n in zip(urls, share, strict=True):
            it = iter(range(n))
            tasks += [work(url, it) for _ in range(per_url)]
        await asyncio.gather(*tasks)
    return time.perf_counter() - started, ok


async def cmd_post_loop(args: argparse.Namespace) -> None:
    urls = args.urls.split(",")
    body = Path(args.body_file).read_bytes()
    await post_round(urls, args.per_url, min(args.count, 1000), body)  # warm-up
    times, oks = [], []
    for _ in range(args.repeats):
        seconds, ok = await post_round(urls, args.per_url, args.count, body)
        times.append(seconds)
        oks.append(ok)
    emit({"seconds": times, "ok": oks})


# --------------------------------------------------------------------------- steady baseline


async def cmd_steady_baseline(args: argparse.Namespace) -> None:
    """Conditional GET of every URL once per interval, spread like pollhook, until `seconds`."""
    urls = [f"{args.base}/s/{i}" for i in range(args.count)]
    deadline = time.monotonic() + args.seconds
    statuses: Counter[int] = Counter()
    connector = aiohttp.TCPConnector(limit=args.concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def source(k: int, url: str) -> None:
            etag: str | None = None
            next_at = time.monotonic() + args.interval * k / len(urls)
            while True:
                await asyncio.sleep(max(0.0, next_at - time.monotonic()))
                if time.monotonic() >= deadline:
                    return
                headers = {"If-None-Match": etag} if etag else None
                async with session.get(url, headers=headers) as r:
                    body = await r.read()
                    statuses[r.status] += 1
                    if r.status == 200:
                        orjson.loads(body)
                        etag = r.headers.get("ETag")
                next_at += args.interval

        await asyncio.gather(*(source(k, u) for k, u in enumerate(urls)))
    emit({"statuses": {str(k): v for k, v in statuses.items()}})


# --------------------------------------------------------------------------- large source


def cmd_gen_big(args: argparse.Namespace) -> None:
    from benchserver import big_body

    out = Path(args.out_dir)
    sizes = []
    for v in range(args.versions):
        body = big_body(args.items, v)
        (out / f"big-{v}.json").write_bytes(body)
        sizes.append(len(body))
    emit({"bytes": sizes})


def floor_hashes(body: bytes) -> tuple[dict[str, str], float, float]:
    t0 = time.perf_counter()
    doc = orjson.loads(body)
    t1 = time.perf_counter()
    hashes = {
        str(item["id"]): hashlib.blake2b(
            orjson.dumps(item, option=orjson.OPT_SORT_KEYS), digest_size=16
        ).hexdigest()
        for item in doc
    }
    t2 = time.perf_counter()
    return hashes, t1 - t0, t2 - t1


def cmd_large_floor(args: argparse.Namespace) -> None:
    src = Path(args.dir)
    previous, _, _ = floor_hashes((src / "big-0.json").read_bytes())
    rows = []
    for v in range(1, args.repeats + 1):
        body = (src / f"big-{v}.json").read_bytes()
        hashes, parse_s, hash_s = floor_hashes(body)
        t0 = time.perf_counter()
        created = [k for k in hashes if k not in previous]
        updated = [k for k, h in hashes.items() if k in previous and previous[k] != h]
        deleted = [k for k in previous if k not in hashes]
        diff_s = time.perf_counter() - t0
        rows.append(
            {"parse": parse_s, "hash": hash_s, "diff": diff_s, "total": parse_s + hash_s + diff_s,
             "changed": len(created) + len(updated) + len(deleted)}
        )  # fmt: skip
        previous = hashes
        del body
    emit({"rows": rows})


def cmd_large_pollhook(args: argparse.Namespace) -> None:
    from pollhook.config import Source, Subscriber
    from pollhook.extract import extract_items, parse_json
    from pollhook.fetch import Fetched
    from pollhook.poll import plan
    from pollhook.store import Store

    if args.gc:
        gc.set_threshold(*(int(x) for x in args.gc.split(",")))
    src = Path(args.dir)
    store = Store(Path(args.db))
    source = Source(name="big", url=f"http://{HOST}:1/big", interval=60.0)
    subscribers = (Subscriber(name="sink", url=f"http://{HOST}:1/hook"),)
    profiler = cProfile.Profile() if args.profile else None

    def poll(v: int) -> dict[str, float]:
        body = (src / f"big-{v}.json").read_bytes()
        fetched = Fetched(200, body, "application/json", etag=None, last_modified=None)
        now = time.time()
        t0 = time.perf_counter()
        doc = parse_json(body)
        t1 = time.perf_counter()
        items = extract_items(doc, source.items, source.key, source.ignore)
        t2 = time.perf_counter()
        state = store.source_state(source.name)
        write = plan(store, source, state, items, fetched, subscribers, now)
        t3 = time.perf_counter()
        store.commit_poll(write, now)
        t4 = time.perf_counter()
        return {
            "parse": t1 - t0, "extract": t2 - t1, "plan": t3 - t2, "commit": t4 - t3,
            "total": t4 - t0, "events": len(write.events), "upserts": len(write.upserts),
        }  # fmt: skip

    import tracemalloc

    tracemalloc.start()  # what one small orjson.dumps result keeps allocated (see BENCHMARKS.md)
    kept = [orjson.dumps({"id": k, "body": "x" * 100}) for k in range(1000)]
    retained = tracemalloc.get_traced_memory()[0] / len(kept)
    tracemalloc.stop()
    del kept
    first = poll(0)
    first_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    rows = []
    for v in range(1, args.repeats + 1):
        if profiler and v == args.repeats:
            profiler.enable()
        rows.append(poll(v))
        if profiler and v == args.repeats:
            profiler.disable()
    store.close()
    out: dict[str, Any] = {
        "first": first, "rows": rows, "first_maxrss_mb": first_rss,
        "orjson_bytes_per_small_dumps": retained,
    }  # fmt: skip
    if profiler:
        out["profile"] = profile_text(profiler)
    emit(out)


def profile_text(profiler: cProfile.Profile, limit: int = 25) -> str:
    buf = io.StringIO()
    stats = pstats.Stats(profiler, stream=buf)
    stats.sort_stats("tottime").print_stats(limit)
    stats.sort_stats("cumulative").print_stats(limit)
    return buf.getvalue()


# --------------------------------------------------------------------------- latency baseline


async def cmd_latency_baseline(args: argparse.Namespace) -> None:
    """The raw path: GET the changed document, parse it, POST the changed item at once."""
    etags: dict[int, str] = {}
    async with aiohttp.ClientSession() as session:
        for i in range(args.sources):  # learn the ETags
            async with session.get(f"{args.base}/lat/{i}") as r:
                await r.read()
                etags[i] = r.headers["ETag"]
        for n in range(args.count):
            i = n % args.sources
            async with session.post(f"{args.base}/control/lat_bump", json={"source": i}) as r:
                await r.read()
            async with session.get(f"{args.base}/lat/{i}", headers={"If-None-Match": etags[i]}) as r:
                body = await r.read()
                etags[i] = r.headers["ETag"]
            items = orjson.loads(body)
            event = orjson.dumps(
                {"type": "item.updated", "data": {"source": f"lat{i}", "key": "0", "item": items[0]}}
            )
            async with session.post(args.receiver, data=event, headers={"webhook-id": f"b{n}"}) as r:
                await r.read()
            await asyncio.sleep(args.gap)
    emit({"count": args.count})


# --------------------------------------------------------------------------- in-process rounds


async def cmd_inproc_rounds(args: argparse.Namespace) -> None:
    """One `Daemon.run_once` per stdin line, timed inside the process (no start-up)."""
    from pollhook.config import load_config
    from pollhook.daemon import Daemon
    from pollhook.logs import setup_logging

    setup_logging(args.log_level, "text")
    config = load_config(args.config)
    loop = asyncio.get_running_loop()
    profiler = cProfile.Profile() if args.profile else None
    rounds = 0
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if not line or line.strip() == "quit":
            break
        do_profile = profiler is not None and line.strip() == "profile"
        t0 = time.perf_counter()
        async with Daemon(config, Path(args.db)) as daemon:
            t1 = time.perf_counter()
            if do_profile and profiler:
                profiler.enable()
            results = await daemon.run_once()
            if do_profile and profiler:
                profiler.disable()
            t2 = time.perf_counter()
        t3 = time.perf_counter()
        rounds += 1
        out: dict[str, Any] = {
            "open": t1 - t0, "round": t2 - t1, "close": t3 - t2,
            "failed": sum(not r.ok for r in results), "events": sum(r.events for r in results),
        }  # fmt: skip
        if do_profile and profiler:
            out["profile"] = profile_text(profiler)
        emit(out)


def main() -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("get-loop")
    p.add_argument("--base", required=True)
    p.add_argument("--count", type=int, default=1000)
    p.add_argument("--concurrency", type=int, default=50)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--mode", choices=["full", "304"], default="full")
    p = sub.add_parser("post-loop")
    p.add_argument("--urls", required=True)
    p.add_argument("--per-url", type=int, default=50)
    p.add_argument("--count", type=int, default=10000)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--body-file", required=True)
    p = sub.add_parser("steady-baseline")
    p.add_argument("--base", required=True)
    p.add_argument("--count", type=int, default=1000)
    p.add_argument("--interval", type=float, default=10.0)
    p.add_argument("--seconds", type=float, required=True)
    p.add_argument("--concurrency", type=int, default=50)
    p = sub.add_parser("gen-big")
    p.add_argument("--items", type=int, default=100_000)
    p.add_argument("--versions", type=int, default=4)
    p.add_argument("--out-dir", required=True)
    p = sub.add_parser("large-floor")
    p.add_argument("--dir", required=True)
    p.add_argument("--repeats", type=int, default=3)
    p = sub.add_parser("large-pollhook")
    p.add_argument("--dir", required=True)
    p.add_argument("--db", required=True)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--profile", action="store_true")
    p.add_argument("--gc", help="GC thresholds to run under, e.g. 10000,10,10 (default: Python's)")
    p = sub.add_parser("latency-baseline")
    p.add_argument("--base", required=True)
    p.add_argument("--receiver", required=True)
    p.add_argument("--count", type=int, default=100)
    p.add_argument("--sources", type=int, default=10)
    p.add_argument("--gap", type=float, default=0.05)
    p = sub.add_parser("inproc-rounds")
    p.add_argument("--config", required=True)
    p.add_argument("--db", required=True)
    p.add_argument("--log-level", default="info")
    p.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    handlers = {
        "get-loop": cmd_get_loop, "post-loop": cmd_post_loop,
        "steady-baseline": cmd_steady_baseline, "latency-baseline": cmd_latency_baseline,
        "inproc-rounds": cmd_inproc_rounds,
    }  # fmt: skip
    if args.cmd in handlers:
        asyncio.run(handlers[args.cmd](args))
    else:
        {"gen-big": cmd_gen_big, "large-floor": cmd_large_floor,
         "large-pollhook": cmd_large_pollhook}[args.cmd](args)  # fmt: skip


if __name__ == "__main__":
    main()
