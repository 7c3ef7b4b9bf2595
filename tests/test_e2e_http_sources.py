"""Requests, pagination, incremental mode, politeness and safety against real local servers.

Every test runs the real `pollhook` (one-shot `run --once`, or the daemon)
against HTTP servers on 127.0.0.1 and asserts two things: what the upstream
saw (methods, query strings, bodies, auth and conditional headers, request
timing) and what reached the receiver. Waits are bounded and wake on the
observable event; timing assertions are lower bounds only.
"""

from __future__ import annotations

import base64
import itertools
import json
import ssl
import textwrap
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest
import trustme

from conftest import SECRET, pollhook, query
from servers import Receiver, Reply, Request, _Server, reset_connection

JSON = {"content-type": "application/json"}


class Api(_Server):
    """An upstream whose every answer comes from `route(request)`."""

    def __init__(self, route: Callable[[Request], Reply], tls: ssl.SSLContext | None = None):
        self.route = route
        super().__init__(tls)

    def respond(self, req: Request, handler: Any) -> Reply:
        return self.route(req)


def params(req: Request) -> dict[str, str]:
    return dict(parse_qsl(urlsplit(req.path).query, keep_blank_values=True))


def path(req: Request) -> str:
    return urlsplit(req.path).path


def body(value: Any, headers: dict[str, str] | None = None) -> Reply:
    return 200, {**JSON, **(headers or {})}, json.dumps(value).encode()


def indent(text: str, spaces: int) -> str:
    pad = " " * spaces
    return "\n".join(pad + line if line.strip() else line for line in text.strip("\n").splitlines())


def config(sources: str, receiver: Receiver | None = None, top: str = "") -> str:
    """A config with `state: state.db`, the given source entries and one subscriber."""
    subs = ""
    if receiver is not None:
        subs = f"subscribers:\n  - name: hooks\n    url: {receiver.url}/hooks\n    secret: {SECRET}\n"
    return f"state: state.db\n{top}\nsources:\n{sources}\n{subs}"


def source(name: str, url: str, extra: str = "", interval: str = "1h") -> str:
    extra = indent(textwrap.dedent(extra), 2)
    text = f"- name: {name}\n  url: {url}\n  interval: {interval}\n{extra}"
    return indent(text, 2) + "\n"


def once(cfg: Path, *extra: str, env: dict[str, str] | None = None) -> Any:
    return pollhook("run", "--once", "-c", str(cfg), *extra, env=env)


def seen(receiver: Receiver) -> list[tuple[str, str]]:
    return [(e["type"], e["data"]["key"]) for e in receiver.events()]


def db(cfg: Path) -> Path:
    return cfg.parent / "state.db"


def source_row(cfg: Path, name: str) -> dict[str, Any]:
    cols = "items_count, last_error, consecutive_failures, cursor, held_deletes, last_success_at"
    [row] = query(db(cfg), f"SELECT {cols} FROM sources WHERE name = ?", name)
    return dict(zip([c.strip() for c in cols.split(",")], row, strict=True))


@pytest.fixture
def api():  # type: ignore[no-untyped-def]
    made: list[Api] = []

    def make(route: Callable[[Request], Reply], tls: ssl.SSLContext | None = None) -> Api:
        server = Api(route, tls)
        made.append(server)
        return server

    yield make
    for server in made:
        server.close()


# -- requests --------------------------------------------------------------------------


