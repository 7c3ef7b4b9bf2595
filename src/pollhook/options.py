"""Per-source request, pagination, incremental and safety options (the config side).

These keys live apart from config.py so they can grow without touching the
shared validator: `source_options(v, node, where)` validates every key in
SOURCE_KEYS with the validator's own helpers (one line per error, with the
line and a "did you mean") and returns the keyword arguments of `Source`.
The runtime side is in request.py, paginate.py and cursor.py.
"""

from __future__ import annotations

import base64
import difflib
import re
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from ._yaml import LineList, LineMap
from ._yaml import kind as _kind
from ._yaml import show as _show
from .config_formats import format_options

if TYPE_CHECKING:
    from .config import Source, _Validator

SOURCE_KEYS = (
    "params", "body", "body_json", "body_form", "content_type", "auth", "ca_bundle",
    "verify_tls", "max_body_size", "pagination", "incremental", "mass_delete",
    "max_events_per_poll", "failing_after", "jitter", "conditional", "redirects", "max_items",
    "max_item_size", "max_parse_memory",
)  # fmt: skip
REDIRECTS = ("same-origin", "any", "none")
DEFAULT_MAX_ITEMS = 1_000_000
DEFAULT_MAX_ITEM_SIZE = 1000**2
PAGINATION_TYPES = ("link", "next_url", "cursor", "page", "offset")
_PAGINATION_KEYS = {
    "link": (),
    "next_url": ("next",),
    "cursor": ("next", "param"),
    "page": ("param", "start", "size", "size_param"),
    "offset": ("param", "start", "size", "size_param"),
}
_PAGINATION_REQUIRED = {"next_url": ("next",), "cursor": ("next", "param")}
_PERCENT_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*%\s*$")
DEFAULT_MAX_PAGES = 100
CONDITIONAL_MODES = ("auto", "never")
# what people write for "off" and "on": a hint, never a silent alias
_CONDITIONAL_HINTS = {
    **dict.fromkeys(("0", "none", "disabled", "disable", "nothing"), "never"),
    **dict.fromkeys(("1", "always", "enabled", "enable"), "auto"),
}


@dataclass(frozen=True)
class Auth:
    """HTTP authentication sent with every request of a source."""

    kind: str  # "basic" or "bearer"
    username: str = ""
    secret: str = field(default="", repr=False)  # the password or the token; never logged

    def header(self) -> str:
        if self.kind == "basic":
            pair = f"{self.username}:{self.secret}".encode()
            return "Basic " + base64.b64encode(pair).decode("ascii")
        return f"Bearer {self.secret}"


@dataclass(frozen=True)
class Pagination:
    """How to reach every page of one poll; a poll is complete only with all of them."""

    type: str  # link | next_url | cursor | page | offset
    next: str | None = None  # JMESPath over a page: the next cursor or URL
    param: str | None = None  # query parameter carrying the cursor, page number or offset
    start: int = 0  # first page number or offset
    size: int | None = None  # items per page: a shorter page is the last one
    size_param: str | None = None  # query parameter that asks for `size`
    max_pages: int = DEFAULT_MAX_PAGES  # more pages than this fails the poll
    confirm_deletions: bool = True  # a deletion waits for a second complete poll

    @property
    def shape(self) -> tuple[Any, ...]:
        """What decides which items a poll sees (part of the source fingerprint)."""
        return (self.type, self.next, self.param, self.start, self.size, self.size_param)


@dataclass(frozen=True)
class Incremental:
    """Ask only for what changed since the cursor of the last complete poll."""

    cursor: str  # JMESPath over the list of items, or a field path (its greatest value)
    param: str  # query parameter carrying the cursor
    overlap: float = 0.0  # seconds for timestamps; subtracted as a number from numbers
    initial: str | int | float | None = None  # cursor of the very first poll


@dataclass(frozen=True)
class MassDelete:
    """A deletion of more than `min` items and more than `ratio` of them waits for confirmation."""

    min: int = 10
    ratio: float = 0.10


