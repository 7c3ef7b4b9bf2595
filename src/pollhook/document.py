"""Whole-document sources: one value per poll, one `document.changed` per change.

A status page, a config file or a JSON document with no list of items is
tracked as a single item under the key `document`, so it shares the store,
the baseline, `ignore` and the outbox with keyed sources. What differs is
what is compared (a JMESPath `select:` of a JSON-like body, or the text of an
HTML/text page narrowed by a CSS `selector:` and/or a `regex:`) and the event:
`document.changed` with an RFC 6902 `changes` patch, or a unified `diff` when
the document is text. Narrowing that matches nothing fails the poll: a
maintenance page must not read as "the section was emptied".
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import regex

from .diff import Change
from .errors import ExtractError
from .extract import Item, search, sized_hash

if TYPE_CHECKING:
    from bs4 import BeautifulSoup, Tag
    from bs4.element import PageElement

    from .config import Source

DOCUMENT_KEY = "document"
DOCUMENT_CHANGED = "document.changed"
REGEX_TIMEOUT = 10.0  # seconds one regex may take on one page (the worker's deadline still applies)
_HIDDEN = frozenset({"script", "style", "noscript", "template"})
_BLOCKS = frozenset({
    "address", "article", "aside", "blockquote", "br", "dd", "div", "dl", "dt",
    "footer", "form", "h1", "h2", "h3", "h4", "h5", "h6", "header", "hr", "li",
    "main", "nav", "ol", "p", "pre", "section", "table", "td", "th", "title", "tr", "ul",
})  # fmt: skip
_BLOCK_END = object()  # marks where a block element ends in the walk of `_text`


def document_item(source: Source, fmt: str, value: Any) -> Item:
    """The one item of a document source, from a parsed body of concrete format `fmt`."""
    if fmt in ("text", "html"):
        if source.select is not None or source.ignore:
            option = "select" if source.select is not None else "ignore"
            raise ExtractError(f"'{option}' needs a JSON-like document, got {fmt}")
        document: Any = narrow_text(value, fmt, source.selector, source.regex)
    else:
        if source.selector is not None or source.regex is not None:
            option = "selector" if source.selector is not None else "regex"
            raise ExtractError(f"'{option}' needs an HTML or text page, got {fmt}")
        document = search(source.select or "@", value)
        if document is None:
            raise ExtractError(f"select {source.select or '@'!r} matched nothing")
    return Item(DOCUMENT_KEY, sized_hash(document, source.ignore, source.max_item_size), document)


def narrow_text(value: Any, fmt: str, selector: str | None, regex: str | None) -> str:
    """The text that is compared: the selected part of a page, then the regex matches."""
    if fmt == "html":
        text = html_text(value, selector)
    elif selector is not None:
        raise ExtractError("'selector' needs an HTML page, got text")
    else:
        text = _clean_lines(str(value).splitlines(), collapse=False)
    if regex is not None:
        text = regex_text(text, regex)
    if not text.strip():
        raise ExtractError("the document is empty")
    return text


def html_text(soup: BeautifulSoup, selector: str | None) -> str:
    """Visible text of the elements `selector` picks (of the page without one), line by line.

    Linear in the page: hidden elements leave in one pass (`decompose` looks
    each up in its parent's list), and the text is one walk that breaks lines
    around block elements (inserting a "\\n" before and after each, as this
    did, was quadratic: 20,000 `<p>` took 40 s, a million nested tags hours).
    """
    _drop_hidden(soup)
    nodes: list[Tag | BeautifulSoup] = list(soup.select(selector)) if selector else [soup]
    if not nodes:
        raise ExtractError(f"selector {selector!r} matched nothing")
    return "\n".join(_clean_lines(_text(node).splitlines()) for node in nodes)


def _drop_hidden(soup: BeautifulSoup) -> None:
    """Remove script, style, noscript and template elements (before `select`, as before)."""
    from bs4 import Tag

    found: list[Tag] = []
    stack: list[Tag] = [soup]
    while stack:
        for child in stack.pop().contents:
            if isinstance(child, Tag):
                (found if child.name in _HIDDEN else stack).append(child)
    hidden = {id(tag) for tag in found}
    parents = {id(tag.parent): tag.parent for tag in found if tag.parent is not None}
    for parent in parents.values():
        parent.contents = [child for child in parent.contents if id(child) not in hidden]
    for tag in found:
        tag.parent = None  # out of its parent's list already: extract() only relinks neighbours
        tag.extract()


def _text(node: Tag | BeautifulSoup) -> str:
    """`node.get_text()` with a line break before and after every block element."""
    from bs4 import Tag
    from bs4.element import NavigableString

    types = node.interesting_string_types or node.MAIN_CONTENT_STRING_TYPES
    wanted = (types,) if isinstance(types, type) else tuple(types)
    parts: list[str] = []
    stack: list[PageElement | object] = [node]
    while stack:
        item = stack.pop()
        if item is _BLOCK_END:
            parts.append("\n")
        elif isinstance(item, Tag):
            if item.name in _BLOCKS:
                parts.append("\n")
                stack.append(_BLOCK_END)
            stack.extend(reversed(item.contents))
        elif isinstance(item, NavigableString) and type(item) in wanted:
            parts.append(item)
    return "".join(parts)


def _clean_lines(lines: Iterable[str], collapse: bool = True) -> str:
    """Drop blank lines and, for HTML, runs of whitespace that markup changes move around."""
    out = (" ".join(line.split()) if collapse else line.rstrip() for line in lines)
    return "\n".join(line for line in out if line)


def regex_text(text: str, pattern: str, timeout: float = REGEX_TIMEOUT) -> str:
    """Every match, one a line: group 1 if the pattern has one group, all groups tab-joined.

    The `regex` engine (re's syntax, with possessive quantifiers and atomic
    groups besides) with a timeout: a pattern that backtracks without end on
    a hostile page fails its poll instead of spinning.
    """
    compiled = regex.compile(pattern)
    try:
        found = [
            _match_text(match, compiled.groups)
            for match in compiled.finditer(text, timeout=timeout)
        ]
    except TimeoutError:
        raise ExtractError(
            f"regex {pattern!r} gave up after {timeout:g}s on this page (it backtracks too"
            " much: make it more specific, or use a possessive quantifier like \\d++)"
        ) from None
    if not found:
        raise ExtractError(f"regex {pattern!r} matched nothing")
    return "\n".join(found)


def _match_text(match: regex.Match[str], groups: int) -> str:
    if groups == 0:
        return match.group(0)
    return "\t".join(group or "" for group in match.groups())


@dataclass(frozen=True)
class DocumentChange(Change):
    """A changed document: `previous` and `item`, and a patch or a text diff."""

    def data(self, source: str) -> dict[str, Any]:
        data = {"source": source, "key": self.key, "item": self.item, "previous": self.previous}
        if isinstance(self.item, str) and isinstance(self.previous, str | None):
            data["diff"] = unified_diff(self.previous or "", self.item)
        elif self.changes is not None:
            data["changes"] = self.changes
        return data


def document_changes(changes: Iterable[Change]) -> list[Change]:
    """The keyed changes of a document source as `document.changed` (a document is never deleted)."""
    return [
        DocumentChange(DOCUMENT_CHANGED, c.key, c.item, c.previous, c.changes)
        for c in changes
        if c.type != "item.deleted"
    ]


def unified_diff(before: str, after: str) -> str:
    lines = difflib.unified_diff(
        before.splitlines(), after.splitlines(), "previous", "current", lineterm=""
    )
    return "\n".join(lines)
