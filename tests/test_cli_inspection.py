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
    ["items", "tickets"], ["items", "tickets", "--json"],
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


def test_a_listing_into_head_ends_quietly_in_a_shell(upstream, write_config) -> None:  # type: ignore[no-untyped-def]
    """The literal pipeline, with more output than the pipe holds: head leaves mid-listing."""
    upstream.items = [{"id": n} for n in range(3000)]  # ~300 KB of table, the pipe holds 64 KB
    cfg = write_config(
        f"state: s.db\nsources:\n  - name: big\n    url: {upstream.url}/b\n    interval: 1h\n"
        "    emit_initial: true\n"
    )
    assert pollhook("run", "--once", "-c", str(cfg)).returncode == 0
    shell = subprocess.run(
        ["bash", "-c", '"$0" -m pollhook events --limit 5000 -c "$1" | head -1'
         ' >/dev/null; echo "status ${PIPESTATUS[0]}"', sys.executable, str(cfg)],
        capture_output=True, text=True, timeout=WAIT,
    )  # fmt: skip
    assert shell.stderr == ""
    assert shell.stdout.strip() == "status 141"  # ended by SIGPIPE, like `seq 1e6 | head -1`


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


# -- from an operator's shell on a systemd install -----------------------------------

SERVICE_ONLY = """
    sources:
      - name: tickets
        url: {url}/t
        interval: 1h
        headers:
          Authorization: "Bearer ${{API_TOKEN}}"
    subscribers:
      - name: hooks
        url: {hooks}/hooks
        secret: ${{file:hook_secret}}
        retry: []
      - name: audit
        url: {hooks}/audit
        secret: ${{AUDIT_SECRET}}
        retry: []
    """


@pytest.fixture
def service_state(upstream, write_config, tmp_path) -> Iterator[tuple[Path, Path]]:  # type: ignore[no-untyped-def]
    """A config whose secrets only the service has, and a state file with one dead delivery."""
    from conftest import SECRET

    down = Receiver(plan=lambda i, req: (503, {}, b"down"))
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "hook_secret").write_text(SECRET + "\n")
    cfg = write_config(SERVICE_ONLY.format(url=upstream.url, hooks=down.url))
    db = tmp_path / "service.db"
    service_env = {"API_TOKEN": "t0k3n", "AUDIT_SECRET": SECRET,
                   "CREDENTIALS_DIRECTORY": str(credentials)}  # fmt: skip
    upstream.items = [{"id": 1}]
    for items in ([{"id": 1}], [{"id": 1}, {"id": 2}]):
        upstream.items = items
        done = pollhook("run", "--once", "-c", str(cfg), "--db", str(db), env=service_env)
        assert done.returncode == 0, done.stderr
    yield cfg, db
    down.close()


def test_inspection_commands_need_no_secrets_or_tokens(service_state) -> None:  # type: ignore[no-untyped-def]
    cfg, db = service_state
    [(event,)] = query(db, "SELECT id FROM events")
    for args in (["status", "--json"], ["events", "--json"], ["deliveries", "--json"],
                 ["deliveries", "--attempts", "1"], ["replay", event],
                 ["replay", "--dead", "--subscriber", "hooks"], ["resume", "audit"],
                 ["items", "tickets"]):  # fmt: skip
        result = pollhook(*args, "-c", str(cfg), "--db", str(db))  # none of the service's env
        assert result.returncode == 0, (args, result.stderr)
        assert "not set" not in result.stderr and "secret" not in result.stderr, result.stderr
    status = json.loads(pollhook("status", "--json", "-c", str(cfg), "--db", str(db)).stdout)
    assert [s["name"] for s in status["subscribers"]] == ["hooks", "audit"]
    assert status["sources"][0]["outcome"] == "ok" and status["sources"][0]["next_poll_at"]


def test_status_without_any_config_shows_outcomes_not_not_in_config(service_state, tmp_path) -> None:  # type: ignore[no-untyped-def]
    _, db = service_state
    status = json.loads(pollhook("status", "--json", "--db", str(db), cwd=tmp_path).stdout)
    assert [(s["name"], s["outcome"]) for s in status["sources"]] == [("tickets", "ok")]


