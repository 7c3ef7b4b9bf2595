"""Issue 17's hostile upstreams, timed: `python bench/hostile.py [--src DIR] [--only a,b]`.

Each scenario serves one hostile body from a local server (127.0.0.1 only)
and runs `pollhook run --once` (or `pollhook run`, for the SIGTERM one) as a
subprocess under `prlimit --data=1.5GiB`, as the issue's probes did. It
reports the wall time, the peak RSS of the daemon and of its largest parsing
worker (VmHWM from /proc, sampled every 50 ms) and what pollhook said.
`--src DIR` puts DIR (a `src/` tree, e.g. `git archive main src`) first on
PYTHONPATH to measure another version. Every run is bounded (90 s).
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import json
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

CAP = int(1.5 * 1024**3)
LIMIT = 90.0


class Server:
    """Answers each path from `routes`: (status, headers, body); records requests' headers."""

    def __init__(self, routes: dict[str, tuple[int, dict[str, str], bytes]]) -> None:
        self.routes, self.seen = routes, []
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                server.seen.append((self.path, dict(self.headers)))
                status, headers, body = server.routes.get(self.path.split("?")[0], (404, {}, b""))
                self.send_response(status)
                for name, value in {**headers, "content-length": str(len(body))}.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def run(
    config: str, tmp: Path, src: str | None, *, once: bool = True, term_after: float | None = None
) -> dict[str, Any]:
    """pollhook under the memory cap: wall time, peak RSS, exit, stderr tail, state."""
    path = tmp / "sources.yaml"
    path.write_text(config)
    env = dict(os.environ)
    if src:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
    command = ["prlimit", f"--data={CAP}", sys.executable, "-m", "pollhook", "run",
               *(["--once"] if once else []), "-c", str(path), "--db", str(tmp / "s.db")]  # fmt: skip
    log = (tmp / "log.txt").open("wb")
    started = time.monotonic()
    proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    stop_at, peaks = None, {}
    while True:
        for each in [proc.pid, *_children(proc.pid)]:
            peaks[each] = max(peaks.get(each, 0), _hwm(each))
        pid, status, _ = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        now = time.monotonic() - started
        if term_after is not None and stop_at is None and now >= term_after:
            proc.send_signal(signal.SIGTERM)
            stop_at = now
        if now > LIMIT:
            proc.kill()
            pid, status, _ = os.wait4(proc.pid, 0)
            break
        time.sleep(0.05)  # a sampling period, not a wait for an event
    wall = time.monotonic() - started
    log.close()
    result = {
        "wall_s": round(wall, 2), "daemon_peak_mb": round(peaks.get(proc.pid, 0) / 1024),
        "worker_peak_mb": round(max([v for k, v in peaks.items() if k != proc.pid] or [0]) / 1024),
        "exit": os.waitstatus_to_exitcode(status), "killed_at_limit": wall > LIMIT,
        "log": (tmp / "log.txt").read_text(errors="replace")[-300:],
    }  # fmt: skip
    if stop_at is not None:
        result["exit_after_sigterm_s"] = round(wall - stop_at, 2)
    try:
        with sqlite3.connect(tmp / "s.db") as db:
            result["sources"] = db.execute(
                "SELECT name, consecutive_failures, items_count, last_error FROM sources"
            ).fetchall()
    except sqlite3.Error:
        result["sources"] = None
    return result


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        with contextlib.suppress(OSError):  # it ended while we looked
            found += [int(p) for p in task.read_text().split()]
    return found


def _hwm(pid: int) -> int:
    """Peak resident KiB of one process so far (0 once it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def source(name: str, url: str, extra: str = "") -> str:
    return f"  - {{name: {name}, url: '{url}', interval: 1s{extra}}}\n"


def scenarios(only: set[str] | None) -> dict[str, Any]:
    entity = (
        '<?xml version="1.0"?>\n<!DOCTYPE rss [\n<!ENTITY a "' + "x" * 100_000 + '">\n]>\n'
        '<rss version="2.0"><channel><title>t</title><item><guid>1</guid><title>'
        + "&a;" * 10_000
        + "</title></item></channel></rss>"
    ).encode()
    rows = [f"{i},item {i}\n".encode() for i in range(10)]
    table: dict[str, Any] = {
        "1-html": ({"/x": (200, {"content-type": "text/html"}, b"<p>x</p>" * 20000)}, ", selector: p"),
        "1-csv": ({"/x": (200, {"content-type": "text/csv"}, b"id,name\n" + b',"x' * 30000)}, ""),
        "1-regex": ({"/x": (200, {"content-type": "text/plain"}, b"1" * 100_000)}, ", regex: '(\\d+) open incidents'"),
        "2-feed-entities": ({"/x": (200, {"content-type": "application/rss+xml", "content-encoding": "gzip"}, gzip.compress(entity, 9))}, ""),
        "3-empty-objects": ({"/x": (200, {"content-type": "application/json", "content-encoding": "gzip"}, gzip.compress(b"[" + b"{}," * 33_000_000 + b"{}]", 9))}, ""),
        "6-gzip-members": ({"/x": (200, {"content-type": "text/csv", "content-encoding": "gzip"}, gzip.compress(b"id,name\n" + b"".join(rows[:5])) + gzip.compress(b"".join(rows[5:])))}, ""),
        "7-crash": ({"/x": (200, {"content-type": "application/json"}, b'{"items": [{"id": 1}], "next": "http://[::1/x"}')}, ", items: items, pagination: {type: next_url, next: next}"),
    }  # fmt: skip
    return {k: v for k, v in table.items() if only is None or k in only}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", help="a src/ tree to measure instead of the installed pollhook")
    parser.add_argument("--only", help="comma-separated scenario names")
    args = parser.parse_args()
    only = set(args.only.split(",")) if args.only else None
    results: dict[str, Any] = {}
    for name, (routes, extra) in scenarios(only).items():
        server = Server(routes)
        with tempfile.TemporaryDirectory() as tmp:
            results[name] = run(
                "sources:\n" + source("s", server.url + "/x", extra), Path(tmp), args.src
            )
        server.close()
        print(name, json.dumps(results[name], default=str)[:600], flush=True)
    if only is None or "8-sigterm" in only:  # a parse that never ends, then SIGTERM to `run`
        server = Server({"/x": (200, {"content-type": "text/plain"}, b"a" * 300_000 + b"!")})
        with tempfile.TemporaryDirectory() as tmp:
            config = "sources:\n" + source(
                "s", server.url + "/x", ", regex: '(a|aa)+$', timeout: 5m"
            )
            results["8-sigterm"] = run(config, Path(tmp), args.src, once=False, term_after=3.0)
        server.close()
        print("8-sigterm", json.dumps(results["8-sigterm"], default=str)[:600], flush=True)
    if only is None or "4-redirect" in only:  # where the source's X-Api-Key went
        other = Server({"/data": (200, {"content-type": "application/json"}, b'[{"id": 1}]')})
        origin = Server({"/x": (302, {"location": other.url + "/data"}, b"")})
        with tempfile.TemporaryDirectory() as tmp:
            config = "sources:\n" + source("s", origin.url + "/x", ", headers: {X-Api-Key: k-1}")
            results["4-redirect"] = run(config, Path(tmp), args.src)
        results["4-redirect"]["key_sent_elsewhere"] = any(h.get("X-Api-Key") for _, h in other.seen)
        origin.close()
        other.close()
        print("4-redirect", json.dumps(results["4-redirect"], default=str)[:600], flush=True)


if __name__ == "__main__":
    main()
