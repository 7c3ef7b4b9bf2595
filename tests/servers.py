"""Real HTTP servers on 127.0.0.1 for end-to-end tests: upstreams and receivers.

Every wait here is bounded and wakes on the observable event (a request
served, a webhook received), never on a fixed sleep.
"""

from __future__ import annotations

import json
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

WAIT = 30.0  # generous bound for a loaded 2-core machine; tests wake as soon as they can


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    at: float = field(default_factory=time.time)
    status: int = 0  # the status answered; -1 when the responder took over the socket
    raw_headers: list[tuple[str, str]] = field(default_factory=list)  # as sent, repeats kept
    handler: Any = field(default=None, repr=False, compare=False)  # for responders that hijack


# A reply is (status, headers, body bytes); a responder may also sleep or hang.
Reply = tuple[int, dict[str, str], bytes]


class _HTTPServer(ThreadingHTTPServer):
    # the default listen backlog of 5 drops SYNs when a daemon opens 10 connections at
    # once; the kernel retries them a second later, which would skew timing assertions
    request_queue_size = 128


class _TLSServer(_HTTPServer):
    """HTTPS: each connection's TLS handshake runs in its handler thread, not the accept loop."""

    tls: ssl.SSLContext

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, addr = self.socket.accept()
        return self.tls.wrap_socket(sock, server_side=True, do_handshake_on_connect=False), addr

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client refusing our certificate is what the TLS tests expect


class _Server:
    """A threaded HTTP server that records requests and answers via `respond`.

    With `tls` (a server-side SSLContext) it serves HTTPS and `url` says so.
    """

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self.requests: list[Request] = []
        self.arrived: list[Request] = []  # every request read, answered or not (yet)
        self.cond = threading.Condition()
        self.release = threading.Event()  # set to free handlers that hang
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _handle(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length) if length else b""
                req = Request(
                    self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, body
                )
                req.raw_headers = list(self.headers.items())
                req.handler = self
                with server.cond:
                    server.arrived.append(req)
                    server.cond.notify_all()
                status, headers, payload = server.respond(req, self)
                if status < 0:  # the responder took over the socket
                    self.close_connection = True
                    req.status = -1
                else:
                    req.status = status
                    try:
                        self.send_response(status)
                        for name, value in headers.items():
                            self.send_header(name, value)
                        if "content-length" not in {k.lower() for k in headers}:
                            self.send_header("content-length", str(len(payload)))
                        self.end_headers()
                        if self.command != "HEAD":
                            self.wfile.write(payload)
                    except OSError:  # the client gave up waiting (a timeout test)
                        self.close_connection = True
                with server.cond:
                    server.requests.append(req)
                    server.cond.notify_all()

            do_GET = do_POST = do_PUT = do_HEAD = _handle

        self.scheme = "https" if tls else "http"
        if tls is None:
            self.httpd = _HTTPServer(("127.0.0.1", 0), Handler)
        else:
            self.httpd = _TLSServer(("127.0.0.1", 0), Handler)
            self.httpd.tls = tls
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    def respond(self, req: Request, handler: BaseHTTPRequestHandler) -> Reply:
        raise NotImplementedError

    def count(self) -> int:
        with self.cond:
            return len(self.requests)

    def wait_for(self, n: int, timeout: float = WAIT) -> list[Request]:
        """Block until at least `n` requests were answered; fail the test otherwise."""
        with self.cond:
            ok = self.cond.wait_for(lambda: len(self.requests) >= n, timeout)
            if not ok:
                raise AssertionError(
                    f"waited {timeout}s for {n} requests, got {len(self.requests)}"
                )
            return list(self.requests)

    def wait_arrived(self, n: int, timeout: float = WAIT) -> list[Request]:
        """Block until at least `n` requests were read, answered or not."""
        with self.cond:
            ok = self.cond.wait_for(lambda: len(self.arrived) >= n, timeout)
            if not ok:
                raise AssertionError(f"waited {timeout}s for {n} arrivals, got {len(self.arrived)}")
            return list(self.arrived)

    def open_requests(self) -> int:
        """Requests read but not answered yet (e.g. held by a hanging handler)."""
        with self.cond:
            return len(self.arrived) - len(self.requests)

    def close(self) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


class Upstream(_Server):
    """A 'legacy API' serving a JSON list the test mutates; `fault` simulates outages."""

    def __init__(self, items: list[dict[str, Any]] | None = None) -> None:
        self.items: list[dict[str, Any]] = items or []
        self.fault: Callable[[Request, BaseHTTPRequestHandler], Reply] | None = None
        self.wrap: Callable[[list[dict[str, Any]]], Any] = lambda items: items
        super().__init__()

    def respond(self, req: Request, handler: BaseHTTPRequestHandler) -> Reply:
        if self.fault is not None:
            return self.fault(req, handler)
        body = json.dumps(self.wrap(self.items)).encode()
        return 200, {"content-type": "application/json"}, body


class Receiver(_Server):
    """A webhook receiver; `plan(i, req)` chooses the reply to the i-th request."""

    def __init__(self, plan: Callable[[int, Request], Reply] | None = None) -> None:
        self.plan = plan
        self.seen = 0
        self.lock = threading.Lock()
        super().__init__()

    def respond(self, req: Request, handler: BaseHTTPRequestHandler) -> Reply:
        with self.lock:
            index = self.seen
            self.seen += 1
        if self.plan is not None:
            return self.plan(index, req)
        return 204, {}, b""

    def events(self) -> list[dict[str, Any]]:
        with self.cond:
            return [json.loads(r.body) for r in self.requests]

    def accepted(self) -> list[Request]:
        """Requests this receiver answered with a 2xx."""
        with self.cond:
            return [r for r in self.requests if 200 <= r.status < 300]

    def wait_accepted(self, n: int, timeout: float = WAIT) -> list[Request]:
        """Block until `n` requests were answered with 2xx."""
        with self.cond:
            ok = self.cond.wait_for(
                lambda: sum(200 <= r.status < 300 for r in self.requests) >= n, timeout
            )
            if not ok:
                raise AssertionError(f"waited {timeout}s for {n} accepted webhooks")
        return self.accepted()


def reset_connection(handler: BaseHTTPRequestHandler) -> Reply:
    """A responder step: abort the connection with a TCP RST instead of answering."""
    sock = handler.connection
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()
    return -1, {}, b""


def garbage_reply(handler: BaseHTTPRequestHandler) -> Reply:
    """A responder step: answer bytes that are not HTTP at all, then close."""
    handler.wfile.write(b"this is not HTTP\r\n\r\n")
    handler.wfile.flush()
    handler.connection.shutdown(socket.SHUT_RDWR)
    return -1, {}, b""
