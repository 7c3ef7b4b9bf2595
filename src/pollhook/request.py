"""What each request of a poll carries, and which client sends it.

The request side of a source (query parameters, body, authentication) is
built here from the validated config; `fetch.fetch` sends it. Sources with
their own TLS settings (`ca_bundle:`, `verify_tls: false`) need their own
connection pool, since TLS is a property of the pool: one client is made per
distinct setting and shared by every source that uses it.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Iterable

import httpx
from httpx_aiohttp import AiohttpTransport

from .config import Source
from .errors import FetchError


class Transport(AiohttpTransport):
    """The aiohttp transport, fed request bodies as bytes.

    httpx re-sends a followed redirect with the original request's *stream*,
    which the aiohttp transport would send chunked, with a made-up
    `content-type: application/octet-stream`, even for a GET: servers that do
    not read bodies on GET then take the empty chunk for their next request.
    Reading the body first (ours are small) sends exactly what was configured.
    """

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        await request.aread()
        response: httpx.Response = await super().handle_async_request(request)
        return response


def query(source: Source, *extra: Iterable[tuple[str, str]]) -> httpx.QueryParams:
    """The source's `params`, then each of `extra` replacing parameters of the same name."""
    params = httpx.QueryParams(list(source.params))
    for more in extra:
        pairs = list(more)
        if pairs:
            params = params.merge(dict(pairs))
    return params


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
    """The shared client for default TLS, and one cached client per other TLS setting."""

    def __init__(self, shared: httpx.AsyncClient, max_connections: int = 100) -> None:
        self.shared = shared
        self.max_connections = max_connections
        self._own: dict[tuple[str | None, bool, int], httpx.AsyncClient] = {}

    def get(self, source: Source) -> httpx.AsyncClient:
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
            # the same shape as daemon.make_client, with this source's TLS policy
            limits = httpx.Limits(max_connections=self.max_connections)
            transport = Transport(verify=tls_context(source), limits=limits)
            client = self._own[key] = httpx.AsyncClient(transport=transport, timeout=None)
        return client

    async def aclose(self) -> None:
        clients, self._own = list(self._own.values()), {}
        for client in clients:
            await client.aclose()
