"""formats, document and config_formats: table-driven, pure code.

The body cases live in cases/formats.yaml; this file runs them and checks
format detection, the `document.changed` payloads and the config rules.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest
import yaml

from pollhook.config import Source, load_config
from pollhook.diff import Change
from pollhook.document import DOCUMENT_CHANGED, document_changes
from pollhook.errors import ConfigError, ExtractError
from pollhook.formats import detect, read_items

CASES = yaml.safe_load((Path(__file__).parent / "cases" / "formats.yaml").read_text("utf-8"))
EXPECTS = ("keys", "values", "document", "error")


def make_source(options: dict[str, Any] | None = None) -> Source:
    options = dict(options or {})
    options["ignore"] = tuple(options.get("ignore", ()))
    return Source("s", "http://127.0.0.1:9/", 1.0, **options)


def run_case(case: dict[str, Any]) -> dict[str, Any]:
    body = case["body"].encode() if "body" in case else case["body_latin1"].encode("latin-1")
    return read_items(make_source(case.get("source")), body, case.get("content_type", ""))


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_format_case(case: dict[str, Any]) -> None:
    assert any(k in case for k in EXPECTS), f"a case expects one of {EXPECTS}"
    if "error" in case:
        with pytest.raises(ExtractError) as caught:
            run_case(case)
        assert case["error"] in str(caught.value)
        return
    items = run_case(case)
    if "keys" in case:
        assert list(items) == case["keys"]
    for key, fields in case.get("values", {}).items():
        assert key in items, f"{key!r} not in {list(items)}"
        assert {f: items[key].value.get(f) for f in fields} == fields
    if "document" in case:
        assert list(items) == ["document"]
        assert items["document"].value == case["document"]


DETECT = [
    # (content type, body, want_items, format)
    ("application/json", b"[]", True, "json"),
    ("Application/JSON; charset=UTF-8", b"[]", True, "json"),
    ("application/problem+json", b"{}", True, "json"),
    ("application/rss+xml", b"<rss/>", True, "feed"),
    ("application/atom+xml", b"<feed/>", True, "feed"),
    ("text/xml", b"<?xml version='1.0'?><!-- c --><rss version='2.0'/>", True, "feed"),
    ("application/xml", b"<rdf:RDF xmlns:rdf='x'/>", True, "feed"),
    ("application/xml", b"<orders/>", True, "xml"),
    ("application/soap+xml", b"<s:Envelope/>", True, "xml"),
    ("application/xhtml+xml", b"<html/>", False, "html"),
    ("text/xml", b"<html><body/></html>", False, "html"),
    ("text/csv", b"a,b", True, "csv"),
    ("text/tab-separated-values", b"a\tb", True, "csv"),
    ("text/html", b"<p>", True, "html"),
    ("text/plain", b"hello", False, "text"),
    ("text/plain", b'{"a": 1}', False, "text"),  # a document keeps what it was told
    ("text/plain", b'{"a": 1}', True, "json"),  # items can only come from a structure
    ("", b"\xef\xbb\xbf[1]", True, "json"),
    ("", b"<!DOCTYPE html><html/>", False, "html"),
    ("application/octet-stream", b"<r/>", True, "xml"),
    ("application/octet-stream", b"plain words", False, "text"),
]


@pytest.mark.parametrize(("content_type", "body", "want_items", "fmt"), DETECT)
def test_detect(content_type: str, body: bytes, want_items: bool, fmt: str) -> None:
    assert detect(content_type, body, want_items) == fmt


# -- document.changed payloads ------------------------------------------------------


def test_text_document_change_carries_a_unified_diff() -> None:
    change = Change("item.updated", "document", "a\nb\nc", "a\nB\nc", None)
    [doc] = document_changes([change])
    assert doc.type == DOCUMENT_CHANGED
    data = doc.data("status")
    assert data == {
        "source": "status", "key": "document", "item": "a\nb\nc", "previous": "a\nB\nc",
        "diff": "--- previous\n+++ current\n@@ -1,3 +1,3 @@\n a\n-B\n+b\n c",
    }  # fmt: skip


def test_json_document_change_carries_the_patch() -> None:
    patch = [{"op": "replace", "path": "/v", "value": 2}]
    [doc] = document_changes([Change("item.updated", "document", {"v": 2}, {"v": 1}, patch)])
    assert doc.data("cfg") == {
        "source": "cfg", "key": "document", "item": {"v": 2}, "previous": {"v": 1},
        "changes": patch,
    }  # fmt: skip


def test_first_document_and_deletions() -> None:
    """emit_initial sends the first document with no previous; a document is never deleted."""
    created = Change("item.created", "document", "hello", None)
    deleted = Change("item.deleted", "document", None, "bye")
    [doc] = document_changes([created, deleted])
    assert doc.data("s")["previous"] is None
    assert doc.data("s")["diff"].endswith("+hello")


# -- config -------------------------------------------------------------------------

SRC = """\
sources:
  - name: s
    url: http://127.0.0.1:9/x
    interval: 30s