def detection_shape(source: Source) -> str:
    """Fingerprint text of the options that change which items a poll sees."""
    incremental = source.incremental
    return repr(
        (
            source.pagination.shape if source.pagination else None,
            (incremental.cursor, incremental.param) if incremental else None,
        )
    )


def source_options(v: _Validator, node: LineMap, where: str) -> dict[str, Any]:
    """Validate the keys of SOURCE_KEYS present in `node`; Source keyword arguments."""
    out: dict[str, Any] = {}
    for key in ("pagination", "incremental"):
        if key in node and format_options(v, node, where)["mode"] == "document":
            raise v.fail(
                node.key_lines[key], where, f"'{key}' needs a list of items, not mode: document"
            )
    if "params" in node:
        out["params"] = _pairs(v, node, "params", where)
    out.update(_body(v, node, where))
    if "auth" in node:
        out["auth"] = _auth(v, node, where)
    if "ca_bundle" in node:
        out["ca_bundle"] = _ca_bundle(v, node, where)
    out["verify_tls"] = v.boolean(node, "verify_tls", where, True)
    if "ca_bundle" in node and not out["verify_tls"]:
        raise v.fail(
            node.key_lines["verify_tls"], where, "'ca_bundle' and 'verify_tls: false' contradict"
        )
    if "max_body_size" in node:
        from .config import parse_size

        out["max_body_size"] = v.convert(
            node, "max_body_size", where, parse_size, "a size (e.g. 10MB)"
        )
    if "pagination" in node:
        out["pagination"] = _pagination(v, node, where)
    if "incremental" in node:
        out["incremental"] = _incremental(v, node, where)
        if "mass_delete" in node:
            raise v.fail(
                node.key_lines["mass_delete"], where,
                "'mass_delete' has no effect with 'incremental' (deletions are never inferred)",
            )  # fmt: skip
    if "mass_delete" in node:
        out["mass_delete"] = _mass_delete(v, node, where)
    if "max_events_per_poll" in node:
        out["max_events_per_poll"] = v.positive_int(node, "max_events_per_poll", where, 1)
    out["failing_after"] = v.positive_int(node, "failing_after", where, 3)
    if "jitter" in node:
        out["jitter"] = _jitter(v, node, where)
    out.update(_limits(v, node, where))
    if "conditional" in node:
        out["conditional"] = _conditional(v, node, where)
    return out


def _limits(v: _Validator, node: LineMap, where: str) -> dict[str, Any]:
    """Where an untrusted upstream may lead pollhook, and how much of it one poll may hold."""
    from .config import parse_size

    out: dict[str, Any] = {}
    if "redirects" in node:
        value = v.text(node, "redirects", where).strip().lower()
        if value not in REDIRECTS:
            close = difflib.get_close_matches(value, REDIRECTS, n=1, cutoff=0.6)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise v.fail(
                node.key_lines["redirects"], where,
                f"'redirects': {value!r} is not one of {', '.join(REDIRECTS)}{hint}",
            )  # fmt: skip
        out["redirects"] = value
    if "max_items" in node:
        out["max_items"] = v.positive_int(node, "max_items", where, DEFAULT_MAX_ITEMS)
    if "max_item_size" in node:
        out["max_item_size"] = v.convert(
            node, "max_item_size", where, parse_size, "a size (e.g. 1MB)"
        )
    if "max_parse_memory" in node:
        out["max_parse_memory"] = v.convert(
            node, "max_parse_memory", where, parse_memory, MEMORY_HINT
        )
    return out


MIN_PARSE_MEMORY = 64 * 1024**2  # a parsing worker's interpreter and parsers take ~30 MB
MEMORY_HINT = "a size of at least 64MiB (e.g. 2GB)"


def parse_memory(value: Any) -> int:
    """A parsing worker's memory cap: a size, at least MIN_PARSE_MEMORY."""
    from .config import parse_size

    size = parse_size(value)
    if size < MIN_PARSE_MEMORY:
        raise ValueError(value)
    return size


# -- requests -------------------------------------------------------------------------


