"""Scenario 1: one full polling round over 1,000 sources (unchanged, all changed, 304s).

Rounds are `pollhook run --once` processes (spawn → exit, so Python start-up is
included, as in one urlwatch run), and the same rounds in-process through
`Daemon.run_once` (bench/benchworker.py inproc-rounds). Baseline: a raw aiohttp
loop over the same 1,000 URLs (+ orjson parse) in the same run; urlwatch on the
same URLs when it is installed.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

from benchlib import (
    BENCH_DIR,
    MEASURED_CPU,
    PY,
    Opts,
    Report,
    Row,
    Server,
    db_query,
    fmt_s,
    have_pyspy,
    median,
    pinned,
    pollhook_cmd,
    pyspy_record,
    run_timed,
    summarize_stacks,
    worker,
)  # fmt: skip

ITEMS = 100  # ~20 KB per document, as in the raw-client figures
KINDS = ("unchanged", "changed", "304")
COMMAND = "python bench/run.py --only polling"


def write_config(path: Path, base: str, count: int, concurrency: int) -> None:
    lines = [f"http:\n  max_per_host: {concurrency}\n", "sources:\n"]
    for i in range(count):
        lines.append(f"  - name: s{i}\n    url: {base}/s/{i}\n    interval: 1h\n")
    path.write_text("".join(lines))


def write_urlwatch(dir_: Path, base: str, count: int) -> list[str]:
    (dir_ / "urls.yaml").write_text(
        "\n---\n".join(f"name: s{i}\nurl: {base}/s/{i}" for i in range(count)) + "\n"
    )
    (dir_ / "urlwatch.yaml").write_text("report:\n  stdout:\n    enabled: true\n    color: false\n")
    (dir_ / "hooks.py").write_text("")
    return [
        "--urls", str(dir_ / "urls.yaml"), "--config", str(dir_ / "urlwatch.yaml"),
        "--hooks", str(dir_ / "hooks.py"), "--cache", str(dir_ / "cache.db"),
    ]  # fmt: skip


class Upstream:
    """Drives the server's version / ETag switch for each kind of round."""

    def __init__(self, server: Server, count: int) -> None:
        self.server = server
        self.count = count
        self.version = 1
        server.call("/control/poll", {"count": count, "items": ITEMS, "version": 1, "etag": False})

    def set(self, kind: str) -> None:
        if kind == "first" or kind == "unchanged":
            self.server.call("/control/poll", {"etag": False})
        elif kind == "changed":  # new bodies (item 0 of every document changes), ETags on
            self.version += 1
            self.server.call(
                "/control/poll",
                {"count": self.count, "items": ITEMS, "version": self.version, "etag": True},
            )
        elif kind == "304":
            self.server.call("/control/poll", {"etag": True})


def sequence(repeats: int) -> list[str]:
    return ["first"] + [k for _ in range(repeats) for k in KINDS]


def counts_delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {k: after[k] - before.get(k, 0) for k in after if after[k] - before.get(k, 0)}


def events_in(db: Path) -> int:
    try:
        return int(db_query(db, "SELECT count(*) FROM events")[0][0])
    except Exception:
        return 0


