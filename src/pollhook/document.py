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
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .diff import Change
from .errors import ExtractError
from .extract import Item, canonical_hash, only_paths, search, without_paths

if TYPE_CHECKING:
    from bs4 import BeautifulSoup, Tag

    from .config import Source

DOCUMENT_KEY = "document"
DOCUMENT_CHANGED = "document.changed"
_HIDDEN = ["script", "style", "noscript", "template"]
_BLOCKS = [
    "address", "article", "aside", "blockquote", "br", "dd", "div", "dl", "dt",
    "footer", "form", "h1", "h2", "h3", "h4", "h5", "h6", "header", "hr", "li",
    "main", "nav", "ol", "p", "pre", "section", "table", "td", "th", "title", "tr", "ul",
]  # fmt: skip


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
    digest = canonical_hash(without_paths(document, source.ignore))
    if source.ignore:  # what the hash skips must still serialise for the store and events
        canonical_hash(only_paths(document, source.ignore))
    return Item(DOCUMENT_KEY, digest, document)


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
    """Visible text of the elements `selector` picks (of the page without one), line by line."""
    for tag in soup(_HIDDEN):
        tag.decompose()
    for tag in soup.find_all(_BLOCKS):
        tag.insert_before("\n")
        tag.insert_after("\n")
    nodes: list[Tag | BeautifulSoup] = list(soup.select(selector)) if selector else [soup]
    if not nodes:
        raise ExtractError(f"selector {selector!r} matched nothing")
    return "\n".join(_clean_lines(node.get_text().splitlines()) for node in nodes)


def _clean_lines(lines: Iterable[str], collapse: bool = True) -> str:
    """Drop blank lines and, for HTML, runs of whitespace that markup changes move around."""
    out = (" ".join(line.split()) if collapse else line.rstrip() for line in lines)
    return "\n".join(line for line in out if line)


def regex_text(text: str, pattern: str) -> str:
    """Every match, one a line: group 1 if the pattern has one group, all groups tab-joined."""
    compiled = re.compile(pattern)
    found = [_match_text(match, compiled.groups) for match in compiled.finditer(text)]
    if not found:
        raise ExtractError(f"regex {pattern!r} matched nothing")
    return "\n".join(found)


def _match_text(match: re.Match[str], groups: int) -> str:
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
