"""What each request of a poll carries, and which session sends it.

The request side of a source (query parameters, body, authentication) is
built here from the validated config; `fetch.fetch` sends it. Sources with
their own TLS settings (`ca_bundle:`, `verify_tls: false`) need their own
connection pool, since TLS is a property of the pool: one session is made per
distinct setting and shared by every source that uses it.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlencode

import aiohttp
from yarl import URL

from .config import Source
from .errors import FetchError

KEEPALIVE = 3.0  # below the 5 s many servers use (Node, nginx), so a POST rarely races a close


def session(
    tls: ssl.SSLContext | None = None, max_connections: int = 1000
) -> aiohttp.ClientSession:
    """One connection pool; call it inside the running loop, close it with `await s.close()`.

    No per-host limit here (`fetch.HostLimits` does that) and no timeouts
    (callers wrap each request in `asyncio.timeout`). Bodies arrive as sent:
    `fetch` decompresses them itself, with a size cap. No cookie is kept, so
    one source's cookies never ride along with another's requests. aiohttp
    adds no Content-Type of its own: only the one a source configures is sent.
    """
    connector = aiohttp.TCPConnector(
        limit=max_connections, keepalive_timeout=KEEPALIVE, ssl=True if tls is None else tls
    )
    return aiohttp.ClientSession(
        connector=connector,
        cookie_jar=aiohttp.DummyCookieJar(),
        auto_decompress=False,
        timeout=aiohttp.ClientTimeout(),
        skip_auto_headers=("content-type",),
    )


@dataclass(frozen=True)
class Params:
    """Query parameters in order; `merge` replaces every value of a name it is given again.

    Written as `a=1&b=x+y` (`urllib.parse.urlencode`), the encoding httpx used.
    """

    pairs: tuple[tuple[str, str], ...] = ()

    def merge(self, more: Params | Mapping[str, str]) -> Params:
        grouped: dict[str, list[str]] = {}
        for name, value in self.pairs:
            grouped.setdefault(name, []).append(value)
        new: dict[str, list[str]] = {}
        for name, value in more.pairs if isinstance(more, Params) else more.items():
            new.setdefault(name, []).append(value)
        grouped.update(new)
        return Params(tuple((name, v) for name, values in grouped.items() for v in values))

    def __bool__(self) -> bool:
        return bool(self.pairs)

    def __str__(self) -> str:
        return urlencode(self.pairs)


def query(source: Source, *extra: Iterable[tuple[str, str]]) -> Params:
    """The source's `params`, then each of `extra` replacing parameters of the same name."""
    params = Params(tuple(source.params))
    for more in extra:
        pairs = dict(more)
        if pairs:
            params = params.merge(pairs)
    return params


def with_query(url: str, params: Params | None) -> URL:
    """`url` with `params` merged into its own query (a name in both: `params` win).

    The merged query is encoded once, here, and handed to aiohttp as encoded;
    the rest of the URL is normalised by yarl as aiohttp would.
    """
    base = URL(url)
    if not params:
        return base
    own = Params(tuple(parse_qsl(base.raw_query_string, keep_blank_values=True)))
    return URL.build(
        scheme=base.scheme,
        authority=base.raw_authority,
        path=base.raw_path,
        query_string=str(own.merge(params)),
        encoded=True,
    )


def extra_headers(source: Source) -> dict[str, str]:
    """Headers implied by the body and `auth`; the source's own `headers` still win."""
    headers = {}
    if source.content_type:
        headers["content-type"] = source.content_type
    if source.auth is not None:
        headers["authorization"] = source.auth.header()
    return headers


def tls_context(source: Source) -> ssl.SSLContext:
    """The TLS policy of a source: only its CA bundle, or no verification at all."""
    if not source.verify_tls:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context
    try:
        return ssl.create_default_context(cafile=source.ca_bundle)
    except (OSError, ssl.SSLError, ValueError) as exc:
        raise FetchError(f"cannot load CA bundle {source.ca_bundle!r}: {exc}") from None


class Clients:
    """The shared session for default TLS, and one cached session per other TLS setting."""

    def __init__(self, shared: aiohttp.ClientSession, max_connections: int = 100) -> None:
        self.shared = shared
        self.max_connections = max_connections
        self._own: dict[tuple[str | None, bool, int], aiohttp.ClientSession] = {}

    def get(self, source: Source) -> aiohttp.ClientSession:
        if source.verify_tls and source.ca_bundle is None:
            return self.shared
        mtime = 0
        if source.ca_bundle is not None:
            try:  # a CA file replaced on disk gets a fresh pool at the next poll
                mtime = os.stat(source.ca_bundle).st_mtime_ns
            except OSError as exc:
                raise FetchError(f"cannot read CA bundle {source.ca_bundle!r}: {exc}") from None
        key = (source.ca_bundle, source.verify_tls, mtime)
        client = self._own.get(key)
        if client is None:
            client = self._own[key] = session(tls_context(source), self.max_connections)
        return client

    async def aclose(self) -> None:
        clients, self._own = list(self._own.values()), {}
        for client in clients:
            await client.close()
