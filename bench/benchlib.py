"""Shared plumbing for the pollhook benchmark suite (see BENCHMARKS.md).

Processes: the local server (bench/benchserver.py) runs pinned to CPU 0; every
measured process (pollhook, raw baselines, urlwatch) runs pinned to CPU 1; the
orchestrator (bench/run.py) shares CPU 0 with the server and mostly sleeps.
Everything talks to 127.0.0.1 only, and every wait here is bounded.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HOST = "127.0.0.1"
BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
RESULTS = BENCH_DIR / "results"
PY = sys.executable
SERVER_CPU = 0
MEASURED_CPU = 1
CLK_TCK = os.sysconf("SC_CLK_TCK")
TWO_CPUS = (os.cpu_count() or 1) >= 2


# --------------------------------------------------------------------------- processes


def pinned(cmd: Sequence[str], cpu: int) -> list[str]:
    """`cmd` run on one CPU (taskset), when the machine has two."""
    if TWO_CPUS and shutil.which("taskset"):
        return ["taskset", "-c", str(cpu), *cmd]
    return list(cmd)


def pin_self(cpu: int) -> None:
    if TWO_CPUS:
        os.sched_setaffinity(0, {cpu})


def pollhook_cmd(*args: str) -> list[str]:
    """`pollhook ...` through this interpreter (the venv's console script does the same)."""
    exe = Path(PY).with_name("pollhook")
    if exe.exists():
        return [str(exe), *args]
    return [PY, "-m", "pollhook", *args]


def proc_cpu_seconds(pid: int) -> float:
    """utime + stime of a live process (all its threads), from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat") as f:
        text = f.read()
    fields = text[text.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def proc_mem_kb(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak) in KiB; empty when the process is gone."""
    out: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    key, value = line.split(":", 1)
                    out[key] = int(value.split()[0])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return out


@dataclass
class Timed:
    """A finished child: wall seconds, exit code, peak RSS (from wait4) and output."""

    seconds: float
    rc: int
    maxrss_mb: float
    cpu_s: float
    stdout: str
    stderr: str


def run_timed(
    cmd: Sequence[str], *, timeout: float, env: dict[str, str] | None = None,
    cwd: Path | None = None, out_dir: Path | None = None, tag: str = "child",
) -> Timed:  # fmt: skip
    """Run `cmd` to completion (killed after `timeout`), timing spawn → exit."""
    out_dir = out_dir or Path("/tmp")
    out_path, err_path = out_dir / f"{tag}.out", out_dir / f"{tag}.err"
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        started = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=env, cwd=cwd)
        deadline = started + timeout
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() > deadline:
                proc.kill()
                pid, status, usage = os.wait4(proc.pid, 0)
                break
            time.sleep(0.002)
        seconds = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
    return Timed(
        seconds=seconds,
        rc=proc.returncode,
        maxrss_mb=usage.ru_maxrss / 1024,
        cpu_s=usage.ru_utime + usage.ru_stime,
        stdout=out_path.read_text(errors="replace"),
        stderr=err_path.read_text(errors="replace"),
    )


def stop_process(proc: subprocess.Popen[Any], grace: float = 15.0) -> int:
    """SIGTERM, then SIGKILL after `grace` seconds; returns the exit code."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    return proc.returncode


class MemSampler:
    """Samples VmRSS of a process; `peak_mb` is the largest sample or VmHWM, whichever is larger."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.samples: list[tuple[float, int]] = []
        self.hwm_kb = 0

    def sample(self) -> int:
        mem = proc_mem_kb(self.pid)
        rss = mem.get("VmRSS", 0)
        if rss:
            self.samples.append((time.monotonic(), rss))
        self.hwm_kb = max(self.hwm_kb, mem.get("VmHWM", 0))
        return rss

    @property
    def peak_mb(self) -> float:
        best = max((r for _, r in self.samples), default=0)
        return max(best, self.hwm_kb) / 1024

    @property
    def last_mb(self) -> float:
        return self.samples[-1][1] / 1024 if self.samples else 0.0


# --------------------------------------------------------------------------- server