def test_params_bodies_and_auth_are_sent_as_configured(api, receiver, write_config, tmp_path):  # type: ignore[no-untyped-def]
    soap_reply = (
        b'<?xml version="1.0"?><soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/">'
        b"<soap:Body><GetTicketsResponse><Ticket><Id>7</Id><Status>open</Status></Ticket>"
        b"</GetTicketsResponse></soap:Body></soap:Envelope>"
    )

    def route(req: Request) -> Reply:
        if path(req) == "/soap":
            return 200, {"content-type": "text/xml; charset=utf-8"}, soap_reply
        return body([{"id": 1}])

    upstream = api(route)
    (tmp_path / "token").write_text("s3cret-token\n")
    cfg = write_config(
        config(
            source("search", f"{upstream.url}/search?fixed=1", """
                method: POST
                params: {status: open, tag: [a, b], limit: 50}
                body_json: {query: "${QUERY}", filters: {open: true, ids: [1, 2]}, none: null}
                auth: {basic: {username: ops, password: "${API_PASSWORD}"}}
            """)
            + source("form", f"{upstream.url}/form", """
                method: POST
                body_form: {user: "ops team", scope: [read, write]}
                auth: {bearer: "${file:token}"}
            """)
            + source("soap", f"{upstream.url}/soap", """
                method: POST
                headers: {SOAPAction: "urn:GetTickets"}
                body: |
                  <soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/">
                    <soap:Body><GetTickets/></soap:Body>
                  </soap:Envelope>
                content_type: text/xml; charset=utf-8
                items: Envelope.Body.GetTicketsResponse.Ticket
                key: Id
            """),
            receiver,
        )
    )
    result = once(cfg, env={"QUERY": "printer jam", "API_PASSWORD": "pa:ss"})
    assert result.returncode == 0, result.stderr

    by_path = {path(r): r for r in upstream.requests}
    search = by_path["/search"]
    assert search.method == "POST"
    assert parse_qsl(urlsplit(search.path).query) == [
        ("fixed", "1"), ("status", "open"), ("tag", "a"), ("tag", "b"), ("limit", "50"),
    ]  # fmt: skip
    assert search.headers["content-type"] == "application/json"
    assert json.loads(search.body) == {
        "query": "printer jam", "filters": {"open": True, "ids": [1, 2]}, "none": None,
    }  # fmt: skip
    assert search.headers["authorization"] == "Basic " + base64.b64encode(b"ops:pa:ss").decode()

    form = by_path["/form"]
    assert form.headers["content-type"] == "application/x-www-form-urlencoded"
    assert parse_qsl(form.body.decode()) == [
        ("user", "ops team"), ("scope", "read"), ("scope", "write"),
    ]  # fmt: skip
    assert form.headers["authorization"] == "Bearer s3cret-token"

    soap = by_path["/soap"]
    assert soap.headers["content-type"] == "text/xml; charset=utf-8"
    assert soap.headers["soapaction"] == "urn:GetTickets"
    assert b"<soap:Body><GetTickets/></soap:Body>" in soap.body
    assert "authorization" not in soap.headers
    assert source_row(cfg, "soap")["items_count"] == 1  # the SOAP answer's one ticket


@pytest.mark.parametrize(("status", "method", "has_body"), [(307, "POST", True), (303, "GET", False)])
def test_a_redirected_post_keeps_or_drops_its_body_as_http_says(api, write_config, status, method, has_body):  # type: ignore[no-untyped-def]
    def route(req: Request) -> Reply:
        if path(req) == "/old":
            return status, {"location": "/new"}, b""
        return body([{"id": 1}])

    upstream = api(route)
    cfg = write_config(
        config(source("moved", f"{upstream.url}/old", "method: POST\nbody_json: {q: 1}"))
    )
    assert once(cfg).returncode == 0
    old, new = upstream.requests
    assert (old.method, old.body, old.headers["content-type"]) == ("POST", b'{"q":1}', JSON["content-type"])
    assert new.method == method and "transfer-encoding" not in new.headers
    assert new.body == (b'{"q":1}' if has_body else b"")
    assert ("content-length" in new.headers) is has_body  # no stray chunked empty body


def test_cookies_an_upstream_sets_are_never_sent_back(api, write_config):  # type: ignore[no-untyped-def]
    def route(req: Request) -> Reply:
        cookie = {"set-cookie": f"session={path(req)[1:]}; Path=/"}
        if path(req) == "/old":  # a redirect, then a second page: both would carry a jar's cookie
            return 302, {"location": "/new", **cookie}, b""
        if params(req).get("page") == "2":
            return body([{"id": 2}])
        return body([{"id": 1}], {"link": '</new?page=2>; rel="next"', **cookie})

    upstream = api(route)
    cfg = write_config(config(source("jar", f"{upstream.url}/old", "pagination: link")))
    assert once(cfg).returncode == 0
    assert [r.path for r in upstream.requests] == ["/old", "/new", "/new?page=2"]
    assert [r.headers.get("cookie") for r in upstream.requests] == [None, None, None]


def _tls_files(tmp_path: Path) -> tuple[ssl.SSLContext, Path]:
    ca = trustme.CA()
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server)
    bundle = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(bundle))
    return server, bundle