def _scalar_text(v: _Validator, value: Any, line: int | None, where: str, what: str) -> str:
    if value is None or isinstance(value, LineMap | LineList):
        raise v.fail(line, where, f"{what} must be a plain value, got {_kind(value)}")
    text = str(value).lower() if isinstance(value, bool) else str(value)
    return v.interpolate(text, line, where)


def _pairs(v: _Validator, node: LineMap, key: str, where: str) -> tuple[tuple[str, str], ...]:
    """`name: value` or `name: [v1, v2]` (a repeated parameter), in file order."""
    value = node[key]
    if not isinstance(value, LineMap):
        raise v.fail(node.key_lines[key], where, f"'{key}' must be a mapping of names to values")
    out = []
    for name in value:
        line = value.key_lines[name]
        if not isinstance(name, str) or not name:
            raise v.fail(line, where, f"'{key}': {name!r} is not a parameter name")
        values = value[name]
        items = [(values, line)]
        if isinstance(values, LineList):
            items = list(zip(values, values.item_lines, strict=True))
        for item, item_line in items:
            text = _scalar_text(v, item, item_line, f"{where}.{key}.{name}", f"'{key}.{name}'")
            out.append((name, text))
    return tuple(out)


def _body(v: _Validator, node: LineMap, where: str) -> dict[str, Any]:
    given = [k for k in ("body", "body_json", "body_form") if k in node]
    if len(given) > 1:
        raise v.fail(
            node.key_lines[given[1]], where, f"'{given[0]}' and '{given[1]}': set only one body"
        )
    if "content_type" in node and given != ["body"]:
        raise v.fail(
            node.key_lines["content_type"], where,
            "'content_type' goes with a raw 'body' (body_json and body_form set their own)",
        )  # fmt: skip
    if not given:
        return {}
    key = given[0]
    line = node.key_lines[key]
    if key == "body_json":
        try:
            content = orjson.dumps(_plain(v, node[key], line, f"{where}.body_json"))
        except TypeError as exc:  # an integer beyond 64 bits
            raise v.fail(line, where, f"'body_json' cannot be sent as JSON: {exc}") from None
        return {"body": content, "content_type": "application/json"}
    if key == "body_form":
        form = urllib.parse.urlencode(_pairs(v, node, "body_form", where))
        return {"body": form.encode(), "content_type": "application/x-www-form-urlencoded"}
    text = _scalar_text(v, node["body"], line, f"{where}.body", "'body'")
    content_type = "text/plain; charset=utf-8"
    if "content_type" in node:
        content_type = v.text(node, "content_type", where)
        if not content_type.strip() or "\n" in content_type or "\r" in content_type:
            raise v.fail(node.key_lines["content_type"], where, "'content_type' is not valid")
    return {"body": text.encode(), "content_type": content_type}


def _plain(v: _Validator, value: Any, line: int | None, where: str) -> Any:
    """A YAML value as plain JSON data, with ${VAR} replaced in every string."""
    if isinstance(value, LineMap):
        out = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise v.fail(
                    value.key_lines[key], where, f"JSON object keys must be strings: {key!r}"
                )
            out[key] = _plain(v, item, value.key_lines[key], f"{where}.{key}")
        return out
    if isinstance(value, LineList):
        return [
            _plain(v, item, item_line, where)
            for item, item_line in zip(value, value.item_lines, strict=True)
        ]
    if isinstance(value, str):
        return v.interpolate(value, line, where)
    if value is None or isinstance(value, bool | int | float):
        return value
    raise v.fail(line, where, f"{_kind(value)} cannot be sent as JSON (quote it)")


