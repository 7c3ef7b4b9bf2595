"""Retention: in a long run the state file stays flat instead of growing with every event."""

from __future__ import annotations

import json
import threading

from conftest import query, wait_until
from servers import Upstream


def test_delivered_records_are_pruned_and_the_file_stops_growing(
    receiver, write_config, daemon, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    lock, version = threading.Lock(), [0]

    def churn(req, handler):  # type: ignore[no-untyped-def]
        with lock:  # every poll sees new versions of the same 20 items: one update each
            version[0] += 1
            body = [{"id": i, "v": version[0], "pad": "x" * 200} for i in range(20)]
        return 200, {"content-type": "application/json"}, json.dumps(body).encode()

    upstream = Upstream()
    upstream.fault = churn
    cfg = write_config(f"""
        retention: {{delivered: 1s, dead: 1s}}
        sources:
          - name: churn
            url: {upstream.url}/items
            interval: 50ms
        subscribers:
          - name: sink
            url: {receiver.url}/hooks
        """)  # fmt: skip
    db = tmp_path / "state.db"
    proc = daemon(cfg, db).start()
    receiver.wait_accepted(600)  # warm-up: 30 polls of 20 updates each
    wait_until(lambda: "retention: pruned" in proc.output(), "a first prune")
    warm = db.stat().st_size + (tmp_path / "state.db-wal").stat().st_size
    receiver.wait_accepted(2400)  # four times as many events again
    wait_until(lambda: proc.output().count("retention: pruned") >= 3, "more prunes")
    rows = query(db, "SELECT COUNT(*) FROM deliveries")[0][0]
    events = query(db, "SELECT COUNT(*) FROM events")[0][0]
    attempts = query(db, "SELECT COUNT(*) FROM attempts")[0][0]
    size = db.stat().st_size + (tmp_path / "state.db-wal").stat().st_size
    assert proc.stop() == 0
    assert rows < 1200 and events < 1200 and attempts < 1200, (rows, events, attempts)
    assert size < warm * 2, (warm, size)  # 4x the events, not 4x the bytes
    upstream.close()
