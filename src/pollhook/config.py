"""Load sources.yaml once into frozen, validated objects.

Every problem becomes one ConfigError line naming the file, the line and the
key, so `pollhook check` and a SIGHUP reload can refuse a bad file before it
touches anything. Unknown keys are errors: a typo must never silently
disable a feature (urlwatch's silent merge is the thing not to copy).
"""

from __future__ import annotations

import base64
import binascii
import difflib
import functools
import hashlib
import os
import re
import secrets
import urllib.parse
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Protocol

import jmespath
import jmespath.exceptions
import jmespath.functions

from ._yaml import LineList, LineMap, load_yaml, one_line
from ._yaml import kind as _kind
from ._yaml import show as _show
from .config_formats import FORMAT_KEYS, format_options
from .errors import ConfigError
from .options import (
    DEFAULT_MAX_ITEM_SIZE,
    DEFAULT_MAX_ITEMS,
    MEMORY_HINT,
    SOURCE_KEYS,
    Auth,
    Incremental,
    MassDelete,
    Pagination,
    detection_shape,
    parse_delay,
    parse_memory,
)
from .options import source_options as request_options

CHANGE_EVENTS = ("item.created", "item.updated", "item.deleted", "document.changed")
HEALTH_EVENTS = ("source.failing", "source.recovered")
EVENT_TYPES = CHANGE_EVENTS + HEALTH_EVENTS
DURATION_HINT = "a duration above 0 and up to 366d (e.g. 500ms, 30s, 5m, 1h, 1d)"
DEFAULT_RETRY = (5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 36000.0)
NAME_RE = re.compile(r"^[A-Za-z0-9_-]+$")
_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(b|kb|mb|gb|kib|mib|gib)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {
    "b": 1, "kb": 1000, "mb": 1000**2, "gb": 1000**3,
    "kib": 1024, "mib": 1024**2, "gib": 1024**3, None: 1,
}  # fmt: skip
_VAR_RE = re.compile(
    r"\$\$|\$\{file:([^}]+)\}|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}|\$\{[^}]*\}?"
)
_FUNCTIONS = jmespath.functions.Functions()
_OWN_HEADERS = frozenset({"content-type", "content-length", "transfer-encoding", "host"})
_FIELD_PATH_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
_SPACE_OR_CONTROL_RE = re.compile(r"[\s\x00-\x1f]")  # \s is str.isspace() for str patterns


@dataclass(frozen=True)
class HttpSettings:
    """Politeness and safety limits shared by every poll."""

    max_per_host: int = 10
    timeout: float = 30.0
    max_body_size: int = 100 * 1000**2
    min_delay: float = 0.0  # between the starts of two requests to one host
    max_parse_memory: int = 2 * 1024**3  # of one parsing worker process (parsing.py)
    parse_workers: int = 2  # parsing worker processes at most


