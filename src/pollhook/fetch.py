"""Fetch one source over HTTP, politely, and return its body or a FetchError.

A bad fetch must be an error, never a diff: error statuses, timeouts, bodies
over the size limit, cut-off transfers and bodies that do not decompress whole
(every gzip member, or none) all raise FetchError, and the poll then writes
nothing.

Redirects are followed here, hop by hop, not by aiohttp: a source's
`redirects:` decides whether another origin may answer (`same-origin` by
default, `any`, `none`), and a hop to another origin never carries the
source's configured headers, its `auth` or its body. Error texts go through
`redact.redact`: a key in the URL's query string stays out of every message.

Requests go through aiohttp directly (an `aiohttp.ClientSession` made by
`request.session`, injected): httpx over aiohttp cost twice what aiohttp
itself does per request (BENCHMARKS.md, bench/results/transport.md). The
session keeps no cookies (`aiohttp.DummyCookieJar`): sources share it, and a
cookie one upstream sets must never be sent with another source's requests,
nor make a poll's answer depend on the polls before it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import zlib
from collections import defaultdict
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from yarl import URL

from . import __version__
from .config import HttpSettings, Source
from .errors import FetchError, PollhookError
from .redact import redact
from .request import Params, extra_headers, with_query
from .retry import parse_retry_after

USER_AGENT = f"pollhook/{__version__}"
MAX_REDIRECTS = 20  # as browsers allow
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})


@dataclass(frozen=True)
class Fetched:
    """A complete response: `body` is None for a 304 Not Modified."""

    status: int
    body: bytes | None
    content_type: str
    etag: str | None
    last_modified: str | None
    next_link: str | None = None  # the Link header's rel="next", absolute
    elapsed: float = 0.0  # seconds the request took: parsing gets what is left of the timeout
    date: str | None = None  # the Date header: judges how far Last-Modified may be trusted


class HostLimits:
    """Per-host concurrency caps and spacing, so many sources on one host never hammer it."""

    def __init__(self, max_per_host: int, min_delay: float = 0.0) -> None:
        self.max_per_host = max_per_host
        self.min_delay = min_delay
        self._semaphores: defaultdict[str, asyncio.Semaphore] = defaultdict(
            lambda: asyncio.Semaphore(self.max_per_host)
        )
        self._next_start: dict[str, float] = {}

    @contextlib.asynccontextmanager
    async def slot(self, url: str) -> AsyncIterator[None]:
        """Hold one of the host's slots; starts are at least `min_delay` apart per host."""
        host = host_key(url)
        async with self._semaphores[host]:
            if self.min_delay > 0:
                now = time.monotonic()
                start = max(now, self._next_start.get(host, 0.0))
                self._next_start[host] = start + self.min_delay  # reserved before waiting
                if start > now:
                    await asyncio.sleep(start - now)
            yield


def host_key(url: str) -> str:
    """The unit the per-host limits count: host and port."""
    parts = urlsplit(url)
    return f"{parts.hostname}:{parts.port}"


async def fetch(
    client: aiohttp.ClientSession, source: Source, http: HttpSettings, limits: HostLimits,
    etag: str | None = None, last_modified: str | None = None, *, url: str | None = None,
    params: Params | None = None, max_body: int | None = None, redirects: str | None = None,
) -> Fetched:  # fmt: skip
    """GET (or the source's method) with conditional headers, a total timeout and a size cap.

    `url` (a next page) replaces the source's URL; `params` are merged into
    the URL's query; `max_body` overrides the size cap (what is left of it);
    `redirects` overrides the source's redirect policy (next pages: same-origin).
    """
    headers = {
        "user-agent": USER_AGENT,
        "accept": "application/json, */*;q=0.5",
        "accept-encoding": "gzip, deflate",
    }
    headers.update(extra_headers(source))
    headers.update(source.headers)
    if etag:
        headers["if-none-match"] = etag
    if last_modified:
        headers["if-modified-since"] = last_modified
    timeout = source.timeout or http.timeout
    try:
        target = with_query(url or source.url, params)  # merged into the URL's own query
    except ValueError as exc:  # e.g. a next-page link the upstream sent
        raise FetchError(f"not a valid URL: {url or source.url!r} ({exc})") from None
    limit = max_body or source.max_body_size or http.max_body_size
    request = _Request(source.method, target, headers, source.body, redirects or source.redirects)
    async with limits.slot(str(target)):
        started = time.monotonic()
        try:
            async with asyncio.timeout(timeout):
                fetched = await _follow(client, source, request, limit)
        except TimeoutError:
            raise FetchError(f"timed out after {timeout:g}s") from None
        except PollhookError:
            raise
        except Exception as exc:  # refused, reset, a malformed answer: a failed poll, not a crash
            raise FetchError(describe_error(exc)) from None
        return replace(fetched, elapsed=time.monotonic() - started)


def describe_error(exc: BaseException) -> str:
    """One line naming what went wrong, for the attempt log: the exception's class and text.

    aiohttp's errors quote the URL (`url='...?api_key=...'`): it is redacted.
    """
    text = " ".join(str(exc).replace("\\n", " ").split()) or "request failed"
    return redact(f"{type(exc).__name__}: {text}")[:500]


@dataclass
class _Request:
    """One hop of a request: what is sent where, and what may follow a redirect."""

    method: str
    url: URL
    headers: dict[str, str]
    body: bytes | None
    policy: str  # same-origin | any | none
    crossed: bool = False  # left the first origin: configured headers were dropped