"""


def load_source(tmp_path: Path, extra: str) -> Source:
    path = tmp_path / "sources.yaml"
    path.write_text(SRC + extra)
    return load_config(path, env={}).sources[0]


GOOD = [
    # (extra lines, expected Source fields)
    ("", {"format": "auto", "mode": "items", "select": None}),
    ("    format: feed\n", {"format": "feed", "mode": "items"}),
    ("    format: RSS\n", {"format": "feed"}),
    ("    format: csv\n    key: sku\n    delimiter: tab\n", {"delimiter": "\t", "key": "sku"}),
    ("    format: csv\n    delimiter: ';'\n", {"delimiter": ";"}),
    ("    mode: document\n", {"mode": "document", "format": "auto"}),
    ("    select: data.version\n", {"mode": "document", "select": "data.version"}),
    ("    format: html\n", {"mode": "document"}),
    ("    selector: 'main > .price'\n", {"mode": "document", "selector": "main > .price"}),
    ("    format: text\n    regex: 'v(\\d+)'\n", {"mode": "document", "regex": "v(\\d+)"}),
    ("    mode: document\n    format: xml\n    ignore: [stamp]\n", {"ignore": ("stamp",)}),
]


@pytest.mark.parametrize(("extra", "fields"), GOOD)
def test_format_keys_load(tmp_path: Path, extra: str, fields: dict[str, Any]) -> None:
    source = load_source(tmp_path, extra)
    assert {name: getattr(source, name) for name in fields} == fields


BAD = [
    # (extra lines, line, fragments)
    ("    format: jsn\n", 5, ["unknown format 'jsn'", "did you mean 'json'"]),
    ("    format: pdf\n", 5, ["unknown format 'pdf'", "one of: auto, json"]),
    ("    selecter: '#x'\n", 5, ["unknown key 'selecter'", "did you mean 'selector'"]),
    ("    mode: page\n", 5, ["unknown mode 'page'"]),
    ("    format: html\n    mode: items\n", 6, ["has no list of items", "mode: document"]),
    ("    mode: document\n    key: id\n", 6, ["'key' does not apply to mode: document"]),
    ("    selector: '#a'\n    items: data\n", 6, ["'items' does not apply to mode: document"]),
    ("    mode: items\n    select: a\n", 6, ["'select' applies to mode: document only"]),
    ("    format: json\n    selector: '#a'\n", 6, ["'selector' needs format: html"]),
    ("    format: csv\n    regex: a\n", 6, ["'regex' needs format: text or html"]),
    ("    format: json\n    delimiter: ';'\n", 6, ["'delimiter' needs format: csv"]),
    ("    format: html\n    select: a\n", 6, ["'select' needs a JSON-like format"]),
    ("    format: text\n    ignore: [a]\n", 6, ["'ignore' needs a JSON-like format"]),
    ("    selector: 'div['\n", 5, ["bad CSS selector 'div['"]),
    ("    selector: ''\n", 5, ["bad CSS selector"]),
    ("    regex: 'a('\n", 5, ["bad regular expression 'a('", "missing )"]),
    ("    select: 'a.['\n", 5, ["'select': bad JMESPath"]),
    ("    format: csv\n    delimiter: ';;'\n", 6, ["one character"]),
]


@pytest.mark.parametrize(("extra", "line", "fragments"), BAD)
def test_bad_format_keys(tmp_path: Path, extra: str, line: int, fragments: list[str]) -> None:
    with pytest.raises(ConfigError) as caught:
        load_source(tmp_path, extra)
    message = str(caught.value)
    assert f"line {line}:" in message and "\n" not in message, message
    for fragment in fragments:
        assert fragment in message, message


def test_fingerprint_covers_format_settings_only_when_set() -> None:
    plain = make_source()
    old_formula = hashlib.sha256("\0".join(["@", "id"]).encode()).hexdigest()[:16]
    assert plain.fingerprint == old_formula, "an upgrade must not re-baseline existing sources"
    changed = [
        make_source({"format": "feed"}), make_source({"mode": "document"}),
        make_source({"mode": "document", "select": "a"}),
        make_source({"mode": "document", "selector": "#a"}),
        make_source({"mode": "document", "selector": "#b"}),
        make_source({"mode": "document", "regex": "x"}),
        make_source({"format": "csv", "delimiter": ";"}),
    ]  # fmt: skip
    prints = {s.fingerprint for s in changed}
    assert len(prints) == len(changed) and plain.fingerprint not in prints


DOCS = Path(__file__).resolve().parent.parent / "docs" / "sources.md"


def doc_examples() -> list[str]:
    """The complete configs (```yaml blocks starting with `sources:`) of docs/sources.md."""
    blocks = DOCS.read_text("utf-8").split("```yaml\n")[1:]
    return [b.split("```", 1)[0] for b in blocks if b.startswith("sources:")]


@pytest.mark.parametrize("example", doc_examples())
def test_documented_examples_are_valid(tmp_path: Path, example: str) -> None:
    path = tmp_path / "sources.yaml"
    path.write_text(example)
    assert load_config(path, env={}).sources


def test_a_feed_body_naming_a_local_file_is_not_read(tmp_path: Path) -> None:
    """feedparser opens a bytes argument as a path if it can: the body must be data only."""
    local = tmp_path / "secret.rss"
    local.write_text('<rss version="2.0"><channel><item><guid>leak</guid></item></channel></rss>')
    with pytest.raises(ExtractError):
        read_items(make_source({"format": "feed"}), str(local).encode(), "application/rss+xml")
