"""Bodies in every format a legacy upstream speaks, as one JSON-like document.

JSON, RSS/Atom feeds, XML (SOAP-era APIs) and CSV exports all become plain
dicts, lists and strings, so the same `items` / `key` / `ignore` JMESPath
applies to each; text and HTML become text for document mode. The format is
taken from the source's `format:` or, for `auto`, from the Content-Type
(sniffing the body only when the type says nothing useful). A body that does
not parse as its format is an ExtractError: the poll fails and writes nothing.
"""

from __future__ import annotations

import csv
import io
import re
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .config_formats import TEXTUAL
from .document import DOCUMENT_KEY, document_item
from .errors import ExtractError
from .extract import BOM, Item, extract_items, parse_json, search

if TYPE_CHECKING:
    from bs4 import BeautifulSoup

    from .config import Source


_MEDIA = {
    "application/json": "json", "text/json": "json", "application/x-json": "json",
    "application/rss+xml": "feed", "application/atom+xml": "feed",
    "application/rdf+xml": "feed",
    "application/xml": "xml", "text/xml": "xml",
    "text/csv": "csv", "application/csv": "csv", "text/x-csv": "csv",
    "text/comma-separated-values": "csv", "text/tab-separated-values": "csv",
    "text/html": "html", "application/xhtml+xml": "html",
    "text/plain": "text",
}  # fmt: skip
_FEED_ROOTS = {"rss", "feed", "rdf"}
_ROOT_RE = re.compile(rb"<([A-Za-z_][\w.:-]*)")
_CHARSET_RE = re.compile(r";\s*charset\s*=\s*\"?([\w.:-]+)", re.IGNORECASE)
# feedparser notes these but parses the feed fine; anything else (a SAX error) may be a
# truncated feed that the loose parser would still half-read: that poll must fail.
_BENIGN_FEED_ERRORS = ("CharacterEncodingOverride", "NonXMLContentType")  # feedparser names
_ENTITY_DECLARATION = re.compile(rb"<!ENTITY", re.IGNORECASE)
SNIFF_BYTES = 4096  # csv.Sniffer is quadratic in its sample: it sees at most this much


@dataclass(frozen=True)
class Parsed:
    """A parsed body: its concrete format and its value.

    `value` is JSON-like for json/feed/xml/csv, `str` for text and a
    BeautifulSoup tree for html.
    """

    format: str
    value: Any


def read_items(source: Source, body: bytes, content_type: str) -> dict[str, Item]:
    """A fetched body as keyed items: a source's list, or the one item of a document."""
    return read_page(source, body, content_type)[0]


def read_page(
    source: Source, body: bytes, content_type: str, next_expression: str | None = None
) -> tuple[dict[str, Item], Any]:
    """`read_items`, and what `next_expression` (a pagination `next`) finds in the same parse."""
    parsed = parse_source(source, body, content_type)
    if source.mode == "document":
        return {DOCUMENT_KEY: document_item(source, parsed.format, parsed.value)}, None
    items = list_items(source, parsed)
    return items, search(next_expression, parsed.value) if next_expression else None


def parse_source(source: Source, body: bytes, content_type: str) -> Parsed:
    """Parse a body in the source's format, detected from `content_type` for `auto`."""
    fmt = source.format
    if fmt == "auto":
        fmt = detect(content_type, body, want_items=source.mode != "document")
    return parse(fmt, body, content_type, source.delimiter)


def list_items(source: Source, parsed: Parsed) -> dict[str, Item]:
    """The `items` / `key` / `ignore` of a keyed source, on any structured format."""
    if parsed.format in TEXTUAL:
        page = "an HTML page" if parsed.format == "html" else "plain text"
        raise ExtractError(
            f"got {page} where a list of items was expected (a whole page needs mode: document)"
        )
    limits = {"max_items": source.max_items, "max_item_size": source.max_item_size}
    if parsed.format == "xml":
        found = xml_items(parsed.value, source.items, search(source.items, parsed.value))
        return extract_items(found, "@", source.key, source.ignore, **limits)
    return extract_items(parsed.value, source.items, source.key, source.ignore, **limits)


def media_type(content_type: str) -> str:
    return content_type.split(";", 1)[0].strip().lower()


def detect(content_type: str, body: bytes, want_items: bool) -> str:
    """The concrete format of a body served with `content_type` (format: auto)."""
    media = media_type(content_type)
    found = _MEDIA.get(media)
    if found is None and media.endswith("+json"):
        found = "json"
    elif found is None and media.endswith("+xml"):
        found = "xml"
    if found == "xml":
        return _sniff_xml(body)
    if (found == "text" and want_items) or found is None:
        sniffed = _sniff(body)  # legacy servers label JSON and XML text/plain or octet-stream
        if sniffed is not None:
            return sniffed
        if found is None and want_items:
            shown = media or "no content type"
            raise ExtractError(f"cannot tell the format of a body with {shown}; set 'format:'")
        return "text"
    return found