def test_ca_bundle_and_verify_tls_switch(api, write_config, tmp_path):  # type: ignore[no-untyped-def]
    server_tls, bundle = _tls_files(tmp_path)
    upstream = api(lambda req: body([{"id": path(req)}]), tls=server_tls)
    assert upstream.url.startswith("https://")
    cfg = write_config(
        config(
            source("trusted", f"{upstream.url}/trusted", "ca_bundle: ca.pem")
            + source("unverified", f"{upstream.url}/unverified", "verify_tls: false")
            + source("default", f"{upstream.url}/default")
            + source("trusted-too", f"{upstream.url}/trusted-too", f"ca_bundle: {bundle}")
        )
    )
    result = once(cfg)
    assert result.returncode == 1  # the source with default verification failed
    assert "source default failed" in result.stderr
    assert "certificate" in result.stderr.lower(), result.stderr
    assert sorted(path(r) for r in upstream.requests) == ["/trusted", "/trusted-too", "/unverified"]
    for name in ("trusted", "unverified", "trusted-too"):
        assert source_row(cfg, name)["items_count"] == 1
    assert source_row(cfg, "default")["last_success_at"] is None


def test_body_over_max_body_size_fails_the_poll(api, write_config):  # type: ignore[no-untyped-def]
    big = json.dumps([{"id": i, "pad": "x" * 50} for i in range(40)]).encode()  # ~2.5 KB

    def route(req: Request) -> Reply:
        if path(req) == "/unsized":  # no content-length: the limit must hold while streaming
            req.handler.wfile.write(
                b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nconnection: close\r\n\r\n"
                + big
            )
            req.handler.wfile.flush()
            return -1, {}, b""
        return 200, JSON, big

    upstream = api(route)
    cfg = write_config(
        config(
            source("declared", f"{upstream.url}/declared", "max_body_size: 1KB")
            + source("unsized", f"{upstream.url}/unsized", "max_body_size: 1KiB")
            + source("roomy", f"{upstream.url}/roomy")
        )
    )
    result = once(cfg)
    assert result.returncode == 1
    for name in ("declared", "unsized"):
        row = source_row(cfg, name)
        assert "max_body_size" in row["last_error"], row
        assert row["last_success_at"] is None
    assert source_row(cfg, "roomy")["items_count"] == 40


# -- pagination ------------------------------------------------------------------------


class Paged:
    """One item list served in five pagination styles, two items per page."""

    SIZE = 2

    def __init__(self) -> None:
        self.items: list[dict[str, Any]] = [{"id": i, "status": "open"} for i in range(1, 6)]
        self.url = ""
        self.fail: Callable[[Request, int], Reply | None] = lambda req, page: None

    def page(self, number: int) -> tuple[list[dict[str, Any]], bool]:
        start = (number - 1) * self.SIZE
        chunk = self.items[start : start + self.SIZE]
        return chunk, start + self.SIZE < len(self.items)

    def route(self, req: Request) -> Reply:
        style, q = path(req).strip("/"), params(req)
        if style == "cursor":
            number = int(q["cursor"].removeprefix("c")) if "cursor" in q else 1
        elif style == "offset":
            number = int(q.get("offset", "0")) // self.SIZE + 1
        else:
            number = int(q.get("page", "1"))
        failure = self.fail(req, number)
        if failure is not None:
            return failure
        chunk, more = self.page(number)
        if style == "link":
            link = {"link": f'</link?page={number + 1}>; rel="next"'} if more else {}
            return body(chunk, link)
        if style == "cursor":
            return body({"data": chunk, "meta": {"next_cursor": f"c{number + 1}" if more else None}})
        if style == "next_url":
            nxt = f"{self.url}/next_url?page={number + 1}" if more else None
            return body({"results": chunk, "next": nxt})
        if style == "offset":
            return body({"results": chunk})
        return body(chunk)


STYLES = {
    "link": ("pagination: link", ["", "page=2", "page=3"]),
    "cursor": (
        "items: data\npagination: {type: cursor, next: meta.next_cursor, param: cursor}",
        ["", "cursor=c2", "cursor=c3"],
    ),
    "next_url": (
        "items: results\npagination: {type: next_url, next: next}",
        ["", "page=2", "page=3"],
    ),
    "page": (
        "pagination: {type: page, size: 2, size_param: per_page}",
        ["page=1&per_page=2", "page=2&per_page=2", "page=3&per_page=2"],
    ),
    "offset": (
        "items: results\npagination: {type: offset, size: 2, size_param: limit}",
        ["offset=0&limit=2", "offset=2&limit=2", "offset=4&limit=2"],
    ),
}


@pytest.fixture
def paged(api):  # type: ignore[no-untyped-def]
    data = Paged()
    server = api(data.route)
    data.url = server.url
    return data, server