@dataclass(frozen=True)
class Source:
    """One upstream to poll, as declared in the config."""

    name: str
    url: str
    interval: float
    items: str = "@"
    key: str = "id"
    method: str = "GET"
    headers: Mapping[str, str] = field(default_factory=dict)
    ignore: tuple[str, ...] = ()
    timeout: float | None = None
    emit_initial: bool = False
    format: str = "auto"  # json|feed|xml|csv|text|html; see formats.py and config_formats.py
    mode: str = "items"  # or "document": the whole body is one item (document.py)
    select: str | None = None  # JMESPath narrowing a JSON-like document
    selector: str | None = None  # CSS selector narrowing an HTML document
    regex: str | None = None  # regular expression narrowing a text/HTML document
    delimiter: str | None = None  # CSV delimiter; sniffed when None
    # requests, pagination, incremental mode and safety: see options.py
    params: tuple[tuple[str, str], ...] = ()
    body: bytes | None = None
    content_type: str | None = None
    auth: Auth | None = None
    ca_bundle: str | None = None
    verify_tls: bool = True
    max_body_size: int | None = None
    pagination: Pagination | None = None
    incremental: Incremental | None = None
    mass_delete: MassDelete = field(default_factory=MassDelete)
    max_events_per_poll: int | None = None
    failing_after: int = 3
    jitter: float = 0.0
    # what an untrusted upstream may make of a poll (docs/security.md)
    redirects: str = "same-origin"  # | any | none
    max_items: int = DEFAULT_MAX_ITEMS  # items in one poll's body (or pages)
    max_item_size: int = DEFAULT_MAX_ITEM_SIZE  # bytes of one item's JSON
    max_parse_memory: int | None = None  # of the parsing worker; None: http.max_parse_memory
    conditional: str = "auto"  # or "never": no If-None-Match / If-Modified-Since (validators.py)

    @cached_property
    def fingerprint(self) -> str:
        """Identity of the detection settings: a change re-baselines silently.

        Cached: every poll compares it, and a Source never changes (a reload makes new ones).
        """
        text = "\0".join([self.items, self.key, *sorted(self.ignore), *self._format_parts()])
        if self.pagination or self.incremental:  # only when set: older fingerprints stay valid
            text += "\0" + detection_shape(self)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def _format_parts(self) -> list[str]:
        """Format settings that differ from the defaults (older fingerprints stay valid)."""
        defaults = Source(self.name, self.url, self.interval)
        names = ("format", "mode", "select", "selector", "regex", "delimiter")
        return [
            f"{n}={getattr(self, n)}" for n in names if getattr(self, n) != getattr(defaults, n)
        ]


@dataclass(frozen=True)
class Subscriber:
    """One webhook receiver and what it wants."""

    name: str
    url: str
    secrets: tuple[str, ...] = ()
    sources: frozenset[str] | None = None
    events: frozenset[str] | None = None
    retry: tuple[float, ...] = DEFAULT_RETRY
    headers: Mapping[str, str] = field(default_factory=dict)
    timeout: float = 15.0
    max_in_flight: int = 10

    def wants(self, source: str, event_type: str) -> bool:
        """Routing rule of CONTRACT.md: no `events` means every change event."""
        if self.sources is not None and source not in self.sources:
            return False
        if self.events is None:
            return event_type in CHANGE_EVENTS
        return event_type in self.events


@dataclass(frozen=True)
class Retention:
    """How long finished records are kept: the state file must not grow without bound."""

    delivered: float = 30 * 86400.0
    dead: float = 90 * 86400.0


@dataclass(frozen=True)
class Config:
    """The whole validated configuration."""

    path: Path
    sources: tuple[Source, ...]
    subscribers: tuple[Subscriber, ...] = ()
    state: Path | None = None
    http: HttpSettings = HttpSettings()
    retention: Retention = Retention()

    def source(self, name: str) -> Source | None:
        return self._sources_by_name.get(name)

    @cached_property
    def _sources_by_name(self) -> dict[str, Source]:
        """Each poll looks its source up: a scan was O(n) per poll, O(n²) per round."""
        return {s.name: s for s in self.sources}

    def subscriber(self, name: str) -> Subscriber | None:
        return next((s for s in self.subscribers if s.name == name), None)


def parse_duration(value: Any) -> float:
    """Seconds from `30`, `500ms`, `30s`, `5m`, `1h` or `1d`; ValueError otherwise."""
    if isinstance(value, bool):
        raise ValueError(value)
    if isinstance(value, int | float):
        seconds = float(min(value, 10**9))  # a 400-digit int would overflow float()
    else:
        match = _DURATION_RE.match(str(value))
        if not match:
            raise ValueError(value)
        seconds = float(match.group(1)) * _DURATION_UNITS[match.group(2)]
    if not seconds > 0 or seconds > 366 * 86400:
        raise ValueError(value)
    return seconds