def _sniff(body: bytes) -> str | None:
    head = body[:4096].removeprefix(BOM).lstrip()
    if head[:1] in (b"{", b"["):
        return "json"
    if head[:1] == b"<":
        lowered = head[:512].lower()
        if lowered.startswith((b"<!doctype html", b"<html")):
            return "html"
        return _sniff_xml(body)
    return None


def _sniff_xml(body: bytes) -> str:
    """RSS and Atom are often served as plain XML: look at the root element."""
    match = _ROOT_RE.search(body[:4096])
    if match and match.group(1).decode("ascii").rpartition(":")[2].lower() in _FEED_ROOTS:
        return "feed"
    if match and match.group(1).lower() == b"html":
        return "html"
    return "xml"


def parse(fmt: str, body: bytes, content_type: str = "", delimiter: str | None = None) -> Parsed:
    """Parse `body` as the concrete format `fmt` (never `auto`)."""
    if fmt == "json":
        return Parsed(fmt, parse_json(body))
    if fmt == "feed":
        return Parsed(fmt, parse_feed(body, content_type))
    if fmt == "xml":
        return Parsed(fmt, parse_xml(body))
    if fmt == "csv":
        sep = delimiter or (
            "\t" if media_type(content_type).endswith("tab-separated-values") else None
        )
        return Parsed(fmt, parse_csv(decode_text(body, content_type), sep))
    if fmt == "text":
        return Parsed(fmt, decode_text(body, content_type))
    if fmt == "html":
        return Parsed(fmt, parse_html(body, content_type))
    raise ValueError(fmt)


# -- feeds ---------------------------------------------------------------------


def parse_feed(body: bytes, content_type: str = "") -> list[dict[str, Any]]:
    """RSS 0.9x/1.0/2.0 and Atom entries as plain JSON objects, `id` never empty if a link exists."""
    headers = {"content-type": content_type} if content_type else {}
    import feedparser  # imported on first use: it costs ~0.1 s at start-up

    _refuse_entity_declarations(body, headers)
    # a stream, never bytes: feedparser would open() a body that reads like a file path
    parsed = feedparser.parse(io.BytesIO(body), response_headers=headers)
    problem = parsed.get("bozo_exception")
    benign = tuple(getattr(feedparser, name) for name in _BENIGN_FEED_ERRORS)
    if parsed.get("bozo") and not isinstance(problem, benign):
        raise ExtractError(f"body is not a well-formed feed: {problem}")
    if not parsed.get("version"):
        raise ExtractError("body is not an RSS or Atom feed")
    return [_entry(entry) for entry in parsed.entries]


def _refuse_entity_declarations(body: bytes, headers: dict[str, str]) -> None:
    """A feed that declares entities is refused before feedparser sees it.

    feedparser keeps a DOCTYPE's "safe" entities and hands them to its loose
    parser when expat refuses the feed (as expat refuses an entity bomb), and
    the loose parser expands them without limit: 357 gzipped bytes became
    2.9 GB. Real feeds never declare entities. The check runs on the UTF-8
    text feedparser itself makes of the body, so no encoding hides one.
    """
    from feedparser.encodings import convert_to_utf8

    if _ENTITY_DECLARATION.search(convert_to_utf8(dict(headers), body, {})):
        raise ExtractError("the feed declares XML entities (<!ENTITY>): refused, as XML bombs do")


def _entry(entry: Any) -> dict[str, Any]:
    content = entry.get("content") or []
    return {
        "id": entry.get("id") or entry.get("link") or None,
        "link": entry.get("link"),
        "title": entry.get("title"),
        "summary": entry.get("summary"),
        "content": content[0].get("value") if content else None,
        "author": entry.get("author"),
        "published": _when(entry, "published"),
        "updated": _when(entry, "updated"),
        "tags": [tag.get("term") for tag in entry.get("tags") or []],
        "enclosures": [
            {"href": e.get("href"), "type": e.get("type"), "length": e.get("length")}
            for e in entry.get("enclosures") or []
        ],
    }


def _when(entry: Any, name: str) -> str | None:
    """ISO 8601 UTC when feedparser understood the date, else the date as written.

    Plain dict access: feedparser's own mapping would fake `updated` from
    `published` (with a DeprecationWarning) and hide that a feed has none.
    """
    parsed = dict.get(entry, f"{name}_parsed")
    if parsed:
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", parsed)
    raw = dict.get(entry, name)
    return str(raw) if raw else None


