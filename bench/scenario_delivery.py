"""Scenario 4: delivery throughput from the durable outbox.

10,000 events are written into a fresh state file through pollhook's own store API
(Store.commit_poll with build_event bodies, ~1 KB each, every delivery pending),
then `pollhook run` (pinned to CPU 1) starts and is timed until the local
receivers have every webhook-id. Two shapes: one receiver (max_in_flight 50), and
ten receivers (1,000 events each, max_in_flight 10 each, the default). Baseline in
the same run: a raw aiohttp POST loop of the same body with the same concurrency.
"""

from __future__ import annotations

import base64
import os
import subprocess
import time
from pathlib import Path
from typing import Any

from benchlib import (
    MEASURED_CPU,
    MemSampler,
    Opts,
    Report,
    Row,
    Server,
    delivery_counts,
    have_pyspy,
    median,
    pinned,
    pollhook_cmd,
    proc_cpu_seconds,
    pyspy_attach,
    stop_process,
    summarize_stacks,
    worker,
)  # fmt: skip

COMMAND = "python bench/run.py --only delivery"
SECRET = "whsec_" + base64.b64encode(b"pollhook-benchmark-secret-32-byte").decode()


def item(k: int) -> dict[str, Any]:
    return {"id": k, "title": f"ticket {k}", "status": "closed", "owner": "user7",
            "tags": ["billing", "urgent"], "body": "lorem ipsum dolor sit amet " * 12}  # fmt: skip


def prefill(db: Path, sources: list[str], per_source: int, subscribers: tuple[Any, ...]) -> bytes:
    """Pending deliveries written by pollhook's store API, as a poll would write them."""
    from pollhook.events import build_event
    from pollhook.store import PollWrite, Store

    store = Store(db)
    now = time.time()
    sample = b""
    try:
        for src in sources:
            events = []
            for k in range(per_source):
                after, before = item(k), {**item(k), "status": "open"}
                data = {"source": src, "key": str(k), "item": after, "previous": before,
                        "changes": [{"op": "replace", "path": "/status", "value": "closed"}]}  # fmt: skip
                events.append(build_event(src, "item.updated", str(k), data, subscribers, now))
            sample = events[0].body
            store.commit_poll(
                PollWrite(source=src, fingerprint="bench", upserts=[], deletes=[], events=events,
                          items_count=0), now,
            )  # fmt: skip
    finally:
        store.close()
    return sample


def config_text(base: str, sources: list[str], ports: list[int], in_flight: int, routed: bool) -> str:
    lines = ["sources:\n"]
    for src in sources:  # never polled during the run: the first poll is hours away
        lines.append(f"  - name: {src}\n    url: {base}/s/0\n    interval: 1d\n")
    lines.append("subscribers:\n")
    for k, port in enumerate(ports):
        lines.append(f"  - name: r{k}\n    url: http://127.0.0.1:{port}/hook\n    secret: {SECRET}\n"
                     f"    max_in_flight: {in_flight}\n")  # fmt: skip
        if routed:
            lines.append(f"    sources: [{sources[k]}]\n")
    return "".join(lines)


