"""Running as a service: systemd notify over a real socket, SIGHUP reload, signals."""

from __future__ import annotations

import signal
import socket
import time

from conftest import wait_until


def test_notify_socket_gets_ready_watchdog_and_stopping(
    upstream, write_config, daemon, tmp_path, monkeypatch
):  # type: ignore[no-untyped-def]
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(30)
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    monkeypatch.setenv("WATCHDOG_USEC", "400000")
    cfg = write_config(f"sources:\n  - name: a\n    url: {upstream.url}/a\n    interval: 1h\n")
    proc = daemon(cfg).start()

    def receive_until(wanted: str) -> list[str]:
        seen = []
        while True:
            message = sock.recv(4096).decode()
            seen.append(message)
            if wanted in message.splitlines():
                return seen

    first = receive_until("READY=1")
    assert len(first) == 1 and "STATUS=1 sources, 0 deliveries pending" in first[0]
    receive_until("WATCHDOG=1")
    receive_until("WATCHDOG=1")
    proc.signal(signal.SIGTERM)
    receive_until("STOPPING=1")
    assert proc.wait() == 0
    sock.close()


def test_sighup_applies_new_sources_and_refuses_a_broken_file(upstream, write_config, daemon):  # type: ignore[no-untyped-def]
    one = f"""
        sources:
          - name: a
            url: {upstream.url}/a
            interval: 200ms
        """
    cfg = write_config(one)
    proc = daemon(cfg).start()
    wait_until(lambda: any(r.path == "/a" for r in upstream.requests), "source a polled")

    write_config(one + f"""
          - name: b
            url: {upstream.url}/b
            interval: 200ms
        """)  # fmt: skip
    proc.signal(signal.SIGHUP)
    wait_until(lambda: any(r.path == "/b" for r in upstream.requests), "source b added by reload")

    write_config("sources:\n  - name: a\n    intervall: 1s\n")
    proc.signal(signal.SIGHUP)
    wait_until(lambda: "reload refused" in proc.output(), "the invalid file refused")
    assert "intervall" in proc.output()
    seen = upstream.count()
    upstream.wait_for(seen + 6)  # still polling on the previous configuration
    paths = {r.path for r in upstream.requests[seen:]}
    assert paths == {"/a", "/b"}

    started = time.monotonic()
    proc.signal(signal.SIGINT)
    assert proc.wait() == 0
    assert time.monotonic() - started < 10  # CONTRACT.md: exits within 10 s of SIGINT
    assert "stopped cleanly" in proc.output()


def test_json_logs_carry_source_ids_as_fields(write_config, tmp_path) -> None:  # type: ignore[no-untyped-def]
    import json

    from conftest import pollhook

    cfg = write_config(
        "state: s.db\nsources:\n  - name: gone\n    url: http://127.0.0.1:9/x\n    interval: 1m\n"
    )
    result = pollhook("--log-format", "json", "run", "--once", "-c", str(cfg))
    assert result.returncode == 1
    lines = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    failed = [entry for entry in lines if "poll failed" in entry["message"]]
    assert failed and failed[0]["source"] == "gone" and failed[0]["level"] == "warning"


def test_metrics_endpoint_is_scraped_and_healthz_answers(upstream, receiver, write_config, daemon):  # type: ignore[no-untyped-def]
    import httpx

    with socket.socket() as probe:  # a free loopback port for the listener
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    upstream.items = [{"id": 1}]
    cfg = write_config(f"""
        sources:
          - name: m
            url: {upstream.url}/m
            interval: 200ms
        subscribers:
          - name: r
            url: {receiver.url}/hooks
        """)  # fmt: skip
    proc = daemon(cfg).start("--metrics", str(port))
    upstream.wait_for(2)
    upstream.items = [{"id": 1}, {"id": 2}]
    receiver.wait_accepted(1)

    def scrape() -> str:
        return httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text

    wait_until(
        lambda: 'pollhook_events_total{source="m",type="item.created"} 1.0' in scrape(), "metrics"
    )
    text = scrape()
    assert 'pollhook_polls_total{outcome="ok",source="m"}' in text
    assert 'pollhook_items_tracked{source="m"} 2.0' in text
    assert "pollhook_outbox_oldest_pending_seconds" in text
    wait_until(
        lambda: 'pollhook_deliveries_total{outcome="delivered",subscriber="r"} 1.0' in scrape(),
        "the delivery counted",
    )
    assert 'pollhook_delivery_latency_seconds_count{subscriber="r"} 1.0' in scrape()
    health = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=10)
    assert health.status_code == 200 and health.json() == {"status": "ok"}
    assert proc.stop() == 0


def test_a_metrics_port_in_use_is_one_clear_line_and_exit_1(tmp_path, write_config):  # type: ignore[no-untyped-def]
    from conftest import pollhook

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    cfg = write_config("sources:\n  - name: a\n    url: http://127.0.0.1:9/a\n    interval: 1h\n")
    try:
        done = pollhook("run", "-c", str(cfg), "--db", str(tmp_path / "s.db"),
                        "--metrics", f"127.0.0.1:{port}")  # fmt: skip
    finally:
        taken.close()
    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(f"pollhook: error: --metrics: cannot listen on 127.0.0.1:{port}")
    assert "internal error" not in done.stderr


def test_sighup_warns_about_state_only_while_it_differs_from_the_file_in_use(
    upstream, write_config, tmp_path
):  # type: ignore[no-untyped-def]
    """The warning compares with the file the daemon runs on, not with the last config read."""
    import subprocess
    import sys

    base = f"sources:\n  - name: a\n    url: {upstream.url}/a\n    interval: 1h\n"
    cfg = write_config("state: one.db\n" + base)
    log = tmp_path / "daemon.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "pollhook", "run", "-c", str(cfg)],  # no --db: `state:` decides
            stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path,
        )  # fmt: skip
    try:
        wait_until(lambda: "running:" in log.read_text(), "the daemon running")
        assert (tmp_path / "one.db").exists()

        def reload(text: str, n: int) -> int:
            write_config(text)
            proc.send_signal(signal.SIGHUP)
            wait_until(lambda: log.read_text().count("reloaded:") == n, f"reload {n}")
            return log.read_text().count("reload: 'state'")  # the warning

        assert reload("state: two.db\n" + base, 1) == 1
        assert reload("state: ./one.db\n" + base, 2) == 1  # back to the file in use: quiet
        assert str(tmp_path / "two.db") in log.read_text()
        assert reload(base, 3) == 2  # the default, ./pollhook.db, is another file again
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