@pytest.mark.parametrize("style", list(STYLES))
def test_every_page_is_read_and_changes_across_pages_are_found(style, paged, receiver, write_config):  # type: ignore[no-untyped-def]
    data, upstream = paged
    extra, queries = STYLES[style]
    cfg = write_config(config(source("paged", f"{upstream.url}/{style}", extra), receiver))
    assert once(cfg).returncode == 0  # baseline over three pages
    assert [urlsplit(r.path).query for r in upstream.requests] == queries
    assert source_row(cfg, "paged")["items_count"] == 5

    data.items[0]["status"] = "closed"  # page 1
    del data.items[2]  # id 3, page 2: ids 4 and 5 move up a page
    data.items.append({"id": 6, "status": "open"})  # the last page
    assert once(cfg).returncode == 0
    assert sorted(seen(receiver)) == [("item.created", "6"), ("item.updated", "1")]
    # a deletion of a paginated source waits for one more complete poll to confirm it
    assert json.loads(source_row(cfg, "paged")["held_deletes"]) == ["3"]
    assert once(cfg).returncode == 0
    assert seen(receiver)[-1] == ("item.deleted", "3")
    assert len(receiver.events()) == 3


def _truncated(req: Request) -> Reply:
    req.handler.close_connection = True
    req.handler.wfile.write(
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 500\r\n"
        b'connection: close\r\n\r\n[{"id": 3}'
    )
    req.handler.wfile.flush()
    return -1, {}, b""


PAGE_FAULTS: dict[str, Callable[[Request], Reply]] = {
    "500": lambda req: (500, {}, b"boom"),
    "429": lambda req: (429, {"retry-after": "1"}, b"slow down"),
    "reset": lambda req: reset_connection(req.handler),
    "not-json": lambda req: (200, {"content-type": "text/html"}, b"<html>maintenance</html>"),
    "truncated": _truncated,
}


def test_a_page_dropped_mid_pagination_changes_nothing(paged, receiver, write_config):  # type: ignore[no-untyped-def]
    data, upstream = paged
    cfg = write_config(
        config(source("paged", f"{upstream.url}/link", "pagination: link\ntimeout: 5s"), receiver)
    )
    assert once(cfg).returncode == 0
    before = query(db(cfg), "SELECT key, hash FROM items ORDER BY key")
    data.items[0]["status"] = "closed"  # a real change on page 1, seen only with page 2
    data.items.append({"id": 6})

    for name, fault in PAGE_FAULTS.items():
        data.fail = lambda req, page, fault=fault: fault(req) if page == 2 else None
        result = once(cfg)
        assert result.returncode == 1, name
        assert "page 2: " in result.stderr, (name, result.stderr)
        assert query(db(cfg), "SELECT key, hash FROM items ORDER BY key") == before, name
        assert source_row(cfg, "paged")["held_deletes"] is None, name
        assert receiver.events() == [], name

    data.fail = lambda req, page: None
    assert once(cfg).returncode == 0
    assert sorted(seen(receiver)) == [("item.created", "6"), ("item.updated", "1")]


def test_a_listing_that_ends_early_deletes_nothing(paged, receiver, write_config):  # type: ignore[no-untyped-def]
    data, upstream = paged
    cfg = write_config(config(source("paged", f"{upstream.url}/link", "pagination: link"), receiver))
    assert once(cfg).returncode == 0
    # page 2 comes back empty and without a next link: indistinguishable from the end
    data.fail = lambda req, page: body([]) if page == 2 else None
    assert once(cfg).returncode == 0
    assert receiver.events() == []  # items 3, 4 and 5 look gone, but wait for confirmation
    assert sorted(json.loads(source_row(cfg, "paged")["held_deletes"])) == ["3", "4", "5"]
    data.fail = lambda req, page: None
    assert once(cfg).returncode == 0  # the next complete poll has them all again
    assert receiver.events() == []
    assert source_row(cfg, "paged")["held_deletes"] is None


def test_page_dropped_changes_no_state_or_events_strictly(paged, receiver, write_config):  # type: ignore[no-untyped-def]
    data, upstream = paged
    cfg = write_config(
        config(source("paged", f"{upstream.url}/cursor", STYLES["cursor"][0]), receiver)
    )
    assert once(cfg).returncode == 0
    before = query(db(cfg), "SELECT key, hash FROM items ORDER BY key")
    data.items[0]["status"] = "closed"
    data.items[4] = {"id": 6, "status": "open"}  # id 5 replaced by 6, on page 3
    data.fail = lambda req, page: (503, {}, b"down") if page == 3 else None
    result = once(cfg)
    assert result.returncode == 1 and "page 3: HTTP 503" in result.stderr
    assert query(db(cfg), "SELECT key, hash FROM items ORDER BY key") == before
    assert source_row(cfg, "paged")["held_deletes"] is None
    assert receiver.events() == []
    data.fail = lambda req, page: None
    assert once(cfg).returncode == 0
    assert sorted(seen(receiver)) == [("item.created", "6"), ("item.updated", "1")]
    assert json.loads(source_row(cfg, "paged")["held_deletes"]) == ["5"]


