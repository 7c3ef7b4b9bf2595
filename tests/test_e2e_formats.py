"""Formats end to end: real pages served over HTTP, the real daemon, a real receiver.

Each upstream here is a `Page`: a local server answering whatever body and
content type the test last set. Waits are bounded and wake on requests
answered, webhooks accepted or DB rows, never on sleeps. "Nothing happened"
is proven with a sentinel: a real change made afterwards must be the only
event the receiver ever sees.
"""

from __future__ import annotations

import threading
from collections import deque
from http.server import BaseHTTPRequestHandler
from typing import Any

import pytest
from standardwebhooks.webhooks import Webhook

from conftest import SECRET, query, wait_until
from servers import Receiver, Reply, Request, _Server


class Page(_Server):
    """An upstream serving the body and content type the test last set.

    `once` queues replies served exactly once each, in order, before the
    current body again: one poll per bad reply, however the polls are timed.
    """

    def __init__(self, body: str | bytes, content_type: str) -> None:
        self.lock = threading.Lock()
        self.queue: deque[tuple[bytes, str]] = deque()
        self.set(body, content_type)
        super().__init__()

    def set(self, body: str | bytes, content_type: str | None = None) -> None:
        with self.lock:
            self.body = body.encode() if isinstance(body, str) else body
            if content_type is not None:
                self.content_type = content_type

    def once(self, body: str, content_type: str) -> None:
        with self.lock:
            self.queue.append((body.encode(), content_type))

    def respond(self, req: Request, handler: BaseHTTPRequestHandler) -> Reply:
        with self.lock:
            body, content_type = (
                self.queue.popleft() if self.queue else (self.body, self.content_type)
            )
        return 200, {"content-type": content_type}, body

    def served(self, path: str) -> int:
        with self.cond:
            return sum(r.path == path for r in self.requests)

    def polls_after(self, path: str, more: int) -> None:
        """Wait for `more` further answers on `path`: all polls but the last have committed."""
        target = self.served(path) + more
        with self.cond:
            if not self.cond.wait_for(lambda: self.served(path) >= target, 30):
                raise AssertionError(f"{path} was not polled {more} more times")


@pytest.fixture
def pages() -> Any:
    made: list[Page] = []

    def make(body: str | bytes, content_type: str) -> Page:
        made.append(Page(body, content_type))
        return made[-1]

    yield make
    for page in made:
        page.close()


def config(receiver: Receiver, *sources: str) -> str:
    """A config with the given source blocks (each a YAML list entry, 10 spaces deep)."""
    return (
        "\n        sources:\n"
        + "\n".join(sources)
        + f"""
        subscribers:
          - name: hooks
            url: {receiver.url}/hooks
            secret: {SECRET}
            retry: [100ms, 200ms]
        """
    )


def source(name: str, page: Page, *lines: str) -> str:
    extra = "".join(f"\n            {line}" for line in lines)
    return f"""          - name: {name}
            url: {page.url}/{name}
            interval: 200ms{extra}"""


def by_source(receiver: Receiver, name: str) -> list[dict[str, Any]]:
    return [e for e in receiver.events() if e["data"]["source"] == name]


def failures(db: Any, name: str) -> int:
    rows = query(db, "SELECT consecutive_failures FROM sources WHERE name = ?", name)
    return int(rows[0][0]) if rows else 0


# -- feeds ---------------------------------------------------------------------------

RSS = """<?xml version="1.0"?><rss version="2.0"><channel><title>News</title>
<link>http://news.example/</link>{items}</channel></rss>"""
RSS_ITEM = (
    "<item><title>{title}</title><link>http://news.example/{n}</link><guid>n{n}</guid></item>"
)
ATOM = """<?xml version="1.0" encoding="utf-8"?><feed xmlns="http://www.w3.org/2005/Atom">
<title>Releases</title><id>urn:releases</id><updated>2026-01-01T00:00:00Z</updated>{entries}</feed>"""
ATOM_ENTRY = """<entry><id>urn:r:{n}</id><title>{title}</title><link href="http://rel.example/{n}"/>
<updated>{updated}</updated><summary>notes {n}</summary></entry>"""


def rss(*titles: str) -> str:
    return RSS.format(items="".join(RSS_ITEM.format(n=n, title=t) for n, t in enumerate(titles)))


def atom(*entries: tuple[str, str]) -> str:
    return ATOM.format(
        entries="".join(
            ATOM_ENTRY.format(n=n, title=t, updated=u) for n, (t, u) in enumerate(entries)
        )
    )


