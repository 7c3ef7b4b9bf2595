"""Prometheus metrics that must be present whenever they mean something.

Process CPU and memory under the shipped unit's `ProcSubset=pid` (a real
subset=pid /proc mount when the test runs as root; a proc root shaped like one
otherwise), and the gauges read from the state file: present with 0, and
right after a restart.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from conftest import wait_until

PROCESS_SERIES = (
    "process_cpu_seconds_total", "process_resident_memory_bytes",
    "process_virtual_memory_bytes", "process_start_time_seconds", "process_open_fds",
)  # fmt: skip


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def scrape(port: int) -> str:
    return httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text


def scraped(port: int) -> str:
    """The first answer of a listener that is starting."""
    answer: list[str] = []

    def up() -> bool:
        try:
            answer.append(scrape(port))
        except httpx.TransportError:
            return False
        return True

    wait_until(up, "the metrics listener")
    return answer[-1]


def value(text: str, series: str) -> float:
    [line] = [ln for ln in text.splitlines() if ln.startswith(series + " ")]
    return float(line.split()[-1])


def test_process_metrics_without_proc_stat(tmp_path: Path) -> None:
    """A proc root shaped like ProcSubset=pid: the process's own files, no /proc/stat."""
    from prometheus_client import ProcessCollector as LibraryCollector

    from pollhook.process_metrics import ProcessCollector

    root = tmp_path / "proc"
    root.mkdir()
    (root / "self").symlink_to(f"/proc/{os.getpid()}")
    assert LibraryCollector(proc=str(root), registry=None).collect() == []  # the defect
    names = {m.name for m in ProcessCollector(proc=str(root), registry=None).collect()}
    assert {"process_cpu_seconds", "process_resident_memory_bytes",
            "process_start_time_seconds", "process_open_fds"} <= names  # fmt: skip


def _subset_pid_possible() -> str | None:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return "needs root and unshare(1) to mount a subset=pid /proc"
    probe = subprocess.run(
        ["unshare", "--mount", "--pid", "--fork", "sh", "-c",
         "mount -t proc -o subset=pid proc /proc && test ! -e /proc/stat"],
        capture_output=True, timeout=30,
    )  # fmt: skip
    return None if probe.returncode == 0 else "this kernel cannot mount /proc with subset=pid"


def test_process_metrics_under_a_real_subset_pid_proc(upstream, write_config, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The daemon in a mount namespace whose /proc is mounted as ProcSubset=pid mounts it."""
    reason = _subset_pid_possible()
    if reason:
        pytest.skip(reason)
    port = free_port()
    cfg = write_config(f"sources:\n  - name: a\n    url: {upstream.url}/a\n    interval: 1h\n")
    inner = (
        'mount -t proc -o subset=pid proc /proc && test ! -e /proc/stat && exec "$0" -m pollhook'
        f" run -c {cfg} --db {tmp_path / 's.db'} --metrics {port}"
    )
    log = open(tmp_path / "daemon.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        ["unshare", "--mount", "--pid", "--fork", "--kill-child", "sh", "-c", inner,
         sys.executable],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        text = scraped(port)
    finally:
        proc.send_signal(signal.SIGKILL)  # --kill-child takes the daemon with it
        proc.wait(30)
        log.close()
    for series in PROCESS_SERIES:
        assert any(line.startswith(series + " ") for line in text.splitlines()), (series, text)
    assert value(text, "process_resident_memory_bytes") > 1_000_000
    started = value(text, "process_start_time_seconds")
    assert time.time() - 120 < started <= time.time() + 1  # it started just now


def test_gauges_read_from_the_state_file_are_present_and_survive_a_restart(
    upstream, receiver, write_config, daemon
) -> None:  # type: ignore[no-untyped-def]
    upstream.items = [{"id": 1}, {"id": 2}]
    cfg = write_config(f"""
        sources:
          - name: m
            url: {upstream.url}/m
            interval: 200ms
        subscribers:
          - name: r
            url: {receiver.url}/hooks
        """)  # fmt: skip
    port = free_port()
    first = daemon(cfg).start("--metrics", str(port))
    upstream.wait_for(1)
    upstream.items = [{"id": 1}, {"id": 2}, {"id": 3}]
    receiver.wait_accepted(1)
    wait_until(
        lambda: 'pollhook_outbox_pending{subscriber="r"} 0.0' in scrape(port),
        "an empty outbox reading 0",
    )
    assert 'pollhook_items_tracked{source="m"} 3.0' in scrape(port)
    assert first.stop() == 0

    port = free_port()
    daemon(cfg, first.db).start("--metrics", str(port))  # nothing changes upstream from now on
    text = scraped(port)
    assert 'pollhook_items_tracked{source="m"} 3.0' in text, text
    assert 'pollhook_outbox_pending{subscriber="r"} 0.0' in text