def parse_size(value: Any) -> int:
    """Bytes from `1048576`, `100MB`, `64KiB`; ValueError otherwise."""
    if isinstance(value, bool):
        raise ValueError(value)
    if isinstance(value, int):
        size = value
    else:
        match = _SIZE_RE.match(str(value))
        if not match:
            raise ValueError(value)
        unit = match.group(2).lower() if match.group(2) else None
        number = float(match.group(1)) * _SIZE_UNITS[unit]
        size = int(number) if number < 2**62 else 2**62
    if size <= 0:
        raise ValueError(value)
    return size


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """` (did you mean 'x'?)` when one of `choices` is close to `word`, else ''."""
    close = difflib.get_close_matches(word, sorted(choices), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def default_state_path() -> Path:
    """`$STATE_DIRECTORY/pollhook.db` under systemd, else `./pollhook.db`."""
    state_dir = os.environ.get("STATE_DIRECTORY")
    if state_dir:
        return Path(state_dir.split(":")[0]) / "pollhook.db"
    return Path("pollhook.db")


class NamesState(Protocol):
    """A config, or the outline of one (config_outline.py): where it is, what `state:` says."""

    @property
    def path(self) -> Path: ...
    @property
    def state(self) -> Path | None: ...


def state_path(config: NamesState) -> Path:
    """The state file `config` names: `state:` (relative to the config's folder) or the default."""
    if config.state is None:
        return default_state_path()
    state = config.state.expanduser()
    return state if state.is_absolute() else config.path.parent / state


def load_config(path: str | Path, env: Mapping[str, str] | None = None) -> Config:
    """Read and validate `path`; raise ConfigError with file, line and key."""
    path = Path(path)
    data = load_yaml(path)
    return _Validator(path, os.environ if env is None else env).config(data)


class _Validator:
    """Walks the loaded YAML, producing typed objects or one precise error."""

    def __init__(self, path: Path, env: Mapping[str, str]) -> None:
        self.path = path
        self.env = env

    # -- error helpers -------------------------------------------------------

    def fail(self, line: int | None, where: str, message: str) -> ConfigError:
        at = f", line {line}" if line else ""
        prefix = f"{where}: " if where else ""
        return ConfigError(one_line(f"{self.path}{at}: {prefix}{message}"))

    def keys(
        self, node: Any, where: str, line: int | None, required: tuple[str, ...],
        optional: tuple[str, ...],
    ) -> LineMap:  # fmt: skip
        if not isinstance(node, LineMap):
            raise self.fail(line, where, f"must be a mapping, got {_kind(node)}")
        allowed = required + optional
        for key in node:
            if key not in allowed:
                hint = did_you_mean(str(key), allowed)
                known = "" if hint else f" (known keys: {', '.join(allowed)})"
                raise self.fail(node.key_lines[key], where, f"unknown key '{key}'{hint}{known}")
        for key in required:
            if key not in node:
                raise self.fail(node.line, where, f"missing required key '{key}'")
        return node

    # -- scalar helpers ------------------------------------------------------

    def text(self, node: LineMap, key: str, where: str, default: str | None = None) -> str:
        value = node.get(key, default)
        if value is None:
            raise self.fail(node.key_lines.get(key, node.line), where, f"'{key}' must not be empty")
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise self.fail(node.key_lines.get(key), where, f"'{key}' must be a string")
        return self.interpolate(str(value), node.key_lines.get(key), f"{where}.{key}")

    def interpolate(self, value: str, line: int | None, where: str) -> str:
        if "$" not in value:  # most values: no substitution to make
            return value

        def replace(match: re.Match[str]) -> str:
            if match.group(0) == "$$":
                return "$"
            if match.group(1) is not None:
                return self.read_secret_file(match.group(1).strip(), line, where)
            name, default = match.group(2), match.group(3)
            if name is None:
                raise self.fail(
                    line, where, f"bad variable reference {match.group(0)!r} "
                    "(write ${VAR} or ${VAR:-default}, and $$ for a literal $)",
                )  # fmt: skip
            if name in self.env:
                return self.env[name]
            if default is not None:
                return default
            raise self.fail(line, where, f"environment variable '{name}' is not set")

        return _VAR_RE.sub(replace, value)

    def read_secret_file(self, name: str, line: int | None, where: str) -> str:
        """`${file:NAME}`: a systemd credential ($CREDENTIALS_DIRECTORY) or a file path."""
        path = Path(name).expanduser()
        if not path.is_absolute():
            base = self.env.get("CREDENTIALS_DIRECTORY")
            path = (Path(base) if base else self.path.parent) / path
        try:
            return path.read_text(encoding="utf-8").rstrip("\r\n")
        except (OSError, UnicodeDecodeError) as exc:
            reason = getattr(exc, "strerror", None) or "not UTF-8 text"
            raise self.fail(
                line, where, f"cannot read secret file {str(path)!r}: {reason}"
            ) from None

    def convert(
        self, node: LineMap, key: str, where: str, parse: Callable[[Any], Any], what: str
    ) -> Any:
        raw = node[key]
        if isinstance(raw, str):
            raw = self.interpolate(raw, node.key_lines.get(key), f"{where}.{key}")
        try:
            return parse(raw)
        except (ValueError, TypeError, OverflowError):
            raise self.fail(
                node.key_lines.get(key), where, f"'{key}': {_show(raw)} is not {what}"
            ) from None

    def duration(self, node: LineMap, key: str, where: str, default: float) -> float:
        if key not in node:
            return default
        return float(self.convert(node, key, where, parse_duration, DURATION_HINT))

    def positive_int(
        self, node: LineMap, key: str, where: str, default: int, minimum: int = 1
    ) -> int:
        if key not in node:
            return default

        def parse(value: Any) -> int:
            if isinstance(value, bool):
                raise ValueError(value)
            number = float(value)
            if not number.is_integer() or number < minimum:
                raise ValueError(value)
            return int(number)

        what = f"a whole number of at least {minimum}"
        return int(self.convert(node, key, where, parse, what))

    def boolean(self, node: LineMap, key: str, where: str, default: bool) -> bool:
        if key not in node:
            return default

        def parse(value: Any) -> bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.strip().lower() in ("true", "false"):
                return value.strip().lower() == "true"
            raise ValueError(value)

        return bool(self.convert(node, key, where, parse, "true or false"))

    def string_list(self, node: LineMap, key: str, where: str) -> tuple[tuple[str, int], ...]:
        value = node[key]
        if isinstance(value, str):
            value = LineList([value])
            value.item_lines = [node.key_lines[key]]
        if not isinstance(value, LineList):
            raise self.fail(node.key_lines[key], where, f"'{key}' must be a list of strings")
        out = []
        for item, line in zip(value, value.item_lines, strict=True):
            if not isinstance(item, str | int) or isinstance(item, bool):
                raise self.fail(line, where, f"'{key}' entries must be strings, got {_kind(item)}")
            out.append((self.interpolate(str(item), line, f"{where}.{key}"), line))
        return tuple(out)

    def headers(self, node: LineMap, where: str, webhook: bool = False) -> dict[str, str]:
        if "headers" not in node:
            return {}
        value = node["headers"]
        if not isinstance(value, LineMap):
            raise self.fail(node.key_lines["headers"], where, "'headers' must be a mapping")
        out = {}
        for name in value:
            line = value.key_lines[name]
            if not isinstance(name, str) or not re.match(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$", name):
                raise self.fail(line, where, f"header name {_show(name)} is not valid")
            if value[name] is None or isinstance(value[name], LineMap | LineList):
                raise self.fail(line, where, f"header '{name}' must have a plain value")
            raw = value[name]
            raw = str(raw).lower() if isinstance(raw, bool) else str(raw)
            text = self.interpolate(raw, line, f"{where}.headers.{name}")
            if "\n" in text or "\r" in text:
                raise self.fail(line, where, f"header '{name}' must not contain line breaks")
            if webhook and (name.lower().startswith("webhook-") or name.lower() in _OWN_HEADERS):
                raise self.fail(line, where, f"header '{name}' is set by pollhook itself")
            out[name] = text
        return out

    def url(self, node: LineMap, where: str) -> str:
        url = self.text(node, "url", where)
        if not _is_http_url(url):
            raise self.fail(
                node.key_lines["url"],
                where,
                f"'url' must be an http(s) URL with a host: {_show(url)}",
            )
        return url

    def name(self, node: LineMap, where: str, seen: dict[str, int]) -> str:
        name = self.text(node, "name", where)
        line = node.key_lines["name"]
        if not NAME_RE.match(name):
            raise self.fail(
                line, where, f"name {_show(name)} may use only letters, digits, '-' and '_'"
            )
        if name in seen:
            raise self.fail(line, where, f"duplicate name '{name}' (first at line {seen[name]})")
        seen[name] = line
        return name

    def jmespath_expr(self, node: LineMap, key: str, where: str, default: str) -> str:
        expr = self.text(node, key, where, default)
        problem = jmespath_problem(expr)
        if problem:
            raise self.fail(
                node.key_lines.get(key), where, f"'{key}': bad JMESPath {_show(expr)}: {problem}"
            )
        return expr

    def list_of(self, node: LineMap, key: str) -> LineList:
        value = node.get(key)
        if value is None:
            return LineList()
        if not isinstance(value, LineList):
            raise self.fail(node.key_lines[key], "", f"'{key}' must be a list")
        return value

    # -- sections ------------------------------------------------------------

    def config(self, data: Any) -> Config:
        if data is None:
            raise self.fail(None, "", "config file is empty (expected a 'sources' list)")
        if not isinstance(data, LineMap):
            line = data.line if isinstance(data, LineList) else 1
            raise self.fail(
                line, "", f"the config must be a mapping with a 'sources' list, got {_kind(data)}"
            )
        top = self.keys(data, "", 1, ("sources",), ("state", "subscribers", "http", "retention"))
        http = self.http(top)
        sources_node = self.list_of(top, "sources")
        if not sources_node:
            raise self.fail(top.key_lines["sources"], "", "'sources' must list at least one source")
        seen: dict[str, int] = {}
        sources = tuple(
            self.source(item, line, index, seen)
            for index, (item, line) in enumerate(
                zip(sources_node, sources_node.item_lines, strict=True)
            )
        )
        names = {s.name for s in sources}
        seen = {}
        subs_node = self.list_of(top, "subscribers")
        subscribers = tuple(
            self.subscriber(item, line, index, seen, names)
            for index, (item, line) in enumerate(zip(subs_node, subs_node.item_lines, strict=True))
        )
        state = self.state(top)
        return Config(self.path, sources, subscribers, state, http, self.retention(top))

    def retention(self, top: LineMap) -> Retention:
        if "retention" not in top:
            return Retention()
        where = "retention"
        node = self.keys(top[where], where, top.key_lines[where], (), ("delivered", "dead"))
        return Retention(
            delivered=self.duration(node, "delivered", where, Retention.delivered),
            dead=self.duration(node, "dead", where, Retention.dead),
        )

    def state(self, top: LineMap) -> Path | None:
        if "state" not in top:
            return None
        text = self.text(top, "state", "")
        if not text.strip():
            raise self.fail(top.key_lines["state"], "", "'state' must be a file path")
        return Path(text)

    def http(self, top: LineMap) -> HttpSettings:
        if "http" not in top:
            return HttpSettings()
        node = self.keys(
            top["http"], "http", top.key_lines["http"], (),
            ("max_per_host", "timeout", "max_body_size", "min_delay", "max_parse_memory",
             "parse_workers"),
        )  # fmt: skip
        default = HttpSettings()
        max_body = default.max_body_size
        if "max_body_size" in node:
            max_body = self.convert(
                node, "max_body_size", "http", parse_size, "a size (e.g. 100MB)"
            )
        memory = default.max_parse_memory
        if "max_parse_memory" in node:
            memory = self.convert(node, "max_parse_memory", "http", parse_memory, MEMORY_HINT)
        return HttpSettings(
            max_parse_memory=memory,
            parse_workers=self.positive_int(node, "parse_workers", "http", default.parse_workers),
            max_per_host=self.positive_int(node, "max_per_host", "http", default.max_per_host),
            timeout=self.duration(node, "timeout", "http", default.timeout),
            max_body_size=max_body,
            min_delay=self.convert(node, "min_delay", "http", parse_delay, "0 or a duration")
            if "min_delay" in node
            else 0.0,
        )

    def source(self, node: Any, line: int, index: int, seen: dict[str, int]) -> Source:
        where = f"sources[{index}]"
        if isinstance(node, LineMap) and isinstance(node.get("name"), str):
            where = f"source '{node['name']}'"
        node = self.keys(
            node, where, line, ("name", "url", "interval"),
            ("method", "headers", "items", "key", "ignore", "timeout", "emit_initial",
             *FORMAT_KEYS, *SOURCE_KEYS),
        )  # fmt: skip
        name = self.name(node, where, seen)
        method = self.text(node, "method", where, "GET").upper()
        if method not in ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS", "QUERY"):
            raise self.fail(
                node.key_lines.get("method"), where, f"unknown HTTP method {_show(method)}"
            )
        ignore: tuple[str, ...] = ()
        if "ignore" in node:
            ignore = tuple(
                self.field_path(p, ln, where) for p, ln in self.string_list(node, "ignore", where)
            )
        return Source(
            name=name,
            url=self.url(node, where),
            interval=self.duration(node, "interval", where, 0),
            items=self.jmespath_expr(node, "items", where, "@"),
            key=self.jmespath_expr(node, "key", where, "id"),
            method=method,
            headers=self.headers(node, where),
            ignore=ignore,
            timeout=self.duration(node, "timeout", where, 0) or None,
            emit_initial=self.boolean(node, "emit_initial", where, False),
            **format_options(self, node, where),
            **request_options(self, node, where),
        )

    def field_path(self, path: str, line: int, where: str) -> str:
        if not _FIELD_PATH_RE.match(path):
            raise self.fail(
                line,
                where,
                f"'ignore': {_show(path)} must be a field path like 'updated_at' or 'meta.etag'",
            )
        return path

    def subscriber(
        self, node: Any, line: int, index: int, seen: dict[str, int], sources: set[str]
    ) -> Subscriber:
        where = f"subscribers[{index}]"
        if isinstance(node, LineMap) and isinstance(node.get("name"), str):
            where = f"subscriber '{node['name']}'"
        node = self.keys(
            node, where, line, ("name", "url"),
            ("secret", "sources", "events", "retry", "headers", "timeout", "max_in_flight"),
        )  # fmt: skip
        name = self.name(node, where, seen)
        only_sources = None
        if "sources" in node:
            only_sources = frozenset(self.known(node, "sources", where, sources, "source"))
        events = None
        if "events" in node:
            events = frozenset(self.known(node, "events", where, set(EVENT_TYPES), "event type"))
        retry: tuple[float, ...] = DEFAULT_RETRY
        if "retry" in node:
            retry = self.retry(node, where)
        return Subscriber(
            name=name,
            url=self.url(node, where),
            secrets=self.secrets(node, where),
            sources=only_sources,
            events=events,
            retry=retry,
            headers=self.headers(node, where, webhook=True),
            timeout=self.duration(node, "timeout", where, 15.0),
            max_in_flight=self.positive_int(node, "max_in_flight", where, 10),
        )

    def known(self, node: LineMap, key: str, where: str, allowed: set[str], what: str) -> set[str]:
        out = set()
        for value, line in self.string_list(node, key, where):
            if value not in allowed:
                hint = did_you_mean(value, allowed)
                raise self.fail(line, where, f"'{key}': unknown {what} '{value}'{hint}")
            out.add(value)
        return out

    def retry(self, node: LineMap, where: str) -> tuple[float, ...]:
        value = node["retry"]
        line = node.key_lines["retry"]
        if not isinstance(value, LineList):
            raise self.fail(line, where, "'retry' must be a list of durations, e.g. [5s, 5m, 1h]")
        delays = []
        for item, item_line in zip(value, value.item_lines, strict=True):
            if isinstance(item, str):
                item = self.interpolate(item, item_line, f"{where}.retry")
            try:
                delays.append(parse_duration(item))
            except ValueError:
                raise self.fail(
                    item_line, where, f"'retry': {_show(item)} is not {DURATION_HINT}"
                ) from None
        return tuple(delays)

    def secrets(self, node: LineMap, where: str) -> tuple[str, ...]:
        if "secret" not in node or node["secret"] in ("", None):
            return ()
        try:
            entries = self.string_list(node, "secret", where)
        except ConfigError as exc:  # an unset variable, an unreadable file, not a string
            raise ConfigError(f"{exc}{MAKE_SECRET}") from None
        out = []
        for secret, line in entries:
            secret = secret.strip()
            if not secret:
                continue
            problem = secret_problem(secret)
            if problem:
                raise self.fail(line, where, f"'secret' {problem}{MAKE_SECRET}")
            out.append(secret)
        return tuple(out)


MAKE_SECRET = " (make one with `pollhook secret`)"
SECRET_BYTES = (24, 64)  # what a Standard Webhooks secret may decode to


def new_secret(size: int = 32) -> str:
    """A fresh Standard Webhooks secret: `whsec_` + base64 of `size` random bytes."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(size)).decode()


def secret_problem(secret: str) -> str | None:
    """Why `secret` is not a Standard Webhooks secret (`whsec_` + base64 of 24..64 bytes)."""
    if not secret.startswith("whsec_"):
        return "must start with 'whsec_' (Standard Webhooks format)"
    try:
        key = base64.b64decode(secret[len("whsec_") :], validate=True)
    except (binascii.Error, ValueError):
        return "is not valid base64 after 'whsec_'"
    low, high = SECRET_BYTES
    if not low <= len(key) <= high:
        return f"must decode to {low}..{high} bytes, got {len(key)}"
    return None


def _is_http_url(url: str) -> bool:
    if _SPACE_OR_CONTROL_RE.search(url):
        return False
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname)


@functools.lru_cache(maxsize=1024)  # 1,000 sources repeat the same few expressions
def jmespath_problem(expr: str) -> str | None:
    """Why `expr` is not a usable JMESPath expression, in one line; None if it is."""
    try:
        parsed = jmespath.compile(expr).parsed
    except jmespath.exceptions.IncompleteExpressionError:
        return "incomplete expression"
    except jmespath.exceptions.LexerError as exc:
        return f"{exc.message} at column {exc.lexer_position}"
    except jmespath.exceptions.ParseError as exc:
        return f"{exc.msg} at column {exc.lex_position}"
    except jmespath.exceptions.JMESPathError as exc:
        return str(exc).splitlines()[0]
    except RecursionError:
        return "nested too deeply"
    return _function_problem(parsed)


def _function_problem(node: Any) -> str | None:
    """Unknown functions and wrong arities, which jmespath only reports at search time."""
    if not isinstance(node, dict):
        return None
    if node.get("type") == "function_expression":
        name, args = node["value"], len(node["children"])
        table = _FUNCTIONS.FUNCTION_TABLE
        if name not in table:
            return f"unknown function {name}(){did_you_mean(name, table)}"
        signature = table[name]["signature"]
        variadic = bool(signature) and signature[-1].get("variadic", False)
        if args < len(signature) or (args > len(signature) and not variadic):
            return f"{name}() takes {len(signature)} argument(s), got {args}"
    for child in node.get("children", ()):
        problem = _function_problem(child)
        if problem:
            return problem
    return None