def test_rss_and_atom_entries_become_item_events(pages, receiver, write_config, daemon):  # type: ignore[no-untyped-def]
    news = pages(rss("First"), "application/rss+xml; charset=utf-8")
    # Atom served as plain XML, as many servers do: detected by its root element
    releases = pages(atom(("v1", "2026-01-01T00:00:00Z")), "application/xml")
    cfg = config(receiver, source("news", news), source("releases", releases))
    proc = daemon(write_config(cfg)).start()
    news.wait_for(2)
    releases.wait_for(2)

    news.set(rss("First", "Second"))
    releases.set(atom(("v1", "2026-01-01T00:00:00Z"), ("v2", "2026-02-01T00:00:00Z")))
    receiver.wait_accepted(2)
    news.set(rss("First (corrected)", "Second"))
    releases.set(atom(("v1.0.1", "2026-03-01T10:00:00+01:00"), ("v2", "2026-02-01T00:00:00Z")))
    receiver.wait_accepted(4)
    assert proc.stop() == 0

    created, updated = by_source(receiver, "news")
    assert (created["type"], created["data"]["key"]) == ("item.created", "n1")
    assert created["data"]["item"]["title"] == "Second"
    assert created["data"]["item"]["link"] == "http://news.example/1"
    assert (updated["type"], updated["data"]["key"]) == ("item.updated", "n0")
    assert updated["data"]["changes"] == [
        {"op": "replace", "path": "/title", "value": "First (corrected)"}
    ]
    created, updated = by_source(receiver, "releases")
    assert (created["type"], created["data"]["key"]) == ("item.created", "urn:r:1")
    assert (updated["type"], updated["data"]["key"]) == ("item.updated", "urn:r:0")
    assert updated["data"]["item"]["updated"] == "2026-03-01T09:00:00Z"  # normalised to UTC
    assert {c["path"] for c in updated["data"]["changes"]} == {"/title", "/updated"}
    for req in receiver.requests:
        Webhook(SECRET).verify(req.body, req.headers)


# -- XML and CSV -----------------------------------------------------------------------

SOAP = """<?xml version="1.0"?>
<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/">
<soap:Body><m:GetStockResponse xmlns:m="urn:stock"><m:Items>{items}</m:Items>
</m:GetStockResponse></soap:Body></soap:Envelope>"""


def soap(**stock: int) -> str:
    items = "".join(f'<m:Item sku="{s}"><m:Qty>{q}</m:Qty></m:Item>' for s, q in stock.items())
    return SOAP.format(items=items)


def test_xml_api_and_csv_export(pages, receiver, write_config, daemon):  # type: ignore[no-untyped-def]
    stock = pages(soap(A=1), "text/xml; charset=utf-8")  # one item: a single element
    export = pages("sku;name;price\r\nP1;Widget;9,50\r\nP2;Gadget;12,00\r\n", "text/csv")
    cfg = config(
        receiver,
        source("stock", stock, "items: Envelope.Body.GetStockResponse.Items.Item",
               "key: '\"@sku\"'"),
        source("catalog", export, "key: sku"),
    )  # fmt: skip
    proc = daemon(write_config(cfg)).start()
    stock.wait_for(2)
    export.wait_for(2)

    stock.set(soap(A=1, B=5))
    export.set("sku;name;price\r\nP1;Widget;9,90\r\nP2;Gadget;12,00\r\n")
    receiver.wait_accepted(2)
    stock.set(soap(B=4))
    export.set("sku;name;price\r\nP2;Gadget;12,00\r\nP3;Doohickey;1,00\r\n")
    receiver.wait_accepted(6)
    assert proc.stop() == 0

    events = [(e["type"], e["data"]["key"]) for e in by_source(receiver, "stock")]
    assert events[0] == ("item.created", "B")
    assert sorted(events[1:]) == [("item.deleted", "A"), ("item.updated", "B")]
    updated = next(e for e in by_source(receiver, "stock") if e["type"] == "item.updated")
    assert updated["data"]["item"] == {"@sku": "B", "Qty": "4"}
    assert updated["data"]["changes"] == [{"op": "replace", "path": "/Qty", "value": "4"}]
    catalog = by_source(receiver, "catalog")
    events = [(e["type"], e["data"]["key"]) for e in catalog]
    assert events[0] == ("item.updated", "P1")
    assert sorted(events[1:]) == [("item.created", "P3"), ("item.deleted", "P1")]
    assert catalog[0]["data"]["changes"] == [{"op": "replace", "path": "/price", "value": "9,90"}]


# -- whole documents -------------------------------------------------------------------

STATUS = """<!DOCTYPE html><html><head><title>Status</title></head><body>
<nav>Rendered at {stamp}</nav>
<div id="status"><h2>API</h2><p>{api}</p><h2>Jobs</h2><p>{jobs}</p></div>
<footer>Version {version}</footer></body></html>"""


def status(stamp: str, api: str = "operational", jobs: str = "operational", version: str = "1.0") -> str:  # fmt: skip
    return STATUS.format(stamp=stamp, api=api, jobs=jobs, version=version)