def _auth(v: _Validator, node: LineMap, where: str) -> Auth:
    at = f"{where}.auth"
    auth = v.keys(node["auth"], at, node.key_lines["auth"], (), ("basic", "bearer"))
    if len(auth) != 1:
        raise v.fail(
            auth.line or node.key_lines["auth"], at, "set exactly one of 'basic' or 'bearer'"
        )
    if any(name.lower() == "authorization" for name in node.get("headers") or {}):
        raise v.fail(
            node.key_lines["auth"], where,
            "'auth' and an Authorization header both set: keep one",
        )  # fmt: skip
    if "bearer" in auth:
        token = v.text(auth, "bearer", at)
        if not token.strip():
            raise v.fail(auth.key_lines["bearer"], at, "'bearer' token is empty")
        return Auth("bearer", secret=token)
    basic = v.keys(
        auth["basic"], f"{at}.basic", auth.key_lines["basic"], ("username", "password"), ()
    )
    username = v.text(basic, "username", f"{at}.basic")
    if ":" in username:
        raise v.fail(basic.key_lines["username"], f"{at}.basic", "'username' must not contain ':'")
    return Auth("basic", username=username, secret=v.text(basic, "password", f"{at}.basic"))


def _ca_bundle(v: _Validator, node: LineMap, where: str) -> str:
    import ssl  # only configs with a CA bundle pay for it at load (aiohttp imports it later)

    text = v.text(node, "ca_bundle", where)
    path = Path(text).expanduser()
    if not path.is_absolute():
        path = v.path.parent / path
    try:
        ssl.create_default_context(cafile=str(path))
    except (ssl.SSLError, ValueError):  # SSLError is an OSError: first
        raise v.fail(
            node.key_lines["ca_bundle"], where, f"{str(path)!r} holds no PEM certificate"
        ) from None
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise v.fail(
            node.key_lines["ca_bundle"], where, f"cannot read CA bundle {str(path)!r}: {reason}"
        ) from None
    return str(path)


# -- pagination and incremental mode ---------------------------------------------------


def _pagination(v: _Validator, node: LineMap, where: str) -> Pagination:
    at = f"{where}.pagination"
    value, line = node["pagination"], node.key_lines["pagination"]
    if isinstance(value, str):  # `pagination: link`
        shorthand = LineMap({"type": value})
        shorthand.line, shorthand.key_lines = line, {"type": line}
        value = shorthand
    if not isinstance(value, LineMap):
        raise v.fail(line, at, "must be a mapping with a 'type' (or just the type, e.g. 'link')")
    common = ("type", "max_pages", "confirm_deletions")
    every = common + tuple(dict.fromkeys(k for keys in _PAGINATION_KEYS.values() for k in keys))
    v.keys(value, at, value.line or line, (), every)  # a misspelt key first, as written
    kind = value.get("type")
    if kind not in PAGINATION_TYPES:
        close = difflib.get_close_matches(str(kind), PAGINATION_TYPES, n=1, cutoff=0.6)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        shown = "missing" if kind is None else f"{kind!r} is unknown"
        raise v.fail(
            value.key_lines.get("type", value.line or line), at,
            f"'type' {shown}{hint}; one of {', '.join(PAGINATION_TYPES)}",
        )  # fmt: skip
    value = v.keys(value, f"{at} ({kind})", value.line or line, _PAGINATION_REQUIRED.get(kind, ()),
                   common + _PAGINATION_KEYS[kind])  # fmt: skip
    default_param = {"page": "page", "offset": "offset"}.get(kind)
    param = v.text(value, "param", at, default_param) if "param" in value or default_param else None
    if param is not None and not param.strip():
        raise v.fail(value.key_lines.get("param"), at, "'param' must name a query parameter")
    size = v.positive_int(value, "size", at, 0) or None
    if "size_param" in value and size is None:
        raise v.fail(value.key_lines["size_param"], at, "'size_param' needs 'size'")
    return Pagination(
        type=kind,
        next=v.jmespath_expr(value, "next", at, "") if "next" in value else None,
        param=param,
        start=v.positive_int(value, "start", at, 1 if kind == "page" else 0, minimum=0),
        size=size,
        size_param=v.text(value, "size_param", at) if "size_param" in value else None,
        max_pages=v.positive_int(value, "max_pages", at, DEFAULT_MAX_PAGES),
        confirm_deletions=v.boolean(value, "confirm_deletions", at, True),
    )


