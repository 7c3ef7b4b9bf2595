"""Fixtures: real servers, a config writer, and the real daemon as a subprocess."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from servers import WAIT, Receiver, Upstream

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


class DaemonProcess:
    """`pollhook run` as a real subprocess with its own log file."""

    def __init__(self, config: Path, db: Path, log: Path) -> None:
        self.config, self.db, self.log = config, db, log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, *extra: str, prefix: tuple[str, ...] = ()) -> DaemonProcess:
        """`prefix` runs the daemon under a command, e.g. `prlimit --data=1G` for a memory cap."""
        self._log_file = open(self.log, "ab")  # noqa: SIM115 - closed in wait()
        self.proc = subprocess.Popen(
            [*prefix, sys.executable, "-m", "pollhook", "--log-level", "debug", "run",
             "-c", str(self.config), "--db", str(self.db), *extra],
            stdout=self._log_file, stderr=subprocess.STDOUT,
        )  # fmt: skip
        return self

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait(self, timeout: float = WAIT) -> int:
        assert self.proc is not None
        code = self.proc.wait(timeout)
        self._log_file.close()
        return code

    def stop(self) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.signal(signal.SIGTERM)
        return self.wait()

    def kill(self) -> None:
        self.signal(signal.SIGKILL)
        self.wait()

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def pollhook(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None,
             timeout: float = WAIT) -> subprocess.CompletedProcess[str]:  # fmt: skip
    """Run one pollhook command to completion."""
    return subprocess.run(
        [sys.executable, "-m", "pollhook", *args], capture_output=True, text=True,
        cwd=cwd, env={**os.environ, **(env or {})}, timeout=timeout,
    )  # fmt: skip


def query(db: Path, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(db, timeout=10)
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


def wait_until(predicate: Any, what: str, timeout: float = WAIT) -> None:
    """Poll a cheap predicate (e.g. a DB row) with a bounded wait."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    server = Upstream()
    yield server
    server.close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    yield server
    server.close()


@pytest.fixture
def write_config(tmp_path: Path):  # type: ignore[no-untyped-def]
    def write(text: str, name: str = "sources.yaml") -> Path:
        path = tmp_path / name
        path.write_text(textwrap.dedent(text))
        return path

    return write


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Any]:
    started: list[DaemonProcess] = []

    def make(config: Path, db: Path | None = None) -> DaemonProcess:
        proc = DaemonProcess(config, db or tmp_path / "state.db", tmp_path / f"daemon{len(started)}.log")
        started.append(proc)
        return proc

    yield make
    for proc in started:
        if proc.proc is not None and proc.proc.poll() is None:
            proc.kill()
