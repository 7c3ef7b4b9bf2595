"""Scenario 5: latency from the upstream serving a change to the receiver getting it.

Ten sources polled every second (light load, 304s between changes); the bench
changes one source at a time (a bounded number of changes, one every 0.2 s).
The server records, on its own monotonic clock, when it first served each changed
version and when the receiver got the webhook carrying it; the poll interval is
thus excluded. Baseline in the same run: the raw path (GET the changed document,
parse it, POST the item at once) measured the same way.
"""

from __future__ import annotations

import subprocess
import time
from typing import Any

from benchlib import (
    MEASURED_CPU,
    Opts,
    Report,
    Row,
    Server,
    median,
    percentile,
    pinned,
    pollhook_cmd,
    stop_process,
    worker,
)  # fmt: skip
from scenario_delivery import SECRET

COMMAND = "python bench/run.py --only latency"
SOURCES = 10
GAP = 0.2


def latencies(stats: dict[str, Any]) -> tuple[list[float], int]:
    served, arrivals = stats["served"], stats["arrivals"]
    out = [arrivals[k] - t for k, t in served.items() if not k.endswith(":0") and k in arrivals]
    missing = sum(1 for k in served if not k.endswith(":0") and k not in arrivals)
    return [x * 1000 for x in out], missing


def run(opts: Opts) -> Report:
    tmp = opts.scenario_tmp("latency")
    rep = Report("latency", "Scenario 5: latency, upstream change → receiver (poll interval excluded)")
    changes = opts.latency_changes
    with Server() as server:
        port = server.call("/control/receivers_start", {"count": 1, "latency": True})["ports"][0]
        config = tmp / "lat.yaml"
        config.write_text(
            "sources:\n"
            + "".join(f"  - name: lat{i}\n    url: {server.base}/lat/{i}\n    interval: 1s\n"
                      for i in range(SOURCES))
            + f"subscribers:\n  - name: r\n    url: http://127.0.0.1:{port}/hook\n"
              f"    secret: {SECRET}\n"
        )  # fmt: skip
        with open(tmp / "daemon.err", "wb") as err:
            proc = subprocess.Popen(
                pinned(pollhook_cmd("run", "-c", str(config), "--db", str(tmp / "lat.db")),
                       MEASURED_CPU), stdout=subprocess.DEVNULL, stderr=err,
            )  # fmt: skip
            try:
                time.sleep(3.0)  # every source's first (baseline) poll
                for n in range(changes):
                    server.call("/control/lat_bump", {"source": n % SOURCES})
                    time.sleep(GAP)
                deadline = time.monotonic() + 15
                while time.monotonic() < deadline:
                    stats = server.call("/control/stats?latency=1")
                    if len(stats["arrivals"]) >= changes:
                        break
                    time.sleep(0.2)
                stats = server.call("/control/stats?latency=1")
            finally:
                rc = stop_process(proc)
        ph, ph_missing = latencies(stats)
        server.call("/control/reset", {})
        worker(
            ["latency-baseline", "--base", server.base, "--receiver",
             f"http://127.0.0.1:{port}/hook", "--count", str(changes), "--sources", str(SOURCES),
             "--gap", "0.02"], timeout=300, tag="raw", out_dir=tmp,
        )  # fmt: skip
        raw, raw_missing = latencies(server.call("/control/stats?latency=1"))

    p50, p99, raw50, raw99 = (percentile(ph, 50), percentile(ph, 99), percentile(raw, 50),
                              percentile(raw, 99))  # fmt: skip
    rep.add(f"Setup: {SOURCES} sources at `interval: 1s`, {changes} changes one every {GAP:g} s "
            f"(round-robin over the sources), one receiver, signed deliveries. Latency = receiver "
            f"arrival − first time the upstream served the changed version (one clock: the "
            f"server's). pollhook exit code after SIGTERM: {rc}.")  # fmt: skip
    rep.add()
    rep.table(
        ["path", "samples", "missing", "p50", "p90", "p99", "max", "mean"],
        [[name, len(xs), miss, f"{percentile(xs, 50):.1f} ms", f"{percentile(xs, 90):.1f} ms",
          f"{percentile(xs, 99):.1f} ms", f"{max(xs, default=float('nan')):.1f} ms",
          f"{sum(xs) / max(len(xs), 1):.1f} ms"]
         for name, xs, miss in (("pollhook", ph, ph_missing), ("raw GET→parse→POST", raw, raw_missing))],
    )  # fmt: skip
    rep.add("'missing': a change served but never received (a change overtaken by the next "
            "change of the same source before a poll is not served at all, so not counted).")
    rep.add()
    rep.rows.append(Row(
        "5. latency", "change → receiver, p50 / p99",
        f"{p50 / raw50:.1f}x / {p99 / raw99:.1f}x raw",
        f"pollhook p50 {p50:.1f} ms, p99 {p99:.1f} ms (n={len(ph)}); raw p50 {raw50:.1f} ms, "
        f"p99 {raw99:.1f} ms", "p99 < 50 ms", p99 < 50 and len(ph) > 0 and ph_missing == 0, COMMAND,
    ))  # fmt: skip
    rep.raw = {"pollhook_ms": ph, "raw_ms": raw, "missing": ph_missing, "median": median(ph)}
    return rep
