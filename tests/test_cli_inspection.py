"""The inspection and repair commands as an operator uses them: pipes, typos, counts."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import pollhook, query
from servers import WAIT, Receiver


@pytest.fixture
def dead(upstream, write_config, tmp_path) -> Iterator[Path]:  # type: ignore[no-untyped-def]
    """A state file with one dead delivery to `hooks` (its receiver answers 503)."""
    down = Receiver(plan=lambda i, req: (503, {}, b"down"))
    upstream.items = [{"id": 1}]
    cfg = write_config(
        f"""
        state: s.db
        sources:
          - name: tickets
            url: {upstream.url}/t
            interval: 1h
        subscribers:
          - name: hooks
            url: {down.url}/hooks
            retry: []
        """
    )
    assert pollhook("run", "--once", "-c", str(cfg)).returncode == 0  # baseline
    upstream.items = [{"id": 1}, {"id": 2, "title": "x" * 50}]
    assert pollhook("run", "--once", "-c", str(cfg)).returncode == 0
    assert query(tmp_path / "s.db", "SELECT status FROM deliveries") == [("dead",)]
    yield cfg
    down.close()


def deliveries(cfg: Path, *args: str) -> list[dict[str, Any]]:
    result = pollhook("deliveries", "--json", "-c", str(cfg), *args)
    assert result.returncode == 0, result.stderr
    rows: list[dict[str, Any]] = json.loads(result.stdout)
    return rows


LISTINGS = [
    ["deliveries"], ["deliveries", "--json"], ["deliveries", "--attempts", "1"],
    ["events"], ["events", "--json"], ["status"], ["status", "--json"],
]  # fmt: skip


@pytest.mark.parametrize("args", LISTINGS, ids=" ".join)
def test_a_listing_whose_reader_went_away_ends_quietly(dead, args) -> None:  # type: ignore[no-untyped-def]
    """`pollhook deliveries | head -1`: no 'internal error', just the end, as with `ls | head`."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "pollhook", *args, "-c", str(dead)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # the reader is gone before pollhook writes its first line
    err = proc.stderr.read()
    proc.stderr.close()
    assert proc.wait(WAIT) == -signal.SIGPIPE, err
    assert err == b""


def test_a_listing_into_head_ends_quietly_in_a_shell(dead) -> None:  # type: ignore[no-untyped-def]
    shell = subprocess.run(
        ["bash", "-c", 'set -o pipefail; "$0" -m pollhook deliveries --limit 100000 -c "$1" | '
         "head -1 >/dev/null; echo \"status ${PIPESTATUS[0]}\"", sys.executable, str(dead)],
        capture_output=True, text=True, timeout=WAIT,
    )  # fmt: skip
    assert shell.stderr == ""
    assert shell.stdout.strip() in ("status 141", "status 0")  # 0: it finished before head left


@pytest.mark.parametrize(
    "args",
    [["replay", "--dead", "--subscriber", "hookz"], ["resume", "hookz"],
     ["replay", "msg_x", "--subscriber", "hookz"]],
    ids=["replay-dead", "resume", "replay-event"],
)  # fmt: skip
def test_an_unknown_subscriber_is_a_usage_error_with_a_suggestion(dead, args) -> None:  # type: ignore[no-untyped-def]
    result = pollhook(*args, "-c", str(dead))
    assert result.returncode == 2, result.stdout + result.stderr
    assert "no subscriber 'hookz'" in result.stderr
    assert "did you mean 'hooks'?" in result.stderr and "Traceback" not in result.stderr
    assert result.stdout == ""


def test_subscribers_known_only_to_the_state_file_count_as_known(dead, tmp_path) -> None:  # type: ignore[no-untyped-def]
    db = str(tmp_path / "s.db")  # no config: the names come from the state file alone
    assert pollhook("resume", "hooks", "--db", db, cwd=tmp_path / "..").returncode == 0
    result = pollhook("resume", "nobody", "--db", db, cwd=tmp_path / "..")
    assert result.returncode == 2 and "known: hooks" in result.stderr
    queued = pollhook("replay", "--dead", "--subscriber", "hooks", "--db", db)
    assert queued.returncode == 0 and "queued 1 dead" in queued.stdout


def test_tries_agree_with_the_attempts_listed_after_a_replay(dead) -> None:  # type: ignore[no-untyped-def]
    replay = pollhook("replay", "--dead", "--subscriber", "hooks", "-c", str(dead))
    assert replay.returncode == 0, replay.stderr
    assert pollhook("run", "--once", "-c", str(dead)).returncode == 0  # a second attempt, dead
    [row] = deliveries(dead)
    listed = json.loads(pollhook("deliveries", "--attempts", str(row["id"]), "--json",
                                 "-c", str(dead)).stdout)  # fmt: skip
    assert len(listed) == 2 and [a["status_code"] for a in listed] == [503, 503]
    assert (row["status"], row["attempts"]) == ("dead", 2)
    table = pollhook("deliveries", "-c", str(dead)).stdout.splitlines()
    header, line = table[0].split(), table[1].split()
    assert line[header.index("tries")] == "2"


def test_ignored_fields_are_not_in_changes(upstream, write_config) -> None:  # type: ignore[no-untyped-def]
    upstream.items = [{"id": 1, "status": "open", "updated_at": "10:00"}]
    cfg = write_config(
        f"state: s.db\nsources:\n  - name: t\n    url: {upstream.url}/t\n    interval: 1h\n"
        "    ignore: [updated_at]\n"
    )
    assert pollhook("run", "--once", "-c", str(cfg)).returncode == 0  # baseline
    upstream.items = [{"id": 1, "status": "closed", "updated_at": "11:00"}]
    result = pollhook("poll", "t", "--dry-run", "-c", str(cfg))
    [event] = [json.loads(line) for line in result.stdout.splitlines()]
    assert event["data"]["changes"] == [{"op": "replace", "path": "/status", "value": "closed"}]
    assert event["data"]["item"]["updated_at"] == "11:00"  # the item itself is whole
    assert event["data"]["previous"]["updated_at"] == "10:00"