def test_more_pages_than_max_pages_fails_the_poll(paged, receiver, write_config):  # type: ignore[no-untyped-def]
    _, upstream = paged
    cfg = write_config(
        config(
            source("paged", f"{upstream.url}/link", "pagination: {type: link, max_pages: 2}"),
            receiver,
        )
    )
    result = once(cfg)
    assert result.returncode == 1
    assert "max_pages (2)" in result.stderr
    assert upstream.count() == 2  # the third page is never asked for
    assert source_row(cfg, "paged")["last_success_at"] is None


@pytest.mark.parametrize(
    ("link", "error"),
    [
        ("</link>", "loops back"),
        ("</link?page=1>", "not advancing"),
        ("<http://127.0.0.2:{port}/link?page=2>", "not on the source's origin"),
    ],
)
def test_next_links_that_loop_or_leave_the_origin_fail(api, write_config, link, error):  # type: ignore[no-untyped-def]
    holder: dict[str, int] = {}
    upstream = api(
        lambda req: body([{"id": params(req).get("page", "1")}],
                         {"link": link.format(port=holder["port"]) + '; rel="next"'})
    )  # fmt: skip
    holder["port"] = upstream.port
    cfg = write_config(config(source("paged", f"{upstream.url}/link", "pagination: link")))
    result = once(cfg)
    assert result.returncode == 1 and error in result.stderr, result.stderr
    assert upstream.count() == (2 if error == "not advancing" else 1)


def test_adding_pagination_re_baselines_silently(paged, receiver, write_config):  # type: ignore[no-untyped-def]
    data, upstream = paged
    cfg = write_config(config(source("paged", f"{upstream.url}/link"), receiver))
    assert once(cfg).returncode == 0
    assert source_row(cfg, "paged")["items_count"] == 2  # only page 1 without pagination
    cfg = write_config(config(source("paged", f"{upstream.url}/link", "pagination: link"), receiver))
    assert once(cfg).returncode == 0
    assert source_row(cfg, "paged")["items_count"] == 5
    assert receiver.events() == []  # three more items seen, none of them "created"
    data.items[4]["status"] = "closed"
    assert once(cfg).returncode == 0
    assert seen(receiver) == [("item.updated", "5")]


# -- incremental mode ----------------------------------------------------------------------


class Changes:
    """A "changed since" API: items whose updated_at >= since, oldest first."""

    def __init__(self) -> None:
        self.items = {
            "a": {"id": "a", "v": 1, "updated_at": "2026-11-27T10:00:00Z"},
            "b": {"id": "b", "v": 1, "updated_at": "2026-11-27T10:05:00Z"},
        }

    def route(self, req: Request) -> Reply:
        since = params(req).get("since")
        found = sorted(
            (i for i in self.items.values() if since is None or i["updated_at"] >= since),
            key=lambda i: i["updated_at"],
        )
        return body({"changes": found})


def test_incremental_cursor_overlap_and_no_duplicates(api, receiver, write_config):  # type: ignore[no-untyped-def]
    changes = Changes()
    upstream = api(changes.route)
    cfg = write_config(
        config(
            source("changes", f"{upstream.url}/changes", """
                items: changes
                incremental: {cursor: updated_at, param: since, overlap: 1m}
            """),
            receiver,
        )
    )
    assert once(cfg).returncode == 0  # baseline: the full list, no cursor sent
    assert "since" not in params(upstream.requests[-1])
    assert source_row(cfg, "changes")["cursor"] == '"2026-11-27T10:05:00Z"'

    changes.items["a"] = {"id": "a", "v": 2, "updated_at": "2026-11-27T10:06:00Z"}
    changes.items["c"] = {"id": "c", "v": 1, "updated_at": "2026-11-27T10:07:00Z"}
    assert once(cfg).returncode == 0
    assert params(upstream.requests[-1])["since"] == "2026-11-27T10:04:00Z"  # cursor - overlap
    # b came back (inside the overlap) unchanged: no event; a and c are real changes
    assert sorted(seen(receiver)) == [("item.created", "c"), ("item.updated", "a")]
    assert source_row(cfg, "changes")["cursor"] == '"2026-11-27T10:07:00Z"'

    # b is not in the answer any more: incremental mode never infers a deletion
    assert once(cfg).returncode == 0
    assert params(upstream.requests[-1])["since"] == "2026-11-27T10:06:00Z"
    assert len(receiver.events()) == 2
    assert source_row(cfg, "changes")["items_count"] == 3

    # a write that lands late, stamped before the cursor but inside the overlap, is not lost
    changes.items["d"] = {"id": "d", "v": 1, "updated_at": "2026-11-27T10:06:30Z"}
    assert once(cfg).returncode == 0
    assert seen(receiver)[-1] == ("item.created", "d")
    assert len(receiver.events()) == 3
    assert source_row(cfg, "changes")["cursor"] == '"2026-11-27T10:07:00Z"'  # never backwards
    [status] = json.loads(pollhook("status", "--json", "-c", str(cfg)).stdout)["sources"]
    assert status["cursor"] == '"2026-11-27T10:07:00Z"'