class Server:
    """bench/benchserver.py in a child process pinned to CPU 0; exits by itself after `lifetime`."""

    def __init__(self, lifetime: float = 1800.0) -> None:
        cmd = pinned([PY, str(BENCH_DIR / "benchserver.py"), "--lifetime", str(lifetime)], SERVER_CPU)
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("bench server did not start")
        self.port = int(json.loads(line)["port"])
        self.base = f"http://{HOST}:{self.port}"

    def call(self, path: str, payload: dict[str, Any] | None = None, timeout: float = 120) -> Any:
        conn = http.client.HTTPConnection(HOST, self.port, timeout=timeout)
        try:
            body = json.dumps(payload or {}).encode()
            method = "GET" if payload is None else "POST"
            conn.request(method, path, body=body if payload is not None else None)
            resp = conn.getresponse()
            data = resp.read()
            if resp.status != 200:
                raise RuntimeError(f"server {path}: HTTP {resp.status}: {data[:200]!r}")
            return json.loads(data)
        finally:
            conn.close()

    def stats(self) -> dict[str, Any]:
        result: dict[str, Any] = self.call("/control/stats")
        return result

    def cpu_seconds(self) -> float:
        return proc_cpu_seconds(self.proc.pid)

    def close(self) -> None:
        stop_process(self.proc, grace=5)

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def wait_for(predicate: Any, timeout: float, every: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(every)
    return bool(predicate())


# --------------------------------------------------------------------------- workers


def worker(args: Sequence[str], *, timeout: float, tag: str, out_dir: Path) -> tuple[Any, Timed]:
    """Run `bench/benchworker.py ARGS` on the measured CPU; its last stdout line is JSON."""
    timed = run_timed(
        pinned([PY, str(BENCH_DIR / "benchworker.py"), *args], MEASURED_CPU),
        timeout=timeout, out_dir=out_dir, tag=tag,
    )  # fmt: skip
    lines = [ln for ln in timed.stdout.splitlines() if ln.strip()]
    if timed.rc != 0 or not lines:
        raise RuntimeError(f"worker {args[0]} failed (rc {timed.rc}): {timed.stderr[-2000:]}")
    return json.loads(lines[-1]), timed


# --------------------------------------------------------------------------- state db


def db_query(path: Path, sql: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
    """A read-only look at a pollhook state file (WAL lets us read while the daemon writes)."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    try:
        return list(conn.execute(sql, args))
    finally:
        conn.close()


def delivery_counts(path: Path) -> dict[str, int]:
    try:
        rows = db_query(path, "SELECT status, count(*) FROM deliveries GROUP BY status")
    except sqlite3.Error:
        return {}
    return {status: n for status, n in rows}


# --------------------------------------------------------------------------- numbers


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def fmt_s(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:.2f} s"


def fmt_list(values: Sequence[float], unit: str = "s", digits: int = 3) -> str:
    return "[" + ", ".join(f"{v:.{digits}f}" for v in values) + f"] {unit}"


@dataclass
class Row:
    """One line of the BENCHMARKS.md summary table."""

    scenario: str
    measure: str
    ratio: str
    raw: str
    target: str
    met: bool | None
    command: str
    note: str = ""


@dataclass
class Report:
    """A scenario's outcome: summary rows plus the markdown of bench/results/<name>.md."""

    name: str
    title: str
    rows: list[Row] = field(default_factory=list)
    body: list[str] = field(default_factory=list)
    raw: dict[str, Any] = field(default_factory=dict)  # every figure, for results/<name>.json

    def add(self, line: str = "") -> None:
        self.body.append(line)

    def table(self, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        self.add("| " + " | ".join(header) + " |")
        self.add("|" + "---|" * len(header))
        for row in rows:
            self.add("| " + " | ".join(str(c) for c in row) + " |")
        self.add()

    def markdown(self, meta: str) -> str:
        lines = [f"# {self.title}", "", meta, ""]
        if self.rows:
            lines += ["| measure | ratio | raw | target | met |", "|---|---|---|---|---|"]
            for r in self.rows:
                lines.append(f"| {r.measure} | {r.ratio} | {r.raw} | {r.target} | {met_text(r.met)} |")
            lines.append("")
        return "\n".join(lines + self.body) + "\n"


def met_text(met: bool | None) -> str:
    return "n/a" if met is None else ("**met**" if met else "**not met**")


def git_describe() -> str:
    if os.environ.get("POLLHOOK_BENCH_SRC", "") not in ("", "HEAD"):
        return f"from {os.environ['POLLHOOK_BENCH_SRC']}"
    try:
        head = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
            capture_output=True, text=True, timeout=10, check=False,
        ).stdout.strip()  # fmt: skip
        dirty = subprocess.run(
            ["git", "-C", str(REPO), "status", "--porcelain", "--", "src"],
            capture_output=True, text=True, timeout=10, check=False,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    if os.environ.get("POLLHOOK_BENCH_SRC") == "HEAD":
        exported = os.environ.get("POLLHOOK_BENCH_COMMIT", head)
        return f"{exported} (committed HEAD when the run started, exported with --head)"
    return head + (" + uncommitted src changes" if dirty else "")


# --------------------------------------------------------------------------- profiles


def have_pyspy() -> bool:
    return shutil.which("py-spy") is not None


def pyspy_record(cmd: Sequence[str], out: Path, *, timeout: float, rate: int = 250) -> Timed:
    """Run `cmd` under `py-spy record` (all threads, raw collapsed stacks) on the measured CPU."""
    spy = [
        "py-spy", "record", "--format", "raw", "--rate", str(rate), "--threads",
        "--output", str(out), "--", *cmd,
    ]  # fmt: skip
    log_dir = Path(tempfile.gettempdir())  # the profiled command's own output is not kept
    return run_timed(pinned(spy, MEASURED_CPU), timeout=timeout, out_dir=log_dir, tag=out.stem)


def pyspy_attach(pid: int, out: Path, seconds: float, rate: int = 250) -> subprocess.Popen[Any]:
    """Sample a running process for `seconds` (py-spy itself runs on the server's CPU)."""
    spy = [
        "py-spy", "record", "--format", "raw", "--rate", str(rate), "--threads", "--nonblocking",
        "--duration", str(max(1, round(seconds))), "--pid", str(pid), "--output", str(out),
    ]  # fmt: skip
    return subprocess.Popen(
        pinned(spy, SERVER_CPU), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )


def _frame_name(frame: str) -> str:
    """`func (path/to/file.py:123)` → `func (file.py)`; keeps names comparable across lines."""
    name, _, where = frame.partition(" (")
    file = where.rsplit(":", 1)[0].rsplit("/", 1)[-1].rstrip(")")
    return f"{name} ({file})" if file else name


def summarize_stacks(path: Path, top: int = 25) -> str:
    """Inclusive and self sample shares per function from py-spy's raw output."""
    inclusive: dict[str, int] = {}
    self_: dict[str, int] = {}
    threads: dict[str, int] = {}
    total = 0
    if not path.exists():
        return f"(no profile at {path})"
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        thread = frames[0] if frames and frames[0].startswith(("thread", "process")) else "?"
        thread = thread.split(":")[0]  # the main thread is unnamed until `threading` is imported
        frames = [f for f in frames if not f.startswith(("thread (", "process "))]
        total += count
        threads[thread] = threads.get(thread, 0) + count
        names = [_frame_name(f) for f in frames]
        for name in set(names):
            inclusive[name] = inclusive.get(name, 0) + count
        if names:
            self_[names[-1]] = self_.get(names[-1], 0) + count
    if not total:
        return "(empty profile)"

    def block(title: str, table: dict[str, int]) -> list[str]:
        rows = sorted(table.items(), key=lambda kv: -kv[1])[:top]
        return [title, *[f"  {100 * n / total:5.1f}%  {name}" for name, n in rows], ""]

    lines = [f"{total} samples (non-idle, all threads)", ""]
    lines += block("by thread id:", threads)
    lines += block("inclusive (time in the function and below):", inclusive)
    lines += block("self (time in the function itself):", self_)
    return "\n".join(lines)


@dataclass
class Opts:
    """What run.py was asked for; scenarios read their sizes from here."""

    quick: bool
    repeats: int
    profile: bool
    tmp: Path
    sources: int = 1000
    concurrency: int = 50
    steady_seconds: float = 60.0
    deliveries: int = 10_000
    big_items: int = 100_000
    latency_changes: int = 200
    backlog: int = 100_000
    profiles_dir: Path = RESULTS / "profiles"

    def scenario_tmp(self, name: str) -> Path:
        path = self.tmp / name
        path.mkdir(parents=True, exist_ok=True)
        return path


def cpu_times() -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine, from /proc/stat."""
    with open("/proc/stat") as f:
        values = [int(x) for x in f.readline().split()[1:]]
    idle = values[3] + values[4]
    total = sum(values[:8])
    return total - idle, total


def foreign_pytest() -> int:
    """How many pytest processes (other engineers' test runs) are alive right now."""
    count = 0
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    if b"pytest" in f.read():
                        count += 1
            except OSError:
                continue
    return count
