"""Scenario 2: steady state, 1,000 sources every 10 s answering 304: CPU share and RSS.

The daemon (`pollhook run`, pinned to CPU 1) runs one interval plus a margin to
take its first (200) polls, then CPU time (utime+stime from /proc/<pid>/stat)
and RSS are measured over a bounded window. Baseline in the same run: a raw
aiohttp client making the same conditional GETs on the same schedule.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Any

from benchlib import (
    BENCH_DIR,
    MEASURED_CPU,
    PY,
    MemSampler,
    Opts,
    Report,
    Row,
    Server,
    have_pyspy,
    pinned,
    pollhook_cmd,
    proc_cpu_seconds,
    pyspy_attach,
    stop_process,
    summarize_stacks,
)  # fmt: skip

INTERVAL = 10.0
ITEMS = 100
COMMAND = "python bench/run.py --only steady"


def write_config(path: Path, base: str, count: int, concurrency: int) -> None:
    lines = [f"http:\n  max_per_host: {concurrency}\n", "sources:\n"]
    for i in range(count):
        lines.append(f"  - name: s{i}\n    url: {base}/s/{i}\n    interval: {INTERVAL:g}s\n")
    path.write_text("".join(lines))


def measure(pid: int, server: Server, seconds: float) -> dict[str, Any]:
    """CPU share and memory of `pid` over `seconds`, plus what the server answered meanwhile."""
    mem = MemSampler(pid)
    before = server.stats()["counts"]
    cpu0, t0 = proc_cpu_seconds(pid), time.monotonic()
    deadline = t0 + seconds
    while time.monotonic() < deadline:
        mem.sample()
        time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
    cpu1, t1 = proc_cpu_seconds(pid), time.monotonic()
    mem.sample()
    after = server.stats()["counts"]
    delta = {k: after.get(k, 0) - before.get(k, 0) for k in after}
    return {
        "cpu_share": (cpu1 - cpu0) / (t1 - t0), "cpu_s": cpu1 - cpu0, "wall_s": t1 - t0,
        "rss_mb": mem.last_mb, "peak_mb": mem.peak_mb, "answers": delta,
    }  # fmt: skip


def run(opts: Opts) -> Report:
    tmp = opts.scenario_tmp("steady")
    rep = Report("steady", "Scenario 2: steady state (1,000 sources every 10 s, 304s)")
    n, window = opts.sources, opts.steady_seconds
    warmup = INTERVAL + 4.0
    profile_text = ""
    with Server() as server:
        server.call("/control/poll", {"count": n, "items": ITEMS, "version": 1, "etag": True})
        config = tmp / "sources.yaml"
        write_config(config, server.base, n, opts.concurrency)

        # -- pollhook run --------------------------------------------------------------
        with open(tmp / "daemon.err", "wb") as err:
            proc = subprocess.Popen(
                pinned(pollhook_cmd("run", "-c", str(config), "--db", str(tmp / "state.db")),
                       MEASURED_CPU), stdout=subprocess.DEVNULL, stderr=err,
            )  # fmt: skip
            try:
                warm = MemSampler(proc.pid)
                deadline = time.monotonic() + warmup
                while time.monotonic() < deadline and proc.poll() is None:
                    warm.sample()
                    time.sleep(0.5)
                warm_counts = server.stats()["counts"]
                ph = measure(proc.pid, server, window)
                ph["warmup_peak_mb"] = warm.peak_mb
                ph["warmup_counts"] = warm_counts
                if opts.profile and have_pyspy():
                    opts.profiles_dir.mkdir(parents=True, exist_ok=True)
                    out = opts.profiles_dir / "steady-daemon.stacks"
                    spy = pyspy_attach(proc.pid, out, seconds=20)
                    spy.wait(60)
                    profile_text = summarize_stacks(out)
                    out.with_suffix(".summary.txt").write_text(profile_text)
            finally:
                ph_rc = stop_process(proc)
        ph["rc"] = ph_rc

        # -- raw aiohttp client, same schedule --------------------------------------------
        server.call("/control/reset", {})
        life = warmup + window + 5.0
        with open(tmp / "baseline.out", "wb") as out_f:
            base_proc = subprocess.Popen(
                pinned([PY, str(BENCH_DIR / "benchworker.py"), "steady-baseline", "--base",
                        server.base, "--count", str(n), "--interval", str(INTERVAL),
                        "--seconds", str(life), "--concurrency", str(opts.concurrency)],
                       MEASURED_CPU), stdout=out_f, stderr=subprocess.DEVNULL,
            )  # fmt: skip
            try:
                time.sleep(warmup)
                raw = measure(base_proc.pid, server, window)
                base_proc.wait(life + 30)
            finally:
                stop_process(base_proc)

    # -- report -----------------------------------------------------------------------
    cpu_ratio = ph["cpu_share"] / max(raw["cpu_share"], 1e-9)
    rss_ratio = ph["peak_mb"] / max(raw["peak_mb"], 1e-9)
    rep.add(f"Setup: {n} sources at `interval: {INTERVAL:g}s` ({n / INTERVAL:.0f} polls/s), "
            f"every answer a 304 after the first poll; warm-up {warmup:.0f} s (first polls: "
            f"200s, which write the baseline), then a {window:.0f} s measured window. "
            f"CPU share = (utime+stime) / wall of the process, all threads; 1.00 = one full core.")  # fmt: skip
    rep.add()
    rep.table(
        ["process", "CPU share (window)", "CPU seconds", "RSS at end", "peak RSS (window)",
         "peak RSS incl. warm-up", "answers in window"],
        [["pollhook run", f"{100 * ph['cpu_share']:.1f}%", f"{ph['cpu_s']:.2f}",
          f"{ph['rss_mb']:.0f} MB", f"{ph['peak_mb']:.0f} MB", f"{ph['warmup_peak_mb']:.0f} MB",
          ph["answers"]],
         ["raw aiohttp loop", f"{100 * raw['cpu_share']:.1f}%", f"{raw['cpu_s']:.2f}",
          f"{raw['rss_mb']:.0f} MB", f"{raw['peak_mb']:.0f} MB", "-", raw["answers"]]],
    )  # fmt: skip
    rep.add(f"pollhook exit code after SIGTERM: {ph['rc']}; server answers during warm-up: "
            f"{ph['warmup_counts']}.")
    rep.add()
    if profile_text:
        rep.add("## py-spy profile of the daemon (20 s after the measured window)")
        rep.add()
        rep.add("```")
        rep.add(profile_text)
        rep.add("```")
    rep.rows.append(Row(
        "2. steady", "CPU share, 1,000 sources / 10 s, 304s",
        f"{cpu_ratio:.1f}x the raw client's CPU",
        f"pollhook {100 * ph['cpu_share']:.1f}% of a core, raw {100 * raw['cpu_share']:.1f}%",
        "< 15% of one core", ph["cpu_share"] < 0.15, COMMAND,
    ))  # fmt: skip
    rep.rows.append(Row(
        "2. steady", "RSS", f"{rss_ratio:.1f}x the raw client's RSS",
        f"pollhook peak {ph['peak_mb']:.0f} MB (end {ph['rss_mb']:.0f} MB), raw {raw['peak_mb']:.0f} MB",
        "< 100 MB", ph["peak_mb"] < 100, COMMAND,
    ))  # fmt: skip
    rep.raw = {"pollhook": ph, "raw": raw, "interval": INTERVAL, "window": window}
    return rep