def _incremental(v: _Validator, node: LineMap, where: str) -> Incremental:
    at = f"{where}.incremental"
    value = v.keys(
        node["incremental"], at, node.key_lines["incremental"], ("cursor", "param"),
        ("overlap", "initial"),
    )  # fmt: skip
    param = v.text(value, "param", at)
    if not param.strip():
        raise v.fail(value.key_lines["param"], at, "'param' must name a query parameter")
    initial: str | int | float | None = None
    if "initial" in value:
        raw = value["initial"]
        if isinstance(raw, int | float) and not isinstance(raw, bool):
            initial = raw
        else:
            initial = v.text(value, "initial", at)
    overlap = 0.0
    if "overlap" in value:
        overlap = float(
            v.convert(value, "overlap", at, parse_delay, "0 or a duration (e.g. 1m) or a number")
        )
    return Incremental(
        cursor=v.jmespath_expr(value, "cursor", at, ""), param=param, overlap=overlap,
        initial=initial,
    )  # fmt: skip


def parse_delay(value: Any) -> float:
    """0, or a duration; plain numbers are seconds (or, for a numeric cursor, its own units)."""
    from .config import parse_duration

    if isinstance(value, bool):
        raise ValueError(value)
    if isinstance(value, int | float):
        if not 0 <= value <= 366 * 86400:  # also refuses NaN
            raise ValueError(value)
        return float(value)
    if str(value).strip() in ("0", "0s", "0.0"):
        return 0.0
    return parse_duration(value)


# -- safety and scheduling ----------------------------------------------------------------


def _mass_delete(v: _Validator, node: LineMap, where: str) -> MassDelete:
    at = f"{where}.mass_delete"
    value = v.keys(node["mass_delete"], at, node.key_lines["mass_delete"], (), ("min", "ratio"))
    default = MassDelete()
    ratio = default.ratio
    if "ratio" in value:
        ratio = float(v.convert(value, "ratio", at, _parse_ratio, "a percentage (e.g. 10%)"))
    return MassDelete(min=v.positive_int(value, "min", at, default.min, minimum=0), ratio=ratio)


def _parse_ratio(value: Any) -> float:
    """`10%` or a fraction between 0 and 1."""
    if isinstance(value, bool):
        raise ValueError(value)
    match = _PERCENT_RE.match(str(value))
    ratio = float(match.group(1)) / 100 if match else float(value)
    if not 0 <= ratio <= 1:
        raise ValueError(value)
    return ratio


def _conditional(v: _Validator, node: LineMap, where: str) -> str:
    """`auto` (validators are used as validators.py decides) or `never` (no conditional request)."""
    raw, line = node["conditional"], node.key_lines["conditional"]
    if isinstance(raw, bool):  # YAML reads off/no/false (and on/yes/true) as booleans
        hint = "auto" if raw else "never"
        raise v.fail(line, where, f"'conditional' is auto or never, not true/false/on/off"
                                  f" (did you mean '{hint}'?)")  # fmt: skip
    text = v.text(node, "conditional", where).strip().lower()
    if text in CONDITIONAL_MODES:
        return text
    close = _CONDITIONAL_HINTS.get(text) or next(
        iter(difflib.get_close_matches(text, CONDITIONAL_MODES, n=1, cutoff=0.6)), None
    )
    hint = f" (did you mean '{close}'?)" if close else ""
    raise v.fail(line, where, f"'conditional': {_show(raw)} is not auto or never{hint}")


def _jitter(v: _Validator, node: LineMap, where: str) -> float:
    from .config import parse_duration

    interval = v.duration(node, "interval", where, 0)

    def parse(value: Any) -> float:
        match = _PERCENT_RE.match(str(value)) if not isinstance(value, bool) else None
        seconds = float(match.group(1)) / 100 * interval if match else parse_duration(value)
        if seconds > interval:
            raise ValueError(value)
        return seconds

    return float(
        v.convert(node, "jitter", where, parse, "a duration or percentage up to the interval")
    )