def test_the_systemd_units_config_and_state_are_found_by_default(
    service_state, tmp_path, monkeypatch, capsys
) -> None:  # type: ignore[no-untyped-def]
    """No -c, no --db, no $STATE_DIRECTORY, nothing in the working folder: the unit's paths."""
    from pollhook import config_outline
    from pollhook.cli import main

    cfg, db = service_state
    monkeypatch.setattr(config_outline, "UNIT_CONFIG", cfg)  # /etc/pollhook/sources.yaml
    monkeypatch.setattr(config_outline, "UNIT_STATE", db)  # /var/lib/pollhook/pollhook.db
    monkeypatch.delenv("STATE_DIRECTORY", raising=False)
    elsewhere = tmp_path / "home"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert main(["status", "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert [s["name"] for s in status["subscribers"]] == ["hooks", "audit"]
    assert main(["deliveries", "--json", "--status", "dead"]) == 0
    assert len(json.loads(capsys.readouterr().out)) == 2

    (elsewhere / "pollhook.db").write_bytes(b"")  # a local state file comes first
    assert main(["status", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["sources"][0]["outcome"] == "never polled"
    (elsewhere / "pollhook.db").unlink()
    monkeypatch.setattr(config_outline, "UNIT_STATE", tmp_path / "absent.db")
    assert main(["status"]) == 2
    assert "no state file yet nor" in capsys.readouterr().err


def test_the_units_state_directory_is_found_for_real(service_state, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """/var/lib/pollhook/pollhook.db itself, in a private mount namespace (root only)."""
    import os
    import shutil

    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare(1) to mount a private /var/lib")
    cfg, db = service_state
    home = tmp_path / "home"
    home.mkdir()
    shutil.copy(cfg, home / "sources.yaml")  # the names; no state: in it
    script = (
        "mount -t tmpfs tmpfs /var/lib && mkdir /var/lib/pollhook"
        ' && cp "$1" /var/lib/pollhook/pollhook.db && cd "$2"'
        ' && exec "$0" -m pollhook deliveries --json --status dead'
    )
    result = subprocess.run(
        ["unshare", "--mount", "sh", "-c", script, sys.executable, str(db), str(home)],
        capture_output=True, text=True, timeout=WAIT,
        env={k: v for k, v in os.environ.items() if k != "STATE_DIRECTORY"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert {d["subscriber"] for d in json.loads(result.stdout)} == {"hooks", "audit"}


def test_items_lists_keys_hashes_and_the_last_change_it_knows(upstream, write_config, tmp_path) -> None:  # type: ignore[no-untyped-def]
    upstream.items = [{"id": 1, "v": "a"}, {"id": 2, "v": "b"}]
    cfg = write_config(
        f"state: s.db\nsources:\n  - name: tickets\n    url: {upstream.url}/t\n    interval: 1h\n"
    )
    assert pollhook("run", "--once", "-c", str(cfg)).returncode == 0  # a silent baseline
    upstream.items = [{"id": 1, "v": "a"}, {"id": 2, "v": "B"}, {"id": 3, "v": "c"}]
    assert pollhook("run", "--once", "-c", str(cfg)).returncode == 0

    listed = json.loads(pollhook("items", "tickets", "--json", "-c", str(cfg)).stdout)
    stored = dict(query(tmp_path / "s.db", "SELECT key, hash FROM items"))
    assert [(i["key"], i["hash"]) for i in listed] == sorted(stored.items())
    assert [i["item"] for i in listed] == upstream.items
    changed = dict(query(tmp_path / "s.db", "SELECT key, created_at FROM events"))
    assert [i["changed_at"] for i in listed] == [None, changed["2"], changed["3"]]

    table = pollhook("items", "tickets", "-c", str(cfg)).stdout.splitlines()
    assert table[0].split()[:4] == ["key", "hash", "last", "change"]
    assert table[1].split() == ["1", stored["1"], "-"]
    short = pollhook("items", "tickets", "--limit", "2", "-c", str(cfg))
    assert len(short.stdout.splitlines()) == 3 and "showing 2 of 3 items" in short.stderr

    typo = pollhook("items", "tikets", "-c", str(cfg))
    assert typo.returncode == 2 and "did you mean 'tickets'?" in typo.stderr