# -- XML -----------------------------------------------------------------------


def parse_xml(body: bytes) -> Any:
    """XML as xmltodict's JSON-like shape with namespace prefixes stripped.

    Attributes are `@name`, mixed text is `#text`, a repeated element is a
    list. Prefixes are the server's choice (`soap:`, `ns2:`) and may change
    between deployments, so names keep only their local part and `xmlns`
    declarations are dropped; entities stay disabled (no XXE, no bombs).
    """
    try:
        import xmltodict

        return xmltodict.parse(body, postprocessor=_local_name, disable_entities=True)
    except Exception as exc:  # expat errors, ValueError for entities
        raise ExtractError(f"body is not well-formed XML: {exc}") from None


def _local_name(path: Any, key: str, value: Any) -> tuple[str, Any] | None:
    if key == "@xmlns" or key.startswith("@xmlns:"):
        return None
    attribute = "@" if key.startswith("@") else ""
    return attribute + key.removeprefix("@").rpartition(":")[2], value


def xml_items(document: Any, expression: str, found: Any) -> list[Any]:
    """XML has no arrays: one repeated element is an object and none may be absent.

    `found` is what `expression` matched. An object is a list of one; nothing
    is an empty list only when the expression is a plain dotted path whose
    parent element exists (`<Orders/>`), since a wrong path must still fail.
    """
    if isinstance(found, list):
        return found
    if isinstance(found, dict):
        return [found]
    parts = expression.split(".")
    if found is None and all(re.fullmatch(r"[A-Za-z_]\w*", p) for p in parts):
        parent = document
        for name in parts[:-1]:
            if not isinstance(parent, dict) or name not in parent:
                break
            parent = parent[name]
        else:
            if parent is None or (isinstance(parent, dict) and parts[-1] not in parent):
                return []
    what = "nothing" if found is None else f"a {type(found).__name__}"
    raise ExtractError(f"items {expression!r} matched {what} in the XML, not repeated elements")


# -- CSV and text ----------------------------------------------------------------


def decode_text(body: bytes, content_type: str = "") -> str:
    """The body as text in its declared charset (UTF-8 by default, BOM skipped)."""
    match = _CHARSET_RE.search(content_type)
    charset = match.group(1) if match else "utf-8"
    codec = "utf-8-sig" if charset.lower().replace("_", "-") in ("utf-8", "utf8") else charset
    try:
        return body.decode(codec)
    except LookupError:
        raise ExtractError(f"unknown charset {charset!r}") from None
    except UnicodeDecodeError as exc:
        raise ExtractError(f"body is not valid {charset} text: {exc.reason}") from None


def parse_csv(text: str, delimiter: str | None = None) -> list[dict[str, str]]:
    """One object per row, keyed by the header row; a ragged row fails the poll."""
    lines = text.splitlines()
    if not lines or not lines[0].strip():
        raise ExtractError("CSV body has no header row")
    sep = delimiter or _sniff_delimiter(text)
    try:
        rows = list(csv.reader(io.StringIO(text, newline=""), delimiter=sep, strict=True))
    except csv.Error as exc:
        raise ExtractError(f"body is not valid CSV: {exc}") from None
    header = rows[0]
    if len(set(header)) != len(header) or not all(h.strip() for h in header):
        raise ExtractError(f"CSV header has empty or repeated column names: {header}")
    out = []
    for number, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue  # blank lines between records
        if len(row) != len(header):
            raise ExtractError(
                f"CSV row {number} has {len(row)} fields, the header has {len(header)}"
            )
        out.append(dict(zip(header, row, strict=True)))
    return out


def _sniff_delimiter(text: str) -> str:
    """The delimiter of the first lines (`,` `;` tab or `|`); `,` when unsure.

    The sample is the first 20 lines and at most SNIFF_BYTES characters (cut
    at a line end where there is one): csv.Sniffer's regexes are quadratic in
    it, and one 90 KB line of `,"x` froze a poll for 25 s.
    """
    sample = "\n".join(text[: SNIFF_BYTES * 2].splitlines()[:20])
    if len(sample) > SNIFF_BYTES:
        cut = sample.rfind("\n", 0, SNIFF_BYTES)
        sample = sample[: cut if cut > 0 else SNIFF_BYTES]
    try:
        return csv.Sniffer().sniff(sample, delimiters=",;\t|").delimiter
    except csv.Error:
        return ","


def parse_html(body: bytes, content_type: str = "") -> BeautifulSoup:
    """A tolerant parse (stdlib html.parser): legacy pages are rarely valid HTML."""
    match = _CHARSET_RE.search(content_type)
    from bs4 import BeautifulSoup

    return BeautifulSoup(body, "html.parser", from_encoding=match.group(1) if match else None)
