"""Hostile upstreams: no validator behaviour hides a change that stays for two intervals.

Each case runs the real daemon (interval 250 ms) against a real server and
changes the upstream at the worst moments: right after a poll, and, for
servers whose validators come from a file's mtime at one-second resolution,
twice within one second at the same size (the second write keeps nginx's
`mtime-size` ETag and the Last-Modified of the first). Then, for every case:

- every version that stayed upstream until it was detected arrives, detected
  by the second poll after the write at the latest (load does not matter:
  polls are counted, not seconds);
- every version a poll answered with a 200 arrives (nothing lost);
- the receiver sees nothing else, in the order written (nothing invented).

nginx is a real nginx process started from the test. Without nginx those
cases skip, unless POLLHOOK_REQUIRE_NGINX=1 (CI sets it), where they fail.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from email.utils import formatdate
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from conftest import DaemonProcess, pollhook, query, wait_until
from servers import WAIT, Receiver, Reply, Request, _Server

INTERVAL = 0.25
ROUNDS = 3  # changes per case, after the first


def body(version: int) -> bytes:
    """Every version has the same size: nginx's ETag and Content-Length cannot tell them apart."""
    items = [{"id": 1, "v": f"{version:04d}"}, {"id": 2, "v": "----"}]
    return json.dumps(items).encode()


class Upstream:
    """What a case needs from a server: set a version, and each answer's status and time."""

    url: str

    def write(self, version: int) -> float:
        """Serve `version` from now on; returns when it changed (the file's mtime)."""
        raise NotImplementedError

    def answers(self) -> list[tuple[int, float]]:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


class Files(Upstream):
    """A file on disk, replaced atomically: a poll never reads half of it."""

    def __init__(self, root: Path) -> None:
        self.root = root / "www"
        self.root.mkdir()
        self.path = self.root / "data.json"

    def write(self, version: int) -> float:
        temp = self.path.with_suffix(".tmp")
        temp.write_bytes(body(version))
        os.replace(temp, self.path)
        return self.path.stat().st_mtime


# -- nginx ---------------------------------------------------------------------------------

NGINX = shutil.which("nginx") or next(
    (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.access(p, os.X_OK)), None
)
NGINX_CONF = """\
daemon off;
master_process off;
worker_processes 1;
pid nginx.pid;
error_log error.log;
events {{ worker_connections 64; }}
http {{
    log_format timed '$status $msec';
    access_log access.log timed;
    client_body_temp_path temp/body;
    proxy_temp_path temp/proxy;
    fastcgi_temp_path temp/fastcgi;
    uwsgi_temp_path temp/uwsgi;
    scgi_temp_path temp/scgi;
    default_type application/json;
    server {{
        listen 127.0.0.1:{port};
        root www;
    }}
}}
"""


def need_nginx() -> str:
    if NGINX is None:
        if os.environ.get("POLLHOOK_REQUIRE_NGINX") == "1":
            pytest.fail("POLLHOOK_REQUIRE_NGINX=1 but nginx is not installed")
        pytest.skip("nginx is not installed (apt-get install nginx-light); "
                    "POLLHOOK_REQUIRE_NGINX=1 makes this a failure")  # fmt: skip
    return NGINX


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Nginx(Files):
    """A real nginx serving static files: ETag `"<mtime hex>-<size hex>"`, Last-Modified."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        (root / "temp").mkdir()
        port = free_port()
        (root / "nginx.conf").write_text(NGINX_CONF.format(port=port))
        self.log, self.errors = root / "access.log", root / "error.log"
        self.proc = subprocess.Popen(
            [need_nginx(), "-p", f"{root}/", "-c", "nginx.conf", "-e", "error.log"],
            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
        )  # fmt: skip
        self.url = f"http://127.0.0.1:{port}/data.json"
        wait_until(lambda: self._listening(port), "nginx to listen")

    def _listening(self, port: int) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"nginx exited: {self.errors.read_text(errors='replace')}")
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", port)) == 0

    def answers(self) -> list[tuple[int, float]]:
        lines = self.log.read_text().splitlines() if self.log.exists() else []
        return [(int(status), float(at)) for status, at in (line.split() for line in lines)]

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


# -- Python's http.server ----------------------------------------------------------------


class PythonFiles(Files):
    """`SimpleHTTPRequestHandler`: Last-Modified from the mtime, If-Modified-Since honoured."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.lock = threading.Lock()
        self._answers: list[tuple[int, float]] = []
        outer = self

        class Handler(SimpleHTTPRequestHandler):
            def log_request(self, code: Any = "-", size: Any = "-") -> None:
                with outer.lock:
                    outer._answers.append((int(code), time.time()))

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(
            ("127.0.0.1", 0), functools.partial(Handler, directory=str(self.root))
        )
        self.httpd.daemon_threads = True
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/data.json"

    def answers(self) -> list[tuple[int, float]]:
        with self.lock:
            return list(self._answers)

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


