"""Every page of one poll, or none: pagination by Link header, cursor, URL, page or offset.

A poll is complete only when every page arrived. Any page that fails (an
error status, a timeout, a body that does not parse, a loop, more pages than
`max_pages`) fails the whole poll, which then writes no state and sends no
events, so a page dropped mid-pagination can never look like deletions.

Only the first page is fetched by the caller (with the same code as an
unpaginated source); `more_pages` follows from it. Next links must stay on
the source's origin: credentials are never sent to a host the config does
not name.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from urllib.parse import urljoin, urlsplit

import aiohttp

from .config import HttpSettings, Source
from .errors import ExtractError, FetchError, SourceError
from .extract import Item, json_text
from .fetch import Fetched, HostLimits, fetch
from .options import Pagination
from .parsing import Extracted
from .request import Params, with_query

log = logging.getLogger("pollhook.paginate")

Extract = Callable[[Fetched], Awaitable[Extracted]]


def first_page(source: Source) -> list[tuple[str, str]]:
    """Query parameters of the first page (page number or offset, page size)."""
    pagination = source.pagination
    if pagination is None:
        return []
    params = []
    if pagination.type in ("page", "offset") and pagination.param:
        params.append((pagination.param, str(pagination.start)))
    if pagination.size_param and pagination.size:
        params.append((pagination.size_param, str(pagination.size)))
    return params


async def more_pages(
    client: aiohttp.ClientSession, source: Source, http: HttpSettings, limits: HostLimits,
    first: Fetched, extracted: Extracted, params: Params, extract: Extract,
) -> dict[str, Item]:  # fmt: skip
    """Fetch the pages after `first` and merge their items (a key seen again: the later wins).

    `extract` parses a page as the first page was (in a parsing worker, with
    what its `next` expression finds). Every page after the first is fetched
    with `redirects: same-origin`, whatever the source says: a redirect must
    not take a page where a next link may not go.
    """
    pagination = source.pagination
    assert pagination is not None and first.body is not None
    budget = (source.max_body_size or http.max_body_size) - len(first.body)
    merged = dict(extracted.items)
    url, page, last, number = source.url, first, extracted, 1
    position = pagination.start
    seen_urls = {str(with_query(source.url, params))}
    seen_cursors: set[str] = set()
    while True:
        step = _next(pagination, source, url, page, last, position, number)
        if step is None:
            log.debug("source=%s %d pages, %d items", source.name, number, len(merged))
            return merged
        url, next_params, position, marker = step
        if marker in seen_urls or marker in seen_cursors:
            raise FetchError(f"page {number + 1}: pagination loops back to an earlier page")
        (seen_urls if pagination.type in ("link", "next_url") else seen_cursors).add(marker)
        if number >= pagination.max_pages:
            raise FetchError(
                f"more than max_pages ({pagination.max_pages}) pages: the poll is incomplete"
                " (raise pagination.max_pages)"
            )
        if budget <= 0:
            raise FetchError(
                f"pages exceed max_body_size {source.max_body_size or http.max_body_size}"
            )
        number += 1
        try:
            page = await fetch(
                client, source, http, limits, url=url,
                params=None if next_params is None else params.merge(next_params),
                max_body=budget, redirects="none" if source.redirects == "none" else "same-origin",
            )  # fmt: skip
            if page.body is None:
                raise FetchError("304 Not Modified to a request that was not conditional")
            budget -= len(page.body)
            last = await extract(page)
        except SourceError as exc:
            raise type(exc)(f"page {number}: {exc}", retry_after=exc.retry_after) from None
        if last.items and all(key in merged for key in last.items):
            raise FetchError(
                f"page {number}: every item was on an earlier page, so pagination is not advancing"
                " (check pagination.param; set pagination.size if the API repeats its last page)"
            )
        merged.update(last.items)
        if len(merged) > source.max_items:
            raise ExtractError(f"the pages hold over max_items {source.max_items} items")


def _next(
    pagination: Pagination, source: Source, url: str, page: Fetched, extracted: Extracted,
    position: int, number: int,
) -> tuple[str, dict[str, str] | None, int, str] | None:  # fmt: skip
    """(url, params to merge or None for a URL used as is, position, loop marker), or None."""
    kind, items = pagination.type, extracted.items
    if kind == "link":
        if not page.next_link:
            return None
        target = _same_origin(source, url, page.next_link, number)
        return target, None, position, target
    if kind in ("page", "offset"):
        if not items or (pagination.size and len(items) < pagination.size):
            return None
        position += 1 if kind == "page" else len(items)
        assert pagination.param is not None
        return source.url, {pagination.param: str(position)}, position, str(position)
    assert page.body is not None and pagination.next is not None
    found = extracted.next
    if found is None or found is False or found == "":
        return None
    if isinstance(found, bool) or not isinstance(found, str | int | float):
        raise ExtractError(
            f"page {number}: pagination.next {pagination.next!r} gave {json_text(found)},"
            " not a string or number"
        )
    if kind == "next_url":
        target = _same_origin(source, url, str(found), number)
        return target, None, position, target
    assert pagination.param is not None
    return source.url, {pagination.param: str(found)}, position, str(found)


def _same_origin(source: Source, url: str, link: str, number: int) -> str:
    """`link` (the upstream's) made absolute against `url`, if it is on the source's origin."""
    want = urlsplit(source.url)
    target = link
    try:
        target = urljoin(url, link)
        got = urlsplit(target)
        origin = (got.scheme, got.hostname, got.port)
    except ValueError as exc:  # a bad port or IPv6 address in a link the upstream sent
        raise FetchError(
            f"page {number}: the next page {target!r} is not a valid URL: {exc}"
        ) from None
    if origin != (want.scheme, want.hostname, want.port):
        raise FetchError(
            f"page {number}: the next page {target!r} is not on the source's origin"
            f" ({want.scheme}://{want.netloc}); it is not followed"
        )
    return target
