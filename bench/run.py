#!/usr/bin/env python3
"""pollhook's benchmark suite (issue 6): one command, every scenario, ratios against
baselines measured in the same run. See BENCHMARKS.md for the results and what they mean.

    python bench/run.py                      # the full suite (~10 minutes on 2 cores)
    python bench/run.py --quick              # a ~3 minute version with smaller sizes
    python bench/run.py --only polling,latency [--quick]
    python bench/run.py --profile            # also record py-spy / cProfile profiles

Scenarios: polling, steady, large, delivery, latency, backlog. Each writes
bench/results/<scenario>.md and .json; the summary table in BENCHMARKS.md (between
its `bench:summary` markers) is rebuilt from every results/*.json present.

Everything runs on 127.0.0.1: a local aiohttp server pinned to CPU 0 plays the
upstreams and receivers, and the measured processes are pinned to CPU 1. Every
load loop is bounded in count and time, and every child process exits by itself.
Optional tools: urlwatch (compared when installed), py-spy (--profile), uvloop
(makes the local server faster when installed). Needs: the pollhook package,
aiohttp and orjson (pollhook's own dependencies).
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

from benchlib import (
    REPO,
    RESULTS,
    Opts,
    Report,
    Row,
    cpu_times,
    foreign_pytest,
    git_describe,
    met_text,
    pin_self,
)  # fmt: skip

SCENARIOS = ("polling", "steady", "large", "delivery", "latency", "backlog")
SUMMARY_START = "<!-- bench:summary:start -->"
SUMMARY_END = "<!-- bench:summary:end -->"


def export_head(tmp: Path) -> Path:
    """`git archive HEAD src` into the temporary directory: a fixed, committed pollhook."""
    dest = tmp / "head"
    dest.mkdir()
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", "HEAD", "src"], capture_output=True, check=True, timeout=60
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True, timeout=60)
    commit = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
        check=True, timeout=60,
    ).stdout.strip()  # fmt: skip
    os.environ["POLLHOOK_BENCH_COMMIT"] = commit  # HEAD may move during the run; this is what ran
    return dest / "src"


def run_scenario(name: str, opts: Opts) -> Report:
    module = __import__(f"scenario_{name}")
    report: Report = module.run(opts)
    return report


def meta_line(opts: Opts, name: str, seconds: float, load: str) -> str:
    cpu = "?"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "?")
    except OSError:
        pass
    mode = "quick" if opts.quick else "full"
    return (
        f"Run {dt.datetime.now(dt.UTC).strftime('%Y-%m-%d %H:%M UTC')}, {mode} mode, "
        f"`python bench/run.py --only {name}{' --quick' if opts.quick else ''}`; pollhook "
        f"{git_describe()}; {os.cpu_count()} x {cpu}, Python {platform.python_version()}; "
        f"scenario took {seconds:.0f} s. {load}"
    )


def write_results(report: Report, meta: str, opts: Opts) -> None:
    results = opts.profiles_dir.parent
    results.mkdir(parents=True, exist_ok=True)
    (results / f"{report.name}.md").write_text(report.markdown(meta))
    data = {
        "name": report.name, "title": report.title, "meta": meta, "quick": opts.quick,
        "rows": [r.__dict__ for r in report.rows], "raw": report.raw,
    }  # fmt: skip
    (results / f"{report.name}.json").write_text(json.dumps(data, indent=1, default=str) + "\n")


def summary_table() -> str:
    lines = [
        "| scenario | measure | ratio | raw figures | target | met | command |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in SCENARIOS:
        path = RESULTS / f"{name}.json"
        if not path.exists():
            lines.append(f"| {name} | (not run yet) | | | | | `python bench/run.py --only {name}` |")
            continue
        data = json.loads(path.read_text())
        mode = " (quick)" if data.get("quick") else ""
        for r in data["rows"]:
            row = Row(**r)
            note = f" {row.note}" if row.note else ""
            lines.append(
                f"| {row.scenario}{mode} | {row.measure} | {row.ratio} | {row.raw} | {row.target} "
                f"| {met_text(row.met)}{note} | `{row.command}` |"
            )
    return "\n".join(lines)


def update_benchmarks_md() -> None:
    path = REPO / "BENCHMARKS.md"
    table = f"{SUMMARY_START}\n{summary_table()}\n{SUMMARY_END}"
    text = path.read_text() if path.exists() else f"# Benchmarks\n\n{SUMMARY_START}\n{SUMMARY_END}\n"
    if SUMMARY_START in text and SUMMARY_END in text:
        head, rest = text.split(SUMMARY_START, 1)
        _, tail = rest.split(SUMMARY_END, 1)
        text = head + table + tail
    else:
        text += "\n" + table + "\n"
    path.write_text(text)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller sizes, one repeat (~3 min)")
    parser.add_argument("--only", help=f"comma-separated subset of: {', '.join(SCENARIOS)}")
    parser.add_argument("--skip", help="comma-separated scenarios to leave out")
    parser.add_argument("--repeats", type=int, help="repeats per measurement (default 3, quick 1)")
    parser.add_argument("--profile", action="store_true", help="also record profiles (py-spy / cProfile)")
    parser.add_argument("--sources", type=int, default=1000, help="sources in polling/steady (1000)")
    parser.add_argument("--concurrency", type=int, default=50, help="polling concurrency (50)")
    parser.add_argument("--steady-seconds", type=float, help="steady-state window (60; quick 10)")
    parser.add_argument("--backlog", type=int, help="backlog deliveries (100000; quick 20000)")
    parser.add_argument("--head", action="store_true",
                        help="benchmark the committed HEAD (git archive of src/) instead of the "
                             "installed / working-tree pollhook")
    parser.add_argument("--src", help="benchmark the pollhook package under this src/ directory")
    parser.add_argument("--keep-tmp", action="store_true", help="keep the temporary directory")
    parser.add_argument("--no-summary", action="store_true", help="do not touch BENCHMARKS.md")
    parser.add_argument("--results-dir", help="write results here instead of bench/results "
                        "(implies --no-summary)")
    args = parser.parse_args()

    chosen = [s.strip() for s in args.only.split(",")] if args.only else list(SCENARIOS)
    skip = {s.strip() for s in args.skip.split(",")} if args.skip else set()
    unknown = [s for s in [*chosen, *skip] if s not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario(s): {', '.join(unknown)}")
    chosen = [s for s in chosen if s not in skip]

    pin_self(0)  # the orchestrator mostly sleeps; it shares CPU 0 with the local server
    tmp = Path(tempfile.mkdtemp(prefix="pollhook-bench-"))
    quick = args.quick
    src = Path(args.src).resolve() if args.src else None
    if args.head:
        src = export_head(tmp)
    # A pip-installed pollhook has bytecode; a bare or editable src/ under
    # PYTHONDONTWRITEBYTECODE would be compiled again by every `run --once`.
    compile_target = src or Path(importlib.util.find_spec("pollhook").origin or ".").parent  # type: ignore[union-attr]
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(compile_target)], check=True, timeout=120)
    if src is not None:
        os.environ["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(src), os.environ.get("PYTHONPATH", "")) if p
        )
        sys.path.insert(0, str(src))
        os.environ["POLLHOOK_BENCH_SRC"] = "HEAD" if args.head else str(src)
    opts = Opts(
        quick=quick,
        repeats=args.repeats or (1 if quick else 3),
        profile=args.profile,
        tmp=tmp,
        sources=args.sources,
        concurrency=args.concurrency,
        steady_seconds=args.steady_seconds or (10.0 if quick else 60.0),
        deliveries=5_000 if quick else 10_000,
        big_items=100_000,
        latency_changes=50 if quick else 200,
        backlog=args.backlog or (20_000 if quick else 100_000),
    )
    if args.results_dir:
        opts.profiles_dir = Path(args.results_dir).resolve() / "profiles"
        args.no_summary = True
    failures = 0
    started_all = time.monotonic()
    try:
        for name in chosen:
            print(f"== {name} ...", flush=True)
            started = time.monotonic()
            busy0, total0 = cpu_times()
            pytest_seen = foreign_pytest()
            try:
                report = run_scenario(name, opts)
            except Exception:
                failures += 1
                traceback.print_exc()
                print(f"== {name}: FAILED", flush=True)
                continue
            busy1, total1 = cpu_times()
            pytest_seen = max(pytest_seen, foreign_pytest())
            load = (
                f"Machine (both cores, every process) {100 * (busy1 - busy0) / max(total1 - total0, 1):.0f}% "
                f"busy during the scenario; other pytest processes seen at start/end: {pytest_seen}."
            )
            meta = meta_line(opts, name, time.monotonic() - started, load)
            write_results(report, meta, opts)
            for r in report.rows:
                print(f"   {r.measure}: ratio {r.ratio}; {r.raw}; target {r.target}: {met_text(r.met)}")
            where = opts.profiles_dir.parent / f"{name}.md"
            print(f"== {name}: {time.monotonic() - started:.0f} s -> {where}", flush=True)
        if not args.no_summary:
            update_benchmarks_md()
    finally:
        if args.keep_tmp:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    print(f"total {time.monotonic() - started_all:.0f} s", flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