def test_incremental_cursor_failure_writes_no_cursor(api, write_config):  # type: ignore[no-untyped-def]
    upstream = api(lambda req: body([{"id": 1, "seq": "not-a-time"}]))
    cfg = write_config(
        config(
            source("changes", f"{upstream.url}/changes",
                   "incremental: {cursor: seq, param: after, overlap: 5}")
        )
    )  # fmt: skip
    result = once(cfg)
    assert result.returncode == 1
    assert "neither a number nor an ISO 8601 timestamp" in result.stderr
    assert source_row(cfg, "changes")["cursor"] is None


# -- politeness ----------------------------------------------------------------------------


def test_conditional_get_304_costs_nothing_and_a_lying_etag_is_caught(api, receiver, write_config, daemon):  # type: ignore[no-untyped-def]
    state = {"etag": '"v1"', "items": [{"id": 1}]}
    modified = "Wed, 25 Nov 2026 07:28:00 GMT"

    def route(req: Request) -> Reply:
        if req.headers.get("if-none-match") == state["etag"]:
            return 304, {"etag": str(state["etag"])}, b""
        return body(state["items"], {"etag": str(state["etag"]), "last-modified": modified})

    upstream = api(route)
    cfg = write_config(
        config(source("cond", f"{upstream.url}/cond", interval="200ms"), receiver)
    )
    proc = daemon(cfg, db(cfg)).start()
    upstream.wait_for(1)
    state.update(etag='"v2"', items=[{"id": 1}, {"id": 2}])  # new content, new ETag: trusted
    receiver.wait_accepted(1)
    start = upstream.count()
    upstream.wait_for(start + 3)
    conditional = upstream.requests[start:]
    assert all(r.headers.get("if-none-match") == '"v2"' for r in conditional)
    assert all(r.headers.get("if-modified-since") == modified for r in conditional)
    assert all(r.status == 304 for r in conditional)  # nothing parsed, nothing diffed
    assert "if-none-match" not in upstream.requests[0].headers
    assert source_status(cfg)["validators"] == "proven"

    state["items"] = [{"id": 1}, {"id": 2}, {"id": 3}]  # changed, but the ETag stays: 304s ...
    receiver.wait_accepted(2)  # ... until the unconditional check every 10 intervals sees it
    assert proc.stop() == 0
    assert seen(receiver) == [("item.created", "2"), ("item.created", "3")]
    assert source_status(cfg)["validators"] == "lying"
    assert "conditional requests are off" in proc.output()
    last = upstream.requests[-1]  # once caught lying, the ETag is never sent again
    assert "if-none-match" not in last.headers and "if-modified-since" not in last.headers


def source_status(cfg: Path) -> dict[str, Any]:
    done = pollhook("status", "--json", "-c", str(cfg))
    assert done.returncode == 0, done.stderr
    [row] = json.loads(done.stdout)["sources"]
    return dict(row)


@pytest.mark.parametrize("status", [429, 503])
def test_retry_after_pushes_the_next_poll(api, write_config, daemon, status):  # type: ignore[no-untyped-def]
    count = {"n": 0}
    lock = threading.Lock()

    def route(req: Request) -> Reply:
        with lock:
            count["n"] += 1
            n = count["n"]
        if n == 2:
            return status, {"retry-after": "2"}, b"slow down"
        return body([{"id": 1}])

    upstream = api(route)
    cfg = write_config(config(source("busy", f"{upstream.url}/busy", interval="200ms")))
    proc = daemon(cfg, db(cfg)).start()
    requests = upstream.wait_for(3)
    assert proc.stop() == 0
    assert requests[1].status == status
    gap = requests[2].at - requests[1].at
    assert gap >= 2 * 0.8, f"next poll {gap:.2f}s after Retry-After: 2 (jitter may take 20%)"