# -- servers written for the purpose -------------------------------------------------------


class Api(Upstream):
    """An API whose validators follow `kind`:

    strong: ETag from a hash of the body; weak: the same as `W/"..."`;
    last-modified: the second of the last change, If-Modified-Since honoured;
    constant: one ETag and one Last-Modified forever, 304 to any If-None-Match;
    ignores: strong ETag and Last-Modified sent, conditional headers ignored (always 200).
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.version, self.changed = 0, time.time()
        self.lock = threading.Lock()
        self.server = _Responder(self.respond)
        self.url = f"{self.server.url}/data.json"

    def write(self, version: int) -> float:
        with self.lock:
            self.version, self.changed = version, time.time()
            return self.changed

    def respond(self, req: Request) -> Reply:
        with self.lock:
            payload = body(self.version)
            changed = int(self.changed)
        tag = f'"{hashlib.sha256(payload).hexdigest()[:16]}"'
        modified = formatdate(changed, usegmt=True)
        headers = {"content-type": "application/json", "date": formatdate(usegmt=True)}
        inm, ims = req.headers.get("if-none-match"), req.headers.get("if-modified-since")
        if self.kind == "strong":
            headers["etag"] = tag
            unchanged = inm == tag
        elif self.kind == "weak":
            headers["etag"] = f"W/{tag}"
            unchanged = inm is not None and inm.removeprefix("W/") == tag
        elif self.kind == "last-modified":
            headers["last-modified"] = modified
            unchanged = ims is not None and _seconds(ims) >= changed
        elif self.kind == "constant":
            headers.update(etag='"forever"', **{"last-modified": "Sun, 01 Nov 2026 00:00:00 GMT"})
            unchanged = inm is not None
        else:  # ignores
            headers.update(etag=tag, **{"last-modified": modified})
            unchanged = False
        return (304, headers, b"") if unchanged else (200, headers, payload)

    def answers(self) -> list[tuple[int, float]]:
        with self.server.cond:  # by arrival: a handler may record its answer after the next one's
            return [(r.status, r.at) for r in sorted(self.server.requests, key=lambda r: r.at)]

    def close(self) -> None:
        self.server.close()


class _Responder(_Server):
    def __init__(self, respond: Callable[[Request], Reply]) -> None:
        self._respond = respond
        super().__init__()

    def respond(self, req: Request, handler: Any) -> Reply:
        return self._respond(req)


def _seconds(date: str) -> int:
    from email.utils import parsedate_to_datetime

    return int(parsedate_to_datetime(date).timestamp())


# -- the cases ---------------------------------------------------------------------------

CASES: dict[str, tuple[Callable[[Path], Upstream], bool, str]] = {
    # name: (make the upstream, rewrite twice within one second too, the validators' end state)
    "nginx": (Nginx, True, "proven"),
    "http.server": (PythonFiles, True, "proven"),
    "strong-etag": (lambda root: Api("strong"), False, "proven"),
    "weak-etag": (lambda root: Api("weak"), False, "proven"),
    "last-modified-only": (lambda root: Api("last-modified"), True, "proven"),
    "constant-validators": (lambda root: Api("constant"), False, "lying"),
    "ignores-conditional": (lambda root: Api("ignores"), False, "proven"),
}


@pytest.fixture
def upstream(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Upstream]:
    make = CASES[request.param][0]
    made = make(tmp_path)
    yield made
    made.close()


class Run:
    """One case: the daemon, the receiver, and what was written when."""

    def __init__(self, up: Upstream, receiver: Receiver, proc: DaemonProcess) -> None:
        self.up, self.receiver, self.proc = up, receiver, proc
        self.written: list[int] = [0]
        self.must_arrive: list[tuple[int, int]] = []  # (version, answers before its write)
        self.same_second = 0

    def next_answer(self) -> tuple[int, float]:
        """Wait for the next poll to be answered; its status and time."""
        seen = len(self.up.answers())
        wait_until(lambda: len(self.up.answers()) > seen, "a poll", timeout=WAIT)
        return self.up.answers()[seen]

    def write(self, version: int, stays: bool = True) -> float:
        before = len(self.up.answers())
        at = self.up.write(version)
        self.written.append(version)
        if stays:
            self.must_arrive.append((version, before))
        return at

    def arrived(self) -> list[int]:
        return [int(e["data"]["item"]["v"]) for e in self.receiver.events()
                if e["data"]["key"] == "1"]  # fmt: skip

    def await_version(self, version: int) -> None:
        wait_until(lambda: version in self.arrived(), f"version {version} at the receiver")

    def after_a_poll(self, version: int) -> None:
        """A change right after a poll, left in place until it arrives."""
        self.next_answer()
        self.write(version)
        self.await_version(version)

    def twice_in_one_second(self, version: int) -> None:
        """Write, let one poll read it, then write again within the same second."""
        for _ in range(5):  # start early in a second, so both writes can fit in it
            time.sleep(1.02 - time.time() % 1)  # a clock boundary, not an event to await
            first = self.write(version, stays=False)
            status, _ = self.next_answer()
            if status == 200:  # that poll read `version`: it must arrive too
                self.must_arrive.append((version, len(self.up.answers()) - 1))
            second = self.write(version + 1)
            self.await_version(version + 1)
            if int(first) == int(second) and status == 200:
                self.same_second += 1
                return
            version += 2  # the second write fell into the next second: try again
        raise AssertionError("could not write twice within one second after a poll")


@pytest.mark.parametrize("upstream", list(CASES), indirect=True)
def test_no_validator_hides_a_change_that_stays_two_intervals(
    upstream: Upstream, request: pytest.FixtureRequest, tmp_path: Path, daemon: Any
) -> None:
    name = request.node.callspec.id
    receiver = Receiver()
    upstream.write(0)
    cfg = tmp_path / "sources.yaml"
    cfg.write_text(
        f"sources:\n  - name: data\n    url: {upstream.url}\n    interval: {INTERVAL}\n"
        f"subscribers:\n  - name: hooks\n    url: {receiver.url}/hooks\n"
    )
    proc = daemon(cfg).start()
    run = Run(upstream, receiver, proc)
    wait_until(lambda: _baseline(proc.db), "the baseline")

    _, twice, trust = CASES[name]
    for version in range(1, ROUNDS + 1):  # unproven validators: changes right after polls
        run.after_a_poll(version)
    wait_until(lambda: _validators_stored(proc.db), "validators kept (a second after a write)")
    run.after_a_poll(ROUNDS + 1)  # a change under stored validators: they prove or lie
    wait_until(lambda: _trust(proc.db) == trust, f"validators {trust}")
    if twice:  # under trusted validators: the one-second rule must still hold
        for _ in range(2):
            run.twice_in_one_second(run.written[-1] + 1)
    run.after_a_poll(run.written[-1] + 1)  # and once more after those
    run.next_answer()
    run.next_answer()  # two more polls: nothing else may arrive
    assert proc.stop() == 0

    arrived = run.arrived()
    assert len(arrived) == len(set(arrived)), f"a version arrived twice: {arrived}"
    assert arrived == [v for v in run.written if v in arrived], "out of order or invented"
    assert set(arrived) <= set(run.written) - {0}
    answers = upstream.answers()
    detected = _detected(proc.db)
    for version, before in run.must_arrive:
        assert version in arrived, f"version {version} was lost"
        later = answers[before + 2 :]  # the third answer after the write, if any
        assert not later or detected[version] < later[0][1] + 0.001, (
            f"version {version} detected only after the second poll that followed its write"
        )
    status = pollhook("status", "--json", "-c", str(cfg), "--db", str(proc.db))
    [row] = json.loads(status.stdout)["sources"]
    statuses = [s for s, _ in answers]
    print(f"\n{name}: {len(run.written) - 1} changes ({run.same_second} twice within a second),"
          f" all delivered; {statuses.count(200)} x 200, {statuses.count(304)} x 304;"
          f" validators {row['validators']}")  # fmt: skip
    assert row["validators"] == trust
    if name in ("strong-etag", "weak-etag"):
        assert statuses.count(304) > 0  # trusted: unchanged polls cost a 304
    receiver.close()


def _validators_stored(db: Path) -> bool:
    return query(db, "SELECT etag IS NOT NULL OR last_modified IS NOT NULL FROM sources") == [(1,)]


def _trust(db: Path) -> str:
    return str(query(db, "SELECT coalesce(trust, 'unproven') FROM sources")[0][0])


def _baseline(db: Path) -> bool:
    try:
        return db.exists() and query(db, "SELECT items_count FROM sources") == [(2,)]
    except Exception:  # the daemon is still creating the file
        return False


def _detected(db: Path) -> dict[int, float]:
    """When each version of item 1 was detected (committed)."""
    rows = query(db, "SELECT created_at, body FROM events WHERE key = '1'")
    return {int(json.loads(b)["data"]["item"]["v"]): at for at, b in rows}


def test_without_nginx_the_nginx_case_skips_unless_required(monkeypatch: pytest.MonkeyPatch) -> None:
    import test_validators_matrix as matrix

    monkeypatch.setattr(matrix, "NGINX", None)
    monkeypatch.delenv("POLLHOOK_REQUIRE_NGINX", raising=False)
    with pytest.raises(pytest.skip.Exception, match="nginx is not installed"):
        matrix.need_nginx()
    monkeypatch.setenv("POLLHOOK_REQUIRE_NGINX", "1")
    with pytest.raises(pytest.fail.Exception, match="POLLHOOK_REQUIRE_NGINX=1"):
        matrix.need_nginx()
