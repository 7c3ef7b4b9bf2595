"""Secrets never leak into logs, command output or the state file; the file is owner-only."""

from __future__ import annotations

import stat

from conftest import SECRET, pollhook, wait_until
from servers import Receiver

TOKEN = "tok-3f9a1c77e2d54b8a"


def test_secrets_stay_out_of_logs_output_and_state(
    upstream, write_config, daemon, tmp_path, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("UPSTREAM_TOKEN", TOKEN)
    monkeypatch.setenv("HOOK_SECRET", SECRET)
    failing = Receiver(plan=lambda i, req: (500, {}, b"receiver says no"))
    upstream.items = [{"id": 1}]
    cfg = write_config(f"""
        state: state.db
        sources:
          - name: guarded
            url: {upstream.url}/items
            interval: 100ms
            headers:
              Authorization: "Bearer ${{UPSTREAM_TOKEN}}"
        subscribers:
          - name: hooks
            url: {failing.url}/hooks
            secret: ${{HOOK_SECRET}}
            headers:
              Authorization: "Bearer ${{UPSTREAM_TOKEN}}"
            retry: [50ms, 50ms]
        """)  # fmt: skip
    proc = daemon(cfg, tmp_path / "state.db").start()
    upstream.wait_for(2)
    assert upstream.requests[0].headers["authorization"] == f"Bearer {TOKEN}"
    upstream.items = [{"id": 1}, {"id": 2}]
    failing.wait_for(3)  # every attempt failed: the delivery is dead, errors logged
    upstream.fault = lambda req, h: (503, {}, b"down")
    wait_until(lambda: "poll failed" in proc.output(), "an upstream failure logged")
    assert proc.stop() == 0

    outputs = [proc.output()]
    for command in (["status", "--json"], ["deliveries", "--json"], ["events", "--json"],
                    ["deliveries", "--attempts", "1", "--json"], ["check"]):  # fmt: skip
        result = pollhook(*command, "-c", str(cfg))
        assert result.returncode == 0, result.stderr
        outputs.append(result.stdout + result.stderr)
    db = tmp_path / "state.db"
    outputs.append(db.read_bytes().decode("latin-1"))
    wal = tmp_path / "state.db-wal"
    if wal.exists():
        outputs.append(wal.read_bytes().decode("latin-1"))
    secret_key = SECRET.removeprefix("whsec_")
    for text in outputs:
        assert TOKEN not in text and secret_key not in text
    assert "receiver says no" in outputs[4]  # the attempt log keeps the response body
    assert stat.S_IMODE(db.stat().st_mode) == 0o600
    failing.close()
