"""The operator's first day: making a secret, checking a config, the demo, a dry run."""

from __future__ import annotations

import base64
import re
from datetime import UTC, datetime
from pathlib import Path

import pytest
from standardwebhooks.webhooks import Webhook

from conftest import SECRET, pollhook

NOBODY = "http://127.0.0.1:9"
SOURCE = f"sources:\n  - name: t\n    url: {NOBODY}/t\n    interval: 1m\n"


def test_secret_prints_a_fresh_secret_that_receivers_and_check_accept(tmp_path: Path) -> None:
    made = [pollhook("secret") for _ in range(2)]
    assert all(r.returncode == 0 and r.stderr == "" for r in made)
    first, second = (r.stdout.strip() for r in made)
    assert first != second and re.fullmatch(r"whsec_[A-Za-z0-9+/]+=*", first)
    assert len(base64.b64decode(first.removeprefix("whsec_"))) == 32
    hook, now = Webhook(first), datetime.now(UTC)  # the reference library takes it as it is
    signed = {"webhook-id": "msg_1", "webhook-timestamp": str(int(now.timestamp())),
              "webhook-signature": hook.sign("msg_1", now, "{}")}  # fmt: skip
    hook.verify(b"{}", signed)
    cfg = tmp_path / "sources.yaml"
    cfg.write_text(SOURCE + f"subscribers:\n  - name: s\n    url: {NOBODY}/h\n    secret: {first}\n")
    checked = pollhook("check", "-c", str(cfg))
    assert checked.returncode == 0 and checked.stderr == "", checked.stderr
    longest = pollhook("secret", "--bytes", "64").stdout.strip()
    assert len(base64.b64decode(longest.removeprefix("whsec_"))) == 64
    refused = pollhook("secret", "--bytes", "16")
    assert refused.returncode == 2 and "24 to 64" in refused.stderr and refused.stdout == ""


@pytest.mark.parametrize(
    ("secret", "env", "fragment"),
    [
        ("not-a-secret", {}, "must start with 'whsec_'"),
        ("whsec_!!!", {}, "not valid base64"),
        ("whsec_" + base64.b64encode(b"short").decode(), {}, "24..64 bytes"),
        ("${HOOK_SECRET_SURELY_UNSET}", {}, "HOOK_SECRET_SURELY_UNSET"),
        ("${file:/nonexistent/hook_secret}", {}, "cannot read secret file"),
    ],
    ids=["prefix", "base64", "length", "unset-variable", "unreadable-file"],
)
def test_every_secret_error_says_how_to_make_one(
    tmp_path: Path, secret: str, env: dict[str, str], fragment: str
) -> None:
    cfg = tmp_path / "sources.yaml"
    cfg.write_text(SOURCE + f"subscribers:\n  - name: s\n    url: {NOBODY}/h\n    secret: {secret}\n")
    result = pollhook("check", "-c", str(cfg), env=env)
    assert result.returncode == 2, result.stderr
    assert fragment in result.stderr and "line 8" in result.stderr
    assert "make one with `pollhook secret`" in result.stderr
    assert result.stderr.count("\n") == 1


def test_check_warns_about_a_subscriber_without_a_secret(tmp_path: Path) -> None:
    cfg = tmp_path / "sources.yaml"
    cfg.write_text(
        SOURCE + f"subscribers:\n  - name: open-door\n    url: {NOBODY}/h\n"
        f"  - name: signed\n    url: {NOBODY}/h\n    secret: {SECRET}\n"
    )
    result = pollhook("check", "-c", str(cfg))
    assert result.returncode == 0 and result.stdout.startswith("ok:")
    [warning] = result.stderr.splitlines()
    assert "warning" in warning and "'open-door' has no secret" in warning
    assert "pollhook secret" in warning and "signed" not in warning.replace("unsigned", "")


def test_dry_run_without_state_says_it_would_record_a_baseline(upstream, write_config) -> None:  # type: ignore[no-untyped-def]
    upstream.items = [{"id": 1}, {"id": 2}, {"id": 3}]
    text = f"state: s.db\nsources:\n  - name: t\n    url: {upstream.url}/t\n    interval: 1h\n"
    cfg = write_config(text)
    first = pollhook("poll", "t", "--dry-run", "-c", str(cfg))
    assert first.returncode == 0 and first.stdout == ""
    assert "no state yet for source 't'" in first.stderr
    assert "would record a baseline of 3 items and send nothing" in first.stderr

    initial = write_config(text + "    emit_initial: true\n", "initial.yaml")
    loud = pollhook("poll", "t", "--dry-run", "-c", str(initial))
    assert len(loud.stdout.splitlines()) == 3 and "item.created for each" in loud.stderr

    assert pollhook("run", "--once", "-c", str(cfg)).returncode == 0
    steady = pollhook("poll", "t", "--dry-run", "-c", str(cfg))
    assert "0 events from 3 items" in steady.stderr and "baseline" not in steady.stderr
    changed = write_config(text + "    ignore: [note]\n", "changed.yaml")
    rebaseline = pollhook("poll", "t", "--dry-run", "-c", str(changed))
    assert "detection settings changed for source 't'" in rebaseline.stderr
    assert "baseline of 3 items" in rebaseline.stderr


def test_send_test_delivers_a_signed_test_event_and_records_nothing(write_config, tmp_path) -> None:  # type: ignore[no-untyped-def]
    import json

    from servers import Receiver

    answers = iter([(200, {}, b"thanks, got it"), (503, {}, b"down for maintenance")])
    receiver = Receiver(plan=lambda i, req: next(answers))
    cfg = write_config(f"""
        state: s.db
        sources:
          - name: t
            url: {NOBODY}/t
            interval: 1h
        subscribers:
          - name: helpdesk
            url: {receiver.url}/hooks
            secret: {SECRET}
            headers:
              X-Team: ops
        """)  # fmt: skip
    try:
        result = pollhook("send-test", "helpdesk", "--json", "-c", str(cfg))
        assert result.returncode == 0, result.stderr
        [answer] = json.loads(result.stdout)
        assert (answer["status_code"], answer["ok"]) == (200, True)
        assert answer["response_body"] == "thanks, got it"
        [request] = receiver.requests
        Webhook(SECRET).verify(request.body, request.headers)  # the reference library
        body = json.loads(request.body)
        assert body["type"] == "pollhook.test" and body["data"]["subscriber"] == "helpdesk"
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", body["timestamp"])
        assert request.headers["webhook-id"] == answer["event_id"]
        assert request.headers["content-type"] == "application/json"
        assert request.headers["user-agent"].startswith("pollhook/")
        assert request.headers["x-team"] == "ops"

        failed = pollhook("send-test", "helpdesk", "-c", str(cfg))
        assert failed.returncode == 1
        assert "503" in failed.stdout and "down for maintenance" in failed.stdout
    finally:
        receiver.close()
    assert not (tmp_path / "s.db").exists()  # no event, no delivery: not even a state file

    refused = write_config(f"subscribers:\n  - name: gone\n    url: {NOBODY}/h\n"
                           f"sources:\n  - name: t\n    url: {NOBODY}/t\n    interval: 1h\n",
                           "refused.yaml")  # fmt: skip
    nobody = pollhook("send-test", "gone", "-c", str(refused))
    assert nobody.returncode == 1 and "connect" in nobody.stdout.lower()
    typo = pollhook("send-test", "helpdsk", "-c", str(cfg))
    assert typo.returncode == 2 and "did you mean 'helpdesk'?" in typo.stderr
