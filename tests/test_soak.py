"""Soak: hundreds of changing sources and a flaky receiver for a long while (marker `soak`).

    POLLHOOK_SOAK_SECONDS=1800 python -m pytest -m soak -s tests/test_soak.py

One local server plays POLLHOOK_SOAK_SOURCES (500) upstreams whose items
change as they are polled; each sends a strong ETag and answers If-None-Match
with 304, and now and then serves an empty list for one request (a held wipe
that the next list releases) or three (one that a 304 confirms). One receiver
fails 10% of the webhooks with a 500.
The daemon's resident memory and the state file's size are sampled every
POLLHOOK_SOAK_SAMPLE seconds (60) and must stay flat after the warm-up. At
the end the upstreams freeze and every source's history, rebuilt from the
webhooks the receiver accepted, must end in the upstream's final state with
every `previous` matching what came before (nothing lost), every item a
version the upstream really served (nothing invented), and each item's events
accepted in the order they were detected. The figures are
printed, and written as JSON to POLLHOOK_SOAK_REPORT if set; docs/reliability.md
records those of a run.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from conftest import query, wait_until

pytestmark = pytest.mark.soak

SECONDS = float(os.environ.get("POLLHOOK_SOAK_SECONDS", "1800"))
SOURCES = int(os.environ.get("POLLHOOK_SOAK_SOURCES", "500"))
INTERVAL = os.environ.get("POLLHOOK_SOAK_INTERVAL", "10s")
SAMPLE = float(os.environ.get("POLLHOOK_SOAK_SAMPLE", "60"))
CHANGE = 0.3  # chance that a poll finds its source changed
FLAKY = 0.1  # share of webhooks the receiver answers with a 500
WIPE = 0.005  # chance that a request starts a wipe: an empty list for one or three requests


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256


class ChurningApis:
    """SOURCES small item lists; each request may create, update or delete one item."""

    def __init__(self, seed: int = 1) -> None:
        self.rng = random.Random(seed)
        self.lock = threading.Lock()
        self.frozen = False
        self.next_id = 0
        self.items: dict[str, dict[str, dict[str, Any]]] = {}
        self.served: dict[tuple[str, str], set[str]] = {}  # (source, key) → versions served
        self.polls: dict[str, int] = {}
        self.etags: dict[str, str] = {}
        self.wiping: dict[str, int] = {}  # source → requests left that get an empty list
        self.wipes = {"released": 0, "confirmed": 0, "304s_while_wiped": 0}
        for n in range(SOURCES):
            name = f"s{n}"
            self.items[name] = {}
            for _ in range(5):
                self._create(name)
        apis = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                etag, body = apis.serve(self.path.strip("/"), self.headers.get("if-none-match"))
                self.send_response(200 if body is not None else 304)
                self.send_header("etag", etag)
                if body is not None:
                    self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body or b"")))
                self.end_headers()
                self.wfile.write(body or b"")

        self.httpd = _Server(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def _create(self, name: str) -> None:
        self.next_id += 1
        key = str(self.next_id)
        self.items[name][key] = {"id": self.next_id, "version": 0, "note": "x" * 40}

    def serve(self, name: str, if_none_match: str | None) -> tuple[str, bytes | None]:
        """The ETag and the body, or None for a 304."""
        with self.lock:
            items = self.items[name]
            if not self.frozen and self.rng.random() < CHANGE:
                op = self.rng.choice(["create", "update", "update", "delete"])
                if op == "create" or len(items) <= 3:
                    self._create(name)
                elif op == "update":
                    key = self.rng.choice(list(items))
                    items[key] = {**items[key], "version": items[key]["version"] + 1}
                else:
                    del items[self.rng.choice(list(items))]
            if not self.frozen and not self.wiping.get(name) and self.rng.random() < WIPE:
                self.wiping[name] = self.rng.choice([1, 3])
                self.wipes["released" if self.wiping[name] == 1 else "confirmed"] += 1
            wiped = self.wiping.get(name, 0) > 0
            self.wiping[name] = max(self.wiping.get(name, 0) - 1, 0)
            self.polls[name] = self.polls.get(name, 0) + 1
            body = json.dumps([] if wiped else list(items.values())).encode()
            etag = f'"{hashlib.sha256(body).hexdigest()[:16]}"'
            if if_none_match == etag:
                self.wipes["304s_while_wiped"] += wiped
                return etag, None
            for key, item in items.items() if not wiped else ():
                self.served.setdefault((name, key), set()).add(json.dumps(item, sort_keys=True))
            return etag, body

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class FlakyReceiver:
    """Accepts webhooks, failing FLAKY of them with a 500; keeps what it accepted."""

    def __init__(self, seed: int = 2) -> None:
        self.rng = random.Random(seed)
        self.lock = threading.Lock()
        self.accepted: list[tuple[str, bytes]] = []
        self.failed = 0
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                with receiver.lock:
                    ok = receiver.rng.random() >= FLAKY
                    if ok:
                        receiver.accepted.append((self.headers["webhook-id"], body))
                    else:
                        receiver.failed += 1
                self.send_response(204 if ok else 500)
                self.send_header("content-length", "0")
                self.end_headers()

        self.httpd = _Server(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/hooks"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def rebuild(receiver: FlakyReceiver) -> tuple[dict[str, dict[str, Any]], list[str], int, int]:
    """Per-source state from the accepted events; problems found on the way; counts."""
    with receiver.lock:
        accepted = list(receiver.accepted)
    unique: dict[str, bytes] = {}
    problems: list[str] = []
    for wid, body in accepted:
        if unique.setdefault(wid, body) != body:
            problems.append(f"{wid}: a duplicate id carried other bytes")
    events = sorted(
        (json.loads(body) | {"id": wid} for wid, body in unique.items()),
        key=lambda e: (e["timestamp"], e["id"]),
    )
    first: dict[tuple[str, str], list[str]] = {}  # per item, ids in order of first acceptance
    for wid, body in unique.items():
        data = json.loads(body)["data"]
        first.setdefault((data["source"], data["key"]), []).append(wid)
    detected: dict[tuple[str, str], list[str]] = {}
    for event in events:
        detected.setdefault((event["data"]["source"], event["data"]["key"]), []).append(event["id"])
    problems += [f"{item}: accepted {ids}, detected {detected[item]}"
                 for item, ids in first.items() if ids != detected[item]]  # fmt: skip
    state: dict[str, dict[str, Any]] = {}
    for event in events:
        data = event["data"]
        mine = state.setdefault(data["source"], {})
        key, kind = data["key"], event["type"]
        if kind == "item.created":
            if key in mine:
                problems.append(f"{event['id']}: created {data['source']}/{key} twice")
            mine[key] = data["item"]
        elif mine.get(key) != data["previous"]:  # an update or delete in between was lost
            problems.append(f"{event['id']}: {kind} of {data['source']}/{key} from an unseen state")
            mine[key] = data["item"]
        elif kind == "item.updated":
            mine[key] = data["item"]
        else:
            del mine[key]
    return state, problems, len(unique), len(accepted) - len(unique)


def invented(apis: ChurningApis, receiver: FlakyReceiver) -> list[str]:
    """Accepted events carrying an item version the upstream never served."""
    out = []
    with receiver.lock:
        accepted = list(receiver.accepted)
    for wid, body in accepted:
        data = json.loads(body)["data"]
        for value in (data["item"], data["previous"]):
            if value is not None:
                text = json.dumps(value, sort_keys=True)
                if text not in apis.served.get((data["source"], data["key"]), set()):
                    out.append(f"{wid}: {data['source']}/{data['key']} {text}")
    return out


def sample(pid: int, db: Path) -> dict[str, float]:
    status = Path(f"/proc/{pid}/status").read_text()
    rss = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:"))
    stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    wal = db.with_name(db.name + "-wal")
    return {
        "rss_mb": round(rss / 1024, 1),
        "db_mb": round(db.stat().st_size / 1e6, 2),
        "wal_mb": round(wal.stat().st_size / 1e6, 2) if wal.exists() else 0.0,
        "cpu_s": round((int(stat[11]) + int(stat[12])) / ticks, 1),
    }


def test_soak_memory_and_state_stay_flat_and_nothing_is_lost(
    write_config: Any, daemon: Any, tmp_path: Path
) -> None:
    apis, receiver = ChurningApis(), FlakyReceiver()
    cfg = write_config(
        yaml.safe_dump(
            {
                "retention": {"delivered": "60s", "dead": "1h"},
                "sources": [
                    {
                        "name": name,
                        "url": f"{apis.url}/{name}",
                        "interval": INTERVAL,
                        "emit_initial": True,
                    }  # the receiver rebuilds everything, baseline too
                    for name in apis.items
                ],
                "subscribers": [
                    {"name": "flaky", "url": receiver.url, "retry": ["500ms"] * 5 + ["2s"] * 30}
                ],
            },
            sort_keys=False,
        )
    )
    db = tmp_path / "state.db"
    proc = daemon(cfg, db).start()
    assert proc.proc is not None
    started = time.monotonic()
    samples: list[dict[str, float]] = []
    while time.monotonic() - started < SECONDS:
        # a plain wait is the point here: the run is as long as asked, sampled on a clock
        time.sleep(min(SAMPLE, SECONDS - (time.monotonic() - started)))
        row = {"t_s": round(time.monotonic() - started), **sample(proc.proc.pid, db)}
        row["polls"] = sum(apis.polls.values())
        row["accepted"] = len(receiver.accepted)
        samples.append(row)
        print(json.dumps(row), flush=True)
        assert proc.proc.poll() is None, "the daemon died"

    with apis.lock:
        apis.frozen = True
        apis.wiping.clear()
        expected = {name: dict(items) for name, items in apis.items.items()}
        polls_at_freeze = dict(apis.polls)
    wait_until(
        lambda: all(apis.polls.get(n, 0) >= polls_at_freeze.get(n, 0) + 2 for n in expected),
        "every source polled twice after the freeze", timeout=600,
    )  # fmt: skip
    wait_until(
        lambda: query(db, "SELECT COUNT(*) FROM deliveries WHERE status != 'delivered'") == [(0,)],
        "every delivery delivered", timeout=600,
    )  # fmt: skip
    final = sample(proc.proc.pid, db)
    assert proc.stop() == 0

    state, problems, distinct, duplicates = rebuild(receiver)
    lost = sum(
        1
        for name, items in expected.items()
        for key, item in items.items()
        if state.get(name, {}).get(key) != item
    ) + sum(1 for name, items in state.items() for key in items if key not in expected[name])
    fake = invented(apis, receiver)
    dead = query(db, "SELECT COUNT(*) FROM deliveries WHERE status = 'dead'")[0][0]
    warm = [s for s in samples if s["t_s"] >= max(120.0, 0.2 * SECONDS)] or samples[-1:]
    report = {
        "seconds": SECONDS, "sources": SOURCES, "interval": INTERVAL, "samples": samples,
        "final": final, "polls": sum(apis.polls.values()), "events": distinct,
        "duplicates": duplicates, "receiver_500s": receiver.failed, "dead": dead,
        "wipes": dict(apis.wipes),
        "lost": lost + len(problems), "invented": len(fake),
        "rss_after_warmup_mb": [s["rss_mb"] for s in warm],
        "state_after_warmup_mb": [round(s["db_mb"] + s["wal_mb"], 2) for s in warm],
    }  # fmt: skip
    print(json.dumps({k: v for k, v in report.items() if k != "samples"}, indent=1))
    if os.environ.get("POLLHOOK_SOAK_REPORT"):
        Path(os.environ["POLLHOOK_SOAK_REPORT"]).write_text(json.dumps(report, indent=1))
    apis.close()
    receiver.close()

    assert problems == [], problems[:10]
    assert lost == 0 and fake == [], (lost, fake[:10])
    assert dead == 0
    rss = report["rss_after_warmup_mb"]
    size = report["state_after_warmup_mb"]
    assert max(rss) <= rss[0] * 1.2 + 10, f"memory grew after warm-up: {rss}"
    assert max(size) <= size[0] * 1.5 + 2, f"the state file grew after warm-up: {size}"