def test_a_failing_source_backs_off_exponentially(api, write_config, daemon):  # type: ignore[no-untyped-def]
    upstream = api(lambda req: (500, {}, b"down"))
    cfg = write_config(config(source("down", f"{upstream.url}/down", interval="100ms")))
    proc = daemon(cfg, db(cfg)).start()
    requests = upstream.wait_for(5)
    assert proc.stop() == 0
    gaps = [b.at - a.at for a, b in itertools.pairwise(requests[:5])]
    for failures, gap in enumerate(gaps, start=1):  # 0.2 s, 0.4 s, 0.8 s, 1.6 s less jitter
        assert gap >= 0.1 * 2**failures * 0.8, (failures, gaps)


def _holding_route(server_ref: dict[str, Api], peak: dict[str, int]) -> Callable[[Request], Reply]:
    """Hold each request until more than two are open at once, or a second passed."""
    lock = threading.Lock()
    open_now = {"n": 0}

    def route(req: Request) -> Reply:
        server = server_ref["server"]
        with lock:
            open_now["n"] += 1
            peak["n"] = max(peak["n"], open_now["n"])
        with server.cond:
            server.cond.wait_for(lambda: len(server.arrived) - len(server.requests) > 2, 1.0)
        with lock:
            open_now["n"] -= 1
        return body([{"id": path(req)}])

    return route


@pytest.mark.parametrize(("cap", "expected"), [(2, 2), (10, 5)])
def test_per_host_cap_is_the_most_requests_the_upstream_sees_at_once(api, write_config, cap, expected):  # type: ignore[no-untyped-def]
    ref: dict[str, Api] = {}
    peak = {"n": 0}
    upstream = ref["server"] = api(_holding_route(ref, peak))
    sources = "".join(source(f"s{i}", f"{upstream.url}/s{i}") for i in range(5))
    cfg = write_config(config(sources, top=f"http:\n  max_per_host: {cap}\n"))
    assert once(cfg).returncode == 0
    assert upstream.count() == 5
    if cap == 2:
        assert peak["n"] == 2  # the cap was reached and never passed
    else:
        assert peak["n"] > 2  # the control: without the cap, the upstream sees more at once


def test_min_delay_spaces_requests_to_one_host(api, write_config):  # type: ignore[no-untyped-def]
    upstream = api(lambda req: body([{"id": 1}]))
    sources = "".join(source(f"s{i}", f"{upstream.url}/s{i}") for i in range(4))
    cfg = write_config(config(sources, top="http:\n  min_delay: 300ms\n"))
    assert once(cfg).returncode == 0
    starts = sorted(r.at for r in upstream.requests)
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert len(starts) == 4 and min(gaps) >= 0.3 * 0.8, gaps


def test_schedule_jitter_is_applied_to_each_source(write_config):  # type: ignore[no-untyped-def]
    import asyncio

    from pollhook.config import load_config
    from pollhook.poll import PollResult
    from pollhook.schedule import PollSchedule

    cfg = write_config(
        config(
            source("a", "http://127.0.0.1:9/a", "jitter: 10%", interval="1m")
            + source("b", "http://127.0.0.1:9/b", "jitter: 2s", interval="1m")
            + source("c", "http://127.0.0.1:9/c", interval="1m")
        )
    )

    async def main() -> dict[str, Any]:
        async def run(name: str) -> PollResult:
            return PollResult(name, ok=True)

        schedule = PollSchedule(run)
        schedule.start(load_config(cfg).sources)
        try:
            return {n: schedule.scheduler.get_job(n).trigger.jitter for n in "abc"}
        finally:
            schedule.shutdown()

    assert asyncio.run(main()) == {"a": 6.0, "b": 2.0, "c": None}


# -- safety ---------------------------------------------------------------------------------


def _list_api(api, items: list[dict[str, Any]]) -> Api:  # type: ignore[no-untyped-def]
    return api(lambda req: body(items))