def run(opts: Opts) -> Report:
    tmp = opts.scenario_tmp("polling")
    rep = Report("polling", "Scenario 1: polling throughput (1,000 sources, one full round)")
    n = opts.sources
    with Server() as server:
        up = Upstream(server, n)
        config = tmp / "sources.yaml"
        write_config(config, server.base, n, opts.concurrency)
        doc_bytes = up.server.call("/control/poll", {})["bytes"]

        # -- start-up costs ------------------------------------------------------
        startup: dict[str, float] = {}
        probes = {
            "python -c pass": [PY, "-c", "pass"],
            "python -c 'import pollhook.cli'": [PY, "-c", "import pollhook.cli"],
            "python -c 'import pollhook.daemon'": [PY, "-c", "import pollhook.daemon"],
            f"pollhook check ({n} sources)": pollhook_cmd("check", "-c", str(config)),
        }
        for label, cmd in probes.items():
            startup[label] = median(
                [run_timed(pinned(cmd, MEASURED_CPU), timeout=60, out_dir=tmp, tag="probe").seconds
                 for _ in range(3)]
            )  # fmt: skip

        # -- interleaved: run --once, in-process run_once, raw loop, per round ------------
        # The machine is shared and noisy: each kind's three measurements run back to
        # back and the ratio is taken per repeat, then the median of those ratios.
        once_db, inproc_db = tmp / "once.db", tmp / "inproc.db"
        once: dict[str, list[dict[str, Any]]] = {}
        inproc: dict[str, list[dict[str, Any]]] = {}
        full: dict[str, Any] = {"seconds": [], "statuses": {}}
        cond: dict[str, Any] = {"seconds": [], "statuses": {}}
        server_cpu_raw: list[float] = []
        err = open(tmp / "inproc.err", "wb")  # noqa: SIM115 (closed below)
        proc = subprocess.Popen(
            pinned([PY, str(BENCH_DIR / "benchworker.py"), "inproc-rounds", "--config", str(config),
                    "--db", str(inproc_db)], MEASURED_CPU),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, text=True,
        )  # fmt: skip
        assert proc.stdin and proc.stdout
        try:
            for k, kind in enumerate(sequence(opts.repeats)):
                up.set(kind)
                before_events, before_cpu = events_in(once_db), server.cpu_seconds()
                before_counts = server.stats()["counts"]
                t = run_timed(
                    pinned(pollhook_cmd("run", "--once", "-c", str(config), "--db", str(once_db)),
                           MEASURED_CPU), timeout=300, out_dir=tmp, tag=f"once-{k}-{kind}",
                )  # fmt: skip
                once.setdefault(kind, []).append({
                    "seconds": t.seconds, "rc": t.rc, "maxrss_mb": t.maxrss_mb, "cpu_s": t.cpu_s,
                    "events": events_in(once_db) - before_events,
                    "server_cpu": (server.cpu_seconds() - before_cpu) / t.seconds,
                    "failed": t.stderr.count("failed:"),
                    "answers": counts_delta(before_counts, server.stats()["counts"]),
                })  # fmt: skip

                before_cpu = server.cpu_seconds()
                before_counts = server.stats()["counts"]
                proc.stdin.write("round\n")
                proc.stdin.flush()
                data = json.loads(proc.stdout.readline())
                data["server_cpu"] = (server.cpu_seconds() - before_cpu) / max(
                    data["round"] + data["open"] + data["close"], 1e-9
                )
                data["answers"] = counts_delta(before_counts, server.stats()["counts"])
                inproc.setdefault(kind, []).append(data)

                if kind == "first":
                    continue
                mode = "304" if kind == "304" else "full"
                before_cpu = server.cpu_seconds()
                res, raw_proc = worker(
                    ["get-loop", "--base", server.base, "--count", str(n), "--concurrency",
                     str(opts.concurrency), "--repeats", "1", "--mode", mode],
                    timeout=300, tag=f"baseline-{k}-{kind}", out_dir=tmp,
                )  # fmt: skip
                target = cond if mode == "304" else full
                target["seconds"] += res["seconds"]
                for code, c in res["statuses"].items():
                    target["statuses"][code] = target["statuses"].get(code, 0) + c
                once[kind][-1]["raw"] = res["seconds"][0]
                once[kind][-1]["raw_proc"] = raw_proc.seconds  # spawn → exit, like run --once
                inproc[kind][-1]["raw"] = res["seconds"][0]
                if mode == "full":
                    server_cpu_raw.append(server.cpu_seconds() - before_cpu)
            proc.stdin.write("quit\n")
            proc.stdin.flush()
            proc.wait(60)
        finally:
            if proc.poll() is None:
                proc.kill()
            err.close()
        base_full_server_cpu = median(server_cpu_raw)

        # -- urlwatch -----------------------------------------------------------------
        urlwatch: dict[str, list[dict[str, Any]]] = {}
        uw_exe = shutil.which("urlwatch")
        if uw_exe:
            uw_dir = tmp / "urlwatch"
            uw_dir.mkdir(exist_ok=True)
            uw_args = write_urlwatch(uw_dir, server.base, n)
            for k, kind in enumerate(sequence(opts.repeats)):
                up.set(kind)
                t = run_timed(
                    pinned([uw_exe, *uw_args], MEASURED_CPU), timeout=600, out_dir=uw_dir,
                    tag=f"uw-{k}-{kind}",
                )  # fmt: skip
                urlwatch.setdefault(kind, []).append(
                    {"seconds": t.seconds, "rc": t.rc, "maxrss_mb": t.maxrss_mb,
                     "changed_reported": t.stdout.count("CHANGED:")}
                )  # fmt: skip

        # -- profiles (optional; separate, unmeasured rounds) ----------------------------
        profiles: dict[str, str] = {}
        if opts.profile and have_pyspy():
            opts.profiles_dir.mkdir(parents=True, exist_ok=True)
            for kind in ("unchanged", "changed", "304"):  # 304 needs the ETag a changed round stored
                up.set(kind)
                out = opts.profiles_dir / f"polling-once-{kind}.stacks"
                pyspy_record(
                    pollhook_cmd("run", "--once", "-c", str(config), "--db", str(once_db)),
                    out, timeout=300,
                )
                profiles[kind] = summarize_stacks(out)
                out.with_suffix(".summary.txt").write_text(profiles[kind])

    # -- report -------------------------------------------------------------------------
    base = {k: median([r["raw"] for r in once[k]]) for k in KINDS}
    pair_once = {k: median([r["raw"] / r["seconds"] for r in once[k]]) for k in KINDS}
    pair_in = {k: median([r["raw"] / r["round"] for r in inproc[k]]) for k in KINDS}
    base_proc = {k: median([r["raw_proc"] for r in once[k]]) for k in KINDS}
    pair_proc = {k: median([r["raw_proc"] / r["seconds"] for r in once[k]]) for k in KINDS}
    med_once = {k: median([r["seconds"] for r in once[k]]) for k in ("first", *KINDS)}
    med_in = {k: median([r["round"] for r in inproc[k]]) for k in ("first", *KINDS)}
    rep.add(f"Setup: {n} sources on one local aiohttp server (CPU 0), {ITEMS} items per document "
            f"(~{doc_bytes / n / 1000:.0f} KB; {doc_bytes / 1e6:.1f} MB per round), "
            f"`http.max_per_host: {opts.concurrency}` (the default is 10) and a raw baseline of "
            f"{opts.concurrency} concurrent requests; measured processes pinned to CPU 1. "
            f"'changed' = every document changed (item 0 of each: {n} item.updated events). "
            f"Repeats per kind: {opts.repeats} (median shown).")  # fmt: skip
    rep.add()
    rep.add("## Start-up (median of 3, spawn → exit)")
    rep.add()
    rep.table(["command", "time"], [[f"`{k}`", fmt_s(v)] for k, v in startup.items()])
    rep.add("## Rounds")
    rep.add()
    rows = []
    for kind in ("first", *KINDS):
        o = once[kind]
        b = base.get(kind)
        rows.append([
            kind, fmt_s(med_once[kind]), fmt_s(med_in[kind]),
            fmt_s(b) if b else "-", fmt_s(base_proc[kind]) if b else "-",
            f"{pair_proc[kind]:.2f}" if b else "-",
            f"{pair_once[kind]:.2f}" if b else "-", f"{pair_in[kind]:.2f}" if b else "-",
            f"{n / med_once[kind]:.0f}", o[-1]["events"], f"{max(r['maxrss_mb'] for r in o):.0f} MB",
            f"{100 * median([r['server_cpu'] for r in o]):.0f}%",
            sum(r["rc"] != 0 for r in o), o[-1]["answers"],
        ])  # fmt: skip
    rep.table(
        ["round", "run --once (wall)", "in-process run_once", "raw aiohttp loop",
         "raw aiohttp process", "ratio run --once / raw process", "ratio run --once / raw loop",
         "ratio in-process / raw loop", "sources/s (run --once)", "events", "peak RSS", "server CPU",
         "non-zero exits", "server answers (last run --once)"], rows,
    )  # fmt: skip
    rep.add(f"Raw baseline rounds (one per pollhook round, right after it): full "
            f"{[round(x, 3) for x in full['seconds']]} s (statuses {full['statuses']}; the server "
            f"used {base_full_server_cpu:.2f} CPU-s per worker process, start-up included); 304 "
            f"{[round(x, 3) for x in cond['seconds']]} s (statuses {cond['statuses']}). Ratios are "
            f"the median over repeats of raw time / pollhook time of the same repeat. 'raw loop' is "
            f"the round timed inside the raw client's process; 'raw process' is that process from "
            f"spawn to exit (Python, aiohttp and orjson imports, the round), the same shape as "
            f"`run --once`, which is compared with it.")  # fmt: skip
    rep.add()
    rep.add("In-process rounds (seconds: open = Daemon.__aenter__, round = run_once, close = __aexit__):")
    rep.add()
    rep.add("```")
    for kind in ("first", *KINDS):
        for r in inproc[kind]:
            rep.add(f"{kind:9} open {r['open']:.3f} round {r['round']:.3f} close {r['close']:.3f} "
                    f"events {r['events']} failed {r['failed']}")  # fmt: skip
    rep.add("```")
    rep.add()
    if urlwatch:
        med_uw = {k: median([r["seconds"] for r in urlwatch[k]]) for k in ("first", *KINDS)}
        rep.add("## urlwatch on the same URLs")
        rep.add()
        rep.table(
            ["round", "urlwatch", "pollhook run --once", "urlwatch / pollhook", "urlwatch URLs/s",
             "urlwatch peak RSS", "CHANGED lines"],
            [[k, fmt_s(med_uw[k]), fmt_s(med_once[k]), f"{med_uw[k] / med_once[k]:.1f}x",
              f"{n / med_uw[k]:.0f}", f"{max(r['maxrss_mb'] for r in urlwatch[k]):.0f} MB",
              urlwatch[k][-1]["changed_reported"]] for k in ("first", *KINDS)],
        )  # fmt: skip
    else:
        rep.add("urlwatch: not installed, skipped (`pip install urlwatch` to include it).")
        rep.add()
    for kind, text in profiles.items():
        rep.add(f"## py-spy profile: `run --once`, {kind} round")
        rep.add()
        rep.add("```")
        rep.add(text)
        rep.add("```")
        rep.add()

    for kind in KINDS:
        r_proc, r_once, r_in = pair_proc[kind], pair_once[kind], pair_in[kind]
        met = r_proc >= 0.5 and r_in >= 0.5
        rep.rows.append(Row(
            scenario="1. polling", measure=f"round, {kind} (vs raw aiohttp)",
            ratio=f"{r_proc:.2f} (run --once / raw process) / {r_in:.2f} (in-process / raw loop)"
                  f" / {r_once:.2f} (run --once / raw loop)",
            raw=f"run --once {fmt_s(med_once[kind])}, raw process {fmt_s(base_proc[kind])}; "
                f"in-process {fmt_s(med_in[kind])}, raw loop {fmt_s(base[kind])}",
            target=">= 0.5 of raw", met=met, command=COMMAND,
            note="" if met or r_in < 0.5 else "met in-process; start-up makes the gap",
        ))  # fmt: skip
    if urlwatch:
        for kind in ("changed", "unchanged"):
            ratio = med_uw[kind] / med_once[kind]
            rep.rows.append(Row(
                scenario="1. polling", measure=f"round, {kind} (vs urlwatch)",
                ratio=f"{ratio:.1f}x", raw=f"urlwatch {fmt_s(med_uw[kind])}, pollhook "
                f"{fmt_s(med_once[kind])}", target=">= 5x urlwatch" +
                (", changed round < ~1 s" if kind == "changed" else ""),
                met=ratio >= 5 and (kind != "changed" or med_once[kind] < 1.0), command=COMMAND,
            ))  # fmt: skip
    else:
        rep.rows.append(Row("1. polling", "vs urlwatch", "skipped", "urlwatch not installed",
                            ">= 5x urlwatch", None, COMMAND))  # fmt: skip
    rep.raw = {"once": once, "inproc": inproc, "full": full, "cond": cond, "urlwatch": urlwatch,
               "startup": startup}  # fmt: skip
    return rep
