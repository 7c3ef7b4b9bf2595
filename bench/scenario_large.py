"""Scenario 3: one source of 100k items (~20 MB), 1% changed between polls.

In-process (bench/benchworker.py, pinned to CPU 1, bodies read from files so that
generating them is not measured):
  floor     orjson.loads + canonical hash (orjson OPT_SORT_KEYS + blake2b) + dict diff
  pollhook  parse_json + extract_items + poll.plan + Store.commit_poll on a real state file
End to end: `pollhook run --once` over HTTP, its own `poll ok ... in N ms` log line and
the process's peak RSS (wait4).
"""

from __future__ import annotations

import re

from benchlib import (
    MEASURED_CPU,
    Opts,
    Report,
    Row,
    Server,
    fmt_s,
    median,
    pinned,
    pollhook_cmd,
    run_timed,
    worker,
)  # fmt: skip

COMMAND = "python bench/run.py --only large"
POLL_LINE = re.compile(r"source=big poll ok events=(\d+) in (\d+)ms")


def run(opts: Opts) -> Report:
    tmp = opts.scenario_tmp("large")
    rep = Report("large", "Scenario 3: large source (100k items, 1% changed per poll)")
    items, repeats = opts.big_items, opts.repeats
    gen, _ = worker(
        ["gen-big", "--items", str(items), "--versions", str(repeats + 1), "--out-dir", str(tmp)],
        timeout=300, tag="gen", out_dir=tmp,
    )  # fmt: skip
    # the floor runs before and after pollhook (the machine is shared): all its rows count
    floor, _ = worker(
        ["large-floor", "--dir", str(tmp), "--repeats", str(repeats)],
        timeout=300, tag="floor", out_dir=tmp,
    )  # fmt: skip
    args = ["large-pollhook", "--dir", str(tmp), "--db", str(tmp / "inproc.db"),
            "--repeats", str(repeats)]  # fmt: skip
    ph, _ = worker(args, timeout=600, tag="pollhook", out_dir=tmp)
    floor_after, _ = worker(
        ["large-floor", "--dir", str(tmp), "--repeats", str(repeats)],
        timeout=300, tag="floor-after", out_dir=tmp,
    )  # fmt: skip
    floor["rows"] += floor_after["rows"]
    floor["maxrss_mb"] = max(floor["maxrss_mb"], floor_after["maxrss_mb"])
    prof = None
    if opts.profile:
        prof, _ = worker(
            ["large-pollhook", "--dir", str(tmp), "--db", str(tmp / "prof.db"), "--repeats", "1",
             "--profile"], timeout=600, tag="pollhook-prof", out_dir=tmp,
        )  # fmt: skip
        opts.profiles_dir.mkdir(parents=True, exist_ok=True)
        (opts.profiles_dir / "large-cprofile.txt").write_text(prof["profile"])

    # -- end to end through the daemon -------------------------------------------------
    e2e = []
    with Server() as server:
        ports = server.call("/control/receivers_start", {"count": 1})["ports"]
        config = tmp / "big.yaml"
        config.write_text(
            f"http:\n  max_body_size: 200MB\nsources:\n  - name: big\n    url: {server.base}/big\n"
            f"    interval: 1h\nsubscribers:\n  - name: sink\n    url: http://127.0.0.1:{ports[0]}/hook\n"
            f"    max_in_flight: 50\n"
        )  # fmt: skip
        for v in range(repeats + 1):
            server.call("/control/big", {"items": items, "version": v})
            t = run_timed(
                pinned(pollhook_cmd("run", "--once", "-c", str(config), "--db", str(tmp / "e2e.db")),
                       MEASURED_CPU), timeout=600, out_dir=tmp, tag=f"e2e-{v}",
            )  # fmt: skip
            m = POLL_LINE.search(t.stderr)
            e2e.append({
                "version": v, "wall": t.seconds, "rc": t.rc, "maxrss_mb": t.maxrss_mb,
                "events": int(m.group(1)) if m else 0, "poll_ms": int(m.group(2)) if m else None,
            })  # fmt: skip
        received = server.stats()["received"]

    # -- report -----------------------------------------------------------------------
    f_rows, p_rows = floor["rows"], ph["rows"]
    f_total = median([r["total"] for r in f_rows])
    p_total = median([r["total"] for r in p_rows])
    ratio = p_total / f_total
    rep.add(f"Setup: {items} items, {gen['bytes'][0] / 1e6:.1f} MB of JSON; each version changes "
            f"1% of the items ({items // 100}). {repeats} changed polls after a first (baseline) "
            f"poll; medians shown (the floor ran before and after pollhook). pollhook's in-process run includes a subscriber, so each "
            f"changed poll also writes {items // 100} events and deliveries.")  # fmt: skip
    rep.add()
    rep.add("## In-process (seconds per poll)")
    rep.add()
    rep.table(
        ["", "parse", "hash / extract", "diff / plan", "commit", "total", "peak RSS"],
        [["floor (orjson + blake2b + dict diff)", f"{median([r['parse'] for r in f_rows]):.3f}",
          f"{median([r['hash'] for r in f_rows]):.3f}", f"{median([r['diff'] for r in f_rows]):.3f}",
          "-", f"{f_total:.3f}", f"{floor['maxrss_mb']:.0f} MB"],
         ["pollhook (parse_json, extract_items, plan, commit_poll)",
          f"{median([r['parse'] for r in p_rows]):.3f}", f"{median([r['extract'] for r in p_rows]):.3f}",
          f"{median([r['plan'] for r in p_rows]):.3f}", f"{median([r['commit'] for r in p_rows]):.3f}",
          f"{p_total:.3f}", f"{ph['maxrss_mb']:.0f} MB"]],
    )  # fmt: skip
    first = ph["first"]
    rep.add(f"pollhook's first (baseline) poll: parse {first['parse']:.3f} s, extract "
            f"{first['extract']:.3f} s, plan {first['plan']:.3f} s, commit {first['commit']:.3f} s "
            f"({first['upserts']} rows); peak RSS after it {ph['first_maxrss_mb']:.0f} MB. "
            f"Changed polls: events {[r['events'] for r in p_rows]}, upserts "
            f"{[r['upserts'] for r in p_rows]}. One 118-byte `orjson.dumps` result keeps "
            f"{ph['orjson_bytes_per_small_dumps']:.0f} bytes allocated here (tracemalloc), which "
            f"is what the first poll's 100k upserts multiply.")  # fmt: skip
    rep.add()
    rep.add("## End to end: `pollhook run --once` over HTTP")
    rep.add()
    rep.table(
        ["poll", "wall (process)", "poll log line (fetch → commit)", "events", "peak RSS", "exit"],
        [["first" if r["version"] == 0 else f"changed #{r['version']}", fmt_s(r["wall"]),
          f"{r['poll_ms']} ms" if r["poll_ms"] is not None else "?", r["events"],
          f"{r['maxrss_mb']:.0f} MB", r["rc"]] for r in e2e],
    )  # fmt: skip
    rep.add(f"Webhooks received by the local receiver: {received}.")
    rep.add()
    if prof:
        rep.add("## cProfile of one changed poll (in-process)")
        rep.add()
        rep.add("```")
        rep.add(prof["profile"])
        rep.add("```")
    e2e_changed = [r for r in e2e if r["version"] > 0]
    e2e_peak = max((r["maxrss_mb"] for r in e2e), default=0.0)
    rep.rows.append(Row(
        "3. large", "parse+diff+commit, 100k items, 1% changed",
        f"{ratio:.3f}x the floor",
        f"pollhook {fmt_s(p_total)}, floor {fmt_s(f_total)}; end to end poll "
        f"{median([r['poll_ms'] or 0 for r in e2e_changed]):.0f} ms; peak RSS in-process "
        f"{ph['maxrss_mb']:.0f} MB, run --once {e2e_peak:.0f} MB (floor process {floor['maxrss_mb']:.0f} MB)",
        "<= 1.5x floor; peak RSS reported", ratio <= 1.5, COMMAND,
    ))  # fmt: skip
    rep.raw = {"floor": floor, "pollhook": ph, "e2e": e2e, "bytes": gen["bytes"]}
    return rep