def test_documents_change_only_inside_their_selection(pages, receiver, write_config, daemon):  # type: ignore[no-untyped-def]
    page = pages(status("t0"), "text/html; charset=utf-8")
    settings = pages('{"build": 1, "config": {"mode": "a", "limits": [1, 2]}}', "application/json")
    cfg = config(
        receiver,
        source("status", page, "selector: '#status'"),
        source("version", page, "format: html", r"regex: 'Version (\S+)'"),
        source("settings", settings, "select: config"),
    )
    proc = daemon(write_config(cfg)).start()
    for server, path in ((page, "/status"), (page, "/version"), (settings, "/settings")):
        server.polls_after(path, 2)  # a baseline each

    # changes outside every selection: nothing
    page.set(status("t1"))
    settings.set('{"build": 2, "config": {"mode": "a", "limits": [1, 2]}}')
    for server, path in ((page, "/status"), (page, "/version"), (settings, "/settings")):
        server.polls_after(path, 3)
    assert query(proc.db, "SELECT count(*) FROM events")[0][0] == 0

    # one change inside each selection: exactly one document.changed each
    page.set(status("t2", jobs="degraded", version="1.1"))
    settings.set('{"build": 3, "config": {"mode": "b", "limits": [1, 2]}}')
    receiver.wait_accepted(3)
    assert proc.stop() == 0
    assert len(receiver.events()) == 3

    [changed] = by_source(receiver, "status")
    assert changed["type"] == "document.changed"
    data = changed["data"]
    assert (data["key"], data["item"]) == ("document", "API\noperational\nJobs\ndegraded")
    assert data["previous"] == "API\noperational\nJobs\noperational"
    assert data["diff"].splitlines()[-2:] == ["-operational", "+degraded"]
    [version] = by_source(receiver, "version")
    assert (version["data"]["previous"], version["data"]["item"]) == ("1.0", "1.1")
    [doc] = by_source(receiver, "settings")
    assert doc["type"] == "document.changed"
    assert doc["data"]["item"] == {"mode": "b", "limits": [1, 2]}
    assert doc["data"]["changes"] == [{"op": "replace", "path": "/mode", "value": "b"}]


# -- wrong content ---------------------------------------------------------------------

BROKEN = [
    # (name, source lines, (good body, content type), bad replies, changed body, its event)
    pytest.param(
        "feed", (), (rss("a"), "application/rss+xml"),
        [("<html><body>Maintenance</body></html>", "text/html"),
         (rss("a", "b")[:-40], "application/rss+xml"),  # truncated: the loose parser half-reads it
         ('{"error": "feed disabled"}', "application/json")],
        rss("a (edited)"), "item.updated",
        id="feed",
    ),
    pytest.param(
        "export", ("key: sku",), ("sku,qty\nA,1\n", "text/csv"),
        [("sku,qty\nA,1\nB", "text/csv"),  # a cut-off last row
         ("<html>Login required</html>", "text/html"),
         ("sku,qty\nA,1\n", "application/octet-stream")],  # unlabelled: CSV is never guessed
        "sku,qty\nA,2\n", "item.updated",
        id="csv",
    ),
    pytest.param(
        "soap", ("items: r.items.item", "key: id"),
        ("<r><items><item><id>1</id><v>a</v></item></items></r>", "text/xml"),
        [("<r><items><item><id>1</id></item>", "text/xml"),  # unclosed
         ("<r><error>session expired</error></r>", "text/xml")],  # the items path is gone
        "<r><items><item><id>1</id><v>b</v></item></items></r>", "item.updated",
        id="xml",
    ),
    pytest.param(
        "page", ("selector: '#price'",), ("<p id='price'>9.50</p>", "text/html"),
        [("<p>Down for maintenance</p>", "text/html"),  # the selection is gone
         ("", "text/html"),
         ("<p id='price'>9.50</p>", "application/json")],  # a page that is not what it says
        "<p id='price'>9.90</p>", "document.changed",
        id="html",
    ),
]  # fmt: skip


@pytest.mark.parametrize(("name", "lines", "good", "bad", "changed", "event"), BROKEN)
def test_wrong_content_fails_the_poll_and_sends_nothing(  # type: ignore[no-untyped-def]
    pages, receiver, write_config, daemon, name, lines, good, bad, changed, event
):
    page = pages(*good)
    cfg = config(receiver, source(name, page, *lines, "emit_initial: true"))
    proc = daemon(write_config(cfg)).start()
    receiver.wait_accepted(1)  # the first poll's one item or document, sent on purpose
    stored = query(proc.db, "SELECT key, hash, body FROM items")

    for body, content_type in bad:
        page.once(body, content_type)
    last = f"source={name} poll failed ({len(bad)} in a row)"
    wait_until(lambda: last in proc.output(), f"{len(bad)} failed polls")
    assert query(proc.db, "SELECT key, hash, body FROM items") == stored
    assert query(proc.db, "SELECT count(*) FROM events")[0][0] == 1

    # the sentinel: one real change after all that is the only other event
    wait_until(lambda: failures(proc.db, name) == 0, "recovery on the good body")
    assert proc.output().count(f"source={name} poll failed") == len(bad)
    page.set(changed)
    receiver.wait_accepted(2)
    assert proc.stop() == 0
    events = receiver.events()
    assert [e["type"] for e in events][1:] == [event], events