async def _follow(
    client: aiohttp.ClientSession, source: Source, request: _Request, max_body: int
) -> Fetched:
    """Send `request`, following redirects as its policy allows, and read the final answer."""
    origin = _origin(request.url)
    for _ in range(MAX_REDIRECTS + 1):
        async with client.request(
            request.method, request.url, data=request.body, headers=request.headers,
            allow_redirects=False,
        ) as response:  # fmt: skip
            location = response.headers.get("location")
            if response.status not in REDIRECT_STATUSES or location is None:
                return await _read(response, max_body)
            request = _redirected(source, request, response.status, location, origin)
    raise FetchError("too many redirects")


def _origin(url: URL) -> tuple[str, str | None, int | None]:
    return (url.scheme, url.host, url.port)


def _redirected(
    source: Source, request: _Request, status: int, location: str, origin: tuple[Any, ...]
) -> _Request:
    """The next hop after a 3xx, or a FetchError when the policy does not allow it.

    The method and body change as aiohttp and browsers change them (303, and
    301/302 after a POST, become a body-less GET). A hop to another origin
    drops every header the config added (`headers`, `auth`) and is refused if
    it would resend a body, which may hold credentials too.
    """
    try:
        target = request.url.join(URL(location)).with_user(None).with_fragment(None)
    except ValueError as exc:
        raise FetchError(f"redirect to an invalid URL {location!r}: {exc}") from None
    if target.scheme not in ("http", "https") or not target.host:
        raise FetchError(f"redirect to {location!r} is not an HTTP URL; not followed")
    if request.policy == "none":
        raise FetchError(f"HTTP {status} redirect to {target} not followed (redirects: none)")
    method, body, headers = request.method, request.body, dict(request.headers)
    if (status == 303 and method != "HEAD") or (status in (301, 302) and method == "POST"):
        method, body = "GET", None
        headers.pop("content-type", None)
    crossed = request.crossed or _origin(target) != origin
    if crossed:
        if request.policy != "any":
            raise FetchError(
                f"HTTP {status} redirect to {target}, another origin; not followed"
                " (redirects: same-origin; `redirects: any` follows it without credentials)"
            )
        if body is not None:
            raise FetchError(
                f"HTTP {status} redirect to {target}, another origin, would resend the"
                " request body; not followed"
            )
        configured = {name.lower() for name in (*source.headers, *extra_headers(source))}
        headers = {k: v for k, v in headers.items() if k.lower() not in configured}
    return _Request(method, target, headers, body, request.policy, crossed)


async def _read(response: aiohttp.ClientResponse, max_body: int) -> Fetched:
    """The final answer: its status, and its whole body within `max_body`."""
    status = response.status
    if status == 304:
        return Fetched(304, None, "", etag=None, last_modified=None)
    if not 200 <= status < 300:
        retry_after = parse_retry_after(response.headers.get("retry-after"), time.time())
        raise FetchError(f"HTTP {status}", retry_after=retry_after)
    declared = response.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_body:
        raise FetchError(f"body of {int(declared)} bytes exceeds max_body_size {max_body}")
    chunks, size = [], 0
    async for chunk in response.content.iter_any():
        size += len(chunk)
        if size > max_body:
            raise FetchError(f"body exceeds max_body_size {max_body}")
        chunks.append(chunk)
    body = _decode(b"".join(chunks), response.headers.get("content-encoding", ""), max_body)
    return Fetched(
        status=status,
        body=body,
        content_type=response.headers.get("content-type", ""),
        etag=response.headers.get("etag"),
        last_modified=response.headers.get("last-modified"),
        next_link=_next_link(response),
        date=response.headers.get("date"),
    )


def _next_link(response: aiohttp.ClientResponse) -> str | None:
    """The Link header's rel="next", made absolute against the final (redirected) URL."""
    if "link" not in response.headers:
        return None
    link = response.links.get("next")
    return str(link["url"]) if link else None


def _decode(raw: bytes, encoding: str, max_body: int) -> bytes:
    """Undo gzip/deflate ourselves, capping the decompressed size too (no zip bombs).

    A gzip body may be several members one after the other (RFC 1952): each
    is decoded, with the cap over all of them; reading only the first would
    drop the rest of the items and invent their deletion. Bytes after the
    last member that are not another member fail the poll (zero padding, as
    gzip(1) allows, is ignored); so does anything after a deflate stream.
    """
    encoding = encoding.strip().lower()
    if encoding in ("", "identity"):
        return raw
    if encoding not in ("gzip", "deflate"):
        raise FetchError(f"unsupported content-encoding {encoding!r}")
    wbits = 16 + zlib.MAX_WBITS if encoding == "gzip" else zlib.MAX_WBITS
    parts: list[bytes] = []
    size, rest = 0, raw
    while True:
        inflater = zlib.decompressobj(wbits)
        try:
            part = inflater.decompress(rest, max_body - size + 1)
        except zlib.error as exc:
            raise FetchError(f"body does not decompress ({encoding}): {exc}") from None
        size += len(part)
        if size > max_body or inflater.unconsumed_tail:
            raise FetchError(f"decompressed body exceeds max_body_size {max_body}")
        if not inflater.eof:
            raise FetchError(f"compressed body is truncated ({encoding})")
        parts.append(part)
        rest = inflater.unused_data
        if not rest.strip(b"\0"):
            return b"".join(parts)
        if encoding != "gzip" or not rest.startswith(b"\x1f\x8b"):
            raise FetchError(f"{len(rest)} bytes after the end of the {encoding} data")