def test_mass_delete_thresholds_come_from_the_config(api, receiver, write_config):  # type: ignore[no-untyped-def]
    items = [{"id": i} for i in range(1, 6)]
    upstream = _list_api(api, items)
    cfg = write_config(
        config(
            source("list", f"{upstream.url}/list", "mass_delete: {min: 2, ratio: 40%}"), receiver
        )
    )
    assert once(cfg).returncode == 0
    del items[0:3]  # 3 of 5 gone: more than 2 and more than 40%: held
    assert once(cfg).returncode == 0
    assert receiver.events() == []
    assert sorted(json.loads(source_row(cfg, "list")["held_deletes"])) == ["1", "2", "3"]
    [status] = json.loads(pollhook("status", "--json", "-c", str(cfg)).stdout)["sources"]
    assert status["held_deletions"] == 3
    assert once(cfg).returncode == 0  # still gone on the next complete poll: confirmed
    assert sorted(seen(receiver)) == [("item.deleted", k) for k in ("1", "2", "3")]
    items.pop()  # 1 of 2 gone: under the threshold, deleted at once
    assert once(cfg).returncode == 0
    assert seen(receiver)[-1] == ("item.deleted", "5")


def test_flood_cap_fails_the_poll_instead_of_sending(api, receiver, write_config):  # type: ignore[no-untyped-def]
    items = [{"id": 1}, {"id": 2}]
    upstream = _list_api(api, items)
    cfg = write_config(
        config(source("list", f"{upstream.url}/list", "max_events_per_poll: 3"), receiver)
    )
    assert once(cfg).returncode == 0
    items.extend({"id": i} for i in range(3, 8))  # 5 new items at once
    result = once(cfg)
    assert result.returncode == 1
    assert "5 changes exceed max_events_per_poll 3" in result.stderr
    assert receiver.events() == []
    assert source_row(cfg, "list")["items_count"] == 2  # nothing recorded, nothing dropped
    del items[5:]  # 3 new items now: within the cap, all of them are sent
    assert once(cfg).returncode == 0
    assert sorted(seen(receiver)) == [("item.created", k) for k in ("3", "4", "5")]


def test_health_events_once_after_n_failures_and_once_on_recovery(api, write_config):  # type: ignore[no-untyped-def]
    down = {"on": False}
    upstream = api(lambda req: (500, {}, b"down") if down["on"] else body([{"id": 1}]))
    hooks = Receiver()
    try:
        cfg = write_config(
            config(source("flaky", f"{upstream.url}/flaky", "failing_after: 2"))
            + f"""subscribers:
  - name: ops
    url: {hooks.url}/ops
    events: [source.failing, source.recovered]
"""
        )
        assert once(cfg).returncode == 0  # healthy baseline
        down["on"] = True
        for _ in range(4):
            assert once(cfg).returncode == 1
        down["on"] = False
        for _ in range(2):
            assert once(cfg).returncode == 0
        events = hooks.events()
    finally:
        hooks.close()
    assert [e["type"] for e in events] == ["source.failing", "source.recovered"]
    failing, recovered = (e["data"] for e in events)
    assert failing["failures"] == 2 and "HTTP 500" in failing["error"]
    assert recovered["failures"] == 4


# -- dry run --------------------------------------------------------------------------------


def test_dry_run_walks_every_page_and_sends_the_cursor_but_writes_nothing(api, write_config):  # type: ignore[no-untyped-def]
    changes = Changes()
    upstream = api(changes.route)
    cfg = write_config(
        config(
            source("changes", f"{upstream.url}/changes", """
                items: changes
                incremental: {cursor: updated_at, param: since, overlap: 30s}
            """)
        )
    )
    assert once(cfg).returncode == 0
    changes.items["c"] = {"id": "c", "v": 1, "updated_at": "2026-11-27T10:09:00Z"}
    before = db(cfg).read_bytes()
    result = pollhook("poll", "changes", "--dry-run", "-c", str(cfg))
    assert result.returncode == 0, result.stderr
    assert params(upstream.requests[-1])["since"] == "2026-11-27T10:04:30Z"
    [event] = [json.loads(line) for line in result.stdout.splitlines()]
    assert (event["type"], event["data"]["key"]) == ("item.created", "c")
    assert db(cfg).read_bytes() == before
    assert source_row(cfg, "changes")["cursor"] == '"2026-11-27T10:05:00Z"'


def test_dry_run_of_a_paginated_source(paged, write_config):  # type: ignore[no-untyped-def]
    data, upstream = paged
    cfg = write_config(config(source("paged", f"{upstream.url}/page", STYLES["page"][0])))
    assert once(cfg).returncode == 0
    data.items[3]["status"] = "closed"  # page 2
    count = upstream.count()
    result = pollhook("poll", "paged", "--dry-run", "-c", str(cfg))
    assert result.returncode == 0, result.stderr
    assert upstream.count() == count + 3
    [event] = [json.loads(line) for line in result.stdout.splitlines()]
    assert event["type"] == "item.updated" and event["data"]["key"] == "4"
