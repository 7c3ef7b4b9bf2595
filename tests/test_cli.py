"""The command line: help for every command, and the inspection commands on real state."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from pollhook.cli import COMMANDS, build_parser

from conftest import pollhook


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_command_has_help_with_an_example(name: str) -> None:
    doc = COMMANDS[name].__doc__ or ""
    assert doc.strip(), name
    assert "example: pollhook" in doc, name
    result = pollhook(name, "--help")
    assert result.returncode == 0
    assert doc.strip().splitlines()[0] in result.stdout


def test_top_level_help_lists_every_command() -> None:
    text = build_parser().format_help()
    for name in COMMANDS:
        assert name in text


ONLY_WHEN_NEEDED = ("apscheduler", "prometheus_client", "aiohttp.web")
IMPORTED = """
import runpy, sys
sys.argv = ["pollhook", *sys.argv[1:]]
try:
    runpy.run_module("pollhook", run_name="__main__")
finally:
    print(sorted(m for m in {modules!r} if m in sys.modules), file=sys.stderr)
"""


def test_run_once_and_check_import_neither_scheduler_nor_metrics(
    upstream, write_config, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    """Start-up is part of every `run --once`: what only the daemon needs is imported lazily."""
    upstream.items = [{"id": 1}]
    cfg = write_config(f"sources:\n  - name: a\n    url: {upstream.url}/a\n    interval: 1h\n")
    script = IMPORTED.format(modules=ONLY_WHEN_NEEDED)
    for args in (["check"], ["run", "--once", "--db", str(tmp_path / "s.db")]):
        result = subprocess.run(
            [sys.executable, "-c", script, *args, "-c", str(cfg)],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        assert result.stderr.splitlines()[-1] == "[]", (args, result.stderr)


def test_status_and_events_after_polls_without_subscribers(
    upstream, write_config, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    upstream.items = [{"id": 1, "v": "a"}, {"id": 2, "v": "b"}]
    cfg = write_config(
        f"""
        state: state.db
        sources:
          - name: things
            url: {upstream.url}/things
            interval: 1h
        """
    )
    assert pollhook("run", "--once", "-c", str(cfg)).returncode == 0  # baseline
    upstream.items = [{"id": 1, "v": "changed"}, {"id": 3, "v": "c"}]
    assert pollhook("run", "--once", "-c", str(cfg)).returncode == 0
    assert (tmp_path / "state.db").exists()  # `state:` is relative to the config file

    status = json.loads(pollhook("status", "--json", "-c", str(cfg)).stdout)
    [source] = status["sources"]
    assert source["name"] == "things" and source["outcome"] == "ok"
    assert source["items_count"] == 2 and source["consecutive_failures"] == 0
    assert status["subscribers"] == []

    events = json.loads(pollhook("events", "--json", "-c", str(cfg)).stdout)
    assert sorted((e["type"], e["key"]) for e in events) == [
        ("item.created", "3"), ("item.deleted", "2"), ("item.updated", "1"),
    ]  # fmt: skip
    assert all(e["deliveries"] == 0 for e in events)
    human = pollhook("events", "--type", "item.deleted", "-c", str(cfg))
    assert (
        human.returncode == 0
        and "item.deleted" in human.stdout
        and "item.created" not in human.stdout
    )


def test_failed_once_poll_is_reported_and_visible_in_status(write_config) -> None:  # type: ignore[no-untyped-def]
    cfg = write_config(
        """
        state: state.db
        sources:
          - name: down
            url: http://127.0.0.1:9/nothing-listens-here
            interval: 1m
        """
    )
    result = pollhook("run", "--once", "-c", str(cfg))
    assert result.returncode == 1
    assert "source down failed" in result.stderr and "Traceback" not in result.stderr
    status = json.loads(pollhook("status", "--json", "-c", str(cfg)).stdout)
    assert status["sources"][0]["outcome"] == "failing"
    assert status["sources"][0]["last_error"]


def test_inspection_without_state_file_is_a_usage_error(tmp_path) -> None:  # type: ignore[no-untyped-def]
    result = pollhook("status", "--db", str(tmp_path / "missing.db"), cwd=tmp_path)
    assert result.returncode == 2
    assert "no state file" in result.stderr and "Traceback" not in result.stderr


def test_dry_run_prints_the_exact_bodies_and_writes_nothing(
    upstream, write_config, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    upstream.items = [{"id": 1, "v": "a"}]
    cfg = write_config(
        f"""
        state: state.db
        sources:
          - name: things
            url: {upstream.url}/things
            interval: 1h
        """
    )
    first = pollhook("poll", "things", "--dry-run", "-c", str(cfg))
    assert first.returncode == 0 and first.stdout == ""  # first poll: a silent baseline
    assert not (tmp_path / "state.db").exists()
    assert pollhook("run", "--once", "-c", str(cfg)).returncode == 0
    upstream.items = [{"id": 1, "v": "b"}]
    before = (tmp_path / "state.db").read_bytes()

    result = pollhook("poll", "things", "--dry-run", "-c", str(cfg))
    assert result.returncode == 0, result.stderr
    [body] = [json.loads(line) for line in result.stdout.splitlines()]
    assert body["type"] == "item.updated" and body["data"]["changes"] == [
        {"op": "replace", "path": "/v", "value": "b"}
    ]
    assert "nothing written" in result.stderr
    again = pollhook("poll", "things", "--dry-run", "-c", str(cfg))
    assert len(again.stdout.splitlines()) == 1  # the dry run did not record the change
    assert (tmp_path / "state.db").read_bytes() == before
    assert pollhook("poll", "nope", "--dry-run", "-c", str(cfg)).returncode == 2


@pytest.mark.parametrize("fault", ["garbage", "reset"])
def test_upstream_that_breaks_http_is_a_recorded_source_failure(
    upstream, write_config, fault
) -> None:  # type: ignore[no-untyped-def]
    from servers import garbage_reply, reset_connection

    step = garbage_reply if fault == "garbage" else reset_connection
    upstream.fault = lambda req, handler: step(handler)
    cfg = write_config(
        f"state: s.db\nsources:\n  - name: odd\n    url: {upstream.url}/x\n    interval: 1m\n"
    )
    result = pollhook("run", "--once", "-c", str(cfg))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "internal error" not in result.stderr
    status = json.loads(pollhook("status", "--json", "-c", str(cfg)).stdout)
    assert status["sources"][0]["outcome"] == "failing"
    assert status["sources"][0]["consecutive_failures"] == 1


def test_status_lists_each_subscriber_once_and_log_options_follow_the_command(
    upstream, write_config
) -> None:  # type: ignore[no-untyped-def]
    from servers import Receiver

    down = Receiver(plan=lambda i, req: (503, {}, b"down"))
    upstream.items = [{"id": 1}]
    cfg = write_config(
        f"""
        state: s.db
        sources:
          - name: t
            url: {upstream.url}/t
            interval: 1h
        subscribers:
          - name: hooks
            url: {down.url}/hooks
            retry: [1h]
        """
    )
    assert pollhook("run", "--once", "-c", str(cfg), "--log-level", "warning").returncode == 0
    upstream.items = [{"id": 1}, {"id": 2}]
    assert pollhook("run", "--once", "-c", str(cfg)).returncode == 0
    status = json.loads(pollhook("status", "--json", "-c", str(cfg)).stdout)
    assert [s["name"] for s in status["subscribers"]] == ["hooks"]
    assert status["subscribers"][0]["failing"] == 1
    down.close()
