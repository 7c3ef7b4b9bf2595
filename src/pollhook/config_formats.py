"""Validation of a source's format keys: format, mode, select, selector, regex, delimiter.

Kept apart from config.py so the format rules live in one place. A key that
cannot apply to the source's format or mode is an error at its own line,
never silently ignored: `selector:` on a JSON source would otherwise compare
the whole document and look like it works.
"""

from __future__ import annotations

import difflib
from typing import Any, Protocol

from ._yaml import LineMap

FORMAT_KEYS = ("format", "mode", "select", "selector", "regex", "delimiter")
FORMATS = ("auto", "json", "feed", "xml", "csv", "text", "html")
MODES = ("items", "document")
TEXTUAL = ("text", "html")
_ALIASES = {"rss": "feed", "atom": "feed", "soap": "xml", "tsv": "csv", "txt": "text"}
_DELIMITERS = {"tab": "\t", "\\t": "\t"}


class _Validator(Protocol):
    """The helpers of config._Validator this module uses."""

    def fail(self, line: int | None, where: str, message: str) -> Exception: ...
    def text(self, node: LineMap, key: str, where: str, default: str | None = None) -> str: ...
    def jmespath_expr(self, node: LineMap, key: str, where: str, default: str) -> str: ...


def format_options(v: _Validator, node: LineMap, where: str) -> dict[str, Any]:
    """The Source fields of the format keys in `node`, checked against each other."""
    fmt = _choice(v, node, "format", where, FORMATS, "auto")
    options: dict[str, Any] = {
        "format": _ALIASES.get(fmt, fmt),
        "select": v.jmespath_expr(node, "select", where, "@") if "select" in node else None,
        "selector": _selector(v, node, where) if "selector" in node else None,
        "regex": _regex(v, node, where) if "regex" in node else None,
        "delimiter": _delimiter(v, node, where) if "delimiter" in node else None,
    }
    options["mode"] = _mode(v, node, where, options["format"])
    _check_fit(v, node, where, options["format"], options["mode"])
    return options


def _choice(
    v: _Validator, node: LineMap, key: str, where: str, allowed: tuple[str, ...], default: str
) -> str:
    value = v.text(node, key, where, default).strip().lower()
    if value in allowed or (value in _ALIASES and key == "format"):
        return value
    close = difflib.get_close_matches(value, allowed, n=1, cutoff=0.6)
    hint = f" (did you mean '{close[0]}'?)" if close else f" (one of: {', '.join(allowed)})"
    raise v.fail(node.key_lines.get(key), where, f"unknown {key} {value!r}{hint}")


def _mode(v: _Validator, node: LineMap, where: str, fmt: str) -> str:
    """Explicit, or `document` when the format or a narrowing key implies a whole document."""
    if "mode" in node:
        mode = _choice(v, node, "mode", where, MODES, "items")
        if mode == "items" and fmt in TEXTUAL:
            raise v.fail(
                node.key_lines["mode"], where,
                f"format {fmt!r} has no list of items: use mode: document",
            )  # fmt: skip
        return mode
    narrowing = any(key in node for key in ("select", "selector", "regex"))
    return "document" if fmt in TEXTUAL or narrowing else "items"


def _check_fit(v: _Validator, node: LineMap, where: str, fmt: str, mode: str) -> None:
    """Every key present must mean something for this format and mode."""
    rules = {
        "items": (mode == "items", "does not apply to mode: document (the whole body is one item)"),
        "key": (mode == "items", "does not apply to mode: document (its key is 'document')"),
        "select": (mode == "document", "applies to mode: document only"),
        "selector": (mode == "document" and fmt in ("auto", "html"), "needs format: html (or auto) in mode: document"),
        "regex": (mode == "document" and fmt in ("auto", *TEXTUAL), "needs format: text or html (or auto) in mode: document"),
        "delimiter": (fmt in ("auto", "csv"), "needs format: csv (or auto)"),
    }  # fmt: skip
    if fmt in TEXTUAL:
        rules["select"] = (False, f"needs a JSON-like format, not {fmt!r} (use selector or regex)")
        rules["ignore"] = (False, f"needs a JSON-like format, not {fmt!r}")
    for key, (fits, why) in rules.items():
        if key in node and not fits:
            raise v.fail(node.key_lines[key], where, f"'{key}' {why}")


def _selector(v: _Validator, node: LineMap, where: str) -> str:
    selector = v.text(node, "selector", where)
    try:
        import soupsieve  # only configs with a selector pay for it

        soupsieve.compile(selector)
    except Exception as exc:  # SelectorSyntaxError, and ValueError for an empty selector
        problem = str(exc).splitlines()[0] if str(exc) else "empty selector"
        raise v.fail(
            node.key_lines["selector"],
            where,
            f"'selector': bad CSS selector {selector!r}: {problem}",
        ) from None
    return selector


def _regex(v: _Validator, node: LineMap, where: str) -> str:
    import regex  # the engine document.regex_text matches with

    pattern = v.text(node, "regex", where)
    try:
        regex.compile(pattern)
    except regex.error as exc:
        raise v.fail(
            node.key_lines["regex"], where, f"'regex': bad regular expression {pattern!r}: {exc}"
        ) from None
    return pattern


def _delimiter(v: _Validator, node: LineMap, where: str) -> str:
    raw = v.text(node, "delimiter", where)
    delimiter = _DELIMITERS.get(raw.lower(), raw)
    if len(delimiter) != 1 or delimiter in '"\r\n':
        raise v.fail(
            node.key_lines["delimiter"], where,
            f"'delimiter' must be one character (or 'tab'), got {raw!r}",
        )  # fmt: skip
    return delimiter