def deliver_once(
    server: Server, tmp: Path, tag: str, total: int, receivers: int, in_flight: int,
    profile_to: Path | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Prefill a fresh outbox, start the daemon, time until every webhook-id arrived."""
    from pollhook.config import load_config

    server.call("/control/receivers_stop", {})
    ports = server.call("/control/receivers_start", {"count": receivers})["ports"]
    sources = [f"src{k}" for k in range(receivers)]
    config = tmp / f"{tag}.yaml"
    config.write_text(config_text(server.base, sources, ports, in_flight, routed=receivers > 1))
    db = tmp / f"{tag}.db"
    subscribers = load_config(config).subscribers
    sample = prefill(db, sources, total // receivers, subscribers)
    assert delivery_counts(db).get("pending") == total, delivery_counts(db)
    server.call("/control/reset", {})
    with open(tmp / f"{tag}.err", "wb") as err:
        started = time.monotonic()
        proc = subprocess.Popen(
            pinned(pollhook_cmd("run", "-c", str(config), "--db", str(db)), MEASURED_CPU), stdout=subprocess.DEVNULL, stderr=err,
        )  # fmt: skip
        spy = None
        if profile_to is not None:
            spy = pyspy_attach(proc.pid, profile_to, seconds=8)
        mem = MemSampler(proc.pid)
        cpu0, busy = 0.0, 0.0
        try:
            deadline = started + 300
            stats = server.stats()
            cpu_first, t_first = None, 0.0
            while stats["unique"] < total and time.monotonic() < deadline and proc.poll() is None:
                mem.sample()
                time.sleep(0.05)
                stats = server.stats()
                if cpu_first is None and stats["received"] > 0:
                    cpu_first, t_first = proc_cpu_seconds(proc.pid), time.monotonic()
            if proc.poll() is not None:
                raise RuntimeError(f"pollhook exited early: {(tmp / f'{tag}.err').read_text()[-1500:]}")
            cpu0 = proc_cpu_seconds(proc.pid)
            busy = (cpu0 - (cpu_first or 0.0)) / max(time.monotonic() - t_first, 1e-9)
            mem.sample()
        finally:
            stop_process(proc)
            if spy:
                spy.wait(60)
    counts = delivery_counts(db)
    span = (stats["last"] or 0) - (stats["first"] or 0)
    return {
        "received": stats["received"], "unique": stats["unique"],
        "first_to_last_s": span, "rate": stats["unique"] / span if span > 0 else 0.0,
        "spawn_to_first_s": (stats["first"] or 0) - (stats["now"] - (time.monotonic() - started)),
        "spawn_to_last_s": time.monotonic() - started, "cpu_s": cpu0, "peak_mb": mem.peak_mb,
        "cpu_share_delivering": busy,
        "db": counts, "per_port": stats["per_port"], "sample": sample, "rc": proc.returncode,
    }  # fmt: skip


def run(opts: Opts) -> Report:
    tmp = opts.scenario_tmp("delivery")
    rep = Report("delivery", "Scenario 4: delivery throughput (10,000 pending events)")
    total = opts.deliveries
    shapes = [("1 receiver", 1, 50), ("10 receivers", 10, 10)]
    results: dict[str, dict[str, Any]] = {}
    profiles: dict[str, str] = {}
    with Server() as server:
        for label, receivers, in_flight in shapes:
            # interleaved (the machine is shared): each pollhook run is followed by a raw round
            runs: list[dict[str, Any]] = []
            raw: dict[str, Any] = {"seconds": [], "ok": []}
            for k in range(max(2, opts.repeats)):
                runs.append(deliver_once(server, tmp, f"r{receivers}-{k}", total, receivers, in_flight))
                body_file = tmp / "body.json"
                body_file.write_bytes(runs[0]["sample"])
                server.call("/control/receivers_stop", {})
                ports = server.call("/control/receivers_start", {"count": receivers})["ports"]
                one, _ = worker(
                    ["post-loop", "--urls", ",".join(f"http://127.0.0.1:{p}/hook" for p in ports),
                     "--per-url", str(in_flight), "--count", str(total), "--repeats", "1",
                     "--body-file", str(body_file)],
                    timeout=300, tag=f"raw-{receivers}-{k}", out_dir=tmp,
                )  # fmt: skip
                raw["seconds"] += one["seconds"]
                raw["ok"] += one["ok"]
                runs[-1]["raw_rate"] = total / one["seconds"][0]
            results[label] = {"runs": runs, "raw": raw, "in_flight": in_flight, "receivers": receivers}
            if opts.profile and have_pyspy():
                opts.profiles_dir.mkdir(parents=True, exist_ok=True)
                out = opts.profiles_dir / f"delivery-{receivers}.stacks"
                deliver_once(server, tmp, f"prof-{receivers}", total, receivers, in_flight, out)
                profiles[label] = summarize_stacks(out)
                out.with_suffix(".summary.txt").write_text(profiles[label])

    body_len = len(results["1 receiver"]["runs"][0]["sample"])
    rep.add(f"Setup: {total} events (~{body_len} B bodies, signed with one secret) pending in a "
            f"fresh state file, written with `Store.commit_poll`; then `pollhook run` is started. "
            f"Rate = webhook-ids received / (last arrival − first arrival), from the receiver's "
            f"clock; 'spawn → last' includes process start-up. {max(2, opts.repeats)} runs per shape, "
            f"each followed by one raw round; ratio = median of the per-pair ratios. Raw "
            f"baseline: aiohttp POSTs of the same body, same concurrency, no signing, no database.")  # fmt: skip
    rep.add()
    table = []
    for label, r in results.items():
        runs = r["runs"]
        rate = median([x["rate"] for x in runs])
        raw_rate = total / median(r["raw"]["seconds"])
        r["rate"], r["raw_rate"] = rate, raw_rate
        r["ratio"] = median([x["rate"] / x["raw_rate"] for x in runs])
        table.append([
            label, f"{r['in_flight']} per receiver", f"{rate:.0f}/s", f"{raw_rate:.0f}/s",
            f"{r['ratio']:.2f}", f"{median([x['spawn_to_last_s'] for x in runs]):.2f} s",
            f"{100 * median([x['cpu_share_delivering'] for x in runs]):.0f}%",
            f"{max(x['peak_mb'] for x in runs):.0f} MB", runs[-1]["db"],
            sum(x["received"] - x["unique"] for x in runs),
        ])  # fmt: skip
    rep.table(
        ["shape", "max_in_flight", "pollhook deliveries/s", "raw POSTs/s", "ratio",
         "spawn → last arrival", "pollhook CPU while delivering", "peak RSS",
         "state after (last run)", "duplicates"], table,
    )  # fmt: skip
    for label, r in results.items():
        rep.add(f"- {label}: pollhook rates {[round(x['rate']) for x in r['runs']]}/s; raw rates "
                f"{[round(x['raw_rate']) for x in r['runs']]}/s.")  # fmt: skip
    rep.add()
    for label, text in profiles.items():
        rep.add(f"## py-spy profile, {label} (first 8 s of a separate run)")
        rep.add()
        rep.add("```")
        rep.add(text)
        rep.add("```")
        rep.add()
    for label, r in results.items():
        ratio = r["ratio"]
        rep.rows.append(Row(
            "4. delivery", f"deliveries/s, {label}", f"{ratio:.3f} of raw",
            f"pollhook {r['rate']:.0f}/s, raw {r['raw_rate']:.0f}/s",
            ">= 0.5 of raw", ratio >= 0.5, COMMAND,
        ))  # fmt: skip
    for r in results.values():
        for x in r["runs"]:
            x.pop("sample", None)
    rep.raw = results
    return rep


if __name__ == "__main__":  # pragma: no cover - manual use
    print(os.getpid())
