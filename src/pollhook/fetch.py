"""Fetch one source over HTTP, politely, and return its body or a FetchError.

A bad fetch must be an error, never a diff: error statuses, timeouts, bodies
over the size limit and cut-off transfers all raise FetchError, and the poll
then writes nothing.

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
from dataclasses import dataclass
from urllib.parse import urlsplit

import aiohttp
from yarl import URL

from . import __version__
from .config import HttpSettings, Source
from .errors import FetchError, PollhookError
from .request import Params, extra_headers, with_query
from .retry import parse_retry_after

USER_AGENT = f"pollhook/{__version__}"
MAX_REDIRECTS = 20  # as browsers allow


@dataclass(frozen=True)
class Fetched:
    """A complete response: `body` is None for a 304 Not Modified."""

    status: int
    body: bytes | None
    content_type: str
    etag: str | None
    last_modified: str | None
    next_link: str | None = None  # the Link header's rel="next", absolute
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
    params: Params | None = None, max_body: int | None = None,
) -> Fetched:  # fmt: skip
    """GET (or the source's method) with conditional headers, a total timeout and a size cap.

    `url` (a next page) replaces the source's URL; `params` are merged into
    the URL's query; `max_body` overrides the size cap (what is left of it).
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
    async with limits.slot(str(target)):
        try:
            async with asyncio.timeout(timeout):
                return await _request(client, source, target, headers, limit)
        except TimeoutError:
            raise FetchError(f"timed out after {timeout:g}s") from None
        except aiohttp.TooManyRedirects:
            raise FetchError("too many redirects") from None
        except PollhookError:
            raise
        except Exception as exc:  # refused, reset, a malformed answer: a failed poll, not a crash
            raise FetchError(describe_error(exc)) from None


def describe_error(exc: BaseException) -> str:
    """One line naming what went wrong, for the attempt log: the exception's class and text."""
    text = " ".join(str(exc).replace("\\n", " ").split()) or "request failed"
    return f"{type(exc).__name__}: {text}"[:500]


async def _request(
    client: aiohttp.ClientSession, source: Source, url: URL, headers: dict[str, str], max_body: int
) -> Fetched:
    async with client.request(
        source.method, url, data=source.body, headers=headers, max_redirects=MAX_REDIRECTS
    ) as response:
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
    """Undo gzip/deflate ourselves, capping the decompressed size too (no zip bombs)."""
    encoding = encoding.strip().lower()
    if encoding in ("", "identity"):
        return raw
    if encoding not in ("gzip", "deflate"):
        raise FetchError(f"unsupported content-encoding {encoding!r}")
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS if encoding == "gzip" else zlib.MAX_WBITS)
    try:
        body = inflater.decompress(raw, max_body + 1)
    except zlib.error as exc:
        raise FetchError(f"body does not decompress ({encoding}): {exc}") from None
    if len(body) > max_body or inflater.unconsumed_tail:
        raise FetchError(f"decompressed body exceeds max_body_size {max_body}")
    if not inflater.eof:
        raise FetchError(f"compressed body is truncated ({encoding})")
    return body
