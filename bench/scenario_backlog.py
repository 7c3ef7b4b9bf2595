"""Scenario 6: the receiver is down while 100k deliveries accumulate, then comes up.

The daemon polls sources of 10,000 items each with `emit_initial: true`, so their
first polls put 100k (quick: 20k) item.created deliveries in the outbox while
nothing listens on the receiver's port (connection refused). The bench waits until
every delivery exists, keeps the receiver down a little longer, then starts it and
times the drain. The subscriber's retry schedule is 1 s steps so that the drain
measures delivery speed, not the default schedule's waits (5 s, 5 m, 30 m, ...).
RSS of the daemon is sampled throughout. Baseline: the raw POST loop of scenario 4.
"""

from __future__ import annotations

import socket
import subprocess
import time
from typing import Any

from benchlib import (
    MEASURED_CPU,
    MemSampler,
    Opts,
    Report,
    Row,
    Server,
    db_query,
    delivery_counts,
    have_pyspy,
    median,
    pinned,
    pollhook_cmd,
    pyspy_attach,
    stop_process,
    summarize_stacks,
    worker,
)  # fmt: skip
from scenario_delivery import SECRET

COMMAND = "python bench/run.py --only backlog"
PER_SOURCE = 10_000
HOLD_DOWN = 10.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run(opts: Opts) -> Report:
    tmp = opts.scenario_tmp("backlog")
    rep = Report("backlog", "Scenario 6: backlog (receiver down, then up)")
    total = opts.backlog
    nsources = max(1, total // PER_SOURCE)
    total = nsources * PER_SOURCE
    port = free_port()
    db = tmp / "backlog.db"
    phases: dict[str, Any] = {}
    profile_text = ""
    with Server() as server:
        server.call("/control/bulk", {"items": PER_SOURCE})
        config = tmp / "backlog.yaml"
        config.write_text(
            "sources:\n"
            + "".join(f"  - name: b{i}\n    url: {server.base}/bulk/{i}\n    interval: 5s\n"
                      f"    emit_initial: true\n" for i in range(nsources))
            + f"subscribers:\n  - name: r\n    url: http://127.0.0.1:{port}/hook\n"
              f"    secret: {SECRET}\n    max_in_flight: 50\n    retry: [{', '.join(['1s'] * 60)}]\n"
        )  # fmt: skip
        with open(tmp / "daemon.err", "wb") as err:
            started = time.monotonic()
            proc = subprocess.Popen(
                pinned(pollhook_cmd("run", "-c", str(config), "--db", str(db)), MEASURED_CPU),
                stdout=subprocess.DEVNULL, stderr=err,
            )  # fmt: skip
            mem = MemSampler(proc.pid)
            try:
                # -- accumulate -------------------------------------------------------
                created = 0
                deadline = started + 600
                while time.monotonic() < deadline and proc.poll() is None:
                    mem.sample()
                    created = sum(delivery_counts(db).values())
                    if created >= total:
                        break
                    time.sleep(0.5)
                if proc.poll() is not None:
                    raise RuntimeError(f"pollhook exited: {(tmp / 'daemon.err').read_text()[-1500:]}")
                phases["accumulated_s"] = time.monotonic() - started
                phases["accumulate_peak_mb"] = mem.peak_mb
                hold_end = time.monotonic() + HOLD_DOWN
                while time.monotonic() < hold_end:
                    mem.sample()
                    time.sleep(0.5)
                phases["down_peak_mb"] = mem.peak_mb
                phases["before_up"] = delivery_counts(db)
                phases["attempts_while_down"] = db_query(db, "SELECT count(*) FROM attempts")[0][0]
                # -- receiver up: drain ------------------------------------------------
                server.call("/control/reset", {})
                up_at = time.monotonic()
                server.call("/control/receivers_start", {"ports": [port]})
                spy = None
                if opts.profile and have_pyspy():
                    opts.profiles_dir.mkdir(parents=True, exist_ok=True)
                    spy_out = opts.profiles_dir / "backlog-drain.stacks"
                    spy = pyspy_attach(proc.pid, spy_out, seconds=10)
                deadline = up_at + 900
                stats = server.stats()
                while stats["unique"] < total and time.monotonic() < deadline and proc.poll() is None:
                    mem.sample()
                    time.sleep(0.25)
                    stats = server.stats()
                phases["drain_wall_s"] = time.monotonic() - up_at
                phases["drain_peak_mb"] = mem.peak_mb
                phases["end_rss_mb"] = mem.last_mb
                if spy:
                    spy.wait(60)
                    profile_text = summarize_stacks(spy_out)
                    spy_out.with_suffix(".summary.txt").write_text(profile_text)
            finally:
                rc = stop_process(proc)
        phases["after"] = delivery_counts(db)
        phases["rc"] = rc
        raw, _ = worker(
            ["post-loop", "--urls", f"http://127.0.0.1:{port}/hook", "--per-url", "50",
             "--count", "10000", "--repeats", str(max(3, opts.repeats)), "--body-file",
             str(make_body(tmp))], timeout=300, tag="raw", out_dir=tmp,
        )  # fmt: skip

    span = (stats["last"] or 0) - (stats["first"] or 0)
    rate = stats["unique"] / span if span > 0 else 0.0
    raw_rate = 10_000 / median(raw["seconds"])
    peak = mem.peak_mb
    rep.add(f"Setup: {nsources} sources × {PER_SOURCE} items with `emit_initial: true` → {total} "
            f"deliveries to one subscriber (max_in_flight 50, retry every 1 s, up to 60 times) "
            f"whose port refuses connections; kept down {HOLD_DOWN:.0f} s after the last delivery "
            f"was created, then the receiver starts. pollhook exit code after SIGTERM: {rc}.")  # fmt: skip
    rep.add()
    rep.table(
        ["phase", "figure"],
        [["deliveries created after", f"{phases['accumulated_s']:.1f} s"],
         ["attempts made while down", phases["attempts_while_down"]],
         ["outbox before up", phases["before_up"]],
         ["peak RSS while accumulating", f"{phases['accumulate_peak_mb']:.0f} MB"],
         ["peak RSS down (incl. hold)", f"{phases['down_peak_mb']:.0f} MB"],
         ["peak RSS overall (VmHWM)", f"{peak:.0f} MB"],
         ["RSS at end of drain", f"{phases['end_rss_mb']:.0f} MB"],
         ["received / unique", f"{stats['received']} / {stats['unique']}"],
         ["drain: receiver up → last arrival", f"{phases['drain_wall_s']:.1f} s"],
         ["drain rate (first → last arrival)", f"{rate:.0f}/s"],
         ["raw POST baseline (50 concurrent)", f"{raw_rate:.0f}/s"],
         ["outbox after", phases["after"]]],
    )  # fmt: skip
    if profile_text:
        rep.add("## py-spy profile of the daemon, first 10 s of the drain")
        rep.add()
        rep.add("```")
        rep.add(profile_text)
        rep.add("```")
    rep.rows.append(Row(
        "6. backlog", f"RSS with {total // 1000}k pending, receiver down then up",
        f"{peak / 150:.2f} of the 150 MB cap", f"peak {peak:.0f} MB (end {phases['end_rss_mb']:.0f} MB)",
        "< 150 MB", peak < 150, COMMAND,
    ))  # fmt: skip
    rep.rows.append(Row(
        "6. backlog", "drain rate", f"{rate / raw_rate:.3f} of raw",
        f"{rate:.0f}/s ({stats['unique']} in {span:.1f} s), raw {raw_rate:.0f}/s",
        "drains at the delivery rate (>= 0.5 of raw)", rate / raw_rate >= 0.5, COMMAND,
    ))  # fmt: skip
    rep.raw = {"phases": phases, "stats": stats, "raw": raw, "rate": rate, "total": total,
               "rss_samples": mem.samples[:: max(1, len(mem.samples) // 200)]}  # fmt: skip
    return rep


def make_body(tmp: Any) -> Any:
    path = tmp / "body.json"
    path.write_bytes(
        b'{"type":"item.created","timestamp":"2026-01-01T00:00:00.000Z","data":{"source":"b0",'
        b'"key":"0-1","item":{"id":"0-1","n":1,"body":"' + b"lorem ipsum dolor sit amet " * 4
        + b'"},"previous":null}}'
    )
    return path
